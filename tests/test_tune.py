"""Sweeps: hyper.test parsing, the search space, validation-only selection, a real sweep."""

import glob
import math
import os

import pytest
from conftest import fast_args

from recbole_ckd.tune import (
    SHIPPED_HYPER_FILE,
    HyperFileError,
    parse_hyper_file,
    resolve_hyper_file,
    select_best,
    trial_table,
)


def write(tmp_path, text):
    path = tmp_path / "hyper.test"
    path.write_text(text)
    return str(path)


def test_every_type_with_comments_and_tabs(tmp_path):
    params = parse_hyper_file(write(tmp_path, (
        "# a comment\n\n"
        "kd_temperature choice [0.05, 0.1,0.5]\n"
        "kd_weight\tloguniform\t-6.9,-2.3   # trailing comment\n"
        "gd_weight uniform 1,10\n"
        "gd_samples quniform 100,1000,100\n"
        "learner choice ['adam','sgd']\n"
    )))
    assert params["kd_temperature"].values == (0.05, 0.1, 0.5)
    assert params["kd_weight"].kind == "loguniform" and params["kd_weight"].values == (-6.9, -2.3)
    assert params["gd_weight"].values == (1.0, 10.0)
    assert params["gd_samples"].values == (100.0, 1000.0, 100.0)
    assert params["learner"].values == ("adam", "sgd")
    assert params["kd_weight"].line == 4


def test_a_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    path = tmp_path / "hyper.test"
    path.write_text("\ufeffkd_weight choice [0.1,0.2]\n", encoding="utf-8")  # what some editors write first
    assert list(parse_hyper_file(str(path))) == ["kd_weight"]


def test_the_shipped_hyper_test_parses():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    params = parse_hyper_file(os.path.join(here, "hyper.test"))
    assert {"kd_temperature", "kd_weight", "gd_weight", "learning_rate"} <= set(params)
    assert parse_hyper_file(str(SHIPPED_HYPER_FILE)) == params  # the package's copy is this file


def test_hyper_test_from_any_folder_is_the_shipped_space(tmp_path, monkeypatch, capsys):
    """Where there is no hyper.test, --hyper=hyper.test reads the one recbole-ckd ships and the
    sweep goes on (here to the refused --search); any other name, or a hyper.test that is there,
    is read as given."""
    import run_recbole_ckd

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_recbole_ckd.main(["--model=VBPR_CKD", "--dataset=ml-100k-mm", "--hyper=hyper.test", "--search=bogus"])
    out, err = capsys.readouterr()
    assert f"using the sweep space recbole-ckd ships: {SHIPPED_HYPER_FILE}" in out
    assert exit_info.value.code == 2 and err.startswith("error: --search=bogus: unknown search algorithm")
    assert resolve_hyper_file("nope.test") == "nope.test"
    assert resolve_hyper_file(os.path.join("sub", "hyper.test")) == os.path.join("sub", "hyper.test")
    write(tmp_path, "kd_weight choice [0.5]\n")
    assert resolve_hyper_file("hyper.test") == "hyper.test"
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "line, message",
    [
        ("kd_weight normal 0,1", "line 2: unknown type 'normal'"),
        ("kd_weight choice", "line 2: expected '<name> <type> <values>'"),
        ("kd_weight choice 0.1,0.2", "line 2: choice values must be a non-empty list"),
        ("kd_weight choice []", "line 2: choice values must be a non-empty list"),
        ("kd_weight choice [0.1,", "line 2: choice values must be a Python list"),
        ("kd_weight uniform 1", "line 2: expected 2 comma-separated numbers"),
        ("kd_weight uniform a,b", "line 2: expected 2 comma-separated numbers"),
        ("kd_weight uniform 2,1", "line 2: uniform needs low < high"),
        ("kd_weight loguniform 1,1", "line 2: loguniform needs low < high"),
        ("kd_weight quniform 1,2", "line 2: expected 3 comma-separated numbers"),
        ("kd_weight quniform 1,2,0", "line 2: quniform needs low < high and q > 0"),
        ("gd_weight uniform 1,2", "line 2: 'gd_weight' is already defined on line 1"),
    ],
)
def test_malformed_lines_name_the_line(tmp_path, line, message):
    with pytest.raises(HyperFileError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_hyper_file(write(tmp_path, "gd_weight uniform 1,2\n" + line + "\n"))


def test_empty_file_is_an_error(tmp_path):
    with pytest.raises(HyperFileError, match="no parameters"):
        parse_hyper_file(write(tmp_path, "# nothing\n"))


def test_search_space_follows_recbole_semantics(tmp_path):
    from recbole_ckd.tune import search_space

    params = parse_hyper_file(write(tmp_path, "a choice [1,2]\nb loguniform -2,0\nc quniform 0,1,0.25\n"))
    space = search_space(params, "random")
    assert space["a"].categories == [1, 2]
    assert space["b"].lower == pytest.approx(math.exp(-2)) and space["b"].upper == pytest.approx(1.0)
    assert space["c"].sampler.q == 0.25
    grid = search_space(params, "grid")
    assert grid["a"] == {"grid_search": [1, 2]}


def test_selection_uses_validation_even_when_test_disagrees():
    trials = [
        {"trial_id": "a", "params": {"kd_weight": 0.1}, "best_valid_score": 0.30, "test": 0.10, "status": "done"},
        {"trial_id": "b", "params": {"kd_weight": 0.2}, "best_valid_score": 0.25, "test": 0.50, "status": "done"},
        {"trial_id": "c", "params": {"kd_weight": 0.3}, "best_valid_score": None, "status": "ERROR", "error": "boom"},
    ]
    assert select_best(trials)["trial_id"] == "a"
    assert select_best(trials, bigger=False)["trial_id"] == "b"
    table = trial_table(trials, ["kd_weight"], "Recall@20")
    assert "| c | 0.3 | - | - | ERROR: boom |" in table


@pytest.mark.slow
def test_two_trial_sweep_trains_teachers_once(tiny_dataset, tmp_path, capsys, monkeypatch, epoch_log):
    import ray.tune

    from recbole_ckd.tune import run_sweep

    hyper = write(tmp_path, "kd_weight choice [0.01,0.1]\n")
    args = [f"--data_path={tiny_dataset['root']}", f"--checkpoint_dir={tmp_path / 'saved'}", "--epochs=2",
            "--gd_samples=20", "--state=WARNING"]
    args += fast_args(args)
    import warnings

    from ray.util.annotations import RayDeprecationWarning

    real_fit, trials_began = ray.tune.Tuner.fit, []  # after how many of this (the driver's) process's epochs
    monkeypatch.setattr(ray.tune.Tuner, "fit", lambda tuner: (trials_began.append(len(epoch_log)), real_fit(tuner))[1])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RayDeprecationWarning)
        result = run_sweep("VBPR_CKD", "tiny", hyper, cmd_args=args, num_samples=1, search="grid",
                           cpus_per_trial=1, output=str(tmp_path / "sweeps"), verbose=0)
    # the installed Ray's own Tune API (ray.air's is deprecated on the newest Ray)
    assert not [str(w.message) for w in caught if issubclass(w.category, RayDeprecationWarning)]
    trials = result["trials"]
    assert len(trials) == 2 and all(t["status"] == "done" for t in trials)
    assert sorted(t["params"]["kd_weight"] for t in trials) == [0.01, 0.1]
    best = result["best"]
    assert best["best_valid_score"] == max(t["best_valid_score"] for t in trials)
    # teachers were trained once, by the driver before the trials (which run in Ray's workers), and
    # the final run of the best configuration found them and its trial's student finished
    teacher_epochs = [("VBPR", (m,), i) for m in ("v", "t") for i in (0, 1)]
    assert [(e.model, e.modalities, e.index) for e in epoch_log] == teacher_epochs
    assert trials_began == [4]
    teachers = glob.glob(str(tmp_path / "saved" / "tiny" / "teachers" / "*" / "*.pth"))
    students = glob.glob(str(tmp_path / "saved" / "tiny" / "VBPR_CKD-*" / "*.pth"))
    assert len(teachers) == 4 and len(students) == 4  # best.pth and last.pth of 2 teachers, 2 students
    assert result["test_result"]["teachers"] == {"v": "cached", "t": "cached"}
    out = capsys.readouterr().out
    assert "Training (or loading) the teachers once" in out
    # the best configuration file is accepted by --config_files and reproduces the trial
    import yaml

    best_config = yaml.safe_load(open(result["best_config_file"]))
    assert best_config["kd_weight"] == best["params"]["kd_weight"] and best_config["model"] == "VBPR_CKD"
    assert result["test_result"]["best_valid_score"] == pytest.approx(best["best_valid_score"])
    assert set(result["test_result"]["test_result"])  # the test set was used, once, at the end
    assert os.path.isfile(str(tmp_path / "sweeps" / "VBPR_CKD-tiny-trials.csv"))
    # the real Ray folder it left is signed (TensorBoard files flushed at exit aside): a rerun may resume it
    from recbole_ckd.sweep_signing import check_sweep_signature

    check_sweep_signature(str(tmp_path / "sweeps" / "VBPR_CKD-tiny"))


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tiny_dataset, tmp_path):
    from recbole_ckd.tune import run_sweep

    # a huge learning rate passes the checks up front, then the trial's loss becomes NaN or Inf
    hyper = write(tmp_path, "learning_rate choice [0.001,1e30]\n")
    args = [f"--data_path={tiny_dataset['root']}", f"--checkpoint_dir={tmp_path / 'saved'}", "--epochs=2"]
    args += fast_args(args)
    result = run_sweep("VBPR", "tiny", hyper, cmd_args=args, num_samples=1, search="grid", scheduler="asha",
                       output=str(tmp_path / "sweeps"), verbose=0)
    by_lr = {t["params"]["learning_rate"]: t for t in result["trials"]}
    assert by_lr[1e30]["status"] == "ERROR" and "the training loss became" in by_lr[1e30]["error"]
    assert by_lr[0.001]["status"] == "done" and result["best"] is by_lr[0.001]
    table = open(tmp_path / "sweeps" / "VBPR-tiny-trials.md").read()
    assert "ERROR" in table


# ----------------------------------------------------------------------------- interruption and resume state
class _FakeResult:
    def __init__(self, config, metrics):
        self.config, self.metrics, self.error, self.path = config, metrics, None, None


class _Grid(list):
    _experiment_analysis = type("Analysis", (), {})()


def fake_tuner(monkeypatch, tmp_path, results):
    import ray
    import ray.tune

    fits = []

    class Tuner:
        def __init__(self, trainable, param_space=None, tune_config=None, run_config=None):
            self.path = os.path.join(run_config.storage_path, run_config.name)

        @classmethod
        def can_restore(cls, path):
            return os.path.isfile(os.path.join(path, "tuner.pkl"))

        def fit(self):
            os.makedirs(self.path, exist_ok=True)
            open(os.path.join(self.path, "tuner.pkl"), "wb").write(b"state")
            fits.append(self.path)
            grid = _Grid(results)
            grid._experiment_analysis.trials = [
                type("Trial", (), {"config": r.config or {"kd_weight": 1.0}, "trial_id": f"t{k}"})()
                for k, r in enumerate(results)]
            return grid

    monkeypatch.setattr(ray.tune, "Tuner", Tuner)
    monkeypatch.setattr(ray, "init", lambda **kwargs: None)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    return fits


def test_an_interrupted_sweep_selects_nothing_and_says_how_to_resume(tiny_dataset, tmp_path, monkeypatch, capsys):
    import recbole_ckd.quick_start as qs
    import run_recbole_ckd

    # what Tuner.fit returns after Ctrl-C: one trial ended, one was running, one never started
    fits = fake_tuner(monkeypatch, tmp_path, [
        _FakeResult({"kd_weight": 0.01}, {"best_valid_score": 0.3, "best_epoch": 1, "epoch": 2, "done": True}),
        _FakeResult({"kd_weight": 0.1}, {"best_valid_score": 0.4, "best_epoch": 3, "epoch": 3, "done": False}),
        _FakeResult(None, {}),  # never started: Ray's result has no config, its trial has
    ])
    monkeypatch.setattr(qs, "run", lambda *a, **k: pytest.fail("the test set was touched"))
    hyper = write(tmp_path, "kd_weight choice [0.01,0.1,1.0]\n")
    out = tmp_path / "sweeps"
    argv = ["--model=VBPR", "--dataset=tiny", f"--hyper={hyper}", f"--output={out}", f"--data_path={tiny_dataset['root']}",
            f"--checkpoint_dir={tmp_path / 'saved'}"] + fast_args()
    with pytest.raises(SystemExit) as exit_info:
        run_recbole_ckd.main(argv)
    captured = capsys.readouterr()
    assert exit_info.value.code == 130
    assert "2 of 3 trials unfinished" in captured.err and "Run the same command again" in captured.err
    assert "| t2 | 1 | - | - | unfinished |" in captured.out  # the table says which trial did not start
    assert not glob.glob(str(out / "*-best.yaml")) and not glob.glob(str(out / "*-trials.md"))
    # the state it left is signed, so the same command resumes it
    from recbole_ckd.sweep_signing import check_sweep_signature

    check_sweep_signature(fits[0])


def test_a_trial_stopped_by_a_full_disk_leaves_the_sweep_to_resume(tiny_dataset, tmp_path, monkeypatch, capsys):
    """A full disk says nothing about a trial's setting: the sweep selects nothing, and a rerun resumes the
    trial (Ray's restore reruns errored trials) rather than reusing a search with fewer trials."""
    from ray.exceptions import RayTaskError

    import recbole_ckd.quick_start as qs
    from recbole_ckd.errors import DiskFull, Interrupted, UserError
    from recbole_ckd.tune import run_sweep

    full = _FakeResult({"kd_weight": 0.1}, {"best_valid_score": 0.2, "best_epoch": 0, "epoch": 1})
    full.error = RayTaskError("trial", "Traceback ...", DiskFull("best.pth: no space left on device")).as_instanceof_cause()
    diverged = _FakeResult({"kd_weight": 1.0}, {"best_valid_score": None, "epoch": 1})
    diverged.error = RayTaskError("trial", "Traceback ...", UserError("the training loss became nan")).as_instanceof_cause()
    done = _FakeResult({"kd_weight": 0.01}, {"best_valid_score": 0.3, "best_epoch": 1, "epoch": 2, "done": True})
    fake_tuner(monkeypatch, tmp_path, [done, full, diverged])
    monkeypatch.setattr(qs, "run", lambda *a, **k: pytest.fail("the test set was touched"))
    hyper = write(tmp_path, "kd_weight choice [0.01,0.1,1.0]\n")
    args = [f"--data_path={tiny_dataset['root']}", f"--checkpoint_dir={tmp_path / 'saved'}"] + fast_args()
    with pytest.raises(Interrupted, match=r"1 of 3 trials unfinished \(some on a full disk: free some space first\)"):
        run_sweep("VBPR", "tiny", hyper, cmd_args=args, search="grid", output=str(tmp_path / "sweeps"), verbose=0)
    table = capsys.readouterr().out
    assert "| t1 | 0.1 | 0.2000 | 0 | unfinished: " in table and "| t2 | 1 | - | - | ERROR: " in table
    assert not glob.glob(str(tmp_path / "sweeps" / "*-best.yaml"))


@pytest.mark.parametrize("when", ["during Ray's last save", "during Ray's shutdown"])
def test_a_second_ctrl_c_says_the_sweep_cannot_be_resumed(tiny_dataset, tmp_path, monkeypatch, capsys, when):
    """Ray's way: the first SIGINT makes the sweep stop and save (Ray's handler then puts Python's back);
    a second one raises KeyboardInterrupt wherever the sweep is, and its folder is left unsigned."""
    import signal

    import ray
    import ray.tune

    import recbole_ckd.quick_start as qs
    import run_recbole_ckd
    from recbole_ckd.sweep_signing import SIGNATURE_FILE

    fake_tuner(monkeypatch, tmp_path, [_FakeResult({"kd_weight": 0.01}, {"best_valid_score": 0.3, "epoch": 1})])
    saved_fit = ray.tune.Tuner.fit
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # no handler an earlier sweep left

    def fit(self):
        previous = signal.signal(signal.SIGINT, lambda *args: signal.signal(signal.SIGINT, previous))
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: Ray stops
        if when == "during Ray's last save":
            os.kill(os.getpid(), signal.SIGINT)
        return saved_fit(self)

    monkeypatch.setattr(ray.tune.Tuner, "fit", fit)
    if when == "during Ray's shutdown":
        monkeypatch.setattr(ray, "shutdown", lambda: os.kill(os.getpid(), signal.SIGINT))
    monkeypatch.setattr(qs, "run", lambda *a, **k: pytest.fail("the test set was touched"))
    hyper = write(tmp_path, "kd_weight choice [0.01,0.1]\n")
    argv = ["--model=VBPR", "--dataset=tiny", f"--hyper={hyper}", f"--output={tmp_path / 'sweeps'}",
            f"--data_path={tiny_dataset['root']}", f"--checkpoint_dir={tmp_path / 'saved'}"] + fast_args()
    with pytest.raises(SystemExit) as exit_info:
        run_recbole_ckd.main(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    folder = str(tmp_path / "sweeps" / "VBPR-tiny")
    assert exit_info.value.code == 130 and "Traceback" not in err
    assert err.startswith("interrupted: the sweep was stopped before Ray saved its state") and folder in err
    assert "cannot be resumed" in err and "delete it" in err
    assert not os.path.exists(os.path.join(folder, SIGNATURE_FILE))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("where", ["config file", "command line"])
def test_retrain_teachers_retrains_them_once_before_the_trials(tiny_dataset, tmp_path, monkeypatch, where):
    import recbole_ckd.quick_start as qs
    from recbole_ckd.config import Config
    from recbole_ckd.tune import _train_teachers_once, _trial_settings

    retrained = []
    monkeypatch.setattr(qs, "train_teachers", lambda model, dataset, files, settings: retrained.append(
        settings["retrain_teachers"]) or {})
    own = tmp_path / "own.yaml"
    own.write_text("retrain_teachers: True\n" if where == "config file" else "epochs: 1\n")
    cmd_args = [f"--data_path={tiny_dataset['root']}", f"--checkpoint_dir={tmp_path / 'saved'}", "--state=WARNING"]
    cmd_args += ["--retrain_teachers=True"] if where == "command line" else []
    hyper = write(tmp_path, "kd_weight choice [0.01,0.1]\n")
    params = parse_hyper_file(hyper)
    overrides, base = _trial_settings("VBPR_CKD", "tiny", params, hyper, [str(own)], cmd_args)
    _train_teachers_once("VBPR_CKD", "tiny", params, [str(own)], overrides, base)
    assert retrained == [True]  # once, before the trials
    # and never in a trial, which reads the same config files with the trial's values
    assert Config("VBPR_CKD", "tiny", [str(own)], {**base, "kd_weight": 0.1})["retrain_teachers"] is False


def test_a_planted_sweep_state_is_never_unpickled(tiny_dataset, tmp_path, capsys):
    """Ray's resume unpickles <output>/<Model>-<dataset>/tuner.pkl; a folder this user's plugin
    did not sign is refused before Ray starts."""
    import pickle

    import run_recbole_ckd

    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = tmp_path / "sweeps" / "VBPR-tiny"
    folder.mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(pickle.dumps(Payload()))
    hyper = write(tmp_path, "kd_weight choice [0.01,0.1]\n")
    argv = ["--model=VBPR", "--dataset=tiny", f"--hyper={hyper}", f"--output={tmp_path / 'sweeps'}",
            f"--data_path={tiny_dataset['root']}", f"--checkpoint_dir={tmp_path / 'saved'}"]
    with pytest.raises(SystemExit) as exit_info:
        run_recbole_ckd.main(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and str(folder) in err and "did not sign" in err
    assert not marker.exists() and not (tmp_path / "saved").exists()


def test_a_signed_sweep_folder_changed_afterwards_is_refused(tmp_path):
    from recbole_ckd.sweep_signing import SweepStateError, check_sweep_signature, sign_sweep

    folder = tmp_path / "sweep"
    (folder / "trial_1").mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(b"state")
    (folder / "trial_1" / "params.pkl").write_bytes(b"params")
    sign_sweep(str(folder))
    check_sweep_signature(str(folder))
    (folder / "trial_1" / "params.pkl").write_bytes(b"other")
    with pytest.raises(SweepStateError, match="changed after its sweep stopped"):
        check_sweep_signature(str(folder))
    (folder / "trial_1" / "params.pkl").write_bytes(b"params")
    check_sweep_signature(str(folder))
    (folder / "trial_1" / "extra.pkl").write_bytes(b"planted")  # a file added is a change too
    with pytest.raises(SweepStateError, match="changed"):
        check_sweep_signature(str(folder))


def test_the_sweep_key_is_private_and_refused_when_it_is_not(tmp_path):
    from recbole_ckd.sweep_signing import SweepStateError, check_sweep_signature, sign_sweep

    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "tuner.pkl").write_bytes(b"state")
    sign_sweep(str(folder))
    key = tmp_path / "config-home" / "recbole_ckd" / "sweep.key"  # conftest's private XDG_CONFIG_HOME
    assert oct(key.stat().st_mode & 0o777) == oct(0o600) and oct(key.parent.stat().st_mode & 0o777) == oct(0o700)
    for mode in (0o640, 0o602):
        key.chmod(mode)
        with pytest.raises(SweepStateError, match=f"sweep.key: .* group or others \\(mode {mode:o}\\); .* chmod 600"):
            check_sweep_signature(str(folder))
        assert key.stat().st_mode & 0o777 == mode  # refused, not silently changed
    key.chmod(0o600)
    check_sweep_signature(str(folder))


@pytest.mark.parametrize("when", ["after signing", "before signing"])
def test_a_symlink_in_a_signed_sweep_folder_is_refused(tmp_path, when):
    """A link's target is outside what the signature covers: a linked folder's pickles could change freely."""
    from recbole_ckd.sweep_signing import SweepStateError, check_sweep_signature, sign_sweep

    folder, elsewhere = tmp_path / "sweep", tmp_path / "elsewhere"
    (folder / "trial_1").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "params.pkl").write_bytes(b"planted")
    (folder / "tuner.pkl").write_bytes(b"state")
    if when == "before signing":
        (folder / "trial_2").symlink_to(elsewhere, target_is_directory=True)
    sign_sweep(str(folder))
    if when == "after signing":
        (folder / "trial_2").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(SweepStateError, match="holds symbolic links \\(trial_2\\)"):
        check_sweep_signature(str(folder))


@pytest.mark.parametrize("line, names", [
    ("kd_wieght choice [0.1,0.2]", ["line 2", "kd_wieght", "did you mean kd_weight?"]),
    ("kd_temperature choice [0.1,-0.1]", ["line 2", "kd_temperature = -0.1", "> 0"]),
    ("gd_samples quniform 0,100,10", ["line 2", "gd_samples = 0.0", ">= 1"]),
])
def test_a_bad_sweep_space_is_refused_before_anything_runs(tiny_dataset, tmp_path, capsys, line, names):
    import run_recbole_ckd

    hyper = write(tmp_path, "kd_weight choice [0.01,0.1]\n" + line + "\n")
    argv = ["--model=VBPR_CKD", "--dataset=tiny", f"--hyper={hyper}", f"--output={tmp_path / 'sweeps'}",
            f"--data_path={tiny_dataset['root']}", f"--checkpoint_dir={tmp_path / 'saved'}"]
    with pytest.raises(SystemExit) as exit_info:
        run_recbole_ckd.main(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and err.startswith("error: " + hyper)
    for text in names:
        assert text in err
    assert not (tmp_path / "saved").exists() and not (tmp_path / "sweeps").exists()


def test_a_resumed_trial_reports_the_best_of_all_its_epochs(monkeypatch):
    """After a resume the trial sees only the epochs after the interruption; its result is the
    trainer's best over every epoch, restored from its checkpoint."""
    import ray

    import recbole_ckd.quick_start as qs
    from recbole_ckd import compat
    from recbole_ckd.tune import trial

    reports = []
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    monkeypatch.setattr(compat, "ray_tune_api", lambda: compat.TuneAPI(reports.append, None, None))

    def resumed_run(model, dataset, files, config_dict, callback_fn, evaluate_test):
        callback_fn(7, 0.20)  # epochs 7 and 8, after the resume: worse than epoch 3's 0.35
        callback_fn(8, 0.25)
        return {"best_valid_score": 0.35}

    monkeypatch.setattr(qs, "run", resumed_run)
    trial({"kd_weight": 0.1}, {"config_dict": {}, "bigger": True, "model": "VBPR", "dataset": "tiny", "config_files": None})
    assert [r["best_valid_score"] for r in reports] == [0.20, 0.25, 0.35] and reports[-1]["epoch"] == 9

    reports.clear()  # an uninterrupted trial: its own best, with its epoch, is the last report
    monkeypatch.setattr(qs, "run", lambda *a, callback_fn, **k: (callback_fn(0, 0.3), callback_fn(1, 0.2),
                                                                 {"best_valid_score": 0.3})[-1])
    trial({}, {"config_dict": {}, "bigger": True, "model": "VBPR", "dataset": "tiny", "config_files": None})
    assert len(reports) == 2 and reports[-1]["best_valid_score"] == 0.3 and reports[-1]["best_epoch"] == 0


def test_a_folder_holding_another_sweep_is_refused_and_the_same_sweep_resumes(tiny_dataset, tmp_path, monkeypatch, capsys):
    """A rerun with another space, model config or --epochs would resume the folder's trials and mix them
    into one best.yaml; it is refused before anything is trained. The same command resumes."""
    import ray.tune

    import recbole_ckd.quick_start as qs
    import run_recbole_ckd

    fits = fake_tuner(monkeypatch, tmp_path, [
        _FakeResult({"kd_weight": 0.01}, {"best_valid_score": 0.3, "best_epoch": 1, "epoch": 2, "done": True}),
        _FakeResult({"kd_weight": 0.1}, {"best_valid_score": 0.4, "best_epoch": 3, "epoch": 3, "done": False}),
    ])
    restored = []
    Tuner = ray.tune.Tuner

    def restore(path, trainable, resume_errored):
        restored.append(path)
        tuner = Tuner.__new__(Tuner)
        tuner.path = path
        return tuner

    monkeypatch.setattr(Tuner, "restore", staticmethod(restore), raising=False)
    trained = []
    monkeypatch.setattr(qs, "run", lambda *a, **k: trained.append(a) or pytest.fail("nothing may be trained"))
    monkeypatch.setattr(qs, "train_teachers", lambda *a, **k: trained.append(a) or {})
    space = write(tmp_path, "kd_weight choice [0.01,0.1]\n")
    other_space = tmp_path / "other.test"
    other_space.write_text("kd_weight choice [0.01,0.5]\n")
    out = tmp_path / "sweeps"

    def sweep(hyper, extra=()):
        argv = ["--model=VBPR_CKD", "--dataset=tiny", f"--hyper={hyper}", f"--output={out}",
                f"--data_path={tiny_dataset['root']}", f"--checkpoint_dir={tmp_path / 'saved'}", *extra, *fast_args(extra)]
        with pytest.raises(SystemExit) as exit_info:
            run_recbole_ckd.main(argv)
        return exit_info.value.code, capsys.readouterr().err.strip().splitlines()[-1]

    assert sweep(space)[0] == 130 and len(fits) == 1 and len(trained) == 1  # interrupted; the teachers once
    folder = out / "VBPR_CKD-tiny"
    for hyper, extra in ((other_space, []), (space, ["--epochs=2"]), (space, ["--kd_temperature=0.5"])):
        trained.clear()
        code, line = sweep(hyper, extra)
        assert code == 2 and line == f"error: a different sweep is in this folder ({folder}); use another --output or delete it"
        assert trained == [] and len(fits) == 1 and restored == []
    assert sweep(space)[0] == 130 and restored == [str(folder)]  # the same sweep resumes


def test_a_sweep_of_the_students_l2_weight_keeps_the_teachers_at_the_configured_one(tiny_dataset, tmp_path,
                                                                                    monkeypatch):
    import recbole_ckd.quick_start as qs
    from recbole_ckd.run_keys import teacher_run_dir
    from recbole_ckd.tune import _train_teachers_once, _trial_settings

    trained = []
    monkeypatch.setattr(qs, "train_teachers", lambda model, dataset, files, settings: trained.append(settings) or {})
    cmd_args = [f"--data_path={tiny_dataset['root']}", f"--checkpoint_dir={tmp_path / 'saved'}", "--state=WARNING",
                "--reg_weight=0.003"]
    hyper = write(tmp_path, "learning_rate loguniform -9,-5\nreg_weight loguniform -12,-3\nkd_weight choice [0.01,0.1]\n")
    params = parse_hyper_file(hyper)
    overrides, base = _trial_settings("VBPR_CKD", "tiny", params, hyper, None, cmd_args)
    assert base["teacher_reg_weight"] == 0.003 and base["teacher_learning_rate"] == 0.001
    _train_teachers_once("VBPR_CKD", "tiny", params, None, overrides, base)
    assert len(trained) == 1  # before the trials, as for a sweep of CKD keys only

    def teacher(**trial):  # where a trial finds its teacher of v, and that teacher's L2 weight
        _, _, trainer = qs.prepare("VBPR_CKD", "tiny", None, {**base, **trial})
        config = trainer.teacher_config("v")
        return teacher_run_dir(config, "v"), config["reg_weight"], config["learning_rate"]

    assert teacher(learning_rate=1e-4, reg_weight=1e-5) == teacher(learning_rate=5e-3, reg_weight=0.04)
    assert teacher(reg_weight=0.04)[1:] == (0.003, 0.001)
    assert teacher(teacher_reg_weight=0.01)[0] != teacher()[0]  # another teacher setting: other teachers


@pytest.mark.parametrize("search", ["random", "grid"])
def test_a_sweep_draws_its_trials_from_the_configs_seed(search):
    """The same sweep tries the same settings on every run, whatever else drew from numpy before it."""
    import numpy as np
    from ray.tune.experiment import Experiment

    from recbole_ckd.tune import Param, make_searcher, search_space

    params = {p.name: p for p in (Param("learning_rate", "loguniform", (-9.0, -5.0), 1),
                                  Param("kd_weight", "choice", (0.01, 0.1), 2))}

    def drawn(seed, numpy_seed):
        np.random.seed(numpy_seed)
        searcher = make_searcher(search, "recall@20", "max", seed)
        searcher.add_configurations([Experiment("sweep", lambda config: None, config=search_space(params, search),
                                                num_samples=3)])
        trials = iter(searcher.next_trial, None)
        return [(t.config["learning_rate"], t.config["kd_weight"]) for t in trials]

    assert drawn(2020, 0) == drawn(2020, 1) and len(drawn(2020, 0)) == (3 if search == "random" else 6)
    assert drawn(2021, 0) != drawn(2020, 0)
