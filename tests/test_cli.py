"""The entry point's data commands: --generate and --download, then training on the result."""

import hashlib
import io
import os
import shutil
import subprocess
import zipfile

import pytest
from conftest import fast_args, write_tiny_mmrec

import run_recbole_ckd


def train_args(name, root, tmp_path, model="VBPR"):
    flags = [f"--model={model}", f"--dataset={name}", f"--data_path={root}", f"--checkpoint_dir={tmp_path}/saved"]
    return flags + fast_args()


def test_generate_then_train(tmp_path):
    root = str(tmp_path / "data")
    run_recbole_ckd.main(["--generate=gen", f"--root={root}", "--n_users=60", "--n_items=40", "--n_interactions=700",
                          "--dim", "v=8", "--dim", "t=4", "--strength", "v=0.2"])
    assert {"gen.inter", "image_feat.npy", "text_feat.npy"} <= set(os.listdir(os.path.join(root, "gen")))
    result = run_recbole_ckd.main(train_args("gen", root, tmp_path))
    assert result["dataset_statistics"]["users"] == 60 and result["dataset_statistics"]["items"] == 40


@pytest.fixture
def archive_server(tmp_path, http_server):
    source, _, _ = write_tiny_mmrec(str(tmp_path / "src"), name="fetched")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in os.listdir(source):
            archive.write(os.path.join(source, name), f"fetched/{name}")
    http_server.files["/fetched.zip"] = (buffer.getvalue(), "normal")
    return f"{http_server.url}/fetched.zip", hashlib.sha256(buffer.getvalue()).hexdigest()


def test_download_then_train(tmp_path, archive_server):
    url, digest = archive_server
    root = str(tmp_path / "data")
    run_recbole_ckd.main(["--download=fetched", f"--url={url}", f"--sha256={digest}", f"--data_path={root}"])
    assert os.path.isfile(os.path.join(root, "fetched", "fetched.inter"))
    result = run_recbole_ckd.main(train_args("fetched", root, tmp_path))
    assert result["dataset_statistics"]["users"] == 24 and result["dataset_statistics"]["items"] == 30  # as served


def test_download_with_a_wrong_hash_leaves_nothing(tmp_path, archive_server, capsys):
    from recbole_ckd.data.download import DownloadError

    url, _ = archive_server
    root = str(tmp_path / "data")
    argv = ["--download=fetched", f"--url={url}", "--sha256=" + "0" * 64, f"--data_path={root}"]
    with pytest.raises(SystemExit) as exit_info:
        run_recbole_ckd.main(argv)
    assert exit_info.value.code == 2 and "error: Checksum mismatch" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(root, "fetched"))
    with pytest.raises(DownloadError, match="Checksum mismatch"):  # --debug: the exception itself
        run_recbole_ckd.main(argv + ["--debug"])


def test_download_without_a_known_url_says_where_the_copies_are(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_recbole_ckd.main(["--download=baby", f"--data_path={tmp_path}"])
    assert exit_info.value.code == 2 and "MMRec" in capsys.readouterr().err


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_recbole_ckd.main(["--model=VBPR", "--dataset=x", "stray"])
    assert exit_info.value.code == 2 and "--key=value" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run_recbole_ckd.main(["--model=VBPR"])
    assert exit_info.value.code == 2 and "--model and --dataset are required" in capsys.readouterr().err


def test_seed_is_a_config_key_not_an_abbreviation(tmp_path, monkeypatch):
    import recbole_ckd.quick_start as qs
    import recbole_ckd.reports as reports

    seen = {}
    monkeypatch.setattr(qs, "run", lambda model, dataset, files, cmd_args: seen.update(cmd_args=cmd_args) or {})
    monkeypatch.setattr(reports, "format_report", lambda result: "")
    run_recbole_ckd.main(["--model=VBPR", "--dataset=x", "--seed=7"])
    assert seen["cmd_args"] == ["--seed=7"]


def test_ctrl_c_says_how_to_resume_and_exits_130(monkeypatch, capsys):
    import recbole_ckd.quick_start as qs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(qs, "run", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        run_recbole_ckd.main(["--model=VBPR", "--dataset=x"])
    assert exit_info.value.code == 130 and "run the same command again to resume" in capsys.readouterr().err


def test_a_sweep_without_ray_is_one_line_saying_how_to_install_it(tiny_dataset, tmp_path, monkeypatch, capsys):
    import sys

    hyper = tmp_path / "hyper.test"
    hyper.write_text("kd_weight choice [0.01,0.1]\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # as on a stack without Ray: importing it fails
    with pytest.raises(SystemExit) as exit_info:
        run_recbole_ckd.main(["--model=VBPR_CKD", "--dataset=tiny", f"--data_path={tiny_dataset['root']}",
                              f"--checkpoint_dir={tmp_path / 'saved'}", f"--hyper={hyper}", f"--output={tmp_path / 'sw'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[-1].startswith("error: --hyper") and 'pip install "ray[tune]"' in err[-1]
    assert not (tmp_path / "sw").exists()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_runs_record_the_commit_in_a_git_worktree_too(tmp_path, monkeypatch):
    import recbole_ckd
    from recbole_ckd import reports

    def git(*args, cwd):
        command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()

    repo, worktree = tmp_path / "repo", tmp_path / "worktree"
    (repo / "recbole_ckd").mkdir(parents=True)
    (repo / "recbole_ckd" / "__init__.py").write_text("")
    git("init", "-q", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "first", cwd=repo)
    git("worktree", "add", "-q", str(worktree), cwd=repo)  # its .git is a file, not a folder
    monkeypatch.setattr(recbole_ckd, "__file__", str(worktree / "recbole_ckd" / "__init__.py"))
    head = git("rev-parse", "--short=12", "HEAD", cwd=worktree)
    assert reports.code_version()["commit"] == head
    (worktree / "recbole_ckd" / "__init__.py").write_text("changed = True\n")
    assert reports.code_version()["commit"] == head + "+dirty"
