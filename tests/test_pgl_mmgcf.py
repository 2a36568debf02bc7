"""PGL and MMGCF against dense versions of their equations, on a small hand-made dataset: the
representations (every masking, every fusion of MMGCF), the principal subgraph / edge dropout in
training, and the losses (the masking invariant and end-to-end runs are in test_contract.py)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import MASK_IDS, MASKS, attach_random_teachers, build_model, training_matrix, write_hand_made

from recbole_ckd.model import graphs

# training items of raw users 0..5
TRAIN = {0: [0, 1, 2, 3], 1: [0, 1, 3, 5], 2: [1, 2, 4, 6], 3: [5, 6, 7], 4: [6, 7, 2], 5: [3, 4, 0]}


@pytest.fixture
def hand_made(tmp_path):
    return write_hand_made(tmp_path / "data", TRAIN)


def build(name, root, tmp_path, **extra):
    net, train = build_model(name, root, tmp_path / "saved", seed=2, **{"knn_k": 3, **extra})
    return net.eval(), train


# ----------------------------------------------------------------------------- dense references


def sym(A):
    degree = A.sum(1)
    scale = torch.where(degree > 0, degree.pow(-0.5), torch.zeros_like(degree))
    return scale[:, None] * A * scale[None, :]


def bipartite(R):
    n_users, n_items = R.shape
    A = torch.zeros(n_users + n_items, n_users + n_items)
    A[:n_users, n_users:], A[n_users:, :n_users] = R, R.T
    return A


def lightgcn(A, users, items, layers):
    x = torch.cat([users, items])
    total, layer = x, x
    for _ in range(layers):
        layer = A @ layer
        total = total + layer
    return (total / (layers + 1)).split([len(users), len(items)])


def knn_reference(features, k):
    """Dense ``D^-1/2 S D^-1/2`` of the top-``k`` cosine neighbours (self included) of the real items."""
    real = F.normalize(features[1:], dim=1)
    index = (real @ real.T).topk(k, dim=1).indices
    S = torch.zeros(len(real), len(real)).scatter_(1, index, 1.0)
    full = torch.zeros(len(features), len(features))
    full[1:, 1:] = sym(S)
    return full


def mean_rows(table, n):
    """The mean of ``table``'s real rows (row 0 is padding), repeated ``n`` times."""
    return table[1:].mean(0, keepdim=True).expand(n, -1)


def bpr(u, p, n):
    return -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()


# ----------------------------------------------------------------------------- PGL
def pgl_reference(net, A, masked):
    """``u = LightGCN(x)_u``, ``i = LightGCN(x)_i + S x_I`` with ``x_u = [p^v_u, p^t_u]``,
    ``x_i = [normalize(W_v f^v_i + b_v), normalize(W_t f^t_i + b_t)]``, masked modalities at their
    mean, ``S = 0.1 S_v + 0.9 S_t`` without the masked ones (renormalised)."""
    n_users, n_items = net.n_users, net.n_items
    users, items, weights = [], [], {"v": 0.1, "t": 0.9}
    for m in ("v", "t"):
        p, f = net.user_embedding[m], net.trained_feature(m)
        if m in masked:
            p, f = mean_rows(p, n_users), mean_rows(f, n_items)
        users.append(p)
        items.append(F.normalize(f @ net.projection[m].weight.T + net.projection[m].bias, dim=1))
    x_users, x_items = torch.cat(users, 1), torch.cat(items, 1)
    u, i = lightgcn(A, x_users, x_items, 2)
    active = [m for m in ("v", "t") if m not in masked]
    if active:
        S = sum(weights[m] * knn_reference(net.feature(m), 3) for m in active) / sum(weights[m] for m in active)
        i = i + S @ x_items
    return u, i


@pytest.mark.parametrize("masked", MASKS, ids=MASK_IDS)
def test_pgl_forward_is_the_dense_formula(hand_made, tmp_path, masked):
    net, train = build("PGL", hand_made, tmp_path)
    A = sym(bipartite(training_matrix(train)))
    with torch.no_grad():
        users, items = net.forward(frozenset(masked))
        expected_users, expected_items = pgl_reference(net, A, masked)
    assert users.shape == (net.n_users, 128)
    torch.testing.assert_close(users, expected_users, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items, expected_items, rtol=1e-5, atol=1e-6)


def test_pgl_trains_on_a_seeded_principal_subgraph(hand_made, tmp_path):
    net, train = build("PGL", hand_made, tmp_path)
    R = training_matrix(train)
    full = bipartite(R)
    net.train()
    torch.manual_seed(4)
    net.pre_epoch(0)
    kept = net.pruned_graph.to_dense() > 0
    n_edges = int(R.sum())
    assert kept.sum() == 2 * int(n_edges * 0.3)  # both directions of each kept edge
    assert (full[kept] == 1).all()
    torch.testing.assert_close(net.pruned_graph.to_dense(), sym(kept.float()))  # its own degrees
    with torch.no_grad():
        users, items = net.forward()
        expected_users, expected_items = pgl_reference(net, sym(kept.float()), set())
    torch.testing.assert_close(users, expected_users, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items, expected_items, rtol=1e-5, atol=1e-6)
    torch.manual_seed(4)
    net.pre_epoch(0)
    assert torch.equal(net.pruned_graph.to_dense() > 0, kept)  # the same seed draws the same subgraph
    net.eval()  # evaluation propagates over the full graph
    with torch.no_grad():
        torch.testing.assert_close(net.forward()[0], pgl_reference(net, sym(full), set())[0], rtol=1e-5, atol=1e-6)


def principal_reference(L, rank, threshold=1e-3):
    """MMRec's global-aware extraction, densely: ``U[:, :q] diag(s[:q] s[rank-q:rank]) V[:q]``
    of the SVD of ``L`` (``q = rank / 4``), entries below ``threshold`` in magnitude dropped."""
    U, s, Vh = torch.linalg.svd(L.double())
    q = rank // 4
    P = U[:, :q] @ torch.diag(s[:q] * s[rank - q:rank]) @ Vh[:q]
    return (P * (P.abs() >= threshold)).float()


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "lanczos"])
def test_pgl_global_mode_trains_on_the_svd_principal_subgraph(hand_made, tmp_path, monkeypatch, dense):
    if not dense:  # the tiny graph through the Lanczos path of large graphs
        monkeypatch.setattr(graphs, "DENSE_EIGEN_LIMIT", 0)
    net, train = build("PGL", hand_made, tmp_path, mode="global", embedding_size=8, feat_embed_dim=8)
    L = sym(bipartite(training_matrix(train)))
    P = principal_reference(L, 8)
    assert ((P != 0) & (L == 0)).any()  # not a subset of the edges: user-user and item-item entries too
    torch.testing.assert_close(net.principal_graph.to_dense(), P, rtol=1e-4, atol=1e-6)
    threshold = float(P[P != 0].abs().median())  # a threshold that drops some entries
    coarse = graphs.principal_graph(net.full_graph, 8, threshold=threshold).to_dense()
    assert 0 < (coarse != 0).sum() < (P != 0).sum()
    torch.testing.assert_close(coarse, principal_reference(L, 8, threshold), rtol=1e-4, atol=1e-6)
    net.train()
    net.pre_epoch(0)
    with torch.no_grad():
        users, items = net.forward()
        expected_users, expected_items = pgl_reference(net, P, set())
        torch.testing.assert_close(users, expected_users, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(items, expected_items, rtol=1e-4, atol=1e-6)
        net.eval()
        torch.testing.assert_close(net.forward()[1], pgl_reference(net, L, set())[1], rtol=1e-5, atol=1e-6)


def test_pgl_global_mode_reuses_its_cached_principal_subgraph(hand_made, tmp_path, monkeypatch):
    settings = {"mode": "global", "embedding_size": 8, "feat_embed_dim": 8}
    first, _ = build("PGL", hand_made, tmp_path, **settings)

    def failing(*args, **kwargs):
        raise AssertionError("the cached principal subgraph should have been reused")

    monkeypatch.setattr(torch.linalg, "eigh", failing)
    second, _ = build("PGL", hand_made, tmp_path, **settings)
    assert torch.equal(second.principal_graph.to_dense(), first.principal_graph.to_dense())
    with pytest.raises(AssertionError, match="cached"):  # another rank: another graph
        build("PGL", hand_made, tmp_path, **{**settings, "embedding_size": 12, "feat_embed_dim": 12})


def info_nce(a, b, t):
    """``mean -log(exp(<a_k, b_k> / t) / sum_l exp(<a_k, b_l> / t))`` of the unit rows."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    positive = torch.exp((a * b).sum(1) / t)
    total = torch.exp(a @ b.T / t).sum(1)
    return -torch.log(positive / total).mean()


def test_pgl_loss_is_bpr_plus_the_contrastive_terms(hand_made, tmp_path):
    net, train = build("PGL", hand_made, tmp_path, cl_weight=0.3, reg_weight=0.01, dropout=0.25, cl_temperature=0.5)
    net.train()
    torch.manual_seed(1)
    net.pre_epoch(0)
    batch = next(iter(train))
    u, i, j = batch["userID"], batch["itemID"], batch["neg_itemID"]
    torch.manual_seed(7)
    loss = net.calculate_loss(batch)
    users, items = net.forward()
    # the four dropout masks in the order they are drawn: two views of the users, two of the items
    torch.manual_seed(7)
    views = [F.dropout(torch.ones_like(x), 0.25) * x for x in (users[u], users[u], items[i], items[i])]
    expected = bpr(users[u], items[i], items[j])
    expected = expected + 0.01 * 0.5 * (users[u].pow(2).sum() + items[i].pow(2).sum() + items[j].pow(2).sum()) / len(u)
    expected = expected + 0.3 * (info_nce(views[0], views[1], 0.5) + info_nce(views[2], views[3], 0.5)) / 2
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert net.last_loss_terms["contrastive"] > 0


def test_pgl_student_keeps_the_contrastive_terms(hand_made, tmp_path):
    """The contrastive terms are random (dropout views): drawn from the same RNG state, the
    student's equal the backbone's."""
    settings = {"cl_weight": 0.3, "kd_weight": 0.5}
    plain, train = build("PGL", hand_made, tmp_path, **settings)
    student, _ = build("PGL_CKD", hand_made, tmp_path, **settings)
    student.load_state_dict(plain.state_dict())
    attach_random_teachers(student)
    triples = student.generic_triples()
    student.generic_triples = lambda: triples  # no draw before the dropout views
    batch = next(iter(train))
    for net in (plain.train(), student.train()):
        torch.manual_seed(5)
        net.calculate_loss(batch)
    assert plain.last_loss_terms["contrastive"] > 0
    for name in ("bpr", "l2", "contrastive"):
        torch.testing.assert_close(student.last_loss_terms[name], plain.last_loss_terms[name], rtol=1e-5, atol=1e-7)


def test_pgl_bad_settings(hand_made, tmp_path):
    for bad, match in [({"feat_embed_dim": 32}, "feat_embed_dim"), ({"keep_share": 0.0}, "keep_share"),
                       ({"dropout": 1.0}, "dropout"), ({"cl_temperature": 0.0}, "cl_temperature"),
                       ({"mode": "spectral"}, "mode"), ({"mode": "global", "embedding_size": 2, "feat_embed_dim": 2}, "global")]:
        with pytest.raises(ValueError, match=match):
            build("PGL", hand_made, tmp_path, **bad)


# ----------------------------------------------------------------------------- MMGCF
FUSIONS = [(f, w) for f in ("mean", "sum", "concat") for w in ("equal", "alpha", "normalized")]


def mmgcf_reference(net, A, masked):
    """LightGCN's items late-fused with ``g^m = W_m f^m + b_m`` (masked: the mean features),
    by the dense formula of each fusion mode and weighting."""
    users, items = lightgcn(A, net.user_embedding.weight, net.item_id_embedding.weight, net.n_ui_layers)
    g = []
    for m in ("v", "t"):
        f = mean_rows(net.feature(m), net.n_items) if m in masked else net.feature(m)
        g.append(f @ net.projection[m].weight.T + net.projection[m].bias)

    def fuse(tensors, layer):
        if net.fusion_mode == "mean":
            return sum(tensors) / len(tensors)
        if net.fusion_mode == "sum":
            return sum(tensors)
        return torch.cat(tensors, 1) @ layer.weight.T + layer.bias

    if net.weighting == "alpha":
        a = 1 / (1 + torch.exp(-net.mm_alpha))
        return users, fuse([a * items, (1 - a) * g[0], (1 - a) * g[1]], getattr(net, "all_concat", None))
    if net.weighting == "normalized":
        unit = [2 * items / items.norm(dim=1, keepdim=True)] + [x / x.norm(dim=1, keepdim=True) for x in g]
        return users, fuse(unit, getattr(net, "all_concat", None))
    modal = fuse(g, getattr(net, "mm_concat", None))
    return users, fuse([items, modal], getattr(net, "id_mm_concat", None))


@pytest.mark.parametrize("masked", MASKS[:2], ids=MASK_IDS[:2])
@pytest.mark.parametrize("fusion,weighting", FUSIONS)
def test_mmgcf_forward_is_the_dense_formula(hand_made, tmp_path, fusion, weighting, masked):
    net, train = build("MMGCF", hand_made, tmp_path, fusion_mode=fusion, weighting=weighting)
    if weighting == "alpha":
        net.mm_alpha.data.fill_(0.4)  # away from a = 1/2, where the gate is symmetric
    A = sym(bipartite(training_matrix(train)))
    with torch.no_grad():
        users, items = net.forward(frozenset(masked))
        expected_users, expected_items = mmgcf_reference(net, A, masked)
        torch.testing.assert_close(users, expected_users, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(items, expected_items, rtol=1e-5, atol=1e-6)
        # a training step's rows are the same fusion of the batch's rows only
        rows = torch.tensor([3, 1, 3, 5])
        modes = net.batch_representations_modes(torch.tensor([1, 2]), rows, {"a": frozenset(masked), "b": frozenset()})
        torch.testing.assert_close(modes["a"][1], items[rows], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(modes["b"][1], net.forward()[1][rows], rtol=1e-5, atol=1e-6)


def test_mmgcf_concat_takes_other_feature_sizes_and_only_its_layers(hand_made, tmp_path):
    net, _ = build("MMGCF", hand_made, tmp_path, fusion_mode="concat", weighting="equal", feat_embed_dim=16)
    assert net.mm_concat.in_features == 32 and net.id_mm_concat.in_features == 64 + 16
    assert not hasattr(net, "all_concat") and not hasattr(net, "mm_alpha")
    assert net.forward()[1].shape == (net.n_items, 64)
    with pytest.raises(ValueError, match="feat_embed_dim"):
        build("MMGCF", hand_made, tmp_path, fusion_mode="mean", feat_embed_dim=16)
    for bad in ({"fusion_mode": "prod"}, {"weighting": "softmax"}, {"dropout": 1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            build("MMGCF", hand_made, tmp_path, **bad)


def test_mmgcf_loss_is_bpr_plus_l2_of_the_id_embeddings(hand_made, tmp_path):
    net, train = build("MMGCF", hand_made, tmp_path, reg_weight=0.1, dropout=0.5)
    net.train()
    torch.manual_seed(3)
    net.pre_epoch(0)
    R = training_matrix(train)
    kept = net.pruned_graph.to_dense() > 0
    assert kept.sum() == 2 * int(int(R.sum()) * 0.5) and (bipartite(R)[kept] == 1).all()
    batch = next(iter(train))
    u, i, j = batch["userID"], batch["itemID"], batch["neg_itemID"]
    loss = net.calculate_loss(batch)
    users, items = mmgcf_reference(net, sym(kept.float()), set())  # training: the pruned graph
    e_u, e_i = net.user_embedding.weight, net.item_id_embedding.weight
    l2 = (e_u[u].pow(2).sum() + e_i[i].pow(2).sum() + e_i[j].pow(2).sum()) / (2 * len(u))
    torch.testing.assert_close(loss, bpr(users[u], items[i], items[j]) + 0.1 * l2, rtol=1e-5, atol=1e-6)
    # without dropout training uses the full graph
    net, _ = build("MMGCF", hand_made, tmp_path, dropout=0.0)
    net.train()
    net.pre_epoch(0)
    assert net.pruned_graph is None and net.training_graph() is net.full_graph
