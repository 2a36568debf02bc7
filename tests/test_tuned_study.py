"""A tuned study (--study --tune_trials=N): every row tuned by its own sweep of the same budget,
selected on validation only, then its seeds run with the selected values."""

import json
import math
import os

import pytest
import yaml
from conftest import fast_args, fast_config

import recbole_ckd.leaderboard as lb


def fake_sweeps(monkeypatch):
    """run_sweep recorded, each sweep 'selecting' the low end of every range of its space."""
    import recbole_ckd.tune as tune

    calls = []

    def run_sweep(model, dataset, hyper_file, config_files, cmd_args, output, **budget):
        params = tune.parse_hyper_file(hyper_file)
        calls.append({"model": model, "args": list(cmd_args), "output": output, "params": params, **budget})
        chosen = {}
        for name, p in params.items():
            chosen[name] = math.exp(p.values[0]) if p.kind == "loguniform" else p.values[0]
        best = os.path.join(output, f"{model}-{dataset}-best.yaml")
        with open(best, "w") as f:
            yaml.safe_dump(chosen, f)
        return {"best_config_file": best}

    monkeypatch.setattr(tune, "run_sweep", run_sweep)
    monkeypatch.setattr(tune, "finished_sweep", lambda *a, **k: None)
    return calls


def test_every_row_gets_its_own_sweep_with_the_same_budget(tiny_dataset, tmp_path, monkeypatch):
    calls = fake_sweeps(monkeypatch)
    entries = lb.study_entries("balancing", ["VBPR"])
    args = [f"--data_path={tiny_dataset['root']}"]
    tuned, spaces = lb.tune_study("tiny", entries, 3, [1], str(tmp_path / "out"), cmd_args=args, search="random",
                                  scheduler="asha")
    assert [c["model"] for c in calls] == [e.model for e in entries]
    assert {c["num_samples"] for c in calls} == {3} and {c["search"] for c in calls} == {"random"}
    assert {c["scheduler"] for c in calls} == {"asha"} and all(c["evaluate_best"] is False for c in calls)
    # one folder per row, the row's own settings in its sweep
    assert [c["output"] for c in calls] == [str(tmp_path / "out" / "tiny" / "sweeps" / e.label) for e in entries]
    by_label = {e.label: c for e, c in zip(entries, calls)}
    # every CKD row's teachers train with the plain row's selected values: one set of teachers for them all
    plain = yaml.safe_load(open(tuned["VBPR"]))
    teachers = [f"--teacher_learning_rate={plain['learning_rate']!r}", f"--teacher_reg_weight={plain['reg_weight']!r}"]
    assert by_label["VBPR_CKD-no_generic"]["args"] == args + ["--ckd_generic=False"] + teachers
    assert by_label["VBPR_CKD"]["args"] == args + teachers
    assert by_label["VBPR"]["args"] == by_label["VBPR_MDrop"]["args"] == by_label["VBPR_OGMGE"]["args"] == args
    shared = ["learning_rate", "reg_weight"]
    expected = {"VBPR": shared, "VBPR_MDrop": shared + ["mdrop_prob"], "VBPR_OGMGE": shared + ["ogm_alpha"],
                "VBPR_MMPareto": shared, "VBPR_CKD-no_generic": shared + ["kd_weight"]}
    for e in entries:
        names = list(by_label[e.label]["params"])
        assert names == expected.get(e.label, shared + ["kd_weight", "kd_temperature", "gd_weight"]), e.label
    lr = by_label["VBPR"]["params"]["learning_rate"]
    assert lr.kind == "loguniform" and [math.exp(v) for v in lr.values] == pytest.approx([1e-4, 1e-2])
    assert by_label["VBPR_MDrop"]["params"]["mdrop_prob"].values == (0.1, 0.9)
    assert list(tuned) == [e.label for e in entries] == list(spaces)
    assert spaces["VBPR_OGMGE"] == {"learning_rate": "loguniform [0.0001, 0.01]",
                                    "reg_weight": "loguniform [1e-06, 0.1]", "ogm_alpha": "loguniform [0.01, 1]"}


def test_a_sweep_of_another_budget_is_refused(tiny_dataset, tmp_path, monkeypatch):
    """Ray resumes or reuses a row's sweep with the budget it began with; another one is refused, before any sweep."""
    from recbole_ckd.errors import ConfigError

    calls = fake_sweeps(monkeypatch)
    entries = [e for e in lb.study_entries("balancing", ["VBPR"]) if e.label in ("VBPR", "VBPR_MDrop")]
    args = [f"--data_path={tiny_dataset['root']}"]
    lb.tune_study("tiny", entries, 2, [1], str(tmp_path / "out"), cmd_args=args)
    with pytest.raises(ConfigError, match=r"--tune_trials=3 --search=random --scheduler=none: .*VBPR holds a sweep of "
                                          r"another budget \(trials 2, search random, scheduler none\)"):
        lb.tune_study("tiny", entries, 3, [1], str(tmp_path / "out"), cmd_args=args)
    assert len(calls) == 2


@pytest.mark.parametrize("twin, message", [
    (lb.Entry("VBPR", "VBPR_MDrop", {}), "the rows VBPR and VBPR are the same label"),
    (lb.Entry("VBPR_CKD-again", "VBPR_CKD", {"ckd_specific": False}),
     "the rows VBPR_CKD-no_specific and VBPR_CKD-again are the same model and settings"),
])
def test_a_row_given_twice_is_refused_before_any_sweep_or_cell(tiny_dataset, tmp_path, monkeypatch, twin, message):
    """Two rows sharing a label or a model and settings would share cells and runs: the seeds of one would count
    twice, or its selected checkpoints would be deleted with the other's trials."""
    calls = fake_sweeps(monkeypatch)
    entries = lb.study_entries("balancing", ["VBPR"]) + [twin]
    with pytest.raises(ValueError, match=message + "; give each row once"):
        lb.tune_study("tiny", entries, 2, [1], str(tmp_path / "out"), cmd_args=[f"--data_path={tiny_dataset['root']}"])
    with pytest.raises(ValueError, match=message):
        lb.plan_cells("tiny", entries, [1], config_dict={"data_path": tiny_dataset["root"]})
    assert calls == [] and not (tmp_path / "out").exists()


def test_a_backbone_without_an_l2_key_searches_only_what_it_has(tiny_dataset, tmp_path, monkeypatch):
    calls = fake_sweeps(monkeypatch)
    entries = [e for e in lb.study_entries("balancing", ["DAMRS"]) if e.label in ("DAMRS", "DAMRS_MDrop")]
    lb.tune_study("tiny", entries, 2, [1], str(tmp_path / "out"), cmd_args=[f"--data_path={tiny_dataset['root']}"])
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


@pytest.mark.slow
def test_a_tuned_study_selects_before_any_test_then_reruns_from_its_cache(tiny_dataset, tmp_path, monkeypatch, capsys,
                                                                         epoch_log):
    import ray.tune

    import recbole_ckd.quick_start as qs
    import recbole_ckd.tune as tune
    import run_recbole_ckd
    from recbole_ckd.config import Config

    monkeypatch.setitem(lb.studies.STUDIES, "pair", (("{B}", "{B}", {}), ("{B}_MDrop", "{B}_MDrop", {})))
    events, real_sweep, real_run = [], tune.run_sweep, qs.run
    monkeypatch.setattr(tune, "run_sweep",
                        lambda model, *a, **k: events.append(("sweep", model)) or real_sweep(model, *a, **k))
    monkeypatch.setattr(qs, "run", lambda model, *a, **k: events.append(
        ("run", model, k.get("evaluate_test", True), len(epoch_log))) or real_run(model, *a, **k))
    monkeypatch.setattr(lb.cells, "cells_at_once", lambda *a: 1)  # the seeds' runs in this process, where they are seen
    out = tmp_path / "results"
    args = [f"--data_path={tiny_dataset['root']}", f"--checkpoint_dir={tmp_path / 'saved'}"]
    args += fast_args(args)
    argv = ["--leaderboard", "--study=pair", "--dataset=tiny", "--models=VBPR", "--seeds=1,", "--tune_trials=2",
            f"--output={out}", *args]
    page = run_recbole_ckd.main(argv)
    assert page == str(out / "tiny-pair.md")
    # each row's sweep, then its 2 candidates (both trials) at the seed, validation only; the test split is
    # evaluated only once every row is selected, by the selected candidates' runs, which train nothing more
    assert [e[:3] for e in events] == [
        ("sweep", "VBPR"), ("run", "VBPR", False), ("run", "VBPR", False),
        ("sweep", "VBPR_MDrop"), ("run", "VBPR_MDrop", False), ("run", "VBPR_MDrop", False),
        ("run", "VBPR", True), ("run", "VBPR_MDrop", True)]
    assert events[-2][3] == events[-1][3] == len(epoch_log) == 4  # 4 selection runs of 1 epoch; the trials ran in Ray
    text = open(page).read()
    # the seeded search draws every row's first trial at the same learning rate and L2 weight, and on this tiny
    # data all trials tie, so both rows select it: VBPR_MDrop's control is the backbone's row itself
    assert "| VBPR | the backbone row's own | VBPR_MDrop |" in text
    assert "own sweep of 2 trial(s) (search: random, scheduler: none)" in text and "--tune_trials=2" in text
    assert "Adam lr tuned per row (Tuned values)" in text and "Adam lr 0.0" not in text
    config_dict = dict(Config("VBPR", "tiny", None, cmd_args=args).cmd_config_dict)
    ranges = {key: (low, high) for key, _, low, high in lb.SHARED_SPACE + lb.METHOD_SPACES["MDrop"]}
    for label, keys in (("VBPR", ["learning_rate", "reg_weight"]),
                        ("VBPR_MDrop", ["learning_rate", "reg_weight", "mdrop_prob"])):
        folder = out / "tiny" / "sweeps" / label
        trials = open(folder / f"{label}-tiny-trials.csv").read().strip().splitlines()
        assert len(trials) == 3 and all(",done," in t for t in trials[1:])  # header and 2 trials
        selection = open(folder / "selection.md").read()
        assert selection.count("| yes |") == 1 and "| seed 1 | mean | selected |" in selection
        tuned = {label: tuned_path(folder, label)}
        best = yaml.safe_load(open(tuned[label]))
        for key in keys:
            value = best[key]
            assert ranges[key][0] <= value <= ranges[key][1]
            assert f"| {label} | {key} | {value:.4g} | " in text, (label, key)
        # the seed ran with the selected values: its run key is the tuned plan's, not the default's
        record = lb.run_cells("tiny", [label], [1], str(out), config_dict=config_dict, tuned=tuned,
                              log=lambda m: None)[label][0]
        default = lb.plan_cells("tiny", [label], [1], config_dict=config_dict)[0]
        assert lb.recorded_run_key(record) != default.key
    assert "| VBPR_MDrop | mdrop_prob | " in text and "| uniform [0.1, 0.9] |" in text
    assert "| VBPR | learning_rate | " in text and "| loguniform [0.0001, 0.01] |" in text
    # of every trial's and candidate's run, only the selected setting's are kept: its cells read them
    cells = [json.load(open(path)) for path in (out / "tiny" / "cells").iterdir()]
    assert len(cells) == 2 and "removed the checkpoints of" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "saved" / "tiny")) == sorted(
        os.path.basename(os.path.dirname(cell["checkpoint"])) for cell in cells)
    # the same command again: every sweep finished, every cell cached, nothing trained and Ray not started
    events.clear(), epoch_log.clear()
    monkeypatch.setattr(ray.tune.Tuner, "fit", lambda tuner: pytest.fail("a sweep ran again"))
    capsys.readouterr()
    assert run_recbole_ckd.main(argv) == page
    assert events == [] and len(epoch_log) == 0
    assert capsys.readouterr().out.count(": finished (") == 2


def tuned_path(folder, label):
    """The configuration file of a row's selected candidate, as its ``selection.md`` marks it."""
    selection = open(folder / "selection.md").read()
    rank = next(line for line in selection.splitlines() if line.endswith("| yes |"))[2]
    return str(folder / (f"{label}-tiny-best.yaml" if rank == "1" else f"candidate-{rank}.yaml"))


def test_an_ablation_searches_no_key_of_the_term_it_removes(tiny_dataset):
    from recbole_ckd.config import Config

    def searched(label):
        (entry,) = [e for e in lb.study_entries("balancing", ["VBPR"]) if e.label == label]
        config = Config(entry.model, "tiny", None, {"data_path": str(tiny_dataset["root"]), **entry.overrides})
        return [key for key, *_ in lb.tuning_space(entry, config)]

    assert searched("VBPR_CKD") == ["learning_rate", "reg_weight", "kd_weight", "kd_temperature", "gd_weight"]
    assert searched("VBPR_CKD-no_generic") == ["learning_rate", "reg_weight", "kd_weight"]
    assert searched("VBPR_CKD-no_specific") == searched("VBPR_CKD")  # kd_weight still weighs the generic term


@pytest.mark.parametrize("backbone", ["VBPR", "LATTICE", "DAMRS"])
def test_both_ends_of_every_rows_space_are_accepted_by_its_config(tiny_dataset, backbone):
    """A study never stops at row k because an end of its range is out of a key's bounds."""
    from recbole_ckd.config import Config

    for entry in lb.study_entries("balancing", [backbone]):
        settings = {"data_path": str(tiny_dataset["root"]), **entry.overrides}
        space = lb.tuning_space(entry, Config(entry.model, "tiny", None, settings))
        assert space and space[0][0] == "learning_rate"
        for key, _, low, high in space:
            for value in (low, high):
                Config(entry.model, "tiny", None, {**settings, key: value})  # raises a ConfigError if refused


def test_a_rows_setting_is_the_best_mean_validation_of_its_best_trials_at_every_seed(tiny_dataset, tmp_path,
                                                                                    monkeypatch):
    """The sweep's best trial can win at its one seed and stall at another (early stopping in a plateau):
    the row takes the candidate with the best mean validation score over the study's seeds."""
    from recbole_ckd.leaderboard.sweeps import _candidate_files, _select

    folder = tmp_path / "VBPR"
    folder.mkdir()
    best = folder / "VBPR-tiny-best.yaml"
    best.write_text("# best of the sweep\nmodel: VBPR\nlearning_rate: 0.001\nreg_weight: 0.05\n")
    (folder / "VBPR-tiny-trials.csv").write_text(
        "trial,learning_rate,reg_weight,best_valid_score,best_epoch,status,error\n"
        "t0,0.003,0.001,0.25,9,done,\n"
        "t1,0.001,0.05,0.3,40,done,\n"
        "t2,0.009,0.002,0.5,3,error,diverged\n"
        "t3,0.002,0.0001,0.28,20,done,\n"
        "t4,0.005,0.0002,nan,1,done,\n"
        "t5,0.0001,0.00001,0.1,90,done,\n")
    keys = ["learning_rate", "reg_weight"]
    candidates = _candidate_files(str(best), keys)
    assert candidates == [str(best), str(folder / "candidate-2.yaml"), str(folder / "candidate-3.yaml")]
    assert yaml.safe_load(open(candidates[1])) == {"model": "VBPR", "learning_rate": 0.002, "reg_weight": 0.0001}
    assert yaml.safe_load(open(candidates[2]))["learning_rate"] == 0.003

    valid = {(0.001, 1): 0.30, (0.001, 2): 0.05, (0.002, 1): 0.28, (0.002, 2): 0.27, (0.003, 1): 0.29,
             (0.003, 2): 0.20}
    runs = []

    def run_missing(dataset, missing, finished, log, *resources, evaluate_test=True):
        runs.append((len(missing), evaluate_test))
        for cell in missing:
            lr = yaml.safe_load(open(cell.files[-1]))["learning_rate"]
            finished(cell, {"best_valid_score": valid[lr, cell.seed], "valid_metric": "recall@20"})

    monkeypatch.setattr(lb.cells, "run_missing", run_missing)
    (entry,) = [e for e in lb.study_entries("balancing", ["VBPR"]) if e.label == "VBPR"]
    config_dict = {"data_path": str(tiny_dataset["root"]), "checkpoint_dir": str(tmp_path / "saved")}

    def select():
        return _select("tiny", entry, candidates, keys, [1, 2], str(folder), None, config_dict, None, 1, 0)

    assert select() == candidates[1]  # means .175, .275, .245: not the sweep's best
    assert runs == [(6, False)]  # 3 candidates x 2 seeds, validation only
    table = (folder / "selection.md").read_text()
    assert "| 2: learning_rate 0.002, reg_weight 0.0001 | 0.2800 | 0.2700 | 0.2750 | yes |" in table
    assert "| 1: learning_rate 0.001, reg_weight 0.05 | 0.3000 | 0.0500 | 0.1750 |  |" in table
    assert select() == candidates[1] and runs[-1] == (0, False)  # again: every score from its record


def test_each_variant_gets_the_plain_backbone_at_its_own_setting(tmp_path):
    """Rows that selected the same learning rate and L2 weight share one control run, which overrides those two
    keys only; a row that selected the backbone's own values is compared with the backbone's row."""
    from recbole_ckd.leaderboard.sweeps import setting_controls

    selected = {"VBPR": {"learning_rate": 0.001, "reg_weight": 0.01, "epochs": 7},
                "VBPR_CKD": {"learning_rate": 0.0003, "reg_weight": 0.02, "kd_weight": 0.1},
                "VBPR_CKD-uniform_weights": {"learning_rate": 0.0003, "reg_weight": 0.02, "kd_weight": 0.5},
                "VBPR_MDrop": {"learning_rate": 0.001, "reg_weight": 0.01, "mdrop_prob": 0.3},
                "VBPR_OGMGE": {"learning_rate": 0.001, "reg_weight": 0.5, "ogm_alpha": 0.2}}
    tuned = {}
    for label, values in selected.items():
        tuned[label] = str(tmp_path / f"{label}.yaml")
        (tmp_path / f"{label}.yaml").write_text(yaml.safe_dump(values))
    entries = [e for e in lb.study_entries("balancing", ["VBPR"]) if e.label in selected]
    controls, runs = setting_controls(entries, tuned)
    assert controls == {"VBPR_CKD": "VBPR-at-VBPR_CKD", "VBPR_CKD-uniform_weights": "VBPR-at-VBPR_CKD",
                        "VBPR_MDrop": "VBPR", "VBPR_OGMGE": "VBPR-at-VBPR_OGMGE"}
    assert runs == [lb.Entry("VBPR-at-VBPR_CKD", "VBPR", {"learning_rate": 0.0003, "reg_weight": 0.02}),
                    lb.Entry("VBPR-at-VBPR_OGMGE", "VBPR", {"learning_rate": 0.001, "reg_weight": 0.5})]
    assert setting_controls(entries, {"VBPR_CKD": tuned["VBPR_CKD"]}) == ({}, [])  # no tuned backbone, no control


def test_a_control_runs_the_backbone_at_a_variants_setting(tiny_dataset, tmp_path, monkeypatch):
    """The control trains the backbone with the variant's selected learning rate and L2 weight and the backbone
    row's other selected settings, at every seed; the page compares the variant with it."""
    import recbole_ckd.quick_start as qs
    from recbole_ckd.config import Config

    monkeypatch.setitem(lb.studies.STUDIES, "pair", (("{B}", "{B}", {}), ("{B}_MDrop", "{B}_MDrop", {})))
    selected = {"VBPR": {"learning_rate": 0.001, "reg_weight": 0.01, "embedding_size": 8},
                "VBPR_MDrop": {"learning_rate": 0.003, "reg_weight": 0.02, "mdrop_prob": 0.4}}
    for label, values in selected.items():
        (tmp_path / f"{label}.yaml").write_text(yaml.safe_dump(values))
    monkeypatch.setattr(lb.command, "tune_study", lambda *a, **k: (
        {label: str(tmp_path / f"{label}.yaml") for label in selected}, {label: {} for label in selected}))
    runs, real_run = [], qs.run
    monkeypatch.setattr(qs, "run", lambda model, dataset, files, settings, **k: runs.append(
        Config(model, dataset, files, settings)) or real_run(model, dataset, files, settings, **k))
    monkeypatch.setattr(lb.cells, "cells_at_once", lambda *a: 1)
    args = [f"--data_path={tiny_dataset['root']}", f"--checkpoint_dir={tmp_path / 'saved'}"]
    page = lb.run_leaderboard("tiny", ["VBPR"], [1, 2], str(tmp_path / "out"), cmd_args=args + fast_args(args),
                              study="pair", tune_trials=2)
    resolved = [(c["model"], c["seed"], c["learning_rate"], c["reg_weight"], c["embedding_size"]) for c in runs]
    assert resolved[-2:] == [("VBPR", 1, 0.003, 0.02, 8), ("VBPR", 2, 0.003, 0.02, 8)]
    assert resolved[:2] == [("VBPR", 1, 0.001, 0.01, 8), ("VBPR", 2, 0.001, 0.01, 8)]
    text = open(page).read()
    assert "| VBPR-at-VBPR_MDrop | learning_rate 0.003, reg_weight 0.02 | VBPR_MDrop |" in text
    assert text.count("| VBPR_MDrop | recall@20 |") == 2  # against the tuned backbone, and against its control
    cells = os.listdir(tmp_path / "out" / "tiny" / "cells")
    assert sorted(name.rsplit("-", 1)[0] for name in cells) == [
        "VBPR-at-VBPR_MDrop-seed1", "VBPR-at-VBPR_MDrop-seed2", "VBPR-seed1", "VBPR-seed2", "VBPR_MDrop-seed1",
        "VBPR_MDrop-seed2"]
