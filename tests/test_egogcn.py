"""EgoGCN: the reference formulas by hand (dense, edge by edge), masking invariants, shapes, the
authors' L2, any number of modalities, end-to-end runs of the backbone and its student."""


import pytest
import torch
import torch.nn.functional as F
from conftest import build_eval_model, write_tiny_mmrec

FEATURE_FILES = {"v": "image_feat.npy", "t": "text_feat.npy", "a": "a_feat.npy"}
# low enough that some edges of the tiny graph (about ten neighbours a node) are fused and some not
THRESHOLD = 0.105


def build(root, checkpoint_dir, **extra):
    return build_eval_model("EgoGCN", root, checkpoint_dir, seed=3, **extra)



# ----------------------------------------------------------------------------- the reference, densely
def dense_adjacency(net, dataset):
    inter = dataset.inter_matrix(form="coo")
    a = torch.zeros(net.n_nodes, net.n_nodes)
    a[inter.row, inter.col + net.n_users] = 1.0
    a[inter.col + net.n_users, inter.row] = 1.0
    return a


def reference_representation(net, adjacency, masked):
    """The authors' forward, one ``[target, source, dim]`` message per edge (tiny sizes only)."""
    n_users, edge = net.n_users, adjacency > 0

    def softmax_over_neighbours(scores):  # row i: the edges into node i (none: a zero row)
        return torch.softmax(scores.masked_fill(~edge, -1e9), dim=1) * edge

    h = {}
    for m in net.modalities:
        pref, feat = net.preference[m], net.feature(m)
        if m in masked:
            pref = pref[1:].mean(0, keepdim=True).expand_as(pref)
            feat = feat[1:].mean(0, keepdim=True).expand_as(feat)
        projection = net.projection[m]
        content = F.normalize(F.leaky_relu(feat @ projection.weight.T + projection.bias), dim=1)
        h[m] = torch.cat([F.normalize(pref, dim=1), content])
    blocks = []
    for m in net.modalities:
        x = h[m]
        others = [k for k in net.modalities if k != m and not (net.masked_fusion == "drop" and k in masked)]
        alpha = softmax_over_neighbours(x @ x.T)
        if net.modulation == "hard":
            fused = (x + sum(h[k] for k in others)) / (1 + len(others))
            messages = torch.where((alpha > net.alpha_threshold)[:, :, None], fused[None], x[None])
        else:
            gated = sum(torch.sigmoid(h[k] @ net.gates[m][k].weight.T + net.gates[m][k].bias) * h[k] for k in others)
            messages = ((x + gated) / (1 + len(others)))[None].expand(len(x), -1, -1)
        if net.reattention:
            alpha = softmax_over_neighbours((x[:, None, :] * messages).sum(-1))
        x = F.normalize((alpha[:, :, None] * messages).sum(1), dim=1)
        for _ in range(net.n_routing):
            x = F.normalize(x + softmax_over_neighbours(x @ x.T) @ x, dim=1)
        blocks.append(x)
    degree = adjacency.sum(1)
    inverse = torch.where(degree > 0, degree.pow(-0.5), torch.zeros_like(degree))
    a_hat = inverse[:, None] * adjacency * inverse[None]
    e = F.normalize(net.id_embedding, dim=1)
    layers = [e]
    for _ in range(net.id_layers):
        layers.append(a_hat @ layers[-1])
    if net.repeat_id_layer:  # the reference's conv_embed_3(x_hat_1): the last layer again
        layers[-1] = layers[-2]
    return torch.cat([sum(layers)] + blocks, dim=1).split([n_users, net.n_items])


CASES = {
    "hard": {"alpha_threshold": THRESHOLD},
    "hard-no-reattention": {"alpha_threshold": THRESHOLD, "reattention": False},
    "hard-drop": {"alpha_threshold": THRESHOLD, "masked_fusion": "drop"},
    "hard-reference-id": {"alpha_threshold": THRESHOLD, "repeat_id_layer": True, "n_routing": 1},
    "soft": {"modulation": "soft"},
    "soft-drop-no-reattention": {"modulation": "soft", "masked_fusion": "drop", "reattention": False},
}


@pytest.mark.parametrize("masked", [frozenset(), frozenset({"v"}), frozenset({"t"}), frozenset({"v", "t"})],
                         ids=["joint", "without-v", "without-t", "all-masked"])
@pytest.mark.parametrize("case", list(CASES))
def test_egogcn_is_the_reference_formula(tiny_dataset, tmp_path, case, masked):
    net, train = build(tiny_dataset["root"], str(tmp_path / "saved"), **CASES[case])
    adjacency = dense_adjacency(net, train.dataset)
    with torch.no_grad():
        expected = reference_representation(net, adjacency, masked)
        got = net.forward(masked)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["hard", "soft"])
def test_gradients_are_the_reference_formulas(tiny_dataset, tmp_path, case):
    net, train = build(tiny_dataset["root"], str(tmp_path / "saved"), **CASES[case])
    adjacency = dense_adjacency(net, train.dataset)
    generator = torch.Generator().manual_seed(0)
    grads = []
    for compute in (lambda: net.forward(frozenset({"t"})), lambda: reference_representation(net, adjacency, {"t"})):
        net.zero_grad()
        users, items = (table[1:] for table in compute())  # not the padding rows (no edges, zero branch rows)
        weights = torch.randn(users.shape[1], generator=generator.manual_seed(0))
        ((users * weights).sum() + (items * weights).pow(2).sum()).backward()
        grads.append({name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() == dict(net.named_parameters()).keys()
    for name, grad in grads[1].items():
        torch.testing.assert_close(grads[0][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_hard_threshold_splits_the_tiny_graphs_edges(tiny_dataset, tmp_path):
    """Guard for the test above: with THRESHOLD some edges are fused and some are not."""
    net, _ = build(tiny_dataset["root"], str(tmp_path / "saved"), alpha_threshold=THRESHOLD)
    with torch.no_grad():
        x = net.inputs("v", False)
        alpha = net.attention(net.edges.edge_dots(x, x))
    assert 0.05 < (alpha > THRESHOLD).float().mean() < 0.95


def test_defaults_are_the_references(tiny_dataset, tmp_path):
    net, _ = build(tiny_dataset["root"], str(tmp_path / "saved"))
    assert (net.modulation, net.alpha_threshold, net.reattention) == ("hard", 0.4, True)
    assert (net.n_routing, net.id_layers) == (3, 3)
    assert (net.repeat_id_layer, net.masked_fusion, net.reg_weight) == (False, "mean", 1e-4)
    assert net.id_embedding.shape[1] == 64 and net.preference["v"].shape[1] == 64
    assert not hasattr(net, "gates")  # the hard modulation has no gates


@pytest.mark.parametrize("key, value, message", [
    ("modulation", "medium", "modulation must be one of"), ("masked_fusion", "zero", "masked_fusion must be one of"),
    ("n_routing", -1, "n_routing and id_layers must be >= 0, got -1"),
    ("repeat_id_layer", True, "needs id_layers >= 2"),
])
def test_invalid_settings_are_refused(tiny_dataset, tmp_path, key, value, message):
    extra = {key: value, **({"id_layers": 1} if key == "repeat_id_layer" else {})}
    with pytest.raises(ValueError, match=message):
        build(tiny_dataset["root"], str(tmp_path / "saved"), **extra)


# ----------------------------------------------------------------------------- masking
def test_masked_modality_branch_is_one_vector_per_side_when_alone(tiny_dataset, tmp_path):
    """With every modality masked, each branch sees one user and one item input, so the fusion
    layer's attention is uniform and its output depends on a node's degree only (whether its
    edges are fused), never on item identity (routing then adds the graph's structure)."""
    net, train = build(tiny_dataset["root"], str(tmp_path / "saved"), n_routing=0, alpha_threshold=THRESHOLD)
    with torch.no_grad():
        block = net.branch("v", frozenset({"v", "t"}))
    degree = dense_adjacency(net, train.dataset).sum(1)
    items = block[net.n_users + 1:]
    item_degree = degree[net.n_users + 1:]
    for d in item_degree.unique():
        rows = items[item_degree == d]
        torch.testing.assert_close(rows.norm(dim=1), torch.ones(len(rows)))
        torch.testing.assert_close(rows, rows[:1].expand_as(rows), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- shapes and training
@pytest.mark.parametrize("modulation", ["hard", "soft"])
def test_shapes_and_gates_with_three_modalities(tmp_path, modulation):
    write_tiny_mmrec(str(tmp_path), dims={"v": 8, "t": 4, "a": 3})
    net, train = build(str(tmp_path), str(tmp_path / "saved"), modalities=FEATURE_FILES, modulation=modulation,
                       alpha_threshold=THRESHOLD)
    assert net.modalities == ("v", "t", "a")
    users, items = net.forward()
    assert users.shape == (net.n_users, 64 + 3 * 64) and items.shape == (net.n_items, 64 + 3 * 64)
    if modulation == "soft":
        assert set(net.gates["t"]) == {"v", "a"}


@pytest.mark.parametrize("active", [None, ["t"]], ids=["joint", "teacher-t"])
def test_loss_is_bpr_plus_the_authors_l2(tiny_dataset, tmp_path, active):
    net, train = build(tiny_dataset["root"], str(tmp_path / "saved"), reg_weight=0.1, active_modalities=active)
    net.train()
    batch = next(iter(train))
    net.calculate_loss(batch)
    u, i, j = batch["userID"], batch["itemID"], batch["neg_itemID"]
    with torch.no_grad():
        user_reps, item_reps = net.forward(net.default_masked)
    margins = (user_reps[u] * (item_reps[i] - item_reps[j])).sum(1)
    torch.testing.assert_close(net.last_loss_terms["bpr"], -F.logsigmoid(margins).mean())
    e = net.id_embedding.detach()
    i, j = i + net.n_users, j + net.n_users
    # the authors' mean squares over [2B, dim] interleaved tensors: each user twice
    expected = e[u].pow(2).mean() + (e[i].pow(2).mean() + e[j].pow(2).mean()) / 2
    kept = ["v", "t"] if active is None else active  # a masked modality's preferences act through their mean
    expected = expected + sum(net.preference[m].detach()[u].pow(2).mean() for m in kept)
    torch.testing.assert_close(net.last_loss_terms["l2"], 0.1 * expected)
