"""DualGNN and DRAGON against dense versions of their equations, on a small hand-made dataset."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import MASK_IDS, MASKS, build_model, training_matrix, write_hand_made

# training items of raw users 0..5. Shared items: 0-1 two, 0-2 two, 1-2 one, 1-5 one, 3-4 one.
# With user_knn_k = 2, user 1 ties users 2 and 5 (one item each) for its second place, and
# users 3, 4 and 5 have fewer than two neighbours.
TRAIN = {0: [0, 1, 2], 1: [0, 1, 3], 2: [1, 2, 4], 3: [5, 6], 4: [6, 7], 5: [3]}


@pytest.fixture
def hand_made(tmp_path):
    return write_hand_made(tmp_path / "data", TRAIN)


def build(name, root, tmp_path, **extra):
    net, train = build_model(name, root, tmp_path / "saved", seed=2, **{"user_knn_k": 2, **extra})
    return net.eval(), train




def user_graph_reference(R, k):
    """Dense ``W``: each user's top ``k`` users by shared items (ties to the smaller id), softmax
    of the counts."""
    shared = R @ R.T
    W = torch.zeros_like(shared)
    for u in range(len(R)):
        candidates = sorted((v for v in range(len(R)) if v != u and shared[u, v] > 0), key=lambda v: (-shared[u, v], v))
        chosen = candidates[:k]
        if chosen:
            W[u, chosen] = torch.softmax(shared[u, chosen], dim=0)
    return W


def branch_reference(net, R, m, masked, n_layers):
    """``x + A x + A^2 x`` of ``x = normalize([P; W2 leaky_relu(W1 f + b1) + b2])``, dense."""
    n_users, n_items = R.shape
    A = torch.zeros(n_users + n_items, n_users + n_items)
    A[:n_users, n_users:], A[n_users:, :n_users] = R, R.T
    degree = A.sum(1)
    scale = torch.where(degree > 0, degree.pow(-0.5), torch.zeros_like(degree))
    A = scale[:, None] * A * scale[None, :]
    features, preference = net.feature(m), net.preference[m]
    if masked:
        features = features[1:].mean(0, keepdim=True).expand(n_items, -1)
        preference = preference[1:].mean(0, keepdim=True).expand(n_users, -1)
    first, last = net.projection[m][0], net.projection[m][2]
    items = F.leaky_relu(features @ first.weight.T + first.bias) @ last.weight.T + last.bias
    x = F.normalize(torch.cat([preference, items]), dim=1)
    total, layer = x, x
    for _ in range(n_layers):
        layer = A @ layer
        total = total + layer
    return total


def fusion_reference(net, masked):
    alpha = net.user_weight.clone()
    for k, m in enumerate(net.modalities):
        if m in masked:
            alpha[:, k] = net.user_weight[1:, k].mean()
    return alpha




def test_the_user_graph_by_hand(hand_made, tmp_path):
    net, train = build("DualGNN", hand_made, tmp_path)
    token = train.dataset.field2token_id["userID"]
    uid = {u: token[str(u)] for u in TRAIN}
    W = net.user_graph.to_dense()
    e1, e2 = np.exp(1.0), np.exp(2.0)
    assert W[uid[0], uid[1]] == pytest.approx(0.5) and W[uid[0], uid[2]] == pytest.approx(0.5)
    second = min(uid[2], uid[5])  # the tie for user 1's second place: the smaller internal id
    assert W[uid[1], uid[0]] == pytest.approx(e2 / (e2 + e1)) and W[uid[1], second] == pytest.approx(e1 / (e2 + e1))
    assert (W[uid[1]] > 0).sum() == 2
    assert W[uid[5], uid[1]] == 1 and W[uid[3], uid[4]] == 1 and W[uid[4], uid[3]] == 1
    assert W[0].sum() == 0  # the padding user
    torch.testing.assert_close(W, user_graph_reference(training_matrix(train), 2))


@pytest.mark.parametrize("masked", MASKS, ids=MASK_IDS)
def test_dualgnn_forward_is_the_dense_formula(hand_made, tmp_path, masked):
    net, train = build("DualGNN", hand_made, tmp_path)
    R = training_matrix(train)
    n_users = R.shape[0]
    with torch.no_grad():
        users, items = net.forward(frozenset(masked))
        branches = {m: branch_reference(net, R, m, m in masked, 2) for m in net.modalities}
        alpha = fusion_reference(net, masked)
        expected_users = sum(alpha[:, [k]] * branches[m][:n_users] for k, m in enumerate(net.modalities))
        expected_users = expected_users + user_graph_reference(R, 2) @ expected_users
        expected_items = sum(branches[m][n_users:] for m in net.modalities)
    torch.testing.assert_close(users, expected_users, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items, expected_items, rtol=1e-5, atol=1e-6)


def knn_reference(features, k):
    """Dense ``D^-1/2 S D^-1/2`` of the top-``k`` cosine neighbours (self included) of the real items."""
    real = F.normalize(features[1:], dim=1)
    index = (real @ real.T).topk(k, dim=1).indices
    S = torch.zeros(len(real), len(real)).scatter_(1, index, 1.0)
    scale = S.sum(1).pow(-0.5)
    full = torch.zeros(len(features), len(features))
    full[1:, 1:] = scale[:, None] * S * scale[None, :]
    return full


@pytest.mark.parametrize("masked", MASKS, ids=MASK_IDS)
def test_dragon_forward_is_the_dense_formula(hand_made, tmp_path, masked):
    net, train = build("DRAGON", hand_made, tmp_path, knn_k=3, n_mm_layers=2)
    R = training_matrix(train)
    n_users = R.shape[0]
    weights = {"v": 0.1, "t": 0.9}
    with torch.no_grad():
        branches = {m: branch_reference(net, R, m, m in masked, 2) for m in net.modalities}
        alpha = fusion_reference(net, masked)
        expected_users = torch.cat([alpha[:, [k]] * branches[m][:n_users] for k, m in enumerate(net.modalities)], dim=1)
        expected_users = expected_users + user_graph_reference(R, 2) @ expected_users
        expected_items = torch.cat([branches[m][n_users:] for m in net.modalities], dim=1)
        active = [m for m in net.modalities if m not in masked]
        if active:
            S = sum(weights[m] * knn_reference(net.feature(m), 3) for m in active) / sum(weights[m] for m in active)
            expected_items = expected_items + S @ S @ expected_items
        users, items = net.forward(frozenset(masked))
    torch.testing.assert_close(users, expected_users, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items, expected_items, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["DualGNN", "DRAGON"])
def test_loss_is_base_2_bpr_plus_the_l2_of_preferences_and_fusion_weights(hand_made, tmp_path, name):
    net, train = build(name, hand_made, tmp_path, reg_weight=0.3)
    net.train()
    batch = next(iter(train))
    u, i, j = batch["userID"], batch["itemID"], batch["neg_itemID"]
    loss = net.calculate_loss(batch)
    with torch.no_grad():
        users, items = net.forward()
        d = (users[u] * (items[i] - items[j])).sum(1)
        reg = net.user_weight.pow(2).mean() + sum(net.preference[m][u].pow(2).mean() for m in net.modalities)
        expected = -torch.log2(torch.sigmoid(d)).mean() + 0.3 * reg
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_the_user_graph_is_built_once_and_cached(hand_made, tmp_path, monkeypatch):
    from recbole_ckd.model import graphs

    first, _ = build("DRAGON", hand_made, tmp_path)
    files = sorted(p.name for p in (tmp_path / "saved" / "graphs").iterdir())
    assert [f.split("-")[0] for f in files] == ["knn", "knn", "users"]

    def failing(*args, **kwargs):
        raise AssertionError("the cached graph should have been reused")

    monkeypatch.setattr(graphs, "co_interaction_neighbours", failing)
    second, _ = build("DualGNN", hand_made, tmp_path)  # the same training split and k: the same file
    torch.testing.assert_close(second.user_graph.to_dense(), first.user_graph.to_dense())
    assert sorted(p.name for p in (tmp_path / "saved" / "graphs").iterdir()) == files


@pytest.mark.parametrize("name, key, value", [("DualGNN", "user_knn_k", 0), ("DualGNN", "n_layers", -1),
                                              ("DRAGON", "n_mm_layers", -1), ("DRAGON", "knn_k", 0)])
def test_out_of_range_settings_are_refused_by_name(hand_made, tmp_path, name, key, value):
    with pytest.raises(ValueError, match=key):
        build(name, hand_made, tmp_path, **{key: value})
