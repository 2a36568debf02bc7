"""A tuned study (--study --tune_trials=N): every row tuned by its own sweep of the same budget,
selected on validation only, then its seeds run with the selected values."""

import math
import os

import pytest
import yaml

import recbole_ckd.leaderboard as lb
from conftest import fast_config


def fake_sweeps(monkeypatch, select=lambda key, low, high: low):
    """run_sweep recorded, each sweep 'selecting' ``select(key, low, high)`` of every key in its space."""
    import recbole_ckd.tune as tune

    calls = []

    def run_sweep(model, dataset, hyper_file, config_files, cmd_args, output, **budget):
        params = tune.parse_hyper_file(hyper_file)
        calls.append({"model": model, "args": list(cmd_args), "output": output, "params": params, **budget})
        chosen = {}
        for name, p in params.items():
            low, high = [math.exp(v) for v in p.values] if p.kind == "loguniform" else p.values
            chosen[name] = select(name, low, high)
        best = os.path.join(output, f"{model}-{dataset}-best.yaml")
        with open(best, "w") as f:
            yaml.safe_dump(chosen, f)
        return {"best_config_file": best}

    monkeypatch.setattr(tune, "run_sweep", run_sweep)
    monkeypatch.setattr(tune, "finished_sweep", lambda *a, **k: None)
    return calls


def test_every_row_gets_its_own_sweep_with_the_same_budget(tiny_dataset, tmp_path, monkeypatch):
    calls = fake_sweeps(monkeypatch)
    entries = lb.study_entries("balancing_mmpareto", ["VBPR"])
    args = [f"--data_path={tiny_dataset['root']}"]
    tuned, spaces = lb.tune_study("tiny", entries, 3, str(tmp_path / "out"), cmd_args=args, search="random",
                                  scheduler="asha")
    assert [c["model"] for c in calls] == [e.model for e in entries]
    assert {c["num_samples"] for c in calls} == {3} and {c["search"] for c in calls} == {"random"}
    assert {c["scheduler"] for c in calls} == {"asha"} and all(c["evaluate_best"] is False for c in calls)
    # one folder per row, the row's own settings in its sweep
    assert [c["output"] for c in calls] == [str(tmp_path / "out" / "tiny" / "sweeps" / e.label) for e in entries]
    by_label = {e.label: c for e, c in zip(entries, calls)}
    assert by_label["VBPR_CKD-no_generic"]["args"] == args + ["--ckd_generic=False"]
    shared = ["learning_rate", "reg_weight"]
    expected = {"VBPR": shared, "VBPR_MDrop": shared + ["mdrop_prob"], "VBPR_OGMGE": shared + ["ogm_alpha"],
                "VBPR_MMPareto": shared}
    for e in entries:
        names = list(by_label[e.label]["params"])
        assert names == expected.get(e.label, shared + ["kd_weight", "kd_temperature", "gd_weight"]), e.label
    lr = by_label["VBPR"]["params"]["learning_rate"]
    assert lr.kind == "loguniform" and [math.exp(v) for v in lr.values] == pytest.approx([1e-4, 1e-2])
    assert by_label["VBPR_MDrop"]["params"]["mdrop_prob"].values == (0.1, 0.9)
    assert list(tuned) == [e.label for e in entries] == list(spaces)
    assert spaces["VBPR_OGMGE"] == {"learning_rate": "loguniform [0.0001, 0.01]", "reg_weight": "loguniform [1e-06, 0.1]",
                                    "ogm_alpha": "loguniform [0.01, 1]"}


def test_a_backbone_without_an_l2_key_searches_only_what_it_has(tiny_dataset, tmp_path, monkeypatch):
    calls = fake_sweeps(monkeypatch)
    entries = [e for e in lb.study_entries("balancing", ["DAMRS"]) if e.label in ("DAMRS", "DAMRS_MDrop")]
    lb.tune_study("tiny", entries, 2, str(tmp_path / "out"), cmd_args=[f"--data_path={tiny_dataset['root']}"])
    assert [list(c["params"]) for c in calls] == [["learning_rate"], ["learning_rate", "mdrop_prob"]]


def test_a_trial_never_evaluates_the_test_set(tiny_dataset, tmp_path, monkeypatch):
    """A sweep trial (what runs in each Ray worker) trains and validates; evaluating the test split raises."""
    import ray
    from recbole.trainer import Trainer

    import recbole_ckd.quick_start as qs
    from recbole_ckd import compat
    from recbole_ckd.tune import trial

    real_prepare, test_splits = qs.prepare, []

    def prepare(*args, **kwargs):
        config, (train, valid, test), trainer = real_prepare(*args, **kwargs)
        test_splits.append(test)
        return config, (train, valid, test), trainer

    real_evaluate, evaluated = Trainer.evaluate, []

    def evaluate(trainer, eval_data, *args, **kwargs):
        if any(eval_data is t for t in test_splits):
            raise AssertionError("a trial evaluated the test set")
        evaluated.append(eval_data)
        return real_evaluate(trainer, eval_data, *args, **kwargs)

    monkeypatch.setattr(qs, "prepare", prepare)
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    reports = []
    monkeypatch.setattr(compat, "ray_tune_api", lambda: compat.TuneAPI(reports.append, None, None))
    base = {"model": "VBPR_MDrop", "dataset": "tiny", "config_files": None, "bigger": True,
            "config_dict": fast_config(tiny_dataset["root"], tmp_path / "saved", epochs=2)}
    trial({"learning_rate": 0.005, "mdrop_prob": 0.3}, base)
    assert len(test_splits) == 1 and len(evaluated) == 2  # one validation per epoch, never the test split
    assert [r["epoch"] for r in reports] == [1, 2]
