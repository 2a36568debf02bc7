"""BM3: the loss against a hand-written reference, no negatives anywhere, masking-invariant
scores, and the refusal of BM3_CKD."""

import itertools
import os
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import build_model, fast_args, write_tiny_mmrec

import run_recbole_ckd
from recbole_ckd.compat import load_checkpoint
from recbole_ckd.model import BM3
from recbole_ckd.quick_start import run

REFUSAL = r"BM3 cannot be a CKD student: masking modality '\w+' does not change its scores \(it ranks with ID embeddings only"


def build(root, **extra):
    model, train = build_model("BM3", root, **extra)
    return train.config, train, model


def all_masks(modalities):
    return [frozenset(c) for r in range(len(modalities) + 1) for c in itertools.combinations(modalities, r)]


# ----------------------------------------------------------------------------- no negatives
def test_config_asks_for_no_negatives_and_the_loader_yields_the_training_pairs(tiny_dataset):
    config, train, model = build(tiny_dataset["root"])
    assert config["train_neg_sample_args"]["distribution"] == "none"
    seen = []
    for batch in train:
        assert model.NEG_ITEM_ID not in batch.columns and "label" not in batch.columns
        seen += list(zip(batch[model.USER_ID].tolist(), batch[model.ITEM_ID].tolist()))
    inter = train.dataset.inter_feat
    expected = list(zip(inter[model.USER_ID].tolist(), inter[model.ITEM_ID].tolist()))
    assert sorted(seen) == sorted(expected)  # every training positive once, nothing else


def test_asking_for_negatives_is_refused(tiny_dataset):
    with pytest.raises(ValueError, match="BM3 is trained without negative sampling"):
        build(tiny_dataset["root"], train_neg_sample_args={"distribution": "uniform", "sample_num": 1})


def test_end_to_end_one_epoch_without_negatives(tiny_dataset, run_config, monkeypatch):
    columns, popped = [], []
    real, real_pop = BM3.calculate_loss, BM3.pop_epoch_stats

    def spy(self, interaction):
        columns.append(set(interaction.columns))
        return real(self, interaction)

    def spy_pop(self):
        popped.append(real_pop(self))
        return popped[-1]

    monkeypatch.setattr(BM3, "calculate_loss", spy)
    monkeypatch.setattr(BM3, "pop_epoch_stats", spy_pop)
    config = run_config(tiny_dataset["root"])
    result = run("BM3", "tiny", config_dict=config)
    assert columns and all("neg_itemID" not in c and "itemID" in c for c in columns)
    assert result["model"] == "BM3"
    for split in ("valid_result", "test_result"):
        assert set(result[split]) == {f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map", "hit") for k in (10, 20)}
        assert all(0.0 <= v <= 1.0 for v in result[split].values())
    state = load_checkpoint(os.path.join(config["checkpoint_dir"], result["checkpoint"]))
    assert state["model"] == "BM3" and state["epoch"] == 0
    assert {"feature_table.v", "feature_table.t", "predictor.weight"} <= set(state["state_dict"])
    assert "graph" not in state["state_dict"]
    # the mean loss terms of the epoch reach the trainer
    assert len(popped) == 1 and {"ui", "iu", "reg", "align_v", "mask_v", "align_t", "mask_t", "loss"} == set(popped[0])
    assert all(0.0 <= popped[0][k] <= 2.0 for k in ("ui", "iu", "align_v", "mask_t"))  # 1 - cos
    # BM3 ranks without its modalities: no per-modality report (every mode would equal the joint one)
    assert not result.get("modes")


# ----------------------------------------------------------------------------- CKD refused
def test_bm3_ckd_is_refused_through_run(tiny_dataset, run_config):
    with pytest.raises(ValueError, match=REFUSAL):
        run("BM3_CKD", "tiny", config_dict=run_config(tiny_dataset["root"]))


def test_bm3_ckd_is_refused_through_the_command_line(tiny_dataset, tmp_path, capsys):
    argv = ["--model=BM3_CKD", "--dataset=tiny", f"--data_path={tiny_dataset['root']}", f"--checkpoint_dir={tmp_path}/saved"]
    argv += fast_args()
    with pytest.raises(SystemExit) as exit_info:
        run_recbole_ckd.main(argv)
    assert exit_info.value.code == 2
    assert re.search(REFUSAL, capsys.readouterr().err.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- masking
def test_outputs_are_identical_under_every_mask(tiny_dataset):
    _, _, model = build(tiny_dataset["root"])
    model.eval()
    with torch.no_grad():
        joint = model.forward()
        for masked in all_masks(model.modalities):
            users, items = model.forward(masked)
            assert torch.equal(users, joint[0]) and torch.equal(items, joint[1])
        # the features play no part in ranking at all
        for m in model.modalities:
            model.feature_table[m].mul_(-3.0)
            model.projection[m].weight.normal_()
        users, items = model.forward()
    assert torch.equal(users, joint[0]) and torch.equal(items, joint[1])


def test_a_teacher_mode_ranks_like_the_joint_model_but_trains_on_the_mean(tiny_dataset):
    _, train, model = build(tiny_dataset["root"], active_modalities=["t"], dropout=0.0)
    assert model.default_masked == frozenset({"v"})
    users, items = model.eval_tables()
    joint_users, joint_items = model.forward()
    assert torch.equal(users @ items.T, joint_users @ joint_items.T)
    batch = next(iter(train))
    model.train()
    before = model.calculate_loss(batch)
    with torch.no_grad():  # permuting v's items keeps its mean: the masked v terms do not change
        perm = torch.randperm(model.n_items - 1) + 1
        model.feature_table["v"][1:] = model.feature_table["v"][perm]
    torch.testing.assert_close(model.calculate_loss(batch), before)


# ----------------------------------------------------------------------------- the loss
def reference_loss(model, train, users, items, reg_weight, cl_weight):
    """BM3's loss with dropout 0, written from the equations with a dense graph."""
    inter = train.dataset.inter_feat
    n_u, n = model.n_users, model.n_users + model.n_items
    adj = torch.zeros(n, n)
    u, i = inter[model.USER_ID], inter[model.ITEM_ID] + n_u
    adj[u, i] = adj[i, u] = 1.0
    d = adj.sum(1)
    d_inv = torch.where(d > 0, d.pow(-0.5), torch.zeros_like(d))
    norm = d_inv[:, None] * adj * d_inv[None, :]
    e0 = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    layers, e = [e0], e0
    for _ in range(model.n_layers):
        e = norm @ e
        layers.append(e)
    h = sum(layers) / len(layers)
    h_users, h_items = h[:n_u], h[n_u:] + model.item_embedding.weight
    p = model.predictor

    def c(a, b):
        return 1 - F.cosine_similarity(a, b.detach(), dim=-1).mean()

    loss = c(p(h_users[users]), h_items[items]) + c(p(h_items[items]), h_users[users])
    loss = loss + reg_weight * (h_users[1:].norm() + h_items[1:].norm()) / (model.n_items - 1)
    for m in model.modalities:
        f = model.projection[m](model.feature_table[m][items])
        loss = loss + cl_weight * (c(p(f), h_items[items]) + c(p(f), f))
    return loss


@pytest.mark.parametrize("n_layers", [1, 2])
def test_loss_and_gradients_are_the_reference(tiny_dataset, n_layers):
    config, train, model = build(tiny_dataset["root"], dropout=0.0, n_layers=n_layers)
    batch = next(iter(train))
    users, items = batch[model.USER_ID], batch[model.ITEM_ID]
    loss = model.calculate_loss(batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    expected = reference_loss(model, train, users, items, config["reg_weight"], config["cl_weight"])
    expected.backward()
    torch.testing.assert_close(loss, expected)
    for name, p in model.named_parameters():  # the targets are constants: the same gradients
        torch.testing.assert_close(grads[name], p.grad, msg=name)
    # only the batch items' features receive gradient
    touched = model.feature_table["v"].grad.abs().sum(1).nonzero().flatten()
    assert set(touched.tolist()) <= set(items.tolist())


def test_defaults_are_the_reference_ones(tiny_dataset):
    config, _, model = build(tiny_dataset["root"])
    assert (config["embedding_size"], config["n_layers"], config["dropout"]) == (64, 1, 0.5)
    assert (config["reg_weight"], config["cl_weight"], config["train_features"]) == (0.1, 2.0, True)
    assert config["learning_rate"] == 0.001 and config["weight_decay"] == 0.0


def test_target_view_drops_out_per_table_row_and_is_detached(tiny_dataset):
    _, _, model = build(tiny_dataset["root"])
    values = torch.ones(4, 64, requires_grad=True)
    index = torch.tensor([3, 5, 3, 7])  # row 3 twice
    target = model.target_view(values * 1.0, index, model.n_items)
    assert not target.requires_grad
    assert torch.equal(target[0], target[2])  # a repeated row shares its mask
    assert set(target.unique().tolist()) <= {0.0, 2.0}  # kept entries scaled by 1 / (1 - 0.5)


def test_any_number_of_modalities_and_frozen_features(tmp_path):
    write_tiny_mmrec(str(tmp_path), dims={"v": 8, "t": 4, "a": 3})
    _, train, model = build(
        str(tmp_path), modalities={"v": "image_feat.npy", "t": "text_feat.npy", "a": "a_feat.npy"}, train_features=False
    )
    assert not hasattr(model, "feature_table")
    loss = model.calculate_loss(next(iter(train)))
    assert {"align_a", "mask_a", "align_v", "mask_t"} <= set(model.last_loss_terms)
    loss.backward()
    assert torch.isfinite(loss) and model.projection["a"].weight.grad.abs().sum() > 0
    with torch.no_grad():
        joint = model.forward()
        for masked in all_masks(model.modalities):
            assert all(torch.equal(a, b) for a, b in zip(model.forward(masked), joint))
