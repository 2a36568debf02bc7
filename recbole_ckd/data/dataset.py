"""The multimodal dataset: RecBole's Dataset plus pre-split data and aligned modality matrices."""

import math
import os
import re

import numpy as np
import pandas as pd
import torch
from recbole.data.dataset import Dataset
from recbole.utils import FeatureSource, FeatureType, set_color

from recbole_ckd.data.loaders import build_dataloaders
from recbole_ckd.data.mmrec_format import check_field_counts
from recbole_ckd.errors import UserError

SPLIT_NAMES = ("train", "valid", "test")
# MMRec's ids are the integers 0..n-1 written plainly: "049" and "49" would be two items on one feature row
CANONICAL_ID = re.compile(r"0|[1-9][0-9]*")


class DatasetError(UserError, ValueError):
    """Bad input data; the message names the file, the field and the fix."""


class MultimodalDataset(Dataset):
    """Interactions through RecBole, the split from a column, modality matrices by internal id.

    Reads RecBole atomic files and MMRec's format (``<name>.inter`` with the header
    ``userID itemID rating timestamp x_label`` and no type suffixes). When the interaction
    file has the ``split_field`` column (0 train, 1 valid, 2 test) the split is taken from it
    exactly; otherwise RecBole's ``eval_args`` split applies.

    ``modality_features[m]`` is a float32 array ``[item_num, dim]`` whose row ``i`` belongs to
    RecBole's internal item id ``i`` (row 0 is the padding id and holds zeros). Feature files
    have one row per raw item id: raw ids must be the integers ``0 .. n_rows-1``.
    """

    def __init__(self, config, load_modalities=True):
        self._load_modalities = load_modalities
        super().__init__(config)

    # ---------------------------------------------------------------- loading
    def _inter_path(self, token, dataset_path):
        return os.path.join(dataset_path, f"{token}.inter")

    def _check_files_present(self, token, dataset_path):
        wanted = [self._inter_path(token, dataset_path)]
        if self._load_modalities:
            wanted += [os.path.join(dataset_path, f) for f in (self.config["modalities"] or {}).values()]
        missing = [p for p in wanted if not os.path.isfile(p)]
        if not missing:
            return
        source = self.config["download_info"] or (
            "no public copy is registered for this dataset; generate one with "
            "`python run_recbole_ckd.py --generate=NAME` or put your own files there"
        )
        raise DatasetError(
            f"Dataset '{token}' is incomplete in {dataset_path}: missing "
            + ", ".join(os.path.basename(p) for p in missing)
            + f".\nPublic copies: {source}\nPut the files in {dataset_path}/ (or set --data_path=DIR with the "
            f"files in DIR/{token}/), or fetch them with `python run_recbole_ckd.py --download={token} --url=URL`."
        )

    def _load_data(self, token, dataset_path):
        self._check_files_present(token, dataset_path)
        super()._load_data(token, dataset_path)

    def _load_inter_feat(self, token, dataset_path):
        path = self._inter_path(token, dataset_path)
        if os.path.getsize(path) == 0:
            raise DatasetError(f"{path}: the file is empty; it needs a header line and one line per interaction.")
        atomic = self.config["data_format"] != "mmrec"
        try:
            check_field_counts(path, self.config["field_separator"] if atomic else "\t")
        except ValueError as err:
            raise DatasetError(str(err)) from None
        if atomic:
            self._check_atomic_header(path)
            super()._load_inter_feat(token, dataset_path)
            if self.inter_feat is None or len(self.inter_feat) == 0:
                raise DatasetError(f"{path}: holds a header but no interactions; add one line per interaction.")
            return
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        if df.empty:
            raise DatasetError(f"{path}: holds a header but no interactions; add one line per interaction.")
        types = {
            self.config["USER_ID_FIELD"]: FeatureType.TOKEN,
            self.config["ITEM_ID_FIELD"]: FeatureType.TOKEN,
            self.config["RATING_FIELD"]: FeatureType.FLOAT,
            self.config["TIME_FIELD"]: FeatureType.FLOAT,
            self.config["split_field"]: FeatureType.TOKEN,
        }
        missing = [c for c in types if c not in df.columns]
        if missing:
            raise DatasetError(
                f"{path}: MMRec-format header lacks column(s) {missing}; expected the header "
                f"'{chr(9).join(types)}' (tab-separated)."
            )
        for field, ftype in types.items():
            if (df[field] == "").any():
                row = int(np.flatnonzero((df[field] == "").to_numpy())[0]) + 2
                raise DatasetError(f"{path}, line {row}: field '{field}' is empty; every row needs a value.")
            if field in (self.config["USER_ID_FIELD"], self.config["ITEM_ID_FIELD"]):
                bad = ~df[field].str.fullmatch(CANONICAL_ID)
                if bad.any():
                    row = int(np.flatnonzero(bad.to_numpy())[0])
                    raise DatasetError(
                        f"{path}, line {row + 2}: {field} {df[field].iloc[row]!r} is not a plain non-negative integer; "
                        "MMRec-format ids are 0, 1, 2, ... written without signs, spaces or leading zeros."
                    )
            if ftype == FeatureType.FLOAT:
                values = pd.to_numeric(df[field], errors="coerce")
                if values.isna().any():
                    row = int(np.flatnonzero(values.isna().to_numpy())[0]) + 2
                    raise DatasetError(f"{path}, line {row}: field '{field}' is not a number.")
                df[field] = values.astype(np.float64)
            self.field2source[field] = FeatureSource.INTERACTION
            self.field2type[field] = ftype
            self.field2seqlen[field] = 1
        self.inter_feat = df[list(types)]

    def _check_atomic_header(self, path):
        """Every column ``name:type`` with one of RecBole's types, the user and item columns present, the
        split column a token (RecBole would fail later, with a traceback, or ignore the column)."""
        with open(path, "r", encoding="utf-8") as f:
            header = f.readline().rstrip("\r\n").split(self.config["field_separator"])
        types = [t.value for t in FeatureType]
        columns = {}
        for column in header:
            name, _, ftype = column.partition(":")
            if ftype not in types:
                raise DatasetError(
                    f"{path}, line 1: column {column!r} needs one of RecBole's type suffixes "
                    f"({', '.join(f'{name}:{t}' for t in types)}); e.g. user_id:token, rating:float."
                )
            columns[name] = ftype
        for key in ("USER_ID_FIELD", "ITEM_ID_FIELD"):
            if self.config[key] not in columns:
                raise DatasetError(
                    f"{path}, line 1: no '{self.config[key]}' column (the header has {list(columns)}); "
                    f"name the column {self.config[key]}:token, or set {key} to its name."
                )
        split_field = self.config["split_field"]
        if columns.get(split_field, "token") != "token":
            raise DatasetError(
                f"{path}, line 1: the split column '{split_field}:{columns[split_field]}' must be "
                f"'{split_field}:token' (values 0 train, 1 valid, 2 test)."
            )

    def _data_processing(self):
        n_before = len(self.inter_feat)
        super()._data_processing()
        split_field = self.config["split_field"]
        if split_field in self.inter_feat and len(self.inter_feat) != n_before:
            raise DatasetError(
                f"{self.dataset_name}: RecBole's filtering removed {n_before - len(self.inter_feat)} of {n_before} "
                f"interactions, but the data is pre-split by '{split_field}' and must be used as it is. "
                "Remove the filtering options (rm_dup_inter, val_interval, user/item_inter_num_interval) from your config."
            )
        if self._load_modalities:
            self.modality_features = self._load_modality_features()
        else:
            self.modality_features = {}

    # ---------------------------------------------------------------- modalities
    def _load_modality_features(self):
        raw_ids = self._raw_item_ids()
        features = {}
        for name, file_name in (self.config["modalities"] or {}).items():
            path = os.path.join(self.dataset_path, file_name)
            matrix = open_feature_file(path, name)
            if matrix.ndim != 2:
                raise DatasetError(f"{path} (modality '{name}'): expected a 2-D [n_items, dim] array, got shape {matrix.shape}.")
            if not np.issubdtype(matrix.dtype, np.floating):
                raise DatasetError(
                    f"{path} (modality '{name}'): dtype {matrix.dtype} is not a float type; save it as float32."
                )
            n_rows = matrix.shape[0]
            if raw_ids.max() >= n_rows:
                raise DatasetError(
                    f"{path} (modality '{name}'): has {n_rows} rows, but the item ids of {self.dataset_name}.inter run "
                    f"from 0 to {raw_ids.max()}; the file needs one row per raw item id ({raw_ids.max() + 1} rows)."
                )
            if n_rows > raw_ids.max() + 1:
                self.logger.warning(
                    f"{path} (modality '{name}'): {n_rows - raw_ids.max() - 1} trailing row(s) belong to item ids that "
                    f"{self.dataset_name}.inter never uses; they are ignored."
                )
            aligned = np.zeros((self.item_num, matrix.shape[1]), dtype=np.float32)
            aligned[1:] = matrix[raw_ids]
            bad = ~np.isfinite(aligned[1:]).all(axis=1)
            if bad.any():
                raise DatasetError(
                    f"{path} (modality '{name}'): {int(bad.sum())} row(s) hold NaN or Inf, first at raw item id "
                    f"{int(raw_ids[np.flatnonzero(bad)[0]])}; replace them (MMRec uses the mean feature vector)."
                )
            features[name] = aligned
        return features

    def _raw_item_ids(self):
        """Raw item tokens of internal ids 1..item_num-1 as integer feature-row indices."""
        tokens = self.field2id_token[self.iid_field][1:]
        bad = [t for t in tokens.tolist() if not CANONICAL_ID.fullmatch(str(t))]
        if bad:
            raise DatasetError(
                f"{self.dataset_name}.inter: item id {bad[0]!r} is not a plain non-negative integer; item ids must be "
                "the integers 0..n_items-1 (one feature row per id) to align the modality files."
            )
        ids = np.asarray(tokens, dtype=np.int64)
        if ids.size == 0 or ids.min() < 0:
            raise DatasetError(f"{self.dataset_name}.inter: item ids must be non-negative integers.")
        return ids

    # ---------------------------------------------------------------- splitting
    def build(self):
        split_field = self.config["split_field"]
        if split_field not in self.inter_feat:
            pairs = self.inter_feat[[self.uid_field, self.iid_field]]
            self._check_duplicate_pairs(pairs[self.uid_field].to_numpy(), pairs[self.iid_field].to_numpy(), None)
            return super().build()
        self._change_feat_format()
        tokens = np.asarray(self.field2id_token[split_field])[self.inter_feat[split_field].numpy()]
        allowed = {"0": 0, "1": 1, "2": 2}
        bad = sorted(set(tokens.tolist()) - set(allowed))
        if bad:
            raise DatasetError(
                f"{self.dataset_name}.inter: split column '{split_field}' holds {bad[:5]}; only 0 (train), "
                "1 (valid) and 2 (test) are allowed."
            )
        labels = np.vectorize(allowed.get, otypes=[np.int64])(tokens) if len(tokens) else tokens
        self._check_duplicate_pairs(self.inter_feat[self.uid_field].numpy(), self.inter_feat[self.iid_field].numpy(), labels)
        self.split_sizes = {}
        datasets = []
        for value, name in enumerate(SPLIT_NAMES):
            index = np.flatnonzero(labels == value)
            if index.size == 0:
                raise DatasetError(
                    f"{self.dataset_name}.inter: the {name} split (x_label = {value} in column '{split_field}') is empty."
                )
            self.split_sizes[name] = int(index.size)
            datasets.append(self.copy(self.inter_feat[torch.from_numpy(index)]))
        return datasets

    def _check_duplicate_pairs(self, users, items, labels):
        """A (user, item) pair listed more than once. Within the training split (or before RecBole's own
        split) it only weighs the pair more: a warning with the count. Held out, it corrupts evaluation: a
        valid or test pair listed twice counts twice in its user's positives, and one also in train is
        masked out of the ranking as history (or, with test_masking: train, both trained on and tested):
        refused, naming the first such pair."""
        path = os.path.join(self.dataset_path, f"{self.dataset_name}.inter")
        keys = np.asarray(users, dtype=np.int64) * self.item_num + np.asarray(items, dtype=np.int64)
        if labels is None:
            repeated = len(keys) - np.unique(keys).size
            if repeated:
                self.logger.warning(f"{path}: {repeated} duplicate (user, item) row(s); RecBole's split may put copies "
                                    "of one pair in train and test: set rm_dup_inter: first to keep each pair once.")
            return
        held_out = labels != 0
        train_keys, eval_keys = keys[~held_out], keys[held_out]
        in_train = np.isin(eval_keys, train_keys)
        _, first, counts = np.unique(eval_keys, return_index=True, return_counts=True)
        bad = np.flatnonzero(in_train | np.isin(eval_keys, eval_keys[first[counts > 1]]))
        if bad.size:
            where = np.flatnonzero(held_out)[bad[0]]
            user = self.field2id_token[self.uid_field][users[where]]
            item = self.field2id_token[self.iid_field][items[where]]
            raise DatasetError(
                f"{path}: {bad.size} held-out (valid or test) row(s) repeat a (user, item) pair of another row, first "
                f"user {user}, item {item}; each held-out pair must occur once in the file (a repeat counts twice in "
                "evaluation, or is masked as training history): remove the repeats."
            )
        repeated = len(train_keys) - np.unique(train_keys).size
        if repeated:
            self.logger.warning(f"{path}: {repeated} duplicate (user, item) row(s) in the train split; each repeat "
                                "makes its pair a more frequent training example.")

    def __str__(self):
        lines = [super().__str__()]
        if getattr(self, "split_sizes", None):
            lines.append(
                set_color("Split (from column)", "blue")
                + ": "
                + ", ".join(f"{k} {v}" for k, v in self.split_sizes.items())
            )
        for name, matrix in getattr(self, "modality_features", {}).items():
            lines.append(set_color(f"Modality {name}", "blue") + f": {matrix.shape[1]}-d, {self.config['modalities'][name]}")
        return "\n".join(lines)


def open_feature_file(path, name):
    """A modality's ``.npy`` matrix, memory-mapped; an empty, truncated, foreign or pickled file is
    a DatasetError that says which."""
    where = f"{path} (modality '{name}')"
    fix = "write it with np.save(path, np.asarray(features, dtype=np.float32))"
    size = os.path.getsize(path)
    if size == 0:
        raise DatasetError(f"{where}: the file is empty (0 bytes); {fix}.")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            offset = f.tell()
    except (ValueError, EOFError, OSError) as err:
        raise DatasetError(f"{where}: not a readable .npy file ({err}); {fix}.") from None
    if dtype.hasobject:
        raise DatasetError(f"{where}: holds Python objects, which cannot be read without pickle; feature files must be "
                           f"plain numeric arrays: {fix}.")
    if any(n < 0 for n in shape):
        raise DatasetError(f"{where}: its header claims the impossible shape {tuple(shape)}; {fix}.")
    # Python integers: numpy's product of an absurd header shape would wrap around
    expected = offset + math.prod(shape) * dtype.itemsize
    if size < expected:
        raise DatasetError(f"{where}: truncated: its header says shape {tuple(shape)} ({expected} bytes) but the file has "
                           f"{size} bytes; copy or {fix} again.")
    if len(shape) == 2 and 0 in shape:
        raise DatasetError(f"{where}: shape {tuple(shape)} holds no features (0 {'columns' if shape[1] == 0 else 'rows'}); "
                           f"{fix}, one row per item and at least one column.")
    return np.load(path, allow_pickle=False, mmap_mode="r")


def data_preparation(config, dataset):
    """RecBole's split into training, validation and test loaders (the fast loaders of
    :mod:`recbole_ckd.data.loaders`), with the test-time masking protocol the config asks for.

    ``test_masking: train`` (MMRec and the CKD reference code) removes only training items
    from each user's test ranking; ``train_valid`` (RecBole) removes training and validation
    items. (Config refuses ``save_dataloaders``: RecBole's dataloader files are pickles.)
    """
    train_data, valid_data, test_data = build_dataloaders(config, dataset)
    protocol = config["test_masking"]
    if protocol == "train":
        history = train_data.dataset.history_item_matrix()[0].numpy()
        for uid in test_data.uid_list.tolist():
            items = history[uid]
            items = items[items > 0]
            positives = set(test_data.uid2positive_item[uid].tolist())
            test_data.uid2history_item[uid] = torch.tensor([i for i in items if i not in positives], dtype=torch.int64)
        if hasattr(test_data, "repack"):
            test_data.repack()
    elif protocol != "train_valid":
        raise ValueError(f"test_masking must be 'train' or 'train_valid', got {protocol!r}.")
    return train_data, valid_data, test_data
