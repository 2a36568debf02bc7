"""MGCN and GRCN: the reference formulas, any number of modalities, MGCN's graph cache, the students' terms."""

import os

import pytest
import torch
from conftest import attach_random_teachers, build_eval_model

from recbole_ckd.model.backbones.mgcn import info_nce
from recbole_ckd.model.graphs import segment_softmax


def build(model, root, checkpoint_dir, **extra):
    return build_eval_model(model, root, checkpoint_dir, seed=3, **extra)



def test_grcn_masked_modality_is_a_constant_in_its_slot(tiny_dataset, tmp_path):
    net, train = build("GRCN", tiny_dataset["root"], str(tmp_path / "saved"))
    with torch.no_grad():
        users, items = net.forward(frozenset({"v"}))
    d, c = net.id_embedding.shape[1], net.preference["v"].shape[1]
    v_slot = slice(d, d + c)  # v is the first content block
    has_items = torch.bincount(net.edge_users, minlength=net.n_users) > 0
    has_users = torch.bincount(net.edge_items, minlength=net.n_items) > 0
    user_v, item_v = users[has_items, v_slot], items[has_users, v_slot]
    torch.testing.assert_close(user_v, user_v[:1].expand_as(user_v))
    torch.testing.assert_close(item_v, item_v[:1].expand_as(item_v))


def reference_refine(net, m, masked):
    """GRCN's graph refining layer edge by edge (gather, multiply, index_add), masked inputs tiled."""
    users, items = net.edge_users, net.edge_items
    features = net.feature_mean(m).expand(net.n_items, -1) if masked else net.feature(m)
    preference = net.user_mean(net.preference[m]).expand(net.n_users, -1) if masked else net.preference[m]
    content = torch.nn.functional.normalize(torch.nn.functional.leaky_relu(net.projection[m](features)), dim=1)
    preference = torch.nn.functional.normalize(preference, dim=1)

    def scatter(values, index, n):
        return values.new_zeros(n, values.shape[1]).index_add(0, index, values)

    for _ in range(net.n_routing):
        weights = segment_softmax((preference[users] * content[items]).sum(1), users, net.n_users)
        preference = torch.nn.functional.normalize(preference + scatter(weights[:, None] * content[items], users, net.n_users), dim=1)
    scores = (preference[users] * content[items]).sum(1)
    to_user, to_item = segment_softmax(scores, users, net.n_users), segment_softmax(scores, items, net.n_items)
    user_rep = preference + scatter(to_user[:, None] * content[items], users, net.n_users)
    item_rep = content + scatter(to_item[:, None] * preference[users], items, net.n_items)
    return torch.cat([user_rep, item_rep]), to_user, to_item


@pytest.mark.parametrize("n_routing", [3, 0])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked-closed-form"])
def test_grcn_refine_matches_the_edge_by_edge_reference(tiny_dataset, tmp_path, n_routing, masked):
    net, _ = build("GRCN", tiny_dataset["root"], str(tmp_path / "saved"), n_routing=n_routing)
    for m in net.modalities:
        with torch.no_grad():
            for got, expected in zip(net.refine(m, masked), reference_refine(net, m, masked)):
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- pieces
def test_segment_softmax_matches_a_per_group_softmax():
    scores = torch.tensor([0.5, -1.0, 2.0, 0.0, 3.0])
    index = torch.tensor([0, 2, 0, 2, 2])
    out = segment_softmax(scores, index, 4)
    torch.testing.assert_close(out[[0, 2]], torch.softmax(scores[[0, 2]], 0))
    torch.testing.assert_close(out[[1, 3, 4]], torch.softmax(scores[[1, 3, 4]], 0))


def test_info_nce_is_the_reference_formula():
    torch.manual_seed(0)
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    na, nb = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
    positive = torch.exp((na * nb).sum(1) / 0.2)
    total = torch.exp(na @ nb.T / 0.2).sum(1)
    torch.testing.assert_close(info_nce(a, b, 0.2), -torch.log(positive / total).mean())


def test_mgcn_graph_cache_is_reused(tiny_dataset, tmp_path, monkeypatch):
    import recbole_ckd.model.graphs as graphs

    calls = []
    real = graphs.knn_neighbours
    monkeypatch.setattr(graphs, "knn_neighbours", lambda *a, **k: calls.append(1) or real(*a, **k))
    saved = str(tmp_path / "saved")
    first, _ = build("MGCN", tiny_dataset["root"], saved)
    cached = sorted(os.listdir(os.path.join(saved, "graphs")))
    assert len(calls) == 2 and len(cached) == 2  # one graph per modality, built and stored
    second, _ = build("MGCN", tiny_dataset["root"], saved)
    assert len(calls) == 2 and sorted(os.listdir(os.path.join(saved, "graphs"))) == cached  # read back, not rebuilt
    for m in first.modalities:
        a, b = first.item_graph(m), second.item_graph(m)
        assert torch.equal(a.indices(), b.indices()) and torch.equal(a.values(), b.values())
    # another k is another graph
    build("MGCN", tiny_dataset["root"], saved, knn_k=3)
    assert len(calls) == 4


# ----------------------------------------------------------------------------- the students keep every term
@pytest.mark.parametrize("model", ["MGCN_CKD", "SMORE_CKD"])  # SMORE keeps MGCN's objective
def test_student_loss_has_mgcn_contrastive_term(tiny_dataset, tmp_path, model):
    student, train = build(model, tiny_dataset["root"], str(tmp_path / "saved"), kd_weight=0.5, cl_weight=0.3)
    student = attach_random_teachers(student.train())
    batch = next(iter(train))
    student.calculate_loss(batch)
    with torch.no_grad():
        _, side, content = student.propagate()
    users, pos = batch["userID"], batch["itemID"] + student.n_users
    expected = 0.3 * (info_nce(side[pos], content[pos], 0.2) + info_nce(side[users], content[users], 0.2))
    torch.testing.assert_close(student.last_loss_terms["contrastive"], expected)


def test_grcn_student_loss_has_grcn_l2(tiny_dataset, tmp_path):
    student, train = build("GRCN_CKD", tiny_dataset["root"], str(tmp_path / "saved"), kd_weight=0.5, reg_weight=0.1)
    student = attach_random_teachers(student.train())
    batch = next(iter(train))
    student.calculate_loss(batch)
    u, i, j = batch["userID"], batch["itemID"] + student.n_users, batch["neg_itemID"] + student.n_users
    e = student.id_embedding.detach()
    # the authors' mean squares over [2B, dim] interleaved tensors: each user twice
    expected = (e[u].pow(2).mean() + (e[i].pow(2).mean() + e[j].pow(2).mean()) / 2
                + sum(student.preference[m].detach()[u].pow(2).mean() for m in student.modalities))
    torch.testing.assert_close(student.last_loss_terms["l2"], 0.1 * expected)
