"""Side by side: seconds per training epoch (and of one full evaluation) of this project's
backbones and CKD students against a reference implementation's, on the same machine, the same
generated data and the same hyper-parameters, in the same run.

    python benchmarks/bench_reference.py --shape devset --mmrec ~/src/MMRec --ckd_reference ~/src/Balanced-Multimodal-Rec

Implementations, each set up in its own worker process (one thread: ``OMP_NUM_THREADS=1`` and
``torch.set_num_threads(1)``), all of one backbone's at once (plain and student, ours and the
references); then their epochs run in turns (the order reversed every other turn), so that a
busy machine slows all of them alike. Every number
is the median of ``--repeats`` epochs (``--evals`` full evaluations) after one warm-up each:

- ``ours``: this checkout (``<Backbone>`` and ``<Backbone>_CKD``, the student with teacher
  tables in place, as ``bench_ckd.py`` times it);
- ``baseline`` (``--baseline=PATH``): another checkout of this project, e.g. ``git worktree add
  ../main main``, to measure a change before and after in one run;
- ``mmrec`` (``--mmrec=PATH``): a local checkout of MMRec (github.com/enoche/MMRec), whose
  ``src/`` is imported by the worker: its ``Config``, ``RecDataset``, ``TrainDataLoader``
  (its own negative sampling), model and ``Trainer``; an epoch is
  ``model.pre_epoch_processing()`` and ``Trainer._train_epoch``, as in its ``fit``. The data
  are the same files (MMRec's format; for its DualGNN and DRAGON also ``user_graph_dict.npy``,
  written from the training split); every hyper-parameter MMRec grid-searches is set to
  this project's value where this project has it (``REFERENCE_NAMES`` maps the names that
  differ), else to the grid's first value, and the JSON records what was used. On a CPU
  machine, with this project's packages, run a copy with the lines of ``MMREC_CPU_EDITS``
  changed (its ``.cuda()`` calls, ``dok_matrix._update``, ``np.float``, torch_scatter, ...);
- ``ckd_reference`` (``--ckd_reference=PATH``): the CKD authors' code
  (github.com/CRIPAC-DIG/Balanced-Multimodal-Rec), VBPR with CKD only: ``codes/train_kd.py``
  run for ``repeats + 1`` epochs with its own defaults and no validation, its per-epoch times
  read from its log lines (``Epoch N [T s]``: 0.1 s resolution) and those lines (its losses) kept in
  the JSON. Being one process for all its epochs, it starts once the other workers are set up and
  idle, so its epochs run in one block rather than in turns with the others'. It reads its own data
  layout (LATTICE's, as its README says): ``data/<name>/5-core/{train,val,test}.json`` (``{"user":
  [items]}``, the rows of our ``x_label`` 0 / 1 / 2; ids as ours) and ``data/<name>/image_feat.npy``,
  ``text_feat.npy`` beside ``codes/``; and its uni-modal teachers ``teacher_models/VBPR_<name>_2`` and
  ``_3``, which its ``train_unimodal.py --model_name VBPR --train_type 2`` (and ``3``) ``--save_model 1``
  writes (a few epochs do: the epoch time does not depend on them); ``--prepare_ckd_reference``
  writes those data for ``--shape`` and prints the two teacher commands. On a CPU machine run a copy with
  its ``.cuda()`` and ``torch.cuda.set_device`` calls changed; its ``utility/batch_test.py``
  (``data_generator``, ``test_torch``, as in LATTICE's code) must be present.

``--accuracy`` trains instead, to convergence under MMRec's protocol
(``properties/protocol/mmrec.yaml``: full ranking, training items masked, early stopping on
validation Recall@20), ``--seeds`` runs of ours per backbone (``recbole_ckd.quick_start.run``)
and ``--mmrec_seeds`` of MMRec's (its own ``Trainer.fit``; a count, or counts per backbone:
``1,BM3=3``), and writes their test Recall@20 and NDCG@20 at the best validation epoch, epochs
trained and median seconds per epoch, with the gap in units of our seed standard deviation, to
``results/mmrec-parity.md`` and ``.json``:

    python benchmarks/bench_reference.py --accuracy --shape devset --scale 0.3 --mmrec ~/src/MMRec

Each run is one process, cached as a JSON file under ``<data_root>/parity-cells/<dataset>/``
(delete it to run again); an interrupted run of ours resumes from its last checkpoint, and the
same command completes what is missing.

None of the references' code is in this repository. Without ``--mmrec`` / ``--ckd_reference``
their columns are absent ("not measured"): no number is ever filled in for them. Results
(JSON and markdown, with the machine and the command) go to ``benchmarks/results/``; they name each
checkout by its git commit, and the command keeps no absolute path of this machine.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MMREC_MODELS = {"VBPR", "MMGCN", "GRCN", "LATTICE", "BM3", "FREEDOM", "MGCN", "DualGNN", "DRAGON", "LGMRec",
                "ItemKNNCBF", "PGL", "MMGCF", "SMORE", "SLMRec", "MVGAE", "DAMRS"}  # not EgoGCN
USER_GRAPH_MODELS = {"DualGNN", "DRAGON"}  # MMRec's read the user-user graph from a file of the dataset
# this project's name of a hyper-parameter MMRec names otherwise, per backbone
REFERENCE_NAMES = {"FREEDOM": {"reg_weight": "mm_bpr_weight"}, "MGCN": {"cl_loss": "cl_weight"}}
# measured earlier on a 2-core CPU machine at the devset shape, MMRec at its HEAD and ours before the
# BM3 / FREEDOM projection and multi-tensor Adam speed-ups (commit a07cb44): printed as a reminder
# only, never mixed with this run's numbers
RECORDED_EARLIER = {"VBPR": ("0.10", "0.06"), "MMGCN": ("1.9", "0.6"), "GRCN": ("1.0", "0.35"),
                    "LATTICE": ("0.27-0.30", "0.10"), "BM3": ("0.21", "0.28"), "FREEDOM": ("0.20", "0.32")}


# ----------------------------------------------------------------------------- how results name things
PATH_OPTIONS = ("--baseline", "--mmrec", "--ckd_reference", "--data_root", "--output")


def checkout_commit(path):
    """How a result names a checkout: its git commit (``+dirty``: with uncommitted changes), never
    its path on this machine; None for no checkout."""
    if not path:
        return None
    try:
        git = ["git", "-C", path]
        commit = subprocess.run(git + ["rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(git + ["status", "--porcelain"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "a copy outside git"
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def portable_command(argv):
    """The command as typed, each absolute path given to a path option replaced by ``<option>``."""
    words = []
    for word in argv:
        option, eq, value = word.partition("=")
        if eq and option in PATH_OPTIONS and os.path.isabs(os.path.expanduser(value)):
            word = f"{option}=<{option[2:]}>"
        elif not eq and words and words[-1] in PATH_OPTIONS and os.path.isabs(os.path.expanduser(word)):
            word = f"<{words[-1][2:]}>"
        words.append(word)
    return " ".join(["python", "benchmarks/bench_reference.py"] + words)


# ----------------------------------------------------------------------------- workers
def _one_thread():
    import torch

    torch.set_num_threads(1)
    return torch


def worker_ours(args):
    """``(epoch, evaluation, info)`` of ``args.model`` with the recbole_ckd found at ``args.code``."""
    torch = _one_thread()
    sys.path.insert(0, args.code)
    import recbole_ckd
    from recbole_ckd.config import Config
    from recbole_ckd.data.dataset import data_preparation
    from recbole_ckd.model import MODELS
    from recbole_ckd.registry import create_dataset, get_trainer

    base = {"data_path": args.data_root, "state": "ERROR", "show_progress": False, "use_gpu": args.device == "cuda",
            "checkpoint_dir": os.path.join(args.data_root, ".bench-saved"), "seed": args.seed}
    config = Config(args.model, args.dataset, config_dict=base)
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = MODELS[args.model](config, train.dataset).to(config["device"])
    backbone = getattr(model, "backbone", None)
    if backbone is not None:  # one teacher stands in for every modality's: the cost is the same
        first = model.modalities[0]
        teacher = backbone(Config(backbone.__name__, args.dataset, config_dict={**base, "active_modalities": [first]}),
                           train.dataset).to(config["device"])
        with torch.no_grad():
            model.set_teacher_tables({m: teacher.eval().forward(model.only(m)) for m in model.modalities})
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.eval_collector.data_collect(train)
    return (lambda: trainer._train_epoch(train, 0), lambda: trainer.evaluate(valid, load_best_model=False),
            {"code": checkout_commit(os.path.dirname(os.path.dirname(recbole_ckd.__file__)))})


def mmrec_setup(args):
    """MMRec's ``(config, model, trainer, train, valid, test, settings)`` for ``args.model`` (a checkout at
    ``args.code``), set up as its ``quick_start`` does for one point of its grid: each grid-searched
    hyper-parameter is this project's value (``args.ours_settings``, names mapped by
    ``REFERENCE_NAMES``) where this project has it, else the grid's first value."""
    sys.path.insert(0, os.path.join(args.code, "src"))
    os.chdir(os.path.join(args.code, "src"))  # MMRec reads configs/ relative to the working directory
    from utils.configurator import Config
    from utils.dataloader import EvalDataLoader, TrainDataLoader
    from utils.dataset import RecDataset
    from utils.utils import get_model, get_trainer, init_seed

    fields = {"use_gpu": args.device == "cuda", "gpu_id": 0, "data_path": os.path.join(os.path.abspath(args.data_root), ""),
              "USER_ID_FIELD": "userID", "ITEM_ID_FIELD": "itemID", "TIME_FIELD": "timestamp",
              "inter_file_name": f"{args.dataset}.inter", "vision_feature_file": "image_feat.npy",
              "text_feature_file": "text_feat.npy", "user_graph_dict_file": "user_graph_dict.npy",
              "field_separator": "\t", "filter_out_cod_start_users": True}
    config = Config(args.model, args.dataset, fields)
    ours, used = json.loads(args.ours_settings), {}
    names = REFERENCE_NAMES.get(args.model, {})
    for name in config["hyper_parameters"]:
        if name == "seed":
            config["seed"] = args.seed
        elif isinstance(config[name], list):
            mine = ours.get(names.get(name, name))
            config[name] = config[name][0] if mine is None else mine
        used[name] = config[name]
    if getattr(args, "max_epochs", None):
        config["epochs"] = args.max_epochs
    init_seed(config["seed"])
    train_set, valid_set, test_set = RecDataset(config).split()
    for part in (train_set, valid_set, test_set):  # its str() sets inter_num, which the loaders read (quick_start logs it)
        str(part)
    train = TrainDataLoader(config, train_set, batch_size=config["train_batch_size"], shuffle=True)
    valid, test = (EvalDataLoader(config, part, additional_dataset=train_set, batch_size=config["eval_batch_size"])
                   for part in (valid_set, test_set))
    train.pretrain_setup()
    model = get_model(config["model"])(config, train).to(config["device"])
    try:
        trainer = get_trainer()(config, model, False)
    except TypeError:  # MMRec before its "mg" argument
        trainer = get_trainer()(config, model)
    return config, model, trainer, train, valid, test, used


def worker_mmrec(args):
    """``(epoch, evaluation, info)`` of MMRec's ``args.model`` (a checkout at ``args.code``)."""
    torch = _one_thread()
    _, model, trainer, train, valid, _, used = mmrec_setup(args)

    def epoch():
        model.pre_epoch_processing()
        trainer._train_epoch(train, 0)

    def evaluation():
        with torch.no_grad():
            trainer.evaluate(valid)

    return epoch, evaluation, {"settings": used}


def worker_ckd_reference(args):
    """The CKD authors' VBPR with CKD (``codes/train_kd.py`` of ``args.code``), run once for all
    epochs: ``(epoch, None, info)``, ``epoch`` handing out its logged epoch times in turn."""
    command = [sys.executable, "train_kd.py", "--dataset", args.dataset, "--epoch", str(args.epochs + 1),
               "--verbose", str(10**6), "--model_name", "VBPR"]
    done = subprocess.run(command, cwd=os.path.join(args.code, "codes"), capture_output=True, text=True)
    output = done.stdout + done.stderr
    lines = re.findall(r"Epoch \d+ \[[0-9.]+s\].*", output)
    times = [float(re.search(r"\[([0-9.]+)s\]", line).group(1)) for line in lines]
    if len(times) < args.epochs + 1:  # it ends with an error after its last epoch (no test result): fine
        raise RuntimeError(f"train_kd.py gave {len(times)} epoch times (exit {done.returncode}): {output[-300:]}")
    logged = iter(times)
    return lambda: next(logged), None, {"timing": "its own log lines, 0.1 s resolution (one process for all "
                                        "epochs, run once the others are set up)", "log": lines}


def write_ckd_reference_data(data_dir, checkout, name):
    """The generated dataset ``data_dir`` (MMRec's format) in the layout the CKD authors' code reads:
    ``<checkout>/data/<name>/5-core/{train,val,test}.json`` (``{"user": [items]}`` from the rows
    with ``x_label`` 0 / 1 / 2, ids as ours) and the two feature files beside them. Returns the
    commands that train its two uni-modal teachers (run in ``<checkout>/codes``)."""
    import pandas as pd

    inter = pd.read_csv(os.path.join(data_dir, os.path.basename(os.path.normpath(data_dir)) + ".inter"), sep="\t")
    target = os.path.join(checkout, "data", name)
    os.makedirs(os.path.join(target, "5-core"), exist_ok=True)
    for label, split in enumerate(("train", "val", "test")):
        rows = inter[inter["x_label"] == label]
        lists = {str(int(u)): [int(i) for i in items] for u, items in rows.groupby("userID", sort=True)["itemID"]}
        with open(os.path.join(target, "5-core", f"{split}.json"), "w") as f:
            json.dump(lists, f)
    for feature in ("image_feat.npy", "text_feat.npy"):
        shutil.copyfile(os.path.join(data_dir, feature), os.path.join(target, feature))
    # its training types 2 and 3 are its textual and visual teachers; a few epochs are enough to time the student
    return [f"python train_unimodal.py --dataset {name} --model_name VBPR --train_type {kind} --save_model 1 "
            "--epoch 3 --verbose 1" for kind in (2, 3)]


WORKERS = {"ours": worker_ours, "baseline": worker_ours, "mmrec": worker_mmrec, "ckd_reference": worker_ckd_reference}
PROTOCOL = "@@bench "  # prefix of the lines a worker answers with (the code it runs may print anything)


def serve(args):
    """A worker: set up (one warm-up epoch and evaluation), then time what stdin asks, one at a
    time ("train", "eval"), so the parent can run every implementation's epochs in turns."""
    def answer(**values):
        print(PROTOCOL + json.dumps(values), flush=True)

    def synchronize():
        if args.device == "cuda":
            import torch

            torch.cuda.synchronize()

    try:
        epoch, evaluation, info = WORKERS[args.worker](args)
        logged = args.worker == "ckd_reference"  # its times come from its log, in order
        epoch()  # the warm-up (for the authors' code: its first logged epoch, dropped)
        if evaluation is not None:
            evaluation()
    except Exception as error:  # reported as this implementation's failure, the others go on
        message = str(error).splitlines()[0] if str(error) else ""
        answer(error=f"{type(error).__name__}: {without_local_paths(message, args)[:200]}")
        return
    answer(ready=True, **info)
    for line in sys.stdin:
        what = line.strip()
        if what == "quit":
            return
        if logged and what == "train":
            answer(seconds=epoch())
            continue
        fn = epoch if what == "train" else evaluation
        if fn is None:
            answer(seconds=None)
            continue
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        answer(seconds=time.perf_counter() - start)


# ----------------------------------------------------------------------------- the side-by-side
class Worker:
    """One implementation of one model in its own process (:func:`serve`), timed on request."""

    def __init__(self, kind, code, model, dataset, args, ours_settings="{}"):
        command = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--code", code, "--model", model,
                   "--dataset", dataset, "--data_root", args.data_root, "--seed", str(args.seed),
                   "--epochs", str(args.repeats), "--device", args.device, "--ours_settings", ours_settings]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True, env=env)
        self.info = None

    def read(self):
        for line in self.process.stdout:
            if line.startswith(PROTOCOL):
                return json.loads(line[len(PROTOCOL):])
        return {"error": f"the worker ended (exit {self.process.wait()}) without an answer"}

    def ready(self):
        if self.info is None:
            self.info = self.read()
        return "error" not in self.info

    def time(self, what):
        self.process.stdin.write(what + "\n")
        self.process.stdin.flush()
        return self.read().get("seconds")

    def close(self):
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
            except BrokenPipeError:
                pass
        self.process.wait()
        self.process.stdout.close()


def our_settings(model, dataset, args):
    """This project's resolved config of ``model`` under MMRec's protocol (the values MMRec's grids are
    matched against)."""
    sys.path.insert(0, ROOT)
    from recbole_ckd.config import Config

    config = Config(model, dataset, [MMREC_PROTOCOL], config_dict={"data_path": args.data_root, "state": "ERROR", "use_gpu": False})
    return json.dumps({k: v for k, v in config.final_config_dict.items() if isinstance(v, (int, float, str, bool))})


def implementations(backbone, args):
    """``[(part, implementation, code, model)]`` of ``backbone``: what is timed side by side."""
    sys.path.insert(0, ROOT)
    from recbole_ckd.model import MODELS

    models = {"plain": backbone}
    if MODELS[backbone].ranks_with_modalities and MODELS[backbone].trains:
        models["student"] = f"{backbone}_CKD"
    jobs = []
    for part, model in models.items():
        jobs.append((part, "ours", ROOT, model))
        if args.baseline:
            jobs.append((part, "baseline", os.path.abspath(args.baseline), model))
    if args.mmrec and backbone in MMREC_MODELS:
        jobs.append(("plain", "mmrec", os.path.abspath(args.mmrec), backbone))
    if args.ckd_reference and backbone == "VBPR":
        jobs.append(("student", "ckd_reference", os.path.abspath(args.ckd_reference), backbone))
    return jobs


def time_side_by_side(backbone, jobs, dataset, args):
    """``{(part, implementation): runs}`` of one backbone: every worker set up, then their epochs
    (and evaluations) in turns, the order reversed every other turn, so the student / plain and
    ours / reference ratios compare epochs run under the same load."""
    workers = {}
    for part, kind, code, model in jobs:
        if kind == "ckd_reference":  # it runs all its epochs while setting up: not beside the others' setup
            for worker in workers.values():
                worker.ready()
        settings = our_settings(backbone, dataset, args) if kind == "mmrec" else "{}"
        data = args.ckd_reference_dataset if kind == "ckd_reference" else dataset
        workers[part, kind] = Worker(kind, code, model, data, args, settings)
    runs = {}
    try:
        for key, worker in workers.items():
            runs[key] = {"train_runs": [], "eval_runs": []} if worker.ready() else {"error": worker.info["error"]}
            runs[key].update({k: v for k, v in worker.info.items() if k not in ("ready", "error")})
        live = [key for key in workers if "error" not in runs[key]]
        for what, field, n in (("train", "train_runs", args.repeats), ("eval", "eval_runs", args.evals)):
            for turn in range(n):
                for key in live if turn % 2 == 0 else live[::-1]:
                    seconds = workers[key].time(what)
                    if seconds is not None:
                        runs[key][field].append(seconds)
    finally:
        for worker in workers.values():
            worker.close()
    for run in runs.values():
        if "error" not in run:
            run["train_s_per_epoch"] = statistics.median(run["train_runs"]) if run["train_runs"] else None
            run["eval_s"] = statistics.median(run["eval_runs"]) if run["eval_runs"] else None
    return runs


def side_by_side(args, dataset, record, base):
    """``record["results"]``: ``{backbone: {part: {implementation: runs}}}``, written after every backbone."""
    results = record["results"] = {}
    for backbone in args.models.split(","):
        runs = time_side_by_side(backbone, implementations(backbone, args), dataset, args)
        for (part, kind), run in runs.items():
            results.setdefault(backbone, {}).setdefault(part, {})[kind] = run
            print(f"{backbone:<8} {part:<8} {kind:<14} {summary_line(run)}", flush=True)
        write_results(record, base)  # an interrupted run keeps what it measured
    return results


def summary_line(run):
    if "error" in run:
        return f"failed: {run['error']}"
    epochs = ", ".join(f"{t:.3f}" for t in run["train_runs"])
    evals = ", ".join(f"{t:.3f}" for t in run["eval_runs"])
    return f"train s/epoch [{epochs}]  eval s [{evals}]"


def ratio(a, b):
    return None if a is None or b is None else a / b


def table(record):
    def cell(run, key="train_s_per_epoch"):
        if run is None:
            return "not measured"
        if "error" in run:
            return "failed"
        return "-" if run.get(key) is None else f"{run[key]:.3f}"

    def number(value):
        return "-" if value is None else f"{value:.2f}"

    def seconds(run, key="train_s_per_epoch"):
        return None if run is None or "error" in run else run.get(key)

    has_baseline = bool(record["baseline"])
    head = ["backbone", "part", "ours s/epoch"]
    if has_baseline:
        head += ["baseline s/epoch", "ours / baseline"]
    head += ["reference s/epoch", "ours / reference", "student / plain (ours)"]
    if has_baseline:
        head += ["student / plain (baseline)"]
    head += ["ours eval s", "reference eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for backbone, parts in record["results"].items():
        plain = parts.get("plain", {})
        for part, runs in parts.items():
            ours, base = runs.get("ours"), runs.get("baseline")
            reference = runs.get("mmrec") or runs.get("ckd_reference")
            name = "MMRec" if "mmrec" in runs else "CKD authors" if "ckd_reference" in runs else None
            row = [backbone, part, cell(ours)]
            if has_baseline:
                row += [cell(base), number(ratio(seconds(ours), seconds(base)))]
            ref_cell = cell(reference) if reference is not None else "not measured"
            row += [f"{ref_cell} ({name})" if name else ref_cell, number(ratio(seconds(ours), seconds(reference)))]
            row += [number(ratio(seconds(ours), seconds(plain.get("ours")))) if part == "student" else "1.00"]
            if has_baseline:
                row += [number(ratio(seconds(base), seconds(plain.get("baseline")))) if part == "student" else "1.00"]
            row += [cell(ours, "eval_s"), cell(reference, "eval_s") if reference is not None else "not measured"]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def write_results(record, base):
    with open(base + ".json", "w") as f:
        json.dump(record, f, indent=2)
    missing = [f"`--{name}`" for name in ("mmrec", "ckd_reference") if not record[name]]
    lines = [f"# bench_reference, {record['machine']['device']}, {record['dataset']} {record['shape']}", "",
             f"command: `{record['command']}`", "", f"machine: {record['machine']}", "",
             f"one process and one thread per implementation, their epochs in turns; median of {record['repeats']} "
             f"epochs after a warm-up epoch (evaluation: of {record['evals']} after one); ours: {record['ours']}"
             + (f"; baseline: {record['baseline']}" if record["baseline"] else ""), ""]
    if missing:
        lines += [f"Reference columns absent for {' and '.join(missing)}: no local checkout was given, so nothing "
                  "of theirs was measured in this run.", ""]
    if record["ckd_reference"]:
        lines += ["CKD authors: their `train_kd.py`'s own per-epoch times (its log lines, 0.1 s resolution), all "
                  "its epochs in one process, run once the other implementations were set up; its loss lines are in "
                  "the JSON. Its epoch is its own: its sampler's batches and defaults (see the docstring).", ""]
    lines += table(record)
    if record["shape_name"] == "devset":
        lines += ["", "Recorded earlier, not this run (a 2-core CPU machine, this shape, MMRec at its HEAD, ours "
                  "before commit a07cb44), s/epoch:", "", "| backbone | MMRec | ours then |", "| --- | --- | --- |"]
        lines += [f"| {b} | {m} | {o} |" for b, (m, o) in RECORDED_EARLIER.items()]
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return lines


# ----------------------------------------------------------------------------- accuracy (--accuracy)
MMREC_PROTOCOL = os.path.join(ROOT, "properties", "protocol", "mmrec.yaml")
ACCURACY_METRICS = {"recall@20": "Recall@20", "ndcg@20": "NDCG@20"}
PARITY_SIGMAS = 2.0  # a gap within this many of our seed standard deviations counts as parity
# why a backbone's numbers may differ from MMRec's (see each backbone's class docstring); shown on the page
PARITY_NOTES = {
    "VBPR": "Ours follows the CKD authors' VBPR, not MMRec's: ours has one user preference and one projection per "
            "modality (representations 64 + 64 + 64), MMRec's projects the concatenated text and image features "
            "with a single layer (representations 64 + 64) and re-initialises every weight Xavier-normal.",
    "MMGCN": "Ours follows the CKD authors' MMGCN, not MMRec's: ours adds a node's neighbourhood and own signal, "
             "projects every modality to 64-d, propagates over the graph with self loops and trains the user "
             "preferences; MMRec's concatenates the two signals, projects only the image features (to 256-d) and "
             "keeps the raw text features, has no self loops and never trains its user preferences. Both run "
             "three layers.",
    "GRCN": "Outside 2 std on NDCG@20 (ours higher) because of a difference on purpose: ours' neighbour routing "
            "updates the user prototypes from their items, as the paper describes, while in MMRec's code the routing "
            "layer aggregates at the items and leaves the user preferences unchanged (MMRec also adds the whole "
            "visual preference table to its L2 term). Ours with `n_routing: 0`, which reproduces MMRec's routing, "
            "gives Recall@20 0.1566, 0.1724, 0.1767 and NDCG@20 0.0598, 0.0703, 0.0718 over the same three seeds "
            "(the same protocol and data, run separately): 0.1686 ± 0.0106 and 0.0673 ± 0.0065, against which "
            "MMRec's means are +0.41 and +0.26 std away.",
    "MMGCF": "Outside 2 std on Recall@20 only, and not from a difference in the model: ours' three seeds lie close "
             "together (0.2180 to 0.2200, std 0.0010), and MMRec's seeds 2025 and 2026 (0.2198, 0.2177) fall in "
             "that range; its seed 2024 (0.2028, the run that trained 116 epochs) pulls its mean down. The "
             "differences ours documents (the Linear layers of the concat fusion, repeated interactions) do not "
             "arise with these settings and data.",
    "MVGAE": "MMRec's MVGAE had not reached its early stop after 9 minutes on this machine and was stopped (0 seeds "
             "in the command): not measured. Ours' seeds 2025 and 2026 rank below a random order on these data "
             "(a random ranking's Recall@20 is about 20 / 350 = 0.057 here). The cause is the loss both codes "
             "share: its reconstruction scores are sigmoids of dot products of sigmoids, 1 to float32 precision, "
             "so its gradient is about a thousandth of the KL terms' and training is driven by the KL terms "
             "alone (the MVGAE class docstring).",
    "DAMRS": "MMRec's DA-MRS reads an item-item graph file (`item_graph_dict_2.npy`) that none of MMRec's "
             "preprocessing scripts writes, so its run fails on these data: only ours is measured.",
}
# the lines a copy of MMRec (at e775373) needs to run on a CPU with today's packages, in words
MMREC_CPU_EDITS = [
    "src/utils/dataset.py: the two imports it never uses (its raw-image helpers, which need torchvision, and "
    "lmdb) are removed",
    "src/utils/metrics.py: `np.float` (gone from numpy 1.24) is the builtin `float` (four places)",
    "src/models/grcn.py: the zero tensor that starts the content regulariser is made on the model's device "
    "instead of with `.cuda()`",
    "src/models/lattice.py and src/models/mgcn.py: the image and text item-item graphs are moved to the model's "
    "device instead of with `.cuda()` (two lines each)",
    "src/utils/utils.py: the degree sum of its sparse Laplacian (MGCN) uses torch's own `scatter_add_` instead of "
    "torch_scatter's `scatter_add`",
    "src/models/dualgnn.py and src/models/dragon.py: the initial `result_embed` is a plain tensor rather than an "
    "`nn.Parameter`, as it is on a GPU (there `.to(device)` returns a plain tensor): the forward pass assigns a tensor "
    "to it, which newer torch refuses for a registered parameter",
    "src/models/bm3.py, freedom.py, lgmrec.py, pgl.py, damrs.py and src/common/encoders.py: the adjacency "
    "`dok_matrix` is filled through its internal dictionary (`_dict.update`), as its private `_update` method is "
    "gone from scipy 1.13",
    "src/models/smore.py (the image and text graphs) and src/models/damrs.py (three index tensors): moved to the "
    "model's device instead of with `.cuda()`",
    "src/models/slmrec.py: its unused torch_scatter import is removed; src/models/pgl.py: the sparsesvd import moves "
    "into the function that uses it (the SVD-based global mode, not the local mode run here)",
]


def write_user_graph_dict(data_dir, k=200):
    """MMRec's ``user_graph_dict.npy`` for DualGNN and DRAGON beside ``data_dir``'s files: for every
    user, ``[neighbours, shared item counts]``, its top ``k`` co-interacting users of the training
    split (``x_label`` 0) by decreasing count, as MMRec's preprocessing writes it; ours builds the
    same neighbours (:func:`recbole_ckd.model.graphs.co_interaction_neighbours`)."""
    import numpy as np
    import pandas as pd

    sys.path.insert(0, ROOT)
    from recbole_ckd.model.graphs import co_interaction_neighbours

    path = os.path.join(data_dir, "user_graph_dict.npy")
    if os.path.isfile(path):
        return path
    inter = pd.read_csv(os.path.join(data_dir, os.path.basename(os.path.normpath(data_dir)) + ".inter"), sep="\t")
    n_users = inter["userID"].nunique()
    train = inter[inter["x_label"] == 0]
    rows, cols, counts = co_interaction_neighbours(train["userID"].to_numpy(), train["itemID"].to_numpy(),
                                                   n_users, int(inter["itemID"].max()) + 1, k)
    graph = {user: [[], []] for user in range(n_users)}
    for user, other, count in zip(rows.tolist(), cols.tolist(), counts.tolist()):
        graph[user][0].append(other)
        graph[user][1].append(float(count))
    np.save(path, graph, allow_pickle=True)
    return path


def fit_ours(args):
    """One run of ``args.model`` through this project's ``quick_start.run`` under MMRec's protocol, to
    its early stop; resumed from its last checkpoint (in ``args.checkpoints``) after an interruption."""
    _one_thread()
    sys.path.insert(0, args.code)
    from recbole_ckd.quick_start import run
    from recbole_ckd.trainer import ResumableTrainer

    seconds, validations = [], []
    train_epoch = ResumableTrainer._train_epoch

    def timed(self, *a, **kw):  # the model's pre-epoch step, the epoch and the learning-rate step
        start = time.perf_counter()
        loss = train_epoch(self, *a, **kw)
        seconds.append(time.perf_counter() - start)
        return loss

    ResumableTrainer._train_epoch = timed
    settings = {"data_path": args.data_root, "seed": args.seed, "state": "ERROR", "show_progress": False,
                "checkpoint_dir": args.checkpoints, **({"epochs": args.max_epochs} if args.max_epochs else {})}
    result = run(args.model, args.dataset, [MMREC_PROTOCOL], settings,
                 callback_fn=lambda epoch, score: validations.append((epoch, float(score))))
    return {"test": {m: result["test_result"][m] for m in ACCURACY_METRICS}, "seconds": seconds,
            "epochs": validations[-1][0] + 1 if validations else None,
            "best_epoch": max(validations, key=lambda v: v[1])[0] if validations else None,
            "code": checkout_commit(args.code)}


def fit_mmrec(args):
    """One run of MMRec's ``args.model`` with its own ``Trainer.fit`` (its early stopping, its test
    result at the best validation epoch) on one point of its grid (:func:`mmrec_setup`)."""
    _one_thread()
    _, model, trainer, train, valid, test, used = mmrec_setup(args)
    starts, seconds = [], []
    pre_epoch, train_epoch = model.pre_epoch_processing, trainer._train_epoch

    def timed_pre_epoch():  # its fit calls it right before each epoch: the epoch's time starts here
        starts.append(time.perf_counter())
        return pre_epoch()

    def timed_epoch(*a, **kw):
        loss = train_epoch(*a, **kw)
        seconds.append(time.perf_counter() - starts[-1])
        return loss

    model.pre_epoch_processing, trainer._train_epoch = timed_pre_epoch, timed_epoch
    _, _, best_test = trainer.fit(train, valid_data=valid, test_data=test, saved=False, verbose=False)
    return {"test": {m: float(best_test[m]) for m in ACCURACY_METRICS}, "seconds": seconds, "epochs": len(seconds),
            "settings": used, "code": checkout_commit(args.code)}


FITS = {"ours": fit_ours, "mmrec": fit_mmrec}


def without_local_paths(text, args, code=None):
    """``text`` with this machine's data folder and checked-out code named by placeholders."""
    text, code = text.replace(os.path.abspath(args.data_root), "<data_root>"), code or args.code
    return text.replace(code, "<code>") if code else text


def fit_cell(kind, code, backbone, dataset, seed, path, args, ours_settings="{}"):
    """One training (``kind`` ours or mmrec) in its own process, its record written to ``path``;
    returns the record, or ``{"error": ...}`` (not cached: the next run tries again)."""
    command = [sys.executable, os.path.abspath(__file__), "--fit", kind, "--code", code, "--model", backbone,
               "--dataset", dataset, "--data_root", os.path.abspath(args.data_root), "--seed", str(seed),
               "--device", args.device, "--ours_settings", ours_settings, "--cell", path,
               "--checkpoints", os.path.join(os.path.dirname(path), "saved")]
    if args.max_epochs:
        command += ["--max_epochs", str(args.max_epochs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not os.path.isfile(path):
        lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit {done.returncode}"]
        return {"error": without_local_paths(lines[-1], args, code)[:300]}
    with open(path) as f:
        return json.load(f)


def fit_and_save(args):
    """The ``--fit`` worker: the record of one training, written atomically to ``args.cell``."""
    record = {**FITS[args.fit](args), "seed": args.seed}
    record["s_per_epoch"] = statistics.median(record["seconds"]) if record["seconds"] else None
    os.makedirs(os.path.dirname(args.cell), exist_ok=True)
    with open(args.cell + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(args.cell + ".tmp", args.cell)
    return record


def accuracy_runs(backbone, dataset, args, log=print):
    """``{"ours": [records], "mmrec": [records]}`` of one backbone: ``--seeds`` of ours and
    ``--mmrec_seeds`` of MMRec's (:func:`seed_counts`; seeds ``--seed``, ``--seed`` + 1, ...), each cached as
    ``<cells>/<implementation>-<backbone>-seed<seed>.json``: a cached run is not trained again."""
    cells = os.path.join(args.data_root, "parity-cells", dataset)
    plan = [("ours", ROOT, args.seeds)]
    if args.mmrec and backbone in MMREC_MODELS:
        default, counts = args.mmrec_seeds
        plan.append(("mmrec", os.path.abspath(args.mmrec), counts.get(backbone, default)))
    runs = {}
    for kind, code, n in plan:
        settings = our_settings(backbone, dataset, args) if kind == "mmrec" else "{}"
        for seed in range(args.seed, args.seed + n):
            path = os.path.join(cells, f"{kind}-{backbone}-seed{seed}.json")
            if os.path.isfile(path):
                with open(path) as f:
                    record = json.load(f)
                log(f"{backbone:<8} {kind:<6} seed {seed}: cached")
            else:
                log(f"{backbone:<8} {kind:<6} seed {seed}: training ...")
                record = fit_cell(kind, code, backbone, dataset, seed, path, args, settings)
                log(f"{backbone:<8} {kind:<6} seed {seed}: {record.get('error') or record['test']}")
            runs.setdefault(kind, []).append(record)
    return runs


def seed_counts(text):
    """``--mmrec_seeds``: ``"N"`` or ``"N,Backbone=M,..."`` as ``(N, {backbone: M})``."""
    default, *overrides = text.split(",")
    try:
        return int(default), {name: int(n) for name, n in (item.split("=") for item in overrides)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a count, then Backbone=count pairs, e.g. 1,BM3=3") from None


def describe_seeds(counts, first):
    """The MMRec seeds of ``counts`` (:func:`seed_counts`) in words."""
    default, overrides = counts
    def seeds(n):
        return ", ".join(map(str, range(first, first + n))) or "none"

    words = [seeds(default)]
    for n in sorted(set(overrides.values())):
        words.append(f"{seeds(n)} for {', '.join(name for name, count in overrides.items() if count == n)}")
    return "; ".join(words)


def mean_std(values):
    """``(mean, sample standard deviation)``; the deviation is None for fewer than two values."""
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def parity(ours, reference):
    """``(gap, within)``: MMRec's mean minus ours in units of our seed standard deviation, and whether
    it is within ``PARITY_SIGMAS`` of them; ``(None, None)`` when either side is missing or our
    deviation is not known (one seed). A deterministic model (deviation zero) is at parity only when
    every value is the same at the 4 decimals both implementations report: ``(0.0, True)``, else
    ``(None, False)``."""
    mean, std = mean_std(ours)
    if not reference or std is None:
        return None, None
    if std == 0:
        same = all(round(value, 4) == round(mean, 4) for value in reference)
        return (0.0, True) if same else (None, False)
    gap = (statistics.mean(reference) - mean) / std
    return gap, abs(gap) <= PARITY_SIGMAS


def parity_verdict(runs):
    """"yes" when both metrics are within ``PARITY_SIGMAS``, "no" when one is not, None without a verdict."""
    ours = [r for r in runs.get("ours", []) if "error" not in r]
    mmrec = [r for r in runs.get("mmrec", []) if "error" not in r]
    within = [parity([r["test"][m] for r in ours], [r["test"][m] for r in mmrec])[1] for m in ACCURACY_METRICS]
    if None in within:
        return None
    return "yes" if all(within) else "no"


def accuracy_table(backbone, runs):
    """The markdown table of one backbone: per metric ours' mean ± std over seeds, MMRec's value(s),
    the gap in units of our std and the verdict; then epochs trained and median seconds per epoch."""
    ours = [r for r in runs.get("ours", []) if "error" not in r]
    mmrec = [r for r in runs.get("mmrec", []) if "error" not in r]
    failed = {kind: [r["error"] for r in rs if "error" in r] for kind, rs in runs.items()}

    def reference(text, first_row=False):  # a failure's message once, in the first row
        if failed.get("mmrec"):
            return f"failed: {failed['mmrec'][0]}" if first_row else "failed"
        return text if "mmrec" in runs else "not measured"

    lines = [f"| {backbone} | ours ({len(ours)} seeds) | MMRec ({len(mmrec)} seed{'s' * (len(mmrec) != 1)}) | "
             f"gap (our std) | within {PARITY_SIGMAS:g} std |", "| --- | --- | --- | --- | --- |"]
    for metric, label in ACCURACY_METRICS.items():
        mine = [r["test"][metric] for r in ours]
        theirs = [r["test"][metric] for r in mmrec]
        mean, std = mean_std(mine)
        gap, within = parity(mine, theirs)
        cell = "-" if mean is None else f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f}"
        verdict = "-" if within is None else "yes" if within else "no"
        values = reference(", ".join(f"{v:.4f}" for v in theirs), first_row=metric == "recall@20")
        lines.append(f"| test {label} | {cell} | {values} | "
                     f"{'-' if gap is None else f'{gap:+.2f}'} | {verdict} |")
    lines.append(f"| epochs trained | {', '.join(str(r['epochs']) for r in ours)} | "
                 f"{reference(', '.join(str(r['epochs']) for r in mmrec))} | | |")
    mine = [r["s_per_epoch"] for r in ours if r.get("s_per_epoch") is not None]
    theirs = ", ".join(f"{r['s_per_epoch']:.3f}" for r in mmrec if r.get("s_per_epoch") is not None)
    lines.append(f"| median s/epoch | {f'{statistics.median(mine):.3f}' if mine else '-'} | {reference(theirs)} | | |")
    if failed.get("ours"):
        lines.append(f"\nours failed: {failed['ours'][0]}")
    return lines


def not_in_this_project(mmrec):
    """The models of the MMRec checkout ``mmrec`` (its ``src/configs/model``) this project lacks."""
    sys.path.insert(0, ROOT)
    from recbole_ckd.model import MODELS

    folder = os.path.join(mmrec, "src", "configs", "model")
    names = sorted(os.path.splitext(f)[0] for f in os.listdir(folder) if f.endswith(".yaml"))
    return [name for name in names if name not in MODELS]


def trained_with(record, kind):
    """The commits of the code ``kind``'s runs were trained with (cached runs keep theirs)."""
    commits = sorted({r["code"] for runs in record["results"].values() for r in runs.get(kind, []) if "code" in r})
    return ", ".join(commits) or "-"


def write_parity_page(record, base):
    """``base``.json and ``base``.md: the setting and one table per backbone (:func:`accuracy_table`)."""
    with open(base + ".json", "w") as f:
        json.dump(record, f, indent=1)
    shape = record["shape"]
    lines = ["# Accuracy parity with MMRec", "",
             f"Generated data `{record['dataset']}` (benchmarks/bench_ckd.py's generator, data seed "
             f"{record['data_seed']}): "
             f"{shape['n_users']:,} users, {shape['n_items']:,} items, {shape['n_interactions']:,} interactions, "
             + ", ".join(f"{dim}-d {name}" for name, dim, _ in shape["modalities"].values())
             + "; split by its `x_label` column (MMRec's format), the same files for both implementations.", "",
             f"command: `{record['command']}`", "",
             f"machine: {record['machine']['cpu_count']} CPUs ({record['machine']['processor']}), "
             f"{record['machine']['platform']}, torch {record['machine']['torch']}, "
             f"device {record['machine']['device']}, "
             "one thread per run (the machine shared with other work); "
             f"the code the runs were trained with, ours: {trained_with(record, 'ours')}; "
             f"MMRec: {trained_with(record, 'mmrec')}", "",
             "Both under MMRec's protocol (properties/protocol/mmrec.yaml): full ranking with the training items "
             "masked, Adam with learning rate 0.001, batches of 2,048, early stopping on validation Recall@20 "
             "(20 validations without a gain), the test metrics taken at the best validation epoch"
             + (f", at most {record['max_epochs']} epochs" if record["max_epochs"] else "") + ". "
             f"Ours: seeds {', '.join(map(str, record['seeds']))} through `recbole_ckd.quick_start.run`; MMRec: seeds "
             f"{describe_seeds(record['mmrec_seeds'], record['seeds'][0])} with its own `Trainer.fit` on one point "
             "of its hyper-parameter grid (this project's value where this project has the hyper-parameter, else the grid's "
             "first value; listed under each table). The gap is MMRec's mean minus ours in units of our seed standard "
             f"deviation; within {PARITY_SIGMAS:g} std counts as parity. s/epoch is the median training time of one "
             "epoch (its pre-epoch step included, evaluation excluded)."]
    if "+dirty" in trained_with(record, "mmrec"):
        lines += ["", "Edits to MMRec needed to run it on a CPU with today's packages (numpy >= 1.24, scipy >= 1.13, "
                  "torch 2; no torchvision, lmdb or torch_scatter):", ""]
        lines += [f"- {edit}" for edit in MMREC_CPU_EDITS]
    for backbone in record["models"]:
        lines += ["", f"## {backbone}", ""]
        runs = record["results"].get(backbone)
        if runs is None:
            lines.append("not measured (run did not finish)")
            continue
        lines += accuracy_table(backbone, runs)
        used = next((r["settings"] for r in runs.get("mmrec", []) if "settings" in r), None)
        if used:
            lines += ["", "MMRec's grid point: " + ", ".join(f"`{k}` = {v}" for k, v in used.items())]
        if backbone in PARITY_NOTES:
            lines += ["", PARITY_NOTES[backbone]]
    verdicts = {backbone: parity_verdict(runs) for backbone, runs in record["results"].items()}
    lines += ["", "## Summary", ""]
    for verdict, text in (("yes", f"within {PARITY_SIGMAS:g} std on both metrics"),
                          ("no", f"outside {PARITY_SIGMAS:g} std on at least one metric"),
                          (None, "no verdict (MMRec not measured, or fewer than two seeds of ours)")):
        names = [backbone for backbone, v in verdicts.items() if v == verdict]
        if names:
            lines.append(f"- {text}: {', '.join(names)}")
    lines += ["", "## Not compared", "",
              "- EgoGCN (this project) is not in MMRec."]
    if record.get("not_in_this_project"):
        lines.append("- MMRec's " + ", ".join(record["not_in_this_project"]) + ": not in this project yet.")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return lines


def accuracy(args, dataset, shape, machine):
    """The ``--accuracy`` mode: every backbone's runs (:func:`accuracy_runs`, cached), the page
    rewritten after each backbone so an interrupted run keeps what finished."""
    record = {"benchmark": "mmrec-parity", "command": portable_command(args.argv), "dataset": dataset,
              "shape": shape, "data_seed": args.seed, "machine": machine, "ours": checkout_commit(ROOT),
              "mmrec": checkout_commit(args.mmrec), "seeds": list(range(args.seed, args.seed + args.seeds)),
              "mmrec_seeds": args.mmrec_seeds if args.mmrec else (0, {}),
              "max_epochs": args.max_epochs, "models": args.models.split(","), "results": {},
              "not_in_this_project": not_in_this_project(args.mmrec) if args.mmrec else []}
    os.makedirs(args.output, exist_ok=True)
    base = os.path.join(args.output, "mmrec-parity")
    for backbone in record["models"]:
        record["results"][backbone] = accuracy_runs(backbone, dataset, args)
        write_parity_page(record, base)
    print("\n".join(write_parity_page(record, base)))
    print(f"written: {base}.json, {base}.md")
    return record


def default_backbones(accuracy):
    """The registry's backbones that train (with ``accuracy``: those MMRec also has), in its order."""
    sys.path.insert(0, ROOT)
    from recbole_ckd.model import BACKBONES

    trained = [cls.__name__ for cls in BACKBONES if cls.trains or accuracy]
    return ",".join(name for name in trained if not accuracy or name in MMREC_MODELS)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="devset", help="a bench_ckd.py shape (default devset: 3,000 users, "
                        "1,200 items, 30,047 interactions, 512-d and 384-d features)")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--models", help="comma-separated backbones (default: every backbone of the registry that "
                        "trains; with --accuracy, every one MMRec also has)")
    parser.add_argument("--accuracy", action="store_true", help="train to convergence instead of timing epochs: "
                        "test Recall@20 and NDCG@20 of ours over --seeds and of MMRec over --mmrec_seeds, "
                        "written to <output>/mmrec-parity.md and .json (default output: results/)")
    parser.add_argument("--seeds", type=int, default=3, help="--accuracy: runs of ours per backbone (default 3)")
    parser.add_argument("--mmrec_seeds", type=seed_counts, default="1", help="--accuracy: runs of MMRec per "
                        "backbone (default 1), e.g. 1,BM3=3,GRCN=3: 1 each, 3 for BM3 and GRCN")
    parser.add_argument("--max_epochs", type=int, help="--accuracy: an upper bound on epochs (default: each "
                        "implementation's own, 1,000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per implementation after one warm-up")
    parser.add_argument("--evals", type=int, default=3, help="timed evaluations per implementation after one warm-up")
    parser.add_argument("--baseline", help="another checkout of this project, timed beside this one")
    parser.add_argument("--mmrec", help="a local checkout of MMRec (github.com/enoche/MMRec)")
    parser.add_argument("--ckd_reference", help="a local checkout of the CKD authors' code (CRIPAC-DIG/Balanced-Multimodal-Rec)")
    parser.add_argument("--ckd_reference_dataset", default="ckd-devset", help="the dataset name the authors' code reads")
    parser.add_argument("--prepare_ckd_reference", action="store_true", help="write --shape's data into the "
                        "--ckd_reference checkout in its layout, print the commands for its teachers, and stop")
    parser.add_argument("--data_root", default=os.path.join(HERE, ".data"))
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--output", help="where results go (default benchmarks/results/; with --accuracy results/)")
    # a worker (internal)
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--code", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ours_settings", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--fit", choices=sorted(FITS), help=argparse.SUPPRESS)
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoints", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return serve(args)
    if args.fit:
        return fit_and_save(args)
    args.argv = argv if argv is not None else sys.argv[1:]
    args.models = args.models or default_backbones(args.accuracy)
    args.output = args.output or (os.path.join(ROOT, "results") if args.accuracy else os.path.join(HERE, "results"))

    sys.path.insert(0, HERE)
    import bench_ckd

    dataset, shape = bench_ckd.dataset_for(args.shape, args.scale, args.data_root, args.seed)
    if args.prepare_ckd_reference:
        if not args.ckd_reference:
            parser.error("--prepare_ckd_reference needs --ckd_reference=PATH (the authors' checkout)")
        commands = write_ckd_reference_data(os.path.join(args.data_root, dataset), args.ckd_reference,
                                            args.ckd_reference_dataset)
        print(f"wrote {args.ckd_reference}/data/{args.ckd_reference_dataset}; now, in its codes/ folder:")
        print("\n".join(commands))
        return commands
    machine = {**bench_ckd.machine_info(args.device), "torch_threads": 1}
    print(f"dataset {dataset}: {shape}; {machine}", flush=True)
    if args.mmrec and USER_GRAPH_MODELS & set(args.models.split(",")):
        write_user_graph_dict(os.path.join(args.data_root, dataset))
    if args.accuracy:
        return accuracy(args, dataset, shape, machine)
    for name in ("mmrec", "ckd_reference"):
        if not getattr(args, name):
            print(f"--{name} not given: its column is absent (nothing of theirs is measured)", flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    record = {"benchmark": "bench_reference", "time": stamp,
              "command": portable_command(args.argv), "dataset": dataset,
              "shape_name": args.shape, "shape": shape, "machine": machine, "repeats": args.repeats,
              "evals": args.evals, "ours": checkout_commit(ROOT),
              **{name: checkout_commit(getattr(args, name)) for name in ("baseline", "mmrec", "ckd_reference")}}
    os.makedirs(args.output, exist_ok=True)
    base = os.path.join(args.output, f"bench_reference-{args.device}-{args.shape}-x{args.scale:g}-{stamp}")
    side_by_side(args, dataset, record, base)
    print("\n".join(write_results(record, base)))
    print(f"written: {base}.json, {base}.md")
    return record


if __name__ == "__main__":
    main()
