"""Leaderboards on Ray: cells as Ray tasks on a local Ray give the cells of the sequential run, an
interrupted parallel leaderboard resumes with only its missing cells, parallel CKD cells of one
backbone train each teacher once."""

import dataclasses
import glob
import os
import sys

import pytest
from conftest import fast_args, fast_config

import run_recbole_ckd
from recbole_ckd import leaderboard as lb
from recbole_ckd.errors import Interrupted


@pytest.fixture
def two_cpus(monkeypatch):
    """A machine of two CPUs, whatever this one has: two cells of one CPU run at once."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)


def test_cells_at_once(two_cpus, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert lb.cells_at_once(None, None) == 1  # nothing asked: one cell after another, in this process
    assert lb.cells_at_once(1, None) == 2 and lb.cells_at_once(2, None) == 1 and lb.cells_at_once(0.5, None) == 4
    assert lb.cells_at_once(1, 1) == 2 and lb.cells_at_once(None, 0.5) == 8 and lb.cells_at_once(0.25, 2) == 2


@pytest.mark.slow
def test_parallel_cells_are_the_sequential_ones_and_an_interrupted_run_resumes_only_the_missing(
        tiny_dataset, tmp_path, two_cpus):
    import ray

    sequential = lb.run_cells("tiny", ["BPR"], [1, 2], str(tmp_path / "seq"),
                              config_dict=fast_config(tiny_dataset["root"], tmp_path / "saved-seq"), log=lambda m: None)

    out, messages = str(tmp_path / "par"), []

    def stop_at_the_first_finished_cell(message):  # Ctrl-C as the first cell ends
        messages.append(message)
        if ": done" in message:
            raise KeyboardInterrupt

    par_settings = fast_config(tiny_dataset["root"], tmp_path / "saved-par")
    with pytest.raises(Interrupted, match="1 of 2 cells unfinished"):
        lb.run_cells("tiny", ["BPR"], [1, 2], out, config_dict=par_settings, log=stop_at_the_first_finished_cell,
                     cpus_per_cell=1)
    assert any("running 2 cell(s) as Ray tasks of 1 CPU(s)" in m for m in messages)
    assert not ray.is_initialized()  # the Ray session ended with the interruption
    (written,) = glob.glob(os.path.join(out, "tiny", "cells", "BPR-seed*.json"))

    messages.clear()
    parallel = lb.run_cells("tiny", ["BPR"], [1, 2], out, config_dict=par_settings, log=messages.append,
                            cpus_per_cell=1)
    cached = [m for m in messages if "cached" in m]
    assert len(cached) == 1 and written in cached[0]  # the finished cell only
    assert any("running 1 cell(s) as Ray tasks" in m for m in messages)
    assert len(glob.glob(os.path.join(out, "tiny", "cells", "BPR-seed*.json"))) == 2
    for seq, par in zip(sequential["BPR"], parallel["BPR"]):
        assert par["seed"] == seq["seed"] and par["run_key"] == seq["run_key"]
        assert par["test_result"] == pytest.approx(seq["test_result"], abs=1e-6)
        assert par["valid_result"] == pytest.approx(seq["valid_result"], abs=1e-6)


@pytest.mark.slow
def test_parallel_ckd_cells_of_one_backbone_train_each_teacher_once(tiny_dataset, tmp_path, two_cpus):
    """Two students of one backbone and seed (only a student key differs) share their teachers: run at
    once, one trains each teacher and the other waits on its lock, then takes it from the cache."""
    base = fast_config(tiny_dataset["root"], tmp_path / "saved", gd_samples=20)
    (first,) = lb.plan_cells("tiny", ["VBPR_CKD"], [1], config_dict={**base, "kd_weight": 0.01})
    (second,) = lb.plan_cells("tiny", ["VBPR_CKD"], [1], config_dict={**base, "kd_weight": 0.1})
    second = dataclasses.replace(second, label="VBPR_CKD-kd0.1")
    assert first.key != second.key
    cells = lb.run_plan("tiny", [first, second], str(tmp_path / "results"), log=lambda m: None, cpus_per_cell=1)
    (a,), (b,) = cells["VBPR_CKD"], cells["VBPR_CKD-kd0.1"]
    assert set(a["teachers"]) == set(b["teachers"]) == {"v", "t"}
    for modality in ("v", "t"):
        assert a["checkpoints"][f"teacher {modality}"] == b["checkpoints"][f"teacher {modality}"]
        assert sorted([a["teachers"][modality], b["teachers"][modality]]) == ["cached", "trained"]


@pytest.mark.parametrize("flags, refused", [
    (["--cpus_per_trial=1", "--gpus_per_trial=0.5", "--ray_address=auto"], None),
    (["--num_samples=2"], "--num_samples is for --hyper"),
])
def test_the_ray_flags_belong_to_leaderboards_too(flags, refused, capsys):
    parser = run_recbole_ckd.build_parser()
    argv = ["--leaderboard", "--dataset=tiny", "--models=BPR", *flags]
    if refused is None:
        run_recbole_ckd.check_flags(parser, argv)
    else:
        with pytest.raises(SystemExit):
            run_recbole_ckd.check_flags(parser, argv)
        assert refused in capsys.readouterr().err


def test_a_leaderboard_on_ray_without_ray_is_one_line_saying_how_to_install_it(tiny_dataset, tmp_path, monkeypatch,
                                                                              capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as on a stack without Ray: importing it fails
    with pytest.raises(SystemExit) as exit_info:
        run_recbole_ckd.main(["--leaderboard", "--dataset=tiny", "--models=BPR", "--seeds=1,",
                              f"--data_path={tiny_dataset['root']}", f"--checkpoint_dir={tmp_path / 'saved'}",
                              f"--output={tmp_path / 'res'}", "--ray_address=auto"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[-1].startswith("error: --leaderboard runs with Ray")
    assert 'pip install "ray[tune]"' in err[-1]


def test_a_cluster_that_cannot_be_joined_is_one_line_saying_what_to_set(tiny_dataset, tmp_path, monkeypatch, capsys):
    import ray

    def refused(**kwargs):  # what a cluster with token authentication answers a client without its token
        raise ConnectionError("InvalidAuthToken: the token is missing")

    monkeypatch.setattr(ray, "init", refused)
    with pytest.raises(SystemExit) as exit_info:
        run_recbole_ckd.main(["--leaderboard", "--dataset=tiny", "--models=BPR", "--seeds=1,",
                              f"--data_path={tiny_dataset['root']}", f"--checkpoint_dir={tmp_path / 'saved'}",
                              f"--output={tmp_path / 'res'}", "--ray_address=head.invalid:6379"] +
                             fast_args())
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[-1].startswith("error: --ray_address=head.invalid:6379: no Ray cluster")
    assert "InvalidAuthToken" in err[-1] and "RAY_AUTH_MODE=token" in err[-1] and "--ray_address=auto" in err[-1]
    assert not (tmp_path / "res").exists()


def test_a_task_of_more_gpus_than_the_cluster_has_is_refused(monkeypatch):
    """Ray would queue such a trial or cell forever; the cluster's resources are asked first (and Ray
    is shut down again)."""
    from recbole_ckd import cluster
    from recbole_ckd.errors import UserError

    calls = []

    class FakeRay:
        def init(self, **kwargs):
            calls.append("init")

        def cluster_resources(self):
            return {"CPU": 8.0, "GPU": 1.0}

        def shutdown(self):
            calls.append("shutdown")

    monkeypatch.setattr(cluster, "require_ray", lambda flag: FakeRay())
    with cluster.ray_session("head:6379", "--hyper", gpus=1):
        calls.append("ran")
    with pytest.raises(UserError, match=r"--gpus_per_trial=2: the Ray cluster at head:6379 has 1 GPU\(s\)"):
        with cluster.ray_session("head:6379", "--hyper", gpus=2):
            calls.append("ran too")
    assert calls == ["init", "ran", "shutdown", "init", "shutdown"]
