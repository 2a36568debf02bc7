"""The multimodal dataset: id alignment, split fidelity and every bad-input case."""

import os
import re

import numpy as np
import pandas as pd
import pytest
from conftest import fast_config, write_tiny_mmrec

from recbole_ckd.config import Config
from recbole_ckd.data.dataset import DatasetError, data_preparation
from recbole_ckd.registry import create_dataset


def load(root, name="tiny", model="VBPR", **extra):
    config = Config(model, name, config_dict=fast_config(root, **extra))
    return config, create_dataset(config)


def test_features_follow_internal_ids_not_raw_ids(tiny_dataset):
    config, data = load(tiny_dataset["root"])
    iid_tokens = data.field2id_token[data.iid_field]
    # the rows are shuffled, so first-appearance ids differ from raw ids: the trap this catches
    assert [int(t) for t in iid_tokens[1:]] != sorted(int(t) for t in iid_tokens[1:])
    for m, raw_matrix in tiny_dataset["features"].items():
        aligned = data.modality_features[m]
        assert aligned.dtype == np.float32 and aligned.shape == (data.item_num, raw_matrix.shape[1])
        assert not aligned[0].any(), "row 0 is the padding id"
        for internal_id in range(1, data.item_num):
            np.testing.assert_array_equal(aligned[internal_id], raw_matrix[int(iid_tokens[internal_id])])


def test_split_column_is_honoured_exactly(tiny_dataset):
    config, data = load(tiny_dataset["root"])
    train, valid, test = data.build()
    inter = tiny_dataset["inter"]
    uid_tok, iid_tok = data.field2id_token[data.uid_field], data.field2id_token[data.iid_field]
    for part, label in ((train, 0), (valid, 1), (test, 2)):
        got = sorted(
            zip(
                uid_tok[part.inter_feat[data.uid_field].numpy()].astype(int),
                iid_tok[part.inter_feat[data.iid_field].numpy()].astype(int),
            )
        )
        expected = sorted(inter.loc[inter.x_label == label, ["userID", "itemID"]].itertuples(index=False, name=None))
        assert got == expected
    assert data.split_sizes == {"train": len(train), "valid": len(valid), "test": len(test)}
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(data))
    assert "Split (from column): train" in text and "Modality v: 12-d" in text


def test_atomic_files_with_a_split_column(tmp_path):
    path = tmp_path / "atom"
    path.mkdir()
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float\tx_label:token"]
    rows += [f"u{u}\t{i}\t1\t{u * 10 + i}\t{0 if i < 3 else (1 if i == 3 else 2)}" for u in range(4) for i in range(5)]
    (path / "atom.inter").write_text("\n".join(rows) + "\n")
    np.save(path / "text_feat.npy", np.arange(10, dtype=np.float32).reshape(5, 2))
    config, data = load(str(tmp_path), "atom", modalities={"t": "text_feat.npy"})
    assert config["data_format"] == "atomic"
    train, valid, test = data.build()
    assert (len(train), len(valid), len(test)) == (12, 4, 4)
    tokens = data.field2id_token[data.iid_field]
    assert data.modality_features["t"][1].tolist() == [2 * int(tokens[1]), 2 * int(tokens[1]) + 1]


def test_without_a_split_column_recbole_splits(tmp_path):
    path = tmp_path / "plain"
    path.mkdir()
    rows = ["user_id:token\titem_id:token"] + [f"{u}\t{i}" for u in range(10) for i in range(10)]
    (path / "plain.inter").write_text("\n".join(rows) + "\n")
    config, data = load(str(tmp_path), "plain", model="BPR")
    train, valid, test = data.build()
    assert (len(train), len(valid), len(test)) == (80, 10, 10)


def test_test_masking_protocols(tiny_dataset):
    histories = {}
    for protocol in ("train", "train_valid"):
        config, data = load(tiny_dataset["root"], test_masking=protocol)
        train, valid, test = data_preparation(config, data)
        valid_items = {}
        for u, i in zip(valid.dataset.inter_feat[data.uid_field].tolist(), valid.dataset.inter_feat[data.iid_field].tolist()):
            valid_items.setdefault(u, set()).add(i)
        histories[protocol] = (test, valid_items)
    test_train, valid_items = histories["train"]
    test_both, _ = histories["train_valid"]
    for uid in test_train.uid_list.tolist():
        masked_train = set(test_train.uid2history_item[uid].tolist())
        masked_both = set(test_both.uid2history_item[uid].tolist())
        assert not masked_train & valid_items.get(uid, set()) - set(test_train.uid2positive_item[uid].tolist())
        assert masked_both == masked_train | (valid_items.get(uid, set()) - set(test_both.uid2positive_item[uid].tolist()))


# ------------------------------------------------------------------ bad input
def expect_error(root, match, name="tiny", **extra):
    with pytest.raises(DatasetError, match=match) as info:
        load(root, name, **extra)
    return str(info.value)


def test_missing_dataset_names_files_and_where_to_put_them(tmp_path):
    message = expect_error(str(tmp_path), "baby", name="baby")
    assert "baby.inter" in message and "image_feat.npy" in message and "text_feat.npy" in message
    assert "MMRec" in message and os.path.join(str(tmp_path), "baby") in message and "--download=baby" in message


def test_missing_feature_file(tiny_dataset):
    os.remove(os.path.join(tiny_dataset["path"], "text_feat.npy"))
    message = expect_error(tiny_dataset["root"], "missing text_feat.npy")
    assert "tiny.inter" not in message.split("missing")[1].split(".\n")[0]


def test_row_count_must_match_item_ids(tmp_path):
    write_tiny_mmrec(str(tmp_path), features={"v": np.zeros((29, 4), np.float32), "t": np.zeros((30, 4), np.float32)})
    message = expect_error(str(tmp_path), "has 29 rows")
    assert "image_feat.npy" in message and "30 rows" in message


@pytest.mark.parametrize("dtype", [np.int64, np.bool_])
def test_non_float_features_are_refused(tmp_path, dtype):
    write_tiny_mmrec(str(tmp_path), features={"v": np.ones((30, 4), dtype), "t": np.zeros((30, 4), np.float32)})
    expect_error(str(tmp_path), "is not a float type")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_features_are_refused(tmp_path, bad):
    v = np.zeros((30, 4), np.float32)
    v[7, 2] = bad
    write_tiny_mmrec(str(tmp_path), features={"v": v, "t": np.zeros((30, 4), np.float32)})
    expect_error(str(tmp_path), r"NaN or Inf, first at raw item id 7")


def test_pickled_feature_file_is_refused(tmp_path):
    write_tiny_mmrec(str(tmp_path))
    np.save(os.path.join(str(tmp_path), "tiny", "image_feat.npy"), np.array([{"a": 1}] * 30, dtype=object), allow_pickle=True)
    expect_error(str(tmp_path), "without pickle")


def test_split_column_with_other_values(tiny_dataset):
    df = tiny_dataset["inter"].copy()
    df.loc[df.index[:3], "x_label"] = 7
    df.to_csv(os.path.join(tiny_dataset["path"], "tiny.inter"), sep="\t", index=False)
    config, data = load(tiny_dataset["root"])
    with pytest.raises(DatasetError, match=r"split column 'x_label' holds \['7'\]"):
        data.build()


def test_empty_split(tiny_dataset):
    df = tiny_dataset["inter"].copy()
    df.loc[df.x_label == 1, "x_label"] = 0
    df.to_csv(os.path.join(tiny_dataset["path"], "tiny.inter"), sep="\t", index=False)
    config, data = load(tiny_dataset["root"])
    with pytest.raises(DatasetError, match="the valid split .* is empty"):
        data.build()


def test_mmrec_header_missing_a_column(tiny_dataset):
    df = tiny_dataset["inter"].drop(columns=["timestamp"])
    df.to_csv(os.path.join(tiny_dataset["path"], "tiny.inter"), sep="\t", index=False)
    expect_error(tiny_dataset["root"], r"lacks column\(s\) \['timestamp'\]")


def test_non_numeric_rating(tiny_dataset):
    df = tiny_dataset["inter"].astype({"rating": object})
    df.iloc[4, df.columns.get_loc("rating")] = "five"
    df.to_csv(os.path.join(tiny_dataset["path"], "tiny.inter"), sep="\t", index=False)
    expect_error(tiny_dataset["root"], r"line 6: field 'rating' is not a number")


def test_filtering_a_pre_split_dataset_is_refused(tiny_dataset):
    expect_error(tiny_dataset["root"], "must be used as it is", user_inter_num_interval="[11,inf)")


def test_non_integer_item_ids_cannot_be_aligned(tmp_path):
    path = tmp_path / "named"
    path.mkdir()
    pd.DataFrame(
        {"userID": [0, 0, 0, 1, 1, 1], "itemID": ["a", "b", "c", "a", "b", "c"], "rating": 1, "timestamp": 1, "x_label": [0, 1, 2] * 2}
    ).to_csv(path / "named.inter", sep="\t", index=False)
    for f in ("image_feat.npy", "text_feat.npy"):
        np.save(path / f, np.zeros((3, 2), np.float32))
    expect_error(str(tmp_path), r"named.inter, line 2: itemID .a. is not a plain non-negative integer", name="named")


def test_trailing_feature_rows_of_unused_items_are_ignored(tmp_path):
    write_tiny_mmrec(str(tmp_path), features={"v": np.ones((33, 4), np.float32), "t": np.zeros((30, 4), np.float32)})
    config, data = load(str(tmp_path))
    assert data.modality_features["v"].shape == (data.item_num, 4)


def test_repeated_training_pairs_are_counted_in_a_warning(tiny_dataset, caplog):
    path = os.path.join(tiny_dataset["path"], "tiny.inter")
    lines = open(path).read().splitlines()
    train_rows = [line for line in lines[1:] if line.endswith("\t0")]
    open(path, "w").write("\n".join(lines + train_rows[:3] + train_rows[:1]) + "\n")
    config, data = load(tiny_dataset["root"])
    with caplog.at_level("WARNING"):
        train, _, _ = data.build()
    assert len(train) == len(train_rows) + 4  # used as they are, each repeat once more
    assert [r.getMessage() for r in caplog.records if "duplicate" in r.getMessage()] == [
        f"{path}: 4 duplicate (user, item) row(s) in the train split; each repeat makes its pair a more frequent "
        "training example."]


def test_repeated_pairs_without_a_split_column_are_counted_in_a_warning(tmp_path, caplog):
    path = tmp_path / "plain"
    path.mkdir()
    rows = ["user_id:token\titem_id:token"] + [f"{u}\t{i}" for u in range(10) for i in range(10)] + ["3\t4", "5\t6"]
    (path / "plain.inter").write_text("\n".join(rows) + "\n")
    config, data = load(str(tmp_path), "plain", model="BPR")
    with caplog.at_level("WARNING"):
        data.build()
    assert any(r.getMessage().startswith(f"{path / 'plain.inter'}: 2 duplicate (user, item) row(s)")
               and "rm_dup_inter: first" in r.getMessage() for r in caplog.records)
