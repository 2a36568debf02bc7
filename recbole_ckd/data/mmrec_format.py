"""Writing datasets in MMRec's format, atomically, after checking them.

A dataset is a folder ``<root>/<name>/`` holding

* ``<name>.inter``: tab-separated, header ``userID itemID rating timestamp x_label`` (no RecBole
  type suffixes); user and item ids are 0-based and contiguous; ``x_label`` is 0 train, 1 valid, 2 test;
* one float32 ``.npy`` matrix ``[n_items, dim]`` per modality, row ``i`` = item id ``i``;
* ``dataset_info.json``: provenance and statistics (ours; MMRec ignores it).
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

INTER_COLUMNS = ["userID", "itemID", "rating", "timestamp", "x_label"]
TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}
INFO_FILE = "dataset_info.json"


# ---------------------------------------------------------------------------- split
def split_per_user(user_ids, rng):
    """x_label (0 train / 1 valid / 2 test) for each row, MMRec's random per-user rule.

    A user with n < 10 interactions gets 1 valid, 1 test and n - 2 train; a user with n >= 10
    holds out int(0.2 n) interactions, floor(half) of them valid and the rest test. Which rows are
    held out is uniformly random. The rule leaves n = 1 undefined: such a user keeps its one row in
    train (held-out rows are capped at n - 1, so every user keeps a train row; n = 2 gives 1 train, 1 test).
    """
    user_ids = np.asarray(user_ids)
    n = len(user_ids)
    if n == 0:
        return np.zeros(0, dtype=np.int8)
    # random order, then group by user keeping that order: position in group = random rank
    perm = rng.permutation(n)
    order = perm[np.argsort(user_ids[perm], kind="stable")]
    sorted_users = user_ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    sizes = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, sizes)
    size = np.repeat(sizes, sizes)

    n_hold = np.minimum(np.where(size < 10, 2, size // 5), size - 1)  # size // 5 == int(0.2 * size)
    n_test = np.where(size < 10, np.minimum(n_hold, 1), n_hold - n_hold // 2)
    n_valid = n_hold - n_test
    sorted_labels = np.where(rank < n_valid, VALID, np.where(rank < n_hold, TEST, TRAIN)).astype(np.int8)

    labels = np.empty(n, dtype=np.int8)
    labels[order] = sorted_labels
    return labels


# ---------------------------------------------------------------------------- statistics
def _min_mean_max(counts):
    return {"min": int(counts.min()), "mean": round(float(counts.mean()), 3), "max": int(counts.max())}


def dataset_statistics(inter):
    """Counts of an MMRec-format interaction table (a DataFrame with INTER_COLUMNS)."""
    users = inter["userID"].to_numpy()
    items = inter["itemID"].to_numpy()
    labels = inter["x_label"].to_numpy()
    n_users = int(pd.unique(users).size)
    n_items = int(pd.unique(items).size)
    n = len(inter)
    train = labels == TRAIN
    return {
        "n_users": n_users,
        "n_items": n_items,
        "n_interactions": n,
        "density": round(n / max(1, n_users * n_items), 6),
        "split": {SPLIT_NAMES[k]: int((labels == k).sum()) for k in (TRAIN, VALID, TEST)},
        "interactions_per_user": _min_mean_max(np.bincount(users)) if n else None,
        "interactions_per_item": _min_mean_max(np.bincount(items)) if n else None,
        "users_without_train": n_users - int(pd.unique(users[train]).size),
        "items_without_train": n_items - int(pd.unique(items[train]).size),
    }


# ---------------------------------------------------------------------------- validation
def _check_ids(values, column):
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"column '{column}' must hold integers, got dtype {values.dtype}")
    present = np.unique(values)
    if present[0] != 0 or present[-1] != len(present) - 1:
        raise ValueError(
            f"column '{column}' must hold contiguous 0-based ids 0..{len(present) - 1}, "
            f"but its {len(present)} distinct ids run from {present[0]} to {present[-1]}"
        )
    return len(present)


def _validated_inter(inter):
    if not isinstance(inter, pd.DataFrame):
        raise TypeError(f"inter must be a pandas DataFrame, got {type(inter).__name__}")
    if sorted(inter.columns) != sorted(INTER_COLUMNS):
        raise ValueError(f"inter must have exactly the columns {INTER_COLUMNS}, got {list(inter.columns)}")
    if len(inter) == 0:
        raise ValueError("inter is empty")
    inter = inter[INTER_COLUMNS]
    if inter.isna().any().any():
        raise ValueError(f"inter has missing values in column(s) {list(inter.columns[inter.isna().any()])}")
    _check_ids(inter["userID"].to_numpy(), "userID")
    n_items = _check_ids(inter["itemID"].to_numpy(), "itemID")
    for column in ("rating", "timestamp"):
        if not np.issubdtype(inter[column].dtype, np.number):
            raise ValueError(f"column '{column}' must be numeric, got dtype {inter[column].dtype}")
    if not np.issubdtype(inter["x_label"].dtype, np.integer) or not inter["x_label"].isin([TRAIN, VALID, TEST]).all():
        raise ValueError("column 'x_label' must hold only 0 (train), 1 (valid) or 2 (test)")
    if inter.duplicated(["userID", "itemID"]).any():
        raise ValueError("inter has duplicate (userID, itemID) pairs")
    return inter, n_items


def _validate_features(features, n_items):
    if not features:
        raise ValueError("features is empty: give at least one modality matrix")
    for file_name, matrix in features.items():
        if Path(file_name).name != file_name or not file_name.endswith(".npy"):
            raise ValueError(f"feature file name '{file_name}' must be a plain file name ending in .npy")
        if not isinstance(matrix, np.ndarray) or matrix.dtype != np.float32:
            dtype = getattr(matrix, "dtype", type(matrix).__name__)
            raise ValueError(f"{file_name}: must be a float32 numpy array, got {dtype}")
        if matrix.ndim != 2 or matrix.shape[0] != n_items:
            raise ValueError(f"{file_name}: expected shape [n_items={n_items}, dim], got {matrix.shape}")
        if not np.isfinite(matrix).all():
            raise ValueError(f"{file_name}: holds NaN or Inf values")


def check_dataset_name(name):
    """A dataset name is one plain folder name: no path separators, not '.' or '..'."""
    if Path(name).name != name or name in ("", ".", "..") or "\\" in name:
        raise ValueError(f"dataset name '{name}' must be a plain folder name")


def _jsonable(value):
    """json.dump's fallback for numpy scalars, arrays and paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# ---------------------------------------------------------------------------- write / read
def write_mmrec_dataset(root, name, inter, features, *, info=None, extra_files=None, overwrite=False):
    """Check, then write ``<root>/<name>/`` in MMRec's format; return that folder's path.

    ``features`` maps a file name (e.g. ``'image_feat.npy'``) to a float32 ``[n_items, dim]``
    matrix, ``n_items = max itemID + 1``. ``info`` (provenance, JSON-serialisable) goes into
    ``dataset_info.json`` with the computed statistics. ``extra_files`` maps more file names
    (e.g. id maps) to their text. Everything is written into a temporary
    folder beside the target and moved into place at the end, so a failure never leaves a
    half-written dataset. An existing target raises FileExistsError unless ``overwrite``.
    """
    root = Path(root)
    target = root / name
    check_dataset_name(name)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")
    # check everything before touching the disk
    inter, n_items = _validated_inter(inter)
    _validate_features(features, n_items)
    extra_files = extra_files or {}
    reserved = {f"{name}.inter", INFO_FILE, *features}
    for file_name in extra_files:
        if Path(file_name).name != file_name or file_name in reserved:
            raise ValueError(f"extra file name '{file_name}' must be a plain file name not used by the dataset")

    statistics = dataset_statistics(inter)
    statistics["features"] = {f: list(m.shape) for f, m in features.items()}
    meta = {
        "name": name,
        "format": "MMRec",
        "files": {"inter": f"{name}.inter", "features": sorted(features), "extra": sorted(extra_files)},
        "provenance": info or {},
        "statistics": statistics,
    }

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is meant to be shared
        inter.to_csv(tmp / f"{name}.inter", sep="\t", index=False)
        for file_name, matrix in features.items():
            np.save(tmp / file_name, matrix, allow_pickle=False)
        for file_name, text in extra_files.items():
            (tmp / file_name).write_text(text, encoding="utf-8")
        with open(tmp / INFO_FILE, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2, default=_jsonable)
            fh.write("\n")
        _move_into_place(tmp, target, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _move_into_place(tmp, target, overwrite):
    # os.replace cannot replace a non-empty folder: move the old one aside first, drop it after
    old = None
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:  # put the old dataset back
            os.replace(old / target.name, target)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_field_counts(path, sep="\t"):
    """Refuse a ragged table (a row with more or fewer fields than the header) or bytes that are not
    UTF-8, naming the line: pandas fails on a long row without its line and pads a short one with NaN."""
    with open(path, "rb") as f:  # bytes, decoded line by line, so that a decoding error has its line
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise ValueError(f"{path}, line {number}: not UTF-8 text; save the file as UTF-8.") from None
            if number == 1:
                width = line.count(sep) + 1
            elif line and line.count(sep) + 1 != width:  # blank lines are skipped by every reader
                separator = "tab" if sep == "\t" else repr(sep)
                raise ValueError(f"{path}, line {number}: {line.count(sep) + 1} fields, but the header has {width}; "
                                 f"every row needs one {separator}-separated value per header column.")


def read_mmrec_dataset(path, feature_files=None):
    """Read a folder written by write_mmrec_dataset: (inter DataFrame, {file: matrix}, info dict).

    ``feature_files`` defaults to the files listed in dataset_info.json (or every .npy file).
    """
    path = Path(path)
    name = path.name
    check_field_counts(path / f"{name}.inter")
    inter = pd.read_csv(path / f"{name}.inter", sep="\t")
    info_path = path / INFO_FILE
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    if feature_files is None:
        feature_files = info.get("files", {}).get("features") or sorted(p.name for p in path.glob("*.npy"))
    features = {f: np.load(path / f, allow_pickle=False) for f in feature_files}
    return inter, features, info


def print_summary(path, name):
    """What a command that wrote a dataset prints: where it is and its statistics."""
    info = json.loads((Path(path) / "dataset_info.json").read_text(encoding="utf-8"))
    print(f"Dataset '{name}' written to {path}")
    print(json.dumps(info["statistics"], indent=2))
