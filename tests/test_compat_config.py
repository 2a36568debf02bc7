"""The compatibility shims, the Config's lookup rules and the packaging of properties/."""

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from recbole.trainer import Trainer

from recbole_ckd import compat
from recbole_ckd.checkpoints import SafeCheckpointMixin
from recbole_ckd.config import Config
from recbole_ckd.model import VBPR
from recbole_ckd.registry import get_model, get_trainer
from recbole_ckd.settings_files import properties_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_numpy_aliases_are_restored_when_missing(monkeypatch):
    monkeypatch.delattr(np, "float_")
    monkeypatch.delattr(np, "unicode_")
    compat.apply()
    assert np.float_ is np.float64 and np.unicode_ is np.str_


def test_recbole_nan_filling_fills_under_every_pandas():
    """RecBole's _fill_nan fills a copy under pandas 3 (copy-on-write); the patched one fills the data."""
    import types

    import pandas as pd
    from recbole.data.dataset import Dataset
    from recbole.utils import FeatureType

    feat = pd.DataFrame({"user": [1.0, np.nan, 3.0], "price": [1.0, np.nan, 3.0]})
    dataset = types.SimpleNamespace(feat_name_list=["inter_feat"], inter_feat=feat,
                                    field2type={"user": FeatureType.TOKEN, "price": FeatureType.FLOAT})
    compat._fill_nan(dataset)
    assert feat["user"].tolist() == [1.0, 0.0, 3.0] and feat["price"].tolist() == [1.0, 2.0, 3.0]
    if int(pd.__version__.split(".")[0]) >= 3:
        assert Dataset._fill_nan is compat._fill_nan


def test_interaction_sort_is_stable_with_the_last_key_first():
    from recbole.data.interaction import Interaction

    inter = Interaction({"a": torch.tensor([2, 1, 2, 1, 2]), "b": torch.tensor([5, 7, 5, 6, 9]),
                         "row": torch.arange(5)})
    compat._interaction_sort(inter, ["a", "b"], [True, False])  # a ascending, ties by b descending
    # a descending key is the stable ascending order reversed, as RecBole meant (its own code fails
    # there on today's torch: a tensor from a negative-stride array), so rows 0 and 2 (tied) swap
    assert inter["row"].tolist() == [1, 3, 4, 2, 0]
    compat._interaction_sort(inter, "row")
    assert inter["row"].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="is not exist"):
        compat._interaction_sort(inter, "missing")
    if int(np.__version__.split(".")[0]) >= 2:  # np.argsort of a tensor is deprecated there
        assert Interaction.sort is compat._interaction_sort


def test_future_warnings_from_recbole_are_hidden_and_others_are_not():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        compat.apply()
        for module in ("recbole.data.dataset.dataset", "recbole.trainer.trainer", "recbole_ckd.model", "pandas"):
            warnings.warn_explicit("deprecated", FutureWarning, "file.py", 1, module=module)
        warnings.warn_explicit("other", UserWarning, "file.py", 1, module="recbole.trainer.trainer")
    assert sorted(str(w.message) for w in caught) == ["deprecated", "deprecated", "other"]


def test_numpy_patch_is_a_no_op_where_names_exist(monkeypatch):
    sentinel = object()
    monkeypatch.setattr(np, "complex_", sentinel)
    compat.apply()
    assert np.complex_ is sentinel


def test_dok_update_shim_builds_the_same_matrix():
    matrix = sp.dok_matrix((3, 4), dtype=np.float32)
    compat._dok_update(matrix, {(0, 1): 1.0, (2, 3): 2.0})
    assert matrix.toarray().tolist() == [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 2]]
    assert hasattr(sp.dok_matrix, "_update")  # RecBole's LightGCN calls it


def test_a_folder_made_by_another_run_between_check_and_create_is_no_error(tmp_path, monkeypatch):
    """Two runs started together in a fresh folder: both see it missing, one creates it first."""
    import recbole.trainer.trainer

    folder = tmp_path / "saved"
    folder.mkdir()
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    recbole.trainer.trainer.ensure_dir(str(folder))
    recbole.trainer.trainer.ensure_dir(str(tmp_path / "new" / "deeper"))
    monkeypatch.undo()
    assert (tmp_path / "new" / "deeper").is_dir()


def test_checkpoint_round_trip_and_atomic_write(tmp_path):
    path = tmp_path / "sub" / "c.pth"
    compat.save_checkpoint({"epoch": 3, "w": torch.arange(4.0), "meta": {"a": [1, "x"]}}, path)
    state = compat.load_checkpoint(path)
    assert state["epoch"] == 3 and state["w"].tolist() == [0, 1, 2, 3] and state["meta"] == {"a": [1, "x"]}
    assert os.listdir(path.parent) == ["c.pth"]  # no temporary file left


def test_ctrl_c_while_a_checkpoint_is_written_is_an_interruption_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "c.pth"
    compat.save_checkpoint({"epoch": 1}, path)

    def interrupted_save(obj, f):  # what torch's zip writer does when Ctrl-C lands inside it
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        compat.save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert compat.load_checkpoint(path)["epoch"] == 1 and os.listdir(tmp_path) == ["c.pth"]


def test_truncated_checkpoint_is_reported(tmp_path):
    path = tmp_path / "c.pth"
    compat.save_checkpoint({"w": torch.zeros(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(compat.CheckpointError, match="not a readable recbole-ckd checkpoint"):
        compat.load_checkpoint(path)


def test_foreign_checkpoints_are_refused(tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(compat.CheckpointError, match="not written by recbole-ckd"):
        compat.load_checkpoint(plain)
    pickled = tmp_path / "pickled.pth"
    torch.save({"format": compat.CHECKPOINT_FORMAT, "obj": compat.CheckpointError("x")}, pickled)
    with pytest.raises(compat.CheckpointError, match="not a readable"):
        compat.load_checkpoint(pickled)  # weights_only refuses arbitrary objects


def test_config_never_reads_sys_argv(monkeypatch, tiny_dataset):
    monkeypatch.setattr(sys, "argv", ["ray_worker.py", "--learning_rate=9", "--epochs", "junk"])
    config = Config("VBPR", "tiny", config_dict={"data_path": tiny_dataset["root"]})
    assert config["learning_rate"] == 0.001 and config["epochs"] == 1000


def test_bad_command_line_arguments_are_errors(tiny_dataset):
    with pytest.raises(ValueError, match="--key=value"):
        Config("VBPR", "tiny", cmd_args=["--epochs"])
    with pytest.raises(ValueError, match="twice"):
        Config("VBPR", "tiny", cmd_args=["--epochs=1", "--epochs=2"])


def test_priority_of_plugin_and_recbole_properties(tiny_dataset):
    config = Config("LightGCN", "tiny", config_dict={"data_path": tiny_dataset["root"]})
    assert config["n_layers"] == 2  # RecBole's model YAML
    assert config["valid_metric"] == "Recall@20" and config["topk"] == [10, 20]  # plugin overall over RecBole's
    assert config["USER_ID_FIELD"] == "userID" and config["data_format"] == "mmrec"  # detected from the header
    config = Config("BPR", "ml-100k", config_dict={"state": "WARNING"})
    assert config["USER_ID_FIELD"] == "user_id" and config["data_format"] == "atomic"  # RecBole's dataset YAML wins


def test_model_lookup_is_plugin_first_with_recbole_fallback():
    assert get_model("VBPR") is VBPR
    assert get_model("BPR").__module__.startswith("recbole.model")
    with pytest.raises(ValueError, match="Unknown model 'Nope'.*VBPR"):
        get_model("Nope")
    trainer = get_trainer(None, "BPR")
    assert issubclass(trainer, SafeCheckpointMixin) and issubclass(trainer, Trainer)
    assert get_trainer(None, "BPR") is trainer


def test_the_registry_chooses_each_models_trainer():
    from recbole_ckd.trainer import CKDTrainer, ResumableTrainer

    assert get_trainer(None, "VBPR_CKD") is CKDTrainer  # a CKD student trains its teachers first
    assert get_trainer(None, "VBPR") is ResumableTrainer
    assert get_trainer(None, "VBPR_MDrop") is ResumableTrainer


def test_properties_ship_inside_the_wheel(tmp_path):
    assert properties_dir() == __import__("pathlib").Path(ROOT) / "properties"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), ROOT],
        check=True, capture_output=True,
    )
    (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    names = set(zipfile.ZipFile(tmp_path / wheel).namelist())
    for name in ("properties/overall.yaml", "properties/model/VBPR.yaml", "properties/dataset/baby.yaml",
                 "datasets/ml-100k-mm/ml-100k-mm.inter", "datasets/ml-100k-mm/text_feat.npy",
                 "datasets/ckd-devset/ckd-devset.inter", "datasets/ckd-devset/dataset_info.json"):
        assert f"recbole_ckd/{name}" in names, name
    assert "run_recbole_ckd.py" in names


def test_an_unwritable_checkpoint_folder_is_named(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(compat.CheckpointError, match=r"blocker/run/best.pth cannot be written .*writable --checkpoint_dir"):
        compat.save_checkpoint({"x": 1}, blocker / "run" / "best.pth")
