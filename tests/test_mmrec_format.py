"""MMRec's split rule, the atomic dataset writer, and the shipped datasets (ml-100k-mm, ckd-devset)."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recbole_ckd.config import SHIPPED_DATASETS_DIR, Config
from recbole_ckd.data import mmrec_format
from recbole_ckd.data.mmrec_format import (
    INTER_COLUMNS,
    dataset_statistics,
    read_mmrec_dataset,
    split_per_user,
    write_mmrec_dataset,
)

SHIPPED = SHIPPED_DATASETS_DIR / "ml-100k-mm"
DEVSET = SHIPPED_DATASETS_DIR / "ckd-devset"


# ---------------------------------------------------------------------------- split rule
def _users_of_sizes(sizes, rng):
    users = np.repeat(np.arange(len(sizes)), sizes)
    return users[rng.permutation(len(users))]  # rows of a user are not adjacent


@pytest.mark.parametrize(
    "size, expected",
    # (train, valid, test): n < 10 -> n-2 / 1 / 1; else int(0.2 n) held out, floor(half) valid
    [(3, (1, 1, 1)), (9, (7, 1, 1)), (10, (8, 1, 1)), (11, (9, 1, 1)), (14, (12, 1, 1)),
     (15, (12, 1, 2)), (25, (20, 2, 3)), (100, (80, 10, 10)), (2, (1, 0, 1)), (1, (1, 0, 0))],
)
def test_split_counts_per_user(size, expected):
    rng = np.random.default_rng(0)
    sizes = [size, 3, 9, 10, 11, 25]
    users = _users_of_sizes(sizes, rng)
    labels = split_per_user(users, np.random.default_rng(1))
    assert labels.shape == users.shape
    mine = labels[users == 0]
    assert tuple(int((mine == k).sum()) for k in (0, 1, 2)) == expected


def test_split_all_sizes_follow_rule():
    sizes = np.arange(1, 60)
    users = _users_of_sizes(sizes, np.random.default_rng(3))
    labels = split_per_user(users, np.random.default_rng(4))
    for u, n in enumerate(sizes):
        counts = np.bincount(labels[users == u], minlength=3)
        if n >= 10:
            hold = int(0.2 * n)
            assert tuple(counts) == (n - hold, hold // 2, hold - hold // 2)
        elif n >= 3:
            assert tuple(counts) == (n - 2, 1, 1)


def test_split_is_deterministic_and_random():
    users = _users_of_sizes([40] * 50, np.random.default_rng(0))
    a = split_per_user(users, np.random.default_rng(7))
    assert np.array_equal(a, split_per_user(users, np.random.default_rng(7)))
    assert not np.array_equal(a, split_per_user(users, np.random.default_rng(8)))
    # held-out rows are chosen at random, not by position: each row of a user is held out ~20%
    users = np.zeros(40, dtype=np.int64)
    held = np.mean([split_per_user(users, np.random.default_rng(s)) != 0 for s in range(300)], axis=0)
    assert held.min() > 0.08 and held.max() < 0.35


def test_split_handles_elec_sized_data():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 190_000, 1_700_000)
    labels = split_per_user(users, rng)
    assert labels.shape == users.shape and set(np.unique(labels)) == {0, 1, 2}


# ---------------------------------------------------------------------------- writer
def _tiny(n_users=6, n_items=5, seed=0):
    rng = np.random.default_rng(seed)
    rows = [(u, i) for u in range(n_users) for i in range(n_items) if (u + i) % 2 == 0 or i == u % n_items]
    users, items = np.array(rows).T
    inter = pd.DataFrame(
        {
            "userID": users,
            "itemID": items,
            "rating": 1.0,
            "timestamp": np.arange(len(users)) + 1_000,
            "x_label": split_per_user(users, rng),
        }
    )
    features = {
        "image_feat.npy": rng.normal(size=(n_items, 8)).astype(np.float32),
        "text_feat.npy": rng.normal(size=(n_items, 3)).astype(np.float32),
    }
    return inter, features


def _listing(path):
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*")) if Path(path).exists() else None


def test_write_round_trip(tmp_path):
    inter, features = _tiny()
    path = write_mmrec_dataset(tmp_path, "tiny", inter, features, info={"source": "unit test"})
    assert path == tmp_path / "tiny"
    assert _listing(tmp_path) == ["tiny"] + [f"tiny/{f}" for f in sorted(
        ["tiny.inter", "image_feat.npy", "text_feat.npy", "dataset_info.json"])]
    lines = (path / "tiny.inter").read_text().splitlines()
    assert lines[0] == "userID\titemID\trating\ttimestamp\tx_label"
    assert len(lines) == len(inter) + 1

    back, feats, info = read_mmrec_dataset(path)
    assert list(back.columns) == INTER_COLUMNS
    pd.testing.assert_frame_equal(back, inter, check_dtype=False)
    for name, matrix in features.items():
        assert feats[name].dtype == np.float32
        np.testing.assert_array_equal(feats[name], matrix)
    assert info["provenance"] == {"source": "unit test"}
    stats = info["statistics"]
    assert stats["n_users"] == 6 and stats["n_items"] == 5 and stats["n_interactions"] == len(inter)
    assert sum(stats["split"].values()) == len(inter)
    assert stats["features"] == {"image_feat.npy": [5, 8], "text_feat.npy": [5, 3]}


def test_extra_files_are_written(tmp_path):
    inter, features = _tiny()
    path = write_mmrec_dataset(tmp_path, "tiny", inter, features, extra_files={"item_map.tsv": "itemID\n0\n"})
    assert (path / "item_map.tsv").read_text() == "itemID\n0\n"
    with pytest.raises(ValueError, match="extra file name 'other.inter' must be a plain file name not used"):
        write_mmrec_dataset(tmp_path, "other", inter, features, extra_files={"other.inter": "x"})


def _bad(kind):
    inter, features = _tiny()
    if kind == "user ids not contiguous":
        inter.loc[inter.userID == 5, "userID"] = 9
    elif kind == "item ids not 0-based":
        inter["itemID"] += 1
        features = {k: np.vstack([v, v[:1]]) for k, v in features.items()}
    elif kind == "wrong row count":
        features["text_feat.npy"] = features["text_feat.npy"][:-1]
    elif kind == "NaN":
        features["image_feat.npy"][2, 3] = np.nan
    elif kind == "float64":
        features["image_feat.npy"] = features["image_feat.npy"].astype(np.float64)
    elif kind == "missing column":
        inter = inter.drop(columns="timestamp")
    elif kind == "bad x_label":
        inter.loc[0, "x_label"] = 3
    elif kind == "duplicate pair":
        inter = pd.concat([inter, inter.iloc[:1]], ignore_index=True)
    elif kind == "float ids":
        inter["itemID"] = inter["itemID"].astype(float)
    elif kind == "bad file name":
        features["../escape.npy"] = features.pop("text_feat.npy")
    return inter, features


# what each way of breaking the data is refused with
REFUSALS = {
    "user ids not contiguous": "'userID' must hold contiguous 0-based ids 0..5, but its 6 distinct ids run from 0 to 9",
    "item ids not 0-based": "'itemID' must hold contiguous 0-based ids 0..4, but its 5 distinct ids run from 1 to 5",
    "wrong row count": r"text_feat.npy: expected shape \[n_items=5, dim\], got \(4, 3\)",
    "NaN": "image_feat.npy: holds NaN or Inf",
    "float64": "image_feat.npy: must be a float32 numpy array, got float64",
    "missing column": r"inter must have exactly the columns .*, got \['userID', 'itemID', 'rating', 'x_label'\]",
    "bad x_label": r"'x_label' must hold only 0 \(train\), 1 \(valid\) or 2 \(test\)",
    "duplicate pair": r"duplicate \(userID, itemID\) pairs",
    "float ids": "'itemID' must hold integers, got dtype float64",
    "bad file name": r"feature file name '\.\./escape.npy' must be a plain file name",
}


@pytest.mark.parametrize("kind", list(REFUSALS))
def test_write_refuses_bad_input_and_leaves_nothing(tmp_path, kind):
    inter, features = _bad(kind)
    root = tmp_path / "root"
    with pytest.raises(ValueError, match=REFUSALS[kind]):
        write_mmrec_dataset(root, "bad", inter, features)
    assert not root.exists()
    assert _listing(tmp_path) == []


def test_write_refuses_overwrite_then_overwrites(tmp_path):
    inter, features = _tiny()
    path = write_mmrec_dataset(tmp_path, "tiny", inter, features)
    before = (path / "tiny.inter").read_bytes()
    inter2, features2 = _tiny(seed=1)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_mmrec_dataset(tmp_path, "tiny", inter2, features2)
    assert (path / "tiny.inter").read_bytes() == before
    write_mmrec_dataset(tmp_path, "tiny", inter2, features2, overwrite=True)
    np.testing.assert_array_equal(np.load(path / "text_feat.npy"), features2["text_feat.npy"])
    assert _listing(tmp_path)[0] == "tiny" and all(p.startswith("tiny") for p in _listing(tmp_path))


def test_failed_write_leaves_no_half_dataset(tmp_path, monkeypatch):
    inter, features = _tiny()
    write_mmrec_dataset(tmp_path, "tiny", inter, features)
    before = _listing(tmp_path)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(mmrec_format.np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_mmrec_dataset(tmp_path, "tiny", inter, features, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        write_mmrec_dataset(tmp_path, "fresh", inter, features)
    assert _listing(tmp_path) == before  # old dataset intact, no temporary folders, no 'fresh'


def test_dataset_statistics():
    inter = pd.DataFrame(
        {"userID": [0, 0, 1, 1, 1], "itemID": [0, 1, 1, 2, 0], "rating": 1.0, "timestamp": 0,
         "x_label": [0, 2, 0, 0, 1]}
    )
    stats = dataset_statistics(inter)
    assert stats["n_users"] == 2 and stats["n_items"] == 3 and stats["n_interactions"] == 5
    assert stats["split"] == {"train": 3, "valid": 1, "test": 1}
    assert stats["interactions_per_user"] == {"min": 2, "mean": 2.5, "max": 3}
    assert stats["users_without_train"] == 0 and stats["items_without_train"] == 0


# ---------------------------------------------------------------------------- shipped dataset
@pytest.mark.skipif(not (SHIPPED / "ml-100k-mm.inter").exists(), reason="ml-100k-mm not built")
def test_shipped_ml100k_matches_its_info():
    inter, feats, info = read_mmrec_dataset(SHIPPED)
    assert (SHIPPED / "ml-100k-mm.inter").read_text().split("\n", 1)[0] == "\t".join(INTER_COLUMNS)
    stats = dataset_statistics(inter)
    stats["features"] = {f: list(m.shape) for f, m in feats.items()}
    assert stats == info["statistics"]
    assert (stats["n_users"], stats["n_items"], stats["n_interactions"]) == (943, 1682, 100_000)
    assert inter.userID.max() == 942 and inter.itemID.max() == 1681
    assert not inter.duplicated(["userID", "itemID"]).any()
    assert stats["users_without_train"] == 0
    text, meta = feats["text_feat.npy"], feats["meta_feat.npy"]
    assert text.shape == (1682, 384) and text.dtype == np.float32 and np.isfinite(text).all()
    assert meta.shape[0] == 1682 and meta.dtype == np.float32 and np.isfinite(meta).all()
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-3)
    assert len(np.unique(text.round(4), axis=0)) > 1600  # real embeddings, not a constant
    item_map = pd.read_csv(SHIPPED / "item_map.tsv", sep="\t")
    user_map = pd.read_csv(SHIPPED / "user_map.tsv", sep="\t")
    assert list(item_map.columns) == ["itemID", "raw_item_id", "title"] and len(item_map) == 1682
    assert list(user_map.columns) == ["userID", "raw_user_id"] and len(user_map) == 943
    assert item_map.raw_item_id.is_monotonic_increasing and user_map.raw_user_id.is_monotonic_increasing
    assert json.loads((SHIPPED / "dataset_info.json").read_text())["provenance"]["seed"] == 2024


def test_shipped_ckd_devset_is_the_published_one():
    """The files the committed ckd-devset results were computed on: each one's SHA-256 is the
    digest dataset_info.json records, and the statistics are those of the files."""
    info = json.loads((DEVSET / "dataset_info.json").read_text())
    assert sorted(info["sha256"]) == sorted(p.name for p in DEVSET.iterdir() if p.name != "dataset_info.json")
    for name, digest in info["sha256"].items():
        assert hashlib.sha256((DEVSET / name).read_bytes()).hexdigest() == digest, f"{name} is not the published file"
    inter, feats, _ = read_mmrec_dataset(DEVSET)
    stats = dataset_statistics(inter)
    stats["features"] = {f: list(m.shape) for f, m in feats.items()}
    assert stats == info["statistics"]
    assert (stats["n_users"], stats["n_interactions"], stats["features"]["text_feat.npy"]) == (3000, 30047, [1200, 384])


def test_a_shipped_dataset_needs_no_data_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no dataset/ folder here
    config = Config("VBPR", "ckd-devset", config_dict={"use_gpu": False})
    assert config["data_path"] == os.fspath(DEVSET) and config["data_format"] == "mmrec"

