"""Training batches built on the device: every pair once per epoch, valid negatives, uniform, reproducible."""

from collections import Counter

import pytest
import torch
from conftest import fast_config, write_tiny_mmrec
from recbole.data.dataloader.general_dataloader import FullSortEvalDataLoader, TrainDataLoader

from recbole_ckd.config import Config
from recbole_ckd.data.dataset import data_preparation
from recbole_ckd.data.loaders import DeviceTrainDataLoader, FullSortEvalLoader
from recbole_ckd.registry import create_dataset


def loaders(root, model="VBPR", **extra):
    config = Config(model, "tiny", config_dict=fast_config(root, **{"train_batch_size": 16, **extra}))
    return config, data_preparation(config, create_dataset(config))


def epoch(train):
    """The batches, and the epoch's ``user``, ``item`` (and ``neg``) columns concatenated."""
    batches = list(train)
    names = {"user": train.uid_field, "item": train.iid_field}
    if train.with_negatives:
        names["neg"] = train.neg_item_id
    return batches, {short: torch.cat([b[name] for b in batches]) for short, name in names.items()}


def training_pairs(train):
    inter = train._dataset.inter_feat
    return inter[train.uid_field], inter[train.iid_field]


def test_every_training_pair_once_per_epoch_with_a_negative_outside_the_users_items(tiny_dataset):
    config, (train, _, _) = loaders(tiny_dataset["root"])
    assert isinstance(train, DeviceTrainDataLoader)
    users, items = training_pairs(train)
    batches, data = epoch(train)
    assert len(batches) == len(train) == -(-len(users) // 16)
    assert all(len(b) == 16 for b in batches[:-1])
    assert Counter(zip(data["user"].tolist(), data["item"].tolist())) == Counter(zip(users.tolist(), items.tolist()))
    used = set(zip(users.tolist(), items.tolist()))
    negatives = data["neg"]
    assert negatives.min() >= 1 and negatives.max() < train._dataset.item_num
    assert not any((u, j) in used for u, j in zip(data["user"].tolist(), negatives.tolist()))
    assert data["user"].tolist() != users.tolist()  # shuffled


def test_same_seed_same_batches_and_the_generator_state_resumes_the_stream(tiny_dataset):
    _, (first, _, _) = loaders(tiny_dataset["root"])
    _, (second, _, _) = loaders(tiny_dataset["root"])
    epoch(first)
    state = first.generator.get_state()
    _, one = epoch(first)
    epoch(second)
    second.generator.set_state(state)
    _, two = epoch(second)
    for name in one:
        assert torch.equal(one[name], two[name])
    _, (other_seed, _, _) = loaders(tiny_dataset["root"], seed=7)
    assert not torch.equal(epoch(other_seed)[1]["neg"], one["neg"])


def test_negatives_are_uniform_over_the_allowed_items(tmp_path):
    # one user with items 1..5 of 20; the negatives of its pairs, many epochs, hit each of the 15 others equally
    rows = [(0, i, 1.0, 1000 + i, 0) for i in range(1, 6)] + [(1, i, 1.0, 2000 + i, 0) for i in range(8, 20)]
    rows += [(0, 6, 1.0, 3000, 1), (0, 7, 1.0, 3001, 2), (1, 0, 1.0, 3002, 1), (1, 1, 1.0, 3003, 2)]
    write_tiny_mmrec(str(tmp_path), n_items=20, rows=rows)
    config, (train, _, _) = loaders(str(tmp_path))
    user = train._dataset.token2id(train.uid_field, "0")
    users, items = training_pairs(train)
    allowed = set(range(1, train._dataset.item_num)) - set(items[users == user].tolist())
    counts = Counter()
    for _ in range(400):
        data = epoch(train)[1]
        counts.update(data["neg"][data["user"] == user].tolist())
    assert set(counts) == allowed
    total, expected = sum(counts.values()), sum(counts.values()) / len(allowed)
    chi2 = sum((counts[j] - expected) ** 2 / expected for j in allowed)
    assert total == 400 * 5 and chi2 < 36.1  # chi-square, 14 degrees of freedom, p = 0.001


def test_no_negatives_for_bm3_and_recboles_loader_when_switched_off_or_unsupported(tiny_dataset):
    _, (train, _, _) = loaders(tiny_dataset["root"], model="BM3")
    assert isinstance(train, DeviceTrainDataLoader)
    assert not train.with_negatives and set(epoch(train)[1]) == {"user", "item"}
    assert len(list(train)[0].interaction) == 2
    _, (train, _, _) = loaders(tiny_dataset["root"], device_sampling=False)
    assert type(train) is TrainDataLoader
    two_negatives = {"distribution": "uniform", "sample_num": 2, "alpha": 1.0, "dynamic": False, "candidate_num": 0}
    _, (train, _, _) = loaders(tiny_dataset["root"], train_neg_sample_args=two_negatives)
    assert type(train) is TrainDataLoader


def test_a_user_with_every_item_is_named(tiny_dataset):
    _, (train, _, _) = loaders(tiny_dataset["root"])
    n_items = train._dataset.item_num
    train.used_keys = torch.arange(1 * n_items, 2 * n_items)  # user 1 "interacted with" every item
    with pytest.raises(RuntimeError, match=r"No negative item found for users \[1\]"):
        train.sample_negatives(torch.tensor([1, 2]))


@pytest.mark.parametrize("masking", ["train", "train_valid"])
def test_evaluation_batches_equal_recboles(tiny_dataset, masking):
    _, (_, valid, test) = loaders(tiny_dataset["root"], test_masking=masking, eval_batch_size=31 * 7)
    for loader in (valid, test):
        assert isinstance(loader, FullSortEvalLoader) and len(list(loader)) > 1  # several batches of 7 users
        users = torch.arange(len(loader.user_df))
        for start in range(0, len(users), loader.step):
            index = users[start : start + loader.step].tolist()
            ours, recboles = loader.collate_fn(index), FullSortEvalDataLoader.collate_fn(loader, index)
            assert torch.equal(ours[0][loader.uid_field], recboles[0][loader.uid_field])
            for mine, theirs in zip([*ours[1], *ours[2:]], [*recboles[1], *recboles[2:]]):
                assert torch.equal(mine, theirs)


def test_save_dataloaders_is_refused_by_name(tiny_dataset):
    with pytest.raises(ValueError, match="save_dataloaders must be False"):
        loaders(tiny_dataset["root"], save_dataloaders=True)


# ----------------------------------------------------------------------------- the CKD reference's batches
def test_user_uniform_batches_are_distinct_users_with_their_items_and_valid_negatives(tiny_dataset):
    config, (train, _, _) = loaders(tiny_dataset["root"], train_sampler="user_uniform")
    users, items = training_pairs(train)
    assert len(train) == len(users) // 16 + 1  # the reference's batch count
    batches, data = epoch(train)
    assert len(batches) == len(train)
    used = set(zip(users.tolist(), items.tolist()))
    for batch in batches:
        batch_users = batch[train.uid_field].tolist()
        assert len(batch_users) == 16 == len(set(batch_users))  # distinct users
        assert all((u, i) in used for u, i in zip(batch_users, batch[train.iid_field].tolist()))
        assert not any((u, j) in used for u, j in zip(batch_users, batch[train.neg_item_id].tolist()))
    # users are uniform over the users with training data, not over interactions
    counts = Counter(data["user"].tolist())
    assert set(counts) <= set(users.tolist())
    many = [b for _ in range(60) for b in epoch(train)[0]]
    counts = Counter(u for b in many for u in b[train.uid_field].tolist())
    expected = len(many) * 16 / len(set(users.tolist()))
    chi2 = sum((counts.get(u, 0) - expected) ** 2 / expected for u in set(users.tolist()))
    assert chi2 < 2 * len(counts)  # about its degrees of freedom under uniformity; far more if by interactions


def test_user_uniform_batches_are_reproducible_and_resume_from_the_generator(tiny_dataset):
    _, (first, _, _) = loaders(tiny_dataset["root"], train_sampler="user_uniform")
    _, (second, _, _) = loaders(tiny_dataset["root"], train_sampler="user_uniform")
    _, a = epoch(first)
    _, b = epoch(second)
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = first.generator.get_state()
    _, one = epoch(first)
    second.generator.set_state(state)
    _, two = epoch(second)
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not torch.equal(one["user"], a["user"])  # a new draw every epoch


def test_user_uniform_batch_larger_than_the_users_draws_with_replacement(tiny_dataset):
    _, (train, _, _) = loaders(tiny_dataset["root"], train_sampler="user_uniform", train_batch_size=100)
    batches, _ = epoch(train)
    assert all(len(b) == 100 for b in batches)


@pytest.mark.parametrize("extra, message", [
    ({"train_sampler": "users"}, "train_sampler must be one of"),
    ({"train_sampler": "user_uniform", "device_sampling": False}, "needs the device loader"),
])
def test_bad_train_sampler_settings_are_refused(tiny_dataset, extra, message):
    with pytest.raises(ValueError, match=message):
        loaders(tiny_dataset["root"], **extra)
