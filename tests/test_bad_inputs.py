"""Every bad input through the command line: exit status 2, one ``error:`` line naming the file,
key or flag, no traceback, and nothing written (no checkpoint, no result, no half file).

Each row is (id, how to break the tiny dataset, command-line arguments, what the error line
must name). Code planted in a config value or a file must not run: its payload would create
a marker file, and the marker must not exist afterwards.
"""

import errno
import os
import pickle

import numpy as np
import pytest
from conftest import fast_args, write_tiny_mmrec

import run_recbole_ckd

MARKER = "payload-ran"


def _touch_payload(folder):
    """Python source that, if evaluated, creates the marker file in ``folder``."""
    return f"__import__('pathlib').Path({os.path.join(folder, MARKER)!r}).touch()"


# ----------------------------------------------------------------------------- ways to break the data
def nothing(data, work):
    return []


def empty_inter(data, work):
    open(os.path.join(data, "tiny.inter"), "w").close()
    return []


def header_only_inter(data, work):
    path = os.path.join(data, "tiny.inter")
    header = open(path).readline()
    open(path, "w").write(header)
    return []


def item_id(value):
    def edit(data, work):
        path = os.path.join(data, "tiny.inter")
        lines = open(path).read().splitlines()
        fields = lines[5].split("\t")
        fields[1] = value
        lines[5] = "\t".join(fields)
        open(path, "w").write("\n".join(lines) + "\n")
        return []

    edit.__name__ = f"item_id_{value}"
    return edit


def atomic_header_only(data, work):
    open(os.path.join(data, "tiny.inter"), "w").write("user_id:token\titem_id:token\trating:float\n")
    return []


def zero_byte_npy(data, work):
    open(os.path.join(data, "text_feat.npy"), "wb").close()
    return []


def truncated_npy(data, work):
    path = os.path.join(data, "text_feat.npy")
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[: len(blob) // 2])
    return []


def object_npy(data, work):
    np.save(os.path.join(data, "text_feat.npy"), np.array([{"a": 1}] * 30, dtype=object), allow_pickle=True)
    return []


def text_as_npy(data, work):
    open(os.path.join(data, "text_feat.npy"), "w").write("not an array\n")
    return []


def missing_npy(data, work):
    os.remove(os.path.join(data, "image_feat.npy"))
    return []


def edit_inter(name, change):
    """The tiny .inter's lines, changed by ``change(lines)`` (which edits the list in place)."""
    def edit(data, work):
        path = os.path.join(data, "tiny.inter")
        lines = open(path).read().splitlines()
        change(lines)
        open(path, "w").write("\n".join(lines) + "\n")
        return []

    edit.__name__ = name
    return edit


def atomic_header(header):
    """The tiny dataset as a RecBole atomic file with ``header`` (its columns: user, item, rating, time, split)."""
    return edit_inter("atomic_header", lambda lines: lines.__setitem__(0, header))


def latin1_row(data, work):
    path = os.path.join(data, "tiny.inter")
    lines = open(path, "rb").read().split(b"\n")
    lines[5] = lines[5].replace(b"\t", b"\xe9\t", 1)
    open(path, "wb").write(b"\n".join(lines))
    return []


def first_test_row(lines):
    return next(line for line in lines[1:] if line.endswith("\t2"))


def npy_claiming(shape):
    def write(data, work):
        with open(os.path.join(data, "text_feat.npy"), "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
            f.write(b"\0" * 64)
        return []

    return write


def config_file(text, name="my.yaml"):
    def write(data, work):
        path = os.path.join(work, name)
        open(path, "w").write(text.replace("{work}", work))
        return [f"--config_files={path}"]

    write.__name__ = f"config_file_{name}"
    return write


def hyper_file(text):
    def write(data, work):
        path = os.path.join(work, "space.test")
        open(path, "w", encoding="utf-8").write(text)
        return [f"--hyper={path}"]

    write.__name__ = "hyper_file"
    return write


def another_sweep(data, work):
    """A sweep folder that records another sweep than the command's."""
    folder = os.path.join(work, "sweeps", "VBPR_CKD-tiny")
    os.makedirs(folder)
    open(os.path.join(folder, ".recbole_ckd-sweep"), "w").write('{"digest": "another"}')
    return hyper_file("kd_weight choice [0.01,0.1]\n")(data, work) + [f"--output={os.path.join(work, 'sweeps')}"]


def code_in_value(key):
    def write(data, work):
        return [f"--{key}={_touch_payload(work)}"]

    write.__name__ = f"code_in_{key}"
    return write


YAML_PAYLOAD = "learning_rate: !!python/object/apply:os.system ['touch {work}/" + MARKER + "']\n"
TRAIN = ["--model=VBPR_CKD", "--dataset=tiny"]
BOARD = ["--leaderboard", "--dataset=tiny"]
SWEEP = TRAIN + [f"--hyper={os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'hyper.test')}"]

CASES = [
    # config keys and values, refused before any data is read
    ("misspelt key", nothing, TRAIN + ["--kd_wieght=1"], ["kd_wieght", "did you mean kd_weight?"]),
    ("negative temperature", nothing, TRAIN + ["--kd_temperature=-0.1"], ["kd_temperature", "-0.1", "> 0"]),
    ("zero temperature", nothing, TRAIN + ["--kd_temperature=0"], ["kd_temperature", "> 0"]),
    ("zero generic samples", nothing, TRAIN + ["--gd_samples=0"], ["gd_samples", ">= 1"]),
    ("negative generic samples", nothing, TRAIN + ["--gd_samples=-5"], ["gd_samples", "-5"]),
    ("text learning rate", nothing, TRAIN + ["--learning_rate=abc"], ["learning_rate", "'abc'"]),
    ("clamp in the wrong order", nothing, TRAIN + ["--cf_clamp=[10,1]"], ["cf_clamp", "low < high"]),
    ("negative kd weight", nothing, TRAIN + ["--kd_weight=-1"], ["kd_weight", ">= 0"]),
    ("zero epochs", nothing, TRAIN + ["--epochs=0"], ["epochs", ">= 1"]),
    ("bad schedule", nothing, TRAIN + ["--learning_rate_scheduler=[0.9]"], ["learning_rate_scheduler"]),
    ("unknown masking", nothing, TRAIN + ["--test_masking=all"], ["test_masking", "'train_valid'"]),
    ("dataset pickles", nothing, TRAIN + ["--save_dataset=True"], ["save_dataset", "pickles"]),
    ("active modality not present", nothing, TRAIN + ["--active_modalities=['x']"], ["active_modalities"]),
    ("unknown optimizer", nothing, TRAIN + ["--learner=adamm"], ["learner", "'adamm'", "sparse_adam"]),
    ("unknown log level", nothing, TRAIN + ["--state=loud"], ["state", "'loud'", "warning"]),
    ("unknown metric", nothing, TRAIN + ["--metrics=['Recal']"], ["RecBole refuses the config", "Recal"]),
    ("valid metric not text", nothing, TRAIN + ["--valid_metric=5"], ["valid_metric", "Recall@20"]),
    ("checkpoint folder is a file", lambda d, w: open(os.path.join(w, "ckpt"), "w").close() or
     [f"--checkpoint_dir={os.path.join(w, 'ckpt')}"], TRAIN, ["checkpoint_dir", "ckpt", "is a file"]),
    ("key twice", nothing, TRAIN + ["--epochs=1", "--epochs=2"], ["--epochs", "twice"]),
    ("code in a config value", code_in_value("learning_rate"), TRAIN, ["learning_rate", "__import__"]),
    ("code in an unknown key", code_in_value("foo"), TRAIN, ["foo"]),
    ("code in a YAML tag", config_file(YAML_PAYLOAD), TRAIN, ["my.yaml", "not valid YAML"]),
    ("malformed YAML", config_file("epochs: [1, 2\nseed: 3\n"), TRAIN, ["my.yaml", "line"]),
    ("YAML that is not a mapping", config_file("- 1\n- 2\n"), TRAIN, ["my.yaml", "mapping"]),
    ("misspelt key in a file's value", config_file("kd_weight: abc\n"), TRAIN, ["kd_weight", "'abc'"]),
    ("missing config file", lambda d, w: [f"--config_files={w}/nope.yaml"], TRAIN, ["nope.yaml", "does not exist"]),
    ("user-uniform batches without the device loader", nothing,
     TRAIN + ["--train_sampler=user_uniform", "--device_sampling=False"], ["train_sampler", "device_sampling: True"]),
    ("every distillation term ablated", nothing, TRAIN + ["--ckd_specific=False", "--ckd_generic=False"],
     ["ckd_specific", "ckd_generic", "kd_weight: 0"]),
    ("unknown CKD weighting", nothing, TRAIN + ["--ckd_weighting=equal"], ["ckd_weighting", "'uniform'"]),
    ("dropout probability above 1", nothing, ["--model=VBPR_MDrop", "--dataset=tiny", "--mdrop_prob=1.5"],
     ["mdrop_prob", "<= 1"]),
    ("modulation epochs in the wrong order", nothing, ["--model=VBPR_OGMGE", "--dataset=tiny", "--ogm_epochs=[5,2]"],
     ["ogm_epochs", "first <= last"]),
    ("a baseline of a backbone without modalities at inference", nothing, ["--model=BM3_MDrop", "--dataset=tiny"],
     ["BM3_MDrop", "ID embeddings only"]),
    ("a study of a non-backbone", nothing, BOARD + ["--study=balancing", "--models=VBPR_CKD", "--seeds=1,"],
     ["--models", "VBPR_CKD", "backbones"]),
    ("unknown study", nothing, BOARD + ["--study=fairness", "--models=VBPR", "--seeds=1,"], ["--study=fairness", "balancing"]),
    ("study without a leaderboard", nothing, TRAIN + ["--study=balancing"], ["--study", "--leaderboard"]),
    ("tuning without a study", nothing, BOARD + ["--models=VBPR", "--seeds=1,", "--tune_trials=2"],
     ["--tune_trials needs --study"]),
    ("no tuning trials", nothing, BOARD + ["--study=balancing", "--models=VBPR", "--seeds=1,", "--tune_trials=0"],
     ["--tune_trials=0", "at least 1"]),
    ("tuning trials of a training run", nothing, TRAIN + ["--tune_trials=2"], ["--tune_trials", "--leaderboard"]),
    ("a search of a leaderboard without tuning", nothing, BOARD + ["--models=VBPR", "--seeds=1,", "--search=random"],
     ["--search", "--tune_trials"]),
    ("a tuned key on the command line", nothing,
     BOARD + ["--study=balancing", "--models=VBPR", "--seeds=1,", "--tune_trials=2", "--mdrop_prob=0.3"],
     ["--mdrop_prob", "a tuned study searches it", "VBPR_MDrop"]),
    ("tuning a study with other sweeps", nothing,
     BOARD + ["--study=balancing", "--models=VBPR", "--seeds=1,", "--tune_trials=2", "--sweeps=sweeps"],
     ["--tune_trials", "--sweeps", "do not combine"]),
    ("a model's own range", nothing, ["--model=MMGCN", "--dataset=tiny", "--n_layers=0"], ["MMGCN", "n_layers >= 1"]),
    ("unknown model", nothing, ["--model=FooNet", "--dataset=tiny"], ["FooNet", "--model"]),
    ("close model name", nothing, ["--model=VBRP", "--dataset=tiny"], ["VBRP", "did you mean VBPR?"]),
    # flags
    ("repeated seeds", nothing, BOARD + ["--models=BPR", "--seeds=1,1"], ["--seeds", "more than once"]),
    ("seeds not numbers", nothing, BOARD + ["--models=BPR", "--seeds=abc"], ["--seeds=abc"]),
    ("a huge seed count", nothing, BOARD + ["--models=BPR", "--seeds=2020"], ["--seeds=2020,"]),
    ("unknown model in a leaderboard", nothing, BOARD + ["--models=BPR,FooNet", "--seeds=1,"], ["FooNet"]),
    ("missing sweeps folder", nothing, BOARD + ["--models=BPR", "--seeds=1,", "--sweeps=nowhere"], ["--sweeps=nowhere"]),
    ("repeated model", nothing, BOARD + ["--models=BPR,BPR", "--seeds=1,"], ["--models", "more than once"]),
    ("missing sweep space", nothing, TRAIN + ["--hyper=nope.test"], ["--hyper=nope.test", "cannot be read"]),
    ("sweep and leaderboard", nothing, BOARD + ["--models=BPR", "--hyper=hyper.test"], ["--hyper", "--leaderboard"]),
    ("leaderboard flag alone", nothing, TRAIN + ["--seeds=3"], ["--seeds", "--leaderboard"]),
    ("sweep flag alone", nothing, TRAIN + ["--num_samples=3"], ["--num_samples", "--hyper"]),
    ("model with a leaderboard", nothing, BOARD + ["--models=BPR", "--model=BPR"], ["--model is for"]),
    ("output of a training run", nothing, TRAIN + ["--output=out"], ["--output", "--hyper or --leaderboard"]),
    ("config files of a download", nothing, ["--download=tiny", "--config_files=x.yaml"], ["--config_files"]),
    ("stray argument", nothing, TRAIN + ["stray"], ["--key=value"]),
    ("misspelt key of a download", nothing, ["--download=tiny", "--url=x", "--data_pth=d"], ["data_pth", "data_path"]),
    ("generator out of range", nothing, ["--generate=g", "--root=gen", "--n_users=0"], ["--generate=g", "n_users"]),
    ("generator over a dataset", lambda d, w: [f"--root={os.path.dirname(d)}"], ["--generate=tiny"],
     ["--generate=tiny", "already exists", "--overwrite"]),
    # values validation accepted that then failed, and sizes that could never run
    ("fractional epochs", nothing, TRAIN + ["--epochs=2.5"], ["epochs", "2.5", "an integer"]),
    ("fractional generic samples", nothing, TRAIN + ["--gd_samples=50.5"], ["gd_samples", "50.5", "an integer"]),
    ("negative seed", nothing, TRAIN + ["--seed=-3"], ["seed", "-3", ">= 0 and <= 4294967295"]),
    ("seed above numpy's range", nothing, TRAIN + ["--seed=4294967296"], ["seed", "4294967296", "<= 4294967295"]),
    ("leaderboard seed outside numpy's range", nothing, BOARD + ["--models=BPR", "--seeds=-1,2"],
     ["--seeds=-1,2", "[-1]", "2**32 - 1"]),
    ("validation metric at a cut-off not computed", nothing, TRAIN + ["--valid_metric=Recall@50"],
     ["valid_metric", "'Recall@50'", "not computed", "recall@20"]),
    ("validation metric not among the metrics", nothing, TRAIN + ["--valid_metric=MRR@20"],
     ["valid_metric", "'MRR@20'", "ndcg@20"]),
    ("cut-off above the item count", nothing, TRAIN + ["--topk=[10,40]", "--valid_metric=Recall@10"],
     ["topk", "[10, 40]", "(30)", "at most 30"]),
    ("zero evaluation step", nothing, TRAIN + ["--eval_step=0"], ["eval_step", ">= 1"]),
    ("sampled evaluation", nothing, TRAIN + ["--eval_args={'split':{'RS':[0.8,0.1,0.1]},'order':'RO','mode':'uni100'}"],
     ["eval_args", "'uni100'", "mode: full"]),
    ("checkpoint folder None", lambda d, w: ["--checkpoint_dir=None"], TRAIN, ["checkpoint_dir", "None", "a folder path"]),
    ("negative workers", nothing, TRAIN + ["--worker=-1"], ["worker", "-1", ">= 0"]),
    ("fractional workers", nothing, TRAIN + ["--worker=1.5"], ["worker", "1.5", "an integer"]),
    ("numerical features not a list", nothing, TRAIN + ["--numerical_features=5"], ["numerical_features", "list"]),
    ("numerical feature not in the data", nothing, TRAIN + ["--numerical_features=['price']"],
     ["RecBole refuses", "price"]),
    ("a model's size as a fraction", nothing, ["--model=MMGCN", "--dataset=tiny", "--n_layers=1.5"], ["n_layers", "1.5"]),
    ("a fractional step over an integer key", hyper_file("gd_samples quniform 10,50,2.5\n"), TRAIN,
     ["space.test, line 1", "gd_samples = 12.5", "an integer"]),
    ("no trials", nothing, TRAIN + ["--hyper=hyper.test", "--num_samples=0"], ["--num_samples=0", "at least 1"]),
    ("negative trials", nothing, TRAIN + ["--hyper=hyper.test", "--num_samples=-1"], ["--num_samples=-1"]),
    ("negative CPUs per trial", nothing, TRAIN + ["--hyper=hyper.test", "--cpus_per_trial=-1"],
     ["--cpus_per_trial=-1", "> 0"]),
    ("negative GPUs per trial", nothing, TRAIN + ["--hyper=hyper.test", "--gpus_per_trial=-1"],
     ["--gpus_per_trial=-1", ">= 0"]),
    ("more GPUs per trial than the machine has", nothing, TRAIN + ["--hyper=hyper.test", "--gpus_per_trial=10000"],
     ["--gpus_per_trial=10000", "GPU(s)"]),
    ("more GPUs per cell than the machine has", nothing, BOARD + ["--models=BPR", "--seeds=1,", "--gpus_per_trial=10000"],
     ["--gpus_per_trial=10000", "GPU(s)"]),
    ("a sweep folder holding another sweep", another_sweep, TRAIN,
     ["a different sweep is in this folder", "VBPR_CKD-tiny", "use another --output or delete it"]),
    ("a context-aware model on MMRec-format data", nothing, ["--model=FM", "--dataset=tiny"],
     ["FM is a context model", "tiny.inter", "MMRec's format"]),
    ("one model in two spellings", nothing, BOARD + ["--models=bpr,BPR", "--seeds=1,"], ["--models", "BPR", "more than once"]),
    # config files that would blow up
    ("YAML aliases", config_file("a: &a [1, 2]\nb: &b [*a, *a]\nc: [*b, *b]\n"), TRAIN,
     ["my.yaml", "anchors and aliases"]),
    ("YAML anchor alone", config_file("eval_args: &e {order: RO}\n"), TRAIN, ["my.yaml", "line 1", "anchors and aliases"]),
    ("YAML tagged value out of range", config_file("learning_rate: !!float abc\n"), TRAIN,
     ["my.yaml", "not valid YAML", "abc"]),
    ("YAML date out of range", config_file("note: 2020-13-45\n"), TRAIN, ["my.yaml", "not valid YAML", "month"]),
    ("YAML nested too deep", config_file("a: " + "[" * 5000 + "]" * 5000 + "\n"), TRAIN, ["my.yaml", "not valid YAML"]),
    # data
    ("empty .inter", empty_inter, TRAIN, ["tiny.inter", "empty"]),
    ("header-only atomic .inter", atomic_header_only, TRAIN, ["tiny.inter", "no interactions"]),
    ("header-only .inter", header_only_inter, TRAIN, ["tiny.inter", "no interactions"]),
    ("leading zero item id", item_id("049"), TRAIN, ["tiny.inter, line 6", "'049'"]),
    ("signed item id", item_id("+3"), TRAIN, ["tiny.inter, line 6", "'+3'"]),
    ("text item id", item_id("abc"), TRAIN, ["tiny.inter, line 6", "'abc'"]),
    ("0-byte .npy", zero_byte_npy, TRAIN, ["text_feat.npy", "empty (0 bytes)"]),
    ("truncated .npy", truncated_npy, TRAIN, ["text_feat.npy", "truncated"]),
    ("pickled .npy", object_npy, TRAIN, ["text_feat.npy", "pickle"]),
    ("text as .npy", text_as_npy, TRAIN, ["text_feat.npy", "not a readable .npy"]),
    ("missing .npy", missing_npy, TRAIN, ["image_feat.npy", "missing"]),
    # data files, archives and sweep files: every mistake named with its file (and line), before training
    ("a long row", edit_inter("long", lambda lines: lines.__setitem__(5, lines[5] + "\t7")), TRAIN,
     ["tiny.inter, line 6", "6 fields", "header has 5"]),
    ("a short row", edit_inter("short", lambda lines: lines.__setitem__(5, lines[5].rsplit("\t", 1)[0])), TRAIN,
     ["tiny.inter, line 6", "4 fields", "header has 5"]),
    ("a row that is not UTF-8", latin1_row, TRAIN, ["tiny.inter, line 6", "not UTF-8"]),
    ("a long row of an atomic file", atomic_header("user_id:token\titem_id:token\trating:float\ttimestamp:float"),
     TRAIN, ["tiny.inter, line 2", "5 fields", "header has 4"]),
    ("an atomic column without its type", atomic_header("user_id:token\titem_id\trating:float\ttimestamp:float\t"
                                                        "x_label:token"), TRAIN, ["tiny.inter, line 1", "'item_id'", "item_id:token"]),
    ("an atomic column of an unknown type", atomic_header("user_id:int\titem_id:token\trating:float\ttimestamp:float\t"
                                                          "x_label:token"), TRAIN, ["tiny.inter, line 1", "'user_id:int'"]),
    ("an atomic file without its user column", atomic_header("user:token\titem_id:token\trating:float\t"
                                                             "timestamp:float\tx_label:token"), TRAIN,
     ["tiny.inter, line 1", "no 'user_id' column", "USER_ID_FIELD"]),
    ("an atomic split column of floats", atomic_header("user_id:token\titem_id:token\trating:float\t"
                                                       "timestamp:float\tx_label:float"), TRAIN,
     ["tiny.inter, line 1", "'x_label:float'", "'x_label:token'"]),
    (".npy header claiming an absurd shape", npy_claiming((10 ** 12, 10 ** 12)), TRAIN,
     ["text_feat.npy", "(1000000000000, 1000000000000)", "truncated"]),
    ("0-wide .npy", lambda d, w: np.save(os.path.join(d, "text_feat.npy"), np.zeros((30, 0), np.float32)) or [], TRAIN,
     ["text_feat.npy", "0 columns"]),
    ("a test pair listed twice", edit_inter("twice", lambda lines: lines.append(first_test_row(lines))), TRAIN,
     ["tiny.inter", "2 held-out", "remove the repeats"]),
    ("a test pair also in train", edit_inter("train_too", lambda lines: lines.append(first_test_row(lines)[:-1] + "0")),
     TRAIN, ["tiny.inter", "1 held-out", "remove the repeats"]),
    ("a download name with '..'", nothing, ["--download=..", "--url=x"], ["--download=..", "plain folder name"]),
    ("a download name with a path", nothing, ["--download=../baby", "--url=x"], ["--download=../baby", "plain folder"]),
    ("a BOM before a bad hyper file", hyper_file("\ufeffkd_weight choice [0.1]\nkd_wieght choice [1]\n"),
     ["--model=VBPR_CKD", "--dataset=tiny"], ["space.test, line 2", "kd_wieght", "did you mean kd_weight?"]),
    ("--output inside a file", lambda d, w: open(os.path.join(w, "f"), "w").close() or
     [f"--output={os.path.join(w, 'f', 'out')}"], SWEEP, ["--output=", "is a file"]),
]


def assert_one_error_line(argv, capsys, names):
    """The command exits with status 2 and one ``error:`` line naming every text of ``names``, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        run_recbole_ckd.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    last = err.strip().splitlines()[-1]
    assert "error:" in last and "Traceback" not in err, err
    for text in names:
        assert text in last, (text, last)


def snapshot(folder):
    return {os.path.join(root, f): os.path.getsize(os.path.join(root, f))
            for root, _, files in os.walk(folder) for f in files}


@pytest.mark.parametrize("name, breaks, args, names", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, monkeypatch, capsys, name, breaks, args, names):
    monkeypatch.chdir(tmp_path)  # RecBole's log/ and anything relative land here
    work = str(tmp_path / "work")
    os.makedirs(work)
    data, _, _ = write_tiny_mmrec(str(tmp_path / "data"))
    extra = breaks(data, work)
    before = snapshot(str(tmp_path / "data")), snapshot(work)
    saved, results = tmp_path / "saved", tmp_path / "results"
    argv = args + extra
    if not args[0].startswith("--generate"):  # the generator has flags of its own
        argv += [f"--data_path={tmp_path / 'data'}"] + [f"--checkpoint_dir={saved}"] * (not any(
            a.startswith("--checkpoint_dir=") for a in extra))
        argv += fast_args(args)
    if "--leaderboard" in args:
        argv.append(f"--output={results}")
    assert_one_error_line(argv, capsys, names)
    assert not os.path.exists(os.path.join(work, MARKER)), "code from the config ran"
    assert not saved.exists() and not results.exists() and not (tmp_path / "gen").exists()
    assert (snapshot(str(tmp_path / "data")), snapshot(work)) == before


# ----------------------------------------------------------------------------- a failing machine
def read_only_output(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere but on a read-only file system, where os.access says no
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: os.fspath(path) != str(folder) and access(path, mode, **kw))
    return [f"--output={folder}"]


def disk_full(tmp_path, monkeypatch):
    import torch

    def save(obj, f, *args, **kwargs):
        if hasattr(f, "write"):  # torch writes into the file it is given
            f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)
    return []


def shared_sweep_key(tmp_path, monkeypatch):
    key = tmp_path / "config-home" / "recbole_ckd" / "sweep.key"  # conftest's private XDG_CONFIG_HOME
    key.parent.mkdir(parents=True)
    key.write_bytes(b"k" * 32)
    key.chmod(0o644)
    return []


MACHINE_CASES = [
    ("read-only sweep output", read_only_output, SWEEP, ["--output=", "/ro", "not writable"]),
    ("read-only leaderboard output", read_only_output, BOARD + ["--models=BPR", "--seeds=1,"],
     ["--output=", "/ro", "not writable"]),
    ("disk full while saving a checkpoint", disk_full, TRAIN, [".pth", "no space left on device"]),
    ("a sweep key others may read", shared_sweep_key, SWEEP, ["sweep.key", "(mode 644)", "chmod 600"]),
]


@pytest.mark.parametrize("name, breaks, args, names", MACHINE_CASES, ids=[c[0] for c in MACHINE_CASES])
def test_a_failing_machine_is_one_error_line(tmp_path, monkeypatch, capsys, name, breaks, args, names):
    """What the machine refuses (a folder not writable, a full disk): one error line naming the path,
    exit status 2, and no result or half-written file left."""
    monkeypatch.chdir(tmp_path)
    data, _, _ = write_tiny_mmrec(str(tmp_path / "data"))
    saved = tmp_path / "saved"
    argv = args + breaks(tmp_path, monkeypatch) + [f"--data_path={tmp_path / 'data'}", f"--checkpoint_dir={saved}"]
    argv += fast_args()
    assert_one_error_line(argv, capsys, names)
    left = [f for f in snapshot(str(tmp_path)) if f.endswith((".pth", ".json", ".md", ".csv", ".yaml")) or "/.tmp" in f]
    assert not [f for f in left if not f.startswith(str(tmp_path / "data"))], left


def test_debug_shows_the_exception(tmp_path, monkeypatch):
    from recbole_ckd.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    write_tiny_mmrec(str(tmp_path / "data"))
    with pytest.raises(ConfigError, match="kd_wieght"):
        run_recbole_ckd.main(TRAIN + ["--kd_wieght=1", "--debug", f"--data_path={tmp_path / 'data'}"])


def test_values_recbole_accepts_still_parse(tiny_dataset):
    from recbole_ckd.config import Config

    config = Config("VBPR", "tiny", cmd_args=[
        "--learning_rate=1e-3", "--epochs=7", "--reproducibility=false", "--topk=[5,10]", "--valid_metric=NDCG@10",
        "--metrics=['Recall','NDCG']",
        "--eval_args={'split':{'RS':[0.7,0.2,0.1]},'order':'RO'}", "--teacher_learning_rate=None", "--state=WARNING",
        "--device_sampling=True", "--seed=3", f"--data_path={tiny_dataset['root']}"])
    assert config["learning_rate"] == 0.001 and config["epochs"] == 7 and config["reproducibility"] is False
    assert config["topk"] == [5, 10] and config["metrics"] == ["Recall", "NDCG"] and config["seed"] == 3
    assert config["eval_args"]["split"] == {"RS": [0.7, 0.2, 0.1]} and config["teacher_learning_rate"] is None
    # a searcher's numpy scalars are numbers too
    config = Config("VBPR_CKD", "tiny", config_dict={"data_path": tiny_dataset["root"], "gd_samples": np.int64(300),
                                                    "kd_weight": np.float32(0.5), "state": "WARNING"})
    assert config["gd_samples"] == 300 and config["kd_weight"] == 0.5


def test_integral_floats_of_integer_keys_are_integers(tiny_dataset, tmp_path):
    """``--epochs=2.0``, a searcher's ``quniform`` value: accepted, and handed on as the integer (the
    run key too, so 2.0 and 2 are the same run)."""
    from recbole_ckd.config import Config
    from recbole_ckd.run_keys import config_key
    from recbole_ckd.tune import check_space, parse_hyper_file

    settings = {"data_path": tiny_dataset["root"], "state": "WARNING"}
    config = Config("VBPR_CKD", "tiny", config_dict={**settings, "gd_samples": 50.0, "n_layers": np.float64(2)},
                    cmd_args=["--epochs=2.0", "--eval_step=1.0", "--seed=7.0", "--embedding_size=8.0"])
    for key, value in {"epochs": 2, "gd_samples": 50, "n_layers": 2, "eval_step": 1, "seed": 7, "embedding_size": 8}.items():
        assert type(config[key]) is int and config[key] == value, key
    same = Config("VBPR_CKD", "tiny", config_dict={**settings, "gd_samples": 50, "n_layers": 2},
                  cmd_args=["--epochs=2", "--eval_step=1", "--seed=7", "--embedding_size=8"])
    assert config_key(config) == config_key(same)
    space = tmp_path / "space.test"
    space.write_text("gd_samples quniform 10,50,10\n")
    made = []
    check_space(parse_hyper_file(str(space)), str(space),
                lambda values: made.append(Config("VBPR_CKD", "tiny", config_dict={**settings, **values})["gd_samples"]))
    assert made == [10, 50, 20] and all(type(v) is int for v in made)


def test_traditional_models_run_on_multimodal_data(tiny_dataset, run_config, monkeypatch, tmp_path):
    """RecBole's non-pairwise models (Pop, ItemKNN: ModelType.TRADITIONAL) read the MMRec-format data
    as BPR does, and are scored on the same full ranking."""
    from recbole_ckd.quick_start import run

    monkeypatch.chdir(tmp_path)
    for model in ("Pop", "ItemKNN"):
        result = run(model, "tiny", config_dict=run_config(tiny_dataset["root"]))
        assert result["model"] == model and 0 <= result["test_result"]["recall@20"] <= 1


def test_model_names_in_any_case(tiny_dataset, monkeypatch):
    from recbole_ckd import registry
    from recbole_ckd.config import Config
    from recbole_ckd.errors import ConfigError
    from recbole_ckd.leaderboard import parse_models

    settings = {"data_path": tiny_dataset["root"], "state": "WARNING"}
    assert Config("bpr", "tiny", config_dict=settings)["model"] == "BPR"
    assert Config("vbpr_ckd", "tiny", config_dict=settings)["model"] == "VBPR_CKD"
    assert parse_models("bpr,Vbpr") == ["BPR", "VBPR"]
    monkeypatch.setattr(registry, "model_names", lambda: ["BPR", "Bpr"])  # no two models differ in case alone today
    with pytest.raises(ConfigError, match="'bpr' .* names several models: did you mean BPR or Bpr"):
        registry.get_model("bpr")


def test_own_keys_are_declared_on_purpose(tiny_dataset, tmp_path):
    from recbole_ckd.config import Config
    from recbole_ckd.errors import ConfigError

    settings = {"data_path": tiny_dataset["root"], "state": "WARNING"}
    with pytest.raises(ConfigError, match="my_note"):
        Config("VBPR", "tiny", config_dict={**settings, "my_note": 1})
    assert Config("VBPR", "tiny", config_dict={**settings, "my_note": 1, "extra_config_keys": ["my_note"]})["my_note"] == 1
    own = tmp_path / "own.yaml"
    own.write_text("my_note: 2\n")  # a key the user's own config file sets is known
    assert Config("VBPR", "tiny", [str(own)], cmd_args=["--my_note=3"], config_dict=settings)["my_note"] == 3
    # every key of every properties file (the plugin's and RecBole's) is known, whatever the model
    config = Config("BPR", "tiny", config_dict={**settings, "train_preference": False, "n_layers": 3,
                                                "protocol": "mine", "train_sampler": "interactions"})
    assert config["train_preference"] is False and config["n_layers"] == 3


def test_a_sweep_value_with_code_does_not_run(tiny_dataset, tmp_path):
    """A trial's config dict holds the searched values as they are in hyper.test (strings too)."""
    from recbole_ckd.config import Config
    from recbole_ckd.errors import ConfigError

    with pytest.raises(ConfigError, match="kd_temperature"):
        Config("VBPR_CKD", "tiny", config_dict={"data_path": tiny_dataset["root"],
                                                "kd_temperature": _touch_payload(str(tmp_path))})
    assert not (tmp_path / MARKER).exists()
    # a key that takes any text keeps the text as it is
    config = Config("VBPR_CKD", "tiny", config_dict={"data_path": tiny_dataset["root"],
                                                     "protocol": _touch_payload(str(tmp_path))})
    assert config["protocol"] == _touch_payload(str(tmp_path)) and not (tmp_path / MARKER).exists()


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_planted_dataset_pickle_is_never_loaded(tmp_path):
    """RecBole's create_dataset unpickles <checkpoint_dir>/<dataset>-<Class>.pth for any
    non-general model (here SASRec); the plugin's never does."""
    from recbole.data.dataset import SequentialDataset

    from recbole_ckd.config import Config
    from recbole_ckd.registry import create_dataset

    data = tmp_path / "data" / "seq"
    data.mkdir(parents=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"{u}\t{(u * 7 + k) % 20}\t{k}" for u in range(12) for k in range(8)]
    (data / "seq.inter").write_text("\n".join(lines) + "\n")
    saved = tmp_path / "saved"
    saved.mkdir()
    marker = tmp_path / MARKER
    with open(saved / "seq-SequentialDataset.pth", "wb") as f:
        pickle.dump(_Payload(str(marker)), f)
    config = Config("SASRec", "seq", config_dict={"data_path": str(tmp_path / "data"), "checkpoint_dir": str(saved),
                                                  "state": "WARNING", "loss_type": "BPR", "eval_args": {"split": {"LS": "valid_and_test"},
                                                  "order": "TO", "group_by": "user", "mode": "full"}})
    dataset = create_dataset(config)
    assert isinstance(dataset, SequentialDataset) and len(dataset.inter_feat) == 96
    assert not marker.exists()
    assert sorted(os.listdir(saved)) == ["seq-SequentialDataset.pth"]  # and none written


def test_generate_help_shows_the_generators_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_recbole_ckd.main(["--generate=x", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--n_interactions" in out and "--strength" in out


def test_every_key_of_every_properties_file_is_accepted(tiny_dataset):
    """The plugin's overall, model, dataset and protocol YAMLs and RecBole's own: any of their keys may be
    given on the command line of any model (here BPR, whose own YAML sets none of the plugin's keys)."""
    from pathlib import Path

    import recbole

    from recbole_ckd.config import Config
    from recbole_ckd.errors import ConfigError
    from recbole_ckd.settings_files import properties_dir, read_yaml

    roots = [properties_dir(), Path(recbole.__file__).parent / "properties"]
    files = [p for root in roots for p in sorted(root.rglob("*.yaml"))]
    assert {p.parent.name for p in files} >= {"model", "dataset", "protocol", "properties"}
    values = {}
    for path in files:
        for key, value in read_yaml(path).items():
            values.setdefault(key, value)
    values = {k: v for k, v in values.items() if k not in ("model", "dataset")}
    assert {"train_preference", "protocol", "learning_rate_scheduler", "train_sampler", "n_layers"} <= set(values)
    try:  # names are checked before values: whatever the values do to each other, no name is refused
        Config("BPR", "tiny", config_dict={**values, "data_path": tiny_dataset["root"], "state": "WARNING"})
    except ConfigError as err:
        assert "unknown config key" not in str(err), str(err)
