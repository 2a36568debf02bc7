"""The multimodal dataset: RecBole's Dataset plus pre-split data and aligned modality matrices."""

import os
import re

import numpy as np
import pandas as pd
import torch
from recbole.data.dataset import Dataset
from recbole.utils import FeatureSource, FeatureType, set_color

from recbole_ckd.data.loaders import build_dataloaders
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
        if self.config["data_format"] != "mmrec":
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
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if size < expected:
        raise DatasetError(f"{where}: truncated: its header says shape {tuple(shape)} ({expected} bytes) but the file has "
                           f"{size} bytes; copy or {fix} again.")
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
