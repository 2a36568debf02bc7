"""Every stage heals like the teachers: an unreadable or missing checkpoint of one stage retrains
that stage (to the same result) and nothing else; a finished cache on a read-only filesystem is
reported without writing."""

import builtins
import errno
import os
import shutil

import pytest
from conftest import fast_ckd_config

from recbole_ckd.quick_start import run

# the stages of a CKD run, as the epochs they train are recorded: (model, active modalities)
STAGES = {"student": ("VBPR_CKD", None), "teacher v": ("VBPR", ("v",)), "teacher t": ("VBPR", ("t",))}


@pytest.mark.parametrize("stage", ["student", "teacher t"])
@pytest.mark.parametrize("name, damage", [("best.pth", "truncate"), ("best.pth", "delete"), ("last.pth", "truncate"),
                                          ("best.pth", "another stage's"), ("last.pth", "another stage's")])
def test_an_unreadable_checkpoint_retrains_only_its_stage(tiny_dataset, tmp_path, monkeypatch, caplog, epoch_log,
                                                          checkpoint_writes, stage, name, damage):
    monkeypatch.chdir(tmp_path)
    settings = fast_ckd_config(tiny_dataset["root"], tmp_path / "saved", epochs=2, state="INFO")
    first = run("VBPR_CKD", "tiny", config_dict=settings)
    dirs = {stage: os.path.join(settings["checkpoint_dir"], d) for stage, d in first["checkpoints"].items()}
    path = os.path.join(dirs[stage], name)
    if damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(100)
    elif damage == "another stage's":
        # readable, but another run's: the teacher v's (another model for the student, the same
        # model under another run key for the teacher t)
        shutil.copyfile(os.path.join(dirs["teacher v"], name), path)
    else:
        os.remove(path)  # what the old message said to do; the stage then claimed to be finished
    caplog.clear()
    epoch_log.clear()
    checkpoint_writes.clear()
    again = run("VBPR_CKD", "tiny", config_dict=settings)
    assert f"unusable checkpoint in {dirs[stage]}" in caplog.text and "training this stage again" in caplog.text
    assert again["test_result"] == first["test_result"] and again["modes"] == first["modes"]
    # nothing else retrained: only that stage's epochs ran, only its folder was written
    assert {(e.model, e.modalities) for e in epoch_log} == {STAGES[stage]} and epoch_log.of(*STAGES[stage]) == [0, 1]
    assert {os.path.dirname(f) for f in checkpoint_writes} == {dirs[stage]}
    caplog.clear()
    epoch_log.clear()
    run("VBPR_CKD", "tiny", config_dict=settings)  # healed: the next run reuses every stage
    assert "unusable checkpoint" not in caplog.text and epoch_log == []


def test_a_finished_cache_on_a_read_only_filesystem_is_reported(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = fast_ckd_config(tiny_dataset["root"], tmp_path / "saved", epochs=2, state="INFO")
    first = run("VBPR_CKD", "tiny", config_dict=settings)
    saved = str(tmp_path / "saved")
    attempts = []

    def refuse(path):
        if os.path.abspath(os.fspath(path)).startswith(saved):
            attempts.append(os.fspath(path))
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))

    real_open, real_os_open, real_mkdir, real_replace, real_remove = builtins.open, os.open, os.mkdir, os.replace, os.remove

    def ro_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def ro_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", ro_open)
    monkeypatch.setattr(os, "open", ro_os_open)
    # mkdir of a folder that exists fails with EEXIST, as on a read-only filesystem
    monkeypatch.setattr(os, "mkdir", lambda path, *a, **k: (os.path.isdir(path) or refuse(path), real_mkdir(path, *a, **k)))
    monkeypatch.setattr(os, "replace", lambda src, dst, *a: (refuse(dst), real_replace(src, dst, *a)))
    monkeypatch.setattr(os, "remove", lambda path, *a, **k: (refuse(path), real_remove(path, *a, **k)))
    again = run("VBPR_CKD", "tiny", config_dict=settings)
    assert again["test_result"] == first["test_result"] and again["modes"] == first["modes"]
    # the only write tried is the teacher lock, which a read-only cache does without
    assert attempts and all(a.endswith(".lock") for a in attempts)


def test_checkpoints_record_their_run_and_older_ones_without_a_run_key_still_load(tiny_dataset, tmp_path, monkeypatch,
                                                                                    caplog):
    from recbole_ckd.compat import load_checkpoint, save_checkpoint

    monkeypatch.chdir(tmp_path)
    settings = fast_ckd_config(tiny_dataset["root"], tmp_path / "saved", epochs=2, state="INFO")
    first = run("VBPR_CKD", "tiny", config_dict=settings)
    for stage, folder in first["checkpoints"].items():
        folder = os.path.join(settings["checkpoint_dir"], folder)
        for name in ("best.pth", "last.pth"):
            state = load_checkpoint(os.path.join(folder, name))
            assert state["model"] == ("VBPR_CKD" if stage == "student" else "VBPR")
            assert state["run_key"][:12] == folder.rsplit("-", 1)[-1]  # the key the folder is named after
            state.pop("run_key")  # as written before checkpoints recorded it
            save_checkpoint({k: v for k, v in state.items() if k != "format"}, os.path.join(folder, name))
    caplog.clear()
    again = run("VBPR_CKD", "tiny", config_dict=settings)
    assert "unusable checkpoint" not in caplog.text
    assert again["test_result"] == first["test_result"] and again["modes"] == first["modes"]
