"""LGMRec: representations and loss against a dense version of its equations on a hand-made dataset,
masking, the random draws of a step, the per-dataset settings and bad settings."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import build_model, fast_config, write_tiny_mmrec

from recbole_ckd.config import Config

TAU = 0.2
# 4 users, 6 items; every user has a train, a valid and a test item
ROWS = [(0, 0, 1.0, 1, 0), (0, 1, 1.0, 2, 0), (0, 2, 1.0, 3, 1), (0, 3, 1.0, 4, 2),
        (1, 2, 1.0, 1, 0), (1, 4, 1.0, 2, 0), (1, 5, 1.0, 3, 1), (1, 0, 1.0, 4, 2),
        (2, 3, 1.0, 1, 0), (2, 5, 1.0, 2, 0), (2, 1, 1.0, 3, 1), (2, 2, 1.0, 4, 2),
        (3, 1, 1.0, 1, 0), (3, 4, 1.0, 2, 1), (3, 5, 1.0, 3, 2)]
SMALL = {"embedding_size": 4, "feat_embed_dim": 4, "hyper_num": 3}


def build(tmp_path, **extra):
    rng = np.random.default_rng(7)
    features = {"v": rng.normal(size=(6, 5)).astype(np.float32), "t": rng.normal(size=(6, 3)).astype(np.float32)}
    write_tiny_mmrec(str(tmp_path / "data"), rows=ROWS, features=features)
    model, train = build_model("LGMRec", str(tmp_path / "data"), tmp_path / "saved", **{**SMALL, **extra})
    return model, train


def dense_graphs(model, train):
    """``L`` (``D^-1/2 A D^-1/2``), ``R`` and the row-mean ``R`` as dense matrices."""
    inter = train.dataset.inter_feat
    users, items = inter[model.USER_ID], inter[model.ITEM_ID]
    r = torch.zeros(model.n_users, model.n_items)
    r[users, items] = 1.0
    n = model.n_users + model.n_items
    a = torch.zeros(n, n)
    a[: model.n_users, model.n_users:] = r
    a[model.n_users:, : model.n_users] = r.T
    d = a.sum(1)
    d_inv = torch.where(d > 0, d.pow(-0.5), torch.zeros_like(d))
    mean = r / r.sum(1, keepdim=True).clamp(min=1)
    return d_inv[:, None] * a * d_inv[None, :], r, mean


def reference(model, train, masked=frozenset(), draws=None):
    """``(node table, {m: global embedding})`` from the equations with dense matrices; ``draws``
    ``{m: ((item gumbel, item keep), (user gumbel, user keep))}`` in training, None in evaluation."""
    lap, r, mean = dense_graphs(model, train)
    e = torch.cat([model.user_embedding.weight, model.item_id_embedding.weight])
    layers = [e]
    for _ in range(model.n_ui_layers):
        layers.append(lap @ layers[-1])
    cge = torch.stack(layers).mean(0) if model.cf_model == "lightgcn" else e
    local, glob, globals_ = 0, 0, {}
    for m in model.modalities:
        feats = model.feature(m)
        if m in masked:
            feats = feats[1:].mean(0, keepdim=True).expand_as(feats)
        x = feats @ model.projection[m]
        nodes = torch.cat([mean @ x, x])
        for _ in range(model.n_mm_layers):
            nodes = lap @ nodes
        local = local + F.normalize(nodes)
        if m in masked:
            continue
        logits_i = model.feature(m) @ model.hyperedges[m]
        logits_u = r @ logits_i
        if draws is None:
            h_i, h_u = F.softmax(logits_i / TAU, 1), F.softmax(logits_u / TAU, 1)
        else:
            (g_i, k_i), (g_u, k_u) = draws[m]
            h_i, h_u = F.softmax((logits_i + g_i) / TAU, 1) * k_i, F.softmax((logits_u + g_u) / TAU, 1) * k_u
        h_i_real = h_i.clone()
        h_i_real[0] = 0.0  # the padding item is in no hyperedge
        y = cge[model.n_users:]
        for _ in range(model.n_hyper_layer):
            z = h_i_real.T @ y
            y, u = h_i @ z, h_u @ z
        globals_[m] = torch.cat([u, y])
        glob = glob + globals_[m]
    out = cge + local
    if globals_:
        out = out + model.alpha * F.normalize(glob)
    return out, globals_


def reference_loss(model, train, batch, draws):
    nodes, globals_ = reference(model, train, draws=draws)
    users_t, items_t = nodes.split([model.n_users, model.n_items])
    u, i, j = batch["userID"], batch["itemID"], batch["neg_itemID"]
    pu, pi, pj = users_t[u], items_t[i], items_t[j]
    loss = -F.logsigmoid((pu * (pi - pj)).sum(1)).mean()

    def nce(a, b, every):
        a, b, every = F.normalize(a), F.normalize(b), F.normalize(every)
        return -torch.log(torch.exp((a * b).sum(1) / TAU) / torch.exp(a @ every.T / TAU).sum(1)).sum()

    uv, iv = globals_["v"].split([model.n_users, model.n_items])
    ut, it = globals_["t"].split([model.n_users, model.n_items])
    hcl = nce(uv[u], ut[u], ut[1:]) + nce(iv[i], it[i], it[1:])  # the padding rows are no candidates
    reg = (torch.linalg.norm(pu) + torch.linalg.norm(pi) + torch.linalg.norm(pj)) / len(u)
    return loss + model.cl_weight * hcl + model.reg_weight * reg


@pytest.mark.parametrize("extra", [{}, {"n_hyper_layer": 2, "n_ui_layers": 1, "n_mm_layers": 3}, {"cf_model": "mf"}])
def test_evaluation_tables_are_the_dense_equations(tmp_path, extra):
    model, train = build(tmp_path, **extra)
    model.eval()
    with torch.no_grad():
        users, items = model.forward()
        expected, _ = reference(model, train)
        torch.testing.assert_close(torch.cat([users, items]), expected, rtol=1e-5, atol=1e-6)
        again = model.forward()  # no noise in evaluation
    assert torch.equal(again[0], users) and torch.equal(again[1], items)


@pytest.mark.parametrize("masked", [{"v"}, {"t"}, {"v", "t"}])
def test_a_masked_modality_drops_its_hypergraph_and_propagates_its_mean(tmp_path, masked):
    model, train = build(tmp_path)
    model.eval()
    with torch.no_grad():
        users, items = model.forward(frozenset(masked))
        expected, _ = reference(model, train, frozenset(masked))
    torch.testing.assert_close(torch.cat([users, items]), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("extra", [{}, {"n_hyper_layer": 2, "keep_rate": 0.3, "cl_weight": 0.5, "reg_weight": 0.01}])
def test_loss_and_gradients_are_the_dense_equations(tmp_path, extra):
    model, train = build(tmp_path, **extra)
    model.train()
    batch = next(iter(train))
    loss = model.calculate_loss(batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    assert set(model.last_loss_terms) == {"bpr", "hcl", "reg", "loss"}
    model.zero_grad()
    draws = {m: model.draws(m) for m in model.modalities}  # this step's, as calculate_loss drew them
    expected = reference_loss(model, train, batch, draws)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_each_step_draws_anew_and_the_same_state_draws_the_same(tmp_path):
    model, train = build(tmp_path, keep_rate=0.5)
    twin, _ = build(tmp_path / "twin", keep_rate=0.5)
    twin.load_state_dict(model.state_dict())
    batch = next(iter(train))
    model.train(), twin.train()
    model.calculate_loss(batch)
    first = model.draws("v")
    assert torch.equal(model.draws("v")[0][0], first[0][0])  # within a step: the same draws
    twin.calculate_loss(batch)
    assert all(torch.equal(a, b) for pair_a, pair_b in zip(first, twin.draws("v")) for a, b in zip(pair_a, pair_b))
    model.calculate_loss(batch)
    assert int(model.training_steps) == 2 and not torch.equal(model.draws("v")[0][0], first[0][0])
    assert not torch.equal(model.draws("t")[0][0][:, :3], model.draws("v")[0][0][:, :3])
    keep = first[0][1]
    assert set(keep.unique().tolist()) <= {0.0, 2.0}  # dropout keeps half, scaled by 1 / keep_rate
    assert "training_steps" in model.state_dict()  # saved in checkpoints: a resumed run draws the same


def config(tmp_path, model, dataset, **extra):
    return Config(model, dataset, config_dict=fast_config(tmp_path, **extra))


def test_defaults_are_mmrec_ones_and_each_dataset_gets_its_settings(tmp_path):
    keys = ("n_hyper_layer", "hyper_num", "keep_rate", "alpha")
    baby = config(tmp_path, "LGMRec", "baby")
    assert [baby[k] for k in keys] == [1, 4, 0.5, 0.3]
    assert [baby[k] for k in ("embedding_size", "n_ui_layers", "n_mm_layers", "cf_model")] == [64, 2, 2, "lightgcn"]
    assert (baby["cl_weight"], baby["reg_weight"]) == (1e-4, 1e-6)
    assert [config(tmp_path, "LGMRec", "sports")[k] for k in keys] == [1, 4, 0.4, 0.6]
    assert [config(tmp_path, "LGMRec", "clothing")[k] for k in keys] == [2, 64, 0.2, 0.2]
    assert [config(tmp_path, "LGMRec_CKD", "clothing")[k] for k in keys] == [2, 64, 0.2, 0.2]  # the student too
    assert [config(tmp_path, "LGMRec", "tiny")[k] for k in keys] == [1, 4, 0.5, 0.3]
    assert config(tmp_path, "LGMRec", "clothing", hyper_num=8)["hyper_num"] == 8  # a config still wins
    assert config(tmp_path, "FREEDOM", "clothing")["alpha"] is None  # another model is untouched


@pytest.mark.parametrize("extra, words", [
    ({"cf_model": "gcn"}, "cf_model is 'gcn'; it must be one of lightgcn, mf"),
    ({"keep_rate": 0.0}, r"keep_rate is 0.0; it must be in \(0, 1\]"),
    ({"n_hyper_layer": 0}, "n_hyper_layer is 0; it must be an integer >= 1"),
    ({"hyper_num": 2.5}, "hyper_num is 2.5; it must be an integer >= 1"),
    ({"feat_embed_dim": 8}, r"feat_embed_dim \(8\) must equal embedding_size \(4\)"),
])
def test_bad_settings_are_refused(tmp_path, extra, words):
    with pytest.raises(ValueError, match="^" + words):
        build(tmp_path, **extra)
