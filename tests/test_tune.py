"""Sweeps: hyper.test parsing, the search space, validation-only selection, a real sweep."""

import glob
import math
import os

import pytest
from conftest import FAST

from recbole_ckd.tune import HyperFileError, parse_hyper_file, select_best, trial_table

ray = pytest.importorskip("ray.tune")


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


def test_the_shipped_hyper_test_parses():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    params = parse_hyper_file(os.path.join(here, "hyper.test"))
    assert {"kd_temperature", "kd_weight", "gd_weight", "learning_rate"} <= set(params)


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


def test_two_trial_sweep_trains_teachers_once(tiny_dataset, tmp_path, capsys):
    from recbole_ckd.tune import run_sweep

    hyper = write(tmp_path, "kd_weight choice [0.01,0.1]\n")
    args = [f"--data_path={tiny_dataset['root']}", f"--checkpoint_dir={tmp_path / 'saved'}", "--epochs=2",
            "--gd_samples=20", "--state=WARNING"] + [f"--{k}={v}" for k, v in FAST.items() if k not in ("epochs", "state")]
    result = run_sweep("VBPR_CKD", "tiny", hyper, cmd_args=args, num_samples=1, search="grid",
                       cpus_per_trial=1, output=str(tmp_path / "sweeps"), verbose=0)
    trials = result["trials"]
    assert len(trials) == 2 and all(t["status"] == "done" for t in trials)
    assert sorted(t["params"]["kd_weight"] for t in trials) == [0.01, 0.1]
    best = result["best"]
    assert best["best_valid_score"] == max(t["best_valid_score"] for t in trials)
    # teachers were trained once, before the trials: two teachers, each trained by the driver
    teachers = glob.glob(str(tmp_path / "saved" / "tiny" / "teachers" / "*" / "best.pth"))
    assert len(teachers) == 2
    out = capsys.readouterr().out
    assert "Training (or loading) the teachers once" in out
    # the best configuration file is accepted by --config_files and reproduces the trial
    import yaml

    best_config = yaml.safe_load(open(result["best_config_file"]))
    assert best_config["kd_weight"] == best["params"]["kd_weight"] and best_config["model"] == "VBPR_CKD"
    assert result["test_result"]["best_valid_score"] == pytest.approx(best["best_valid_score"])
    assert set(result["test_result"]["test_result"])  # the test set was used, once, at the end
    assert os.path.isfile(str(tmp_path / "sweeps" / "VBPR_CKD-tiny-trials.csv"))


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tiny_dataset, tmp_path):
    from recbole_ckd.tune import run_sweep

    # a negative learning rate is refused by the trial's Config
    hyper = write(tmp_path, "learning_rate choice [0.001,-1.0]\n")
    args = [f"--data_path={tiny_dataset['root']}", f"--checkpoint_dir={tmp_path / 'saved'}", "--epochs=2"] + [
        f"--{k}={v}" for k, v in FAST.items() if k != "epochs"
    ]
    result = run_sweep("VBPR", "tiny", hyper, cmd_args=args, num_samples=1, search="grid", scheduler="asha",
                       output=str(tmp_path / "sweeps"), verbose=0)
    by_lr = {t["params"]["learning_rate"]: t for t in result["trials"]}
    assert by_lr[-1.0]["status"] == "ERROR" and "learning_rate must be a number > 0" in by_lr[-1.0]["error"]
    assert by_lr[0.001]["status"] == "done" and result["best"] is by_lr[0.001]
    table = open(tmp_path / "sweeps" / "VBPR-tiny-trials.md").read()
    assert "ERROR" in table
