"""DA-MRS: its item-item behaviour graph and denoised kNN graphs against brute force, the forward
and every loss term against dense versions of the reference's equations."""

import os

import pytest
import torch
import torch.nn.functional as F
from conftest import build_eval_model

from recbole_ckd.model import graphs


def dense_sym(adjacency):
    degree = adjacency.sum(1)
    scale = torch.where(degree > 0, degree, torch.ones_like(degree)).pow(-0.5)
    return scale[:, None] * adjacency * scale[None, :]


def brute_behaviour_graph(users, items, n_users, n_items, k, min_users):
    """Self loops plus, per item, its top-k items by shared users (at least ``min_users``; ties to
    the smaller id), from the dense ``R^T R``, one row at a time."""
    R = torch.zeros(n_users, n_items)
    R[users, items] = 1
    shared = R.T @ R
    adjacency = torch.eye(n_items)
    for i in range(n_items):
        candidates = [(-int(shared[i, j]), j) for j in range(n_items) if j != i and shared[i, j] >= max(min_users, 1)]
        for _, j in sorted(candidates)[:k]:
            adjacency[i, j] = 1
    return dense_sym(adjacency)


def brute_consistent_knn(features, target, k):
    """The denoised graph's edges from the full ``n x n`` similarities, item by item."""
    sims = [F.normalize(f, dim=1) @ F.normalize(f, dim=1).T for f in features]
    means = [sim[1:, 1:].mean() for sim in sims]
    n = len(sims[0])
    adjacency = torch.zeros(n, n)
    for i in range(1, n):
        consistent = [j for j in range(1, n) if all(sim[i, j] >= mean for sim, mean in zip(sims, means))]
        masked = torch.tensor([float(sims[target][i, j]) if j in consistent else 0.0 for j in range(1, n)])
        order = masked.topk(min(k, len(consistent))).indices + 1
        adjacency[i, order] = 1
    return adjacency


@pytest.mark.parametrize("k, min_users", [(2, 2), (1, 1), (3, 2)])
def test_behaviour_graph_is_the_brute_force_one(tiny_dataset, k, min_users):
    df = tiny_dataset["inter"]
    users, items = torch.tensor(df.userID.values), torch.tensor(df.itemID.values) + 1
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    graph = graphs.item_behaviour_graph(users, items, n_users, n_items, k, min_users)
    expected = brute_behaviour_graph(users, items, n_users, n_items, k, min_users)
    torch.testing.assert_close(graph.to_dense(), expected)


def test_behaviour_graph_by_hand():
    # items 1 and 2 share users 0, 1 and 2; items 1 and 3 share users 0 and 1; 2 and 3 share user 0 only
    users = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3])
    items = torch.tensor([1, 2, 3, 1, 2, 3, 1, 2, 3])
    rows, cols, counts = graphs.co_interaction_neighbours(items, users, 4, 4, 2, min_count=3)
    assert rows.tolist() == [1, 2] and cols.tolist() == [2, 1] and counts.tolist() == [3, 3]
    rows, cols, counts = graphs.co_interaction_neighbours(items, users, 4, 4, 1, min_count=2)
    assert rows.tolist() == [1, 2, 3] and cols.tolist() == [2, 1, 1] and counts.tolist() == [3, 3, 2]
    dense = graphs.item_behaviour_graph(users, items, 4, 4, 1, 2).to_dense()
    degree = torch.tensor([1.0, 2.0, 2.0, 2.0])
    adjacency = torch.eye(4)
    adjacency[1, 2] = adjacency[2, 1] = adjacency[3, 1] = 1
    torch.testing.assert_close(dense, adjacency / degree.sqrt()[:, None] / degree.sqrt()[None, :])


@pytest.mark.parametrize("block_size", [3, 2048])
@pytest.mark.parametrize("k", [1, 4, 40])
def test_consistent_knn_is_the_brute_force_one(k, block_size):
    generator = torch.Generator().manual_seed(0)
    features = [torch.randn(17, 5, generator=generator), torch.randn(17, 3, generator=generator)]
    features[0][0] = features[1][0] = 0  # padding
    for target, (rows, cols) in enumerate(graphs.consistent_knn_neighbours(features, k, block_size)):
        got = torch.zeros(17, 17)
        got[rows, cols] = 1
        assert len(rows) == int(got.sum())
        torch.testing.assert_close(got, brute_consistent_knn(features, target, k))
    # one modality: its pairs above its own mean
    [(rows, cols)] = graphs.consistent_knn_neighbours(features[1:], k, block_size)
    got = torch.zeros(17, 17)
    got[rows, cols] = 1
    torch.testing.assert_close(got, brute_consistent_knn(features[1:], 0, k))


def build(tmp_path, root, **extra):
    return build_eval_model("DAMRS", root, str(tmp_path / "saved"), seed=3, embedding_size=8, knn_k=4, **extra)


def reference_parts(net, train, masked):
    """The collaborative tables and the views, from dense matrices."""
    users, items = graphs.interaction_edges(train.dataset)
    n_users, n_items = net.n_users, net.n_items
    bipartite = torch.zeros(n_users + n_items, n_users + n_items)
    bipartite[users, items + n_users] = bipartite[items + n_users, users] = 1
    adjacency = dense_sym(bipartite)
    layer = torch.cat([net.user_embedding.weight, net.item_id_embedding.weight])
    total = layer
    for _ in range(net.n_ui_layers):
        layer = adjacency @ layer
        total = total + layer
    U, I = (total / (net.n_ui_layers + 1)).split([n_users, n_items])
    active = [m for m in net.modalities if m not in masked]
    e = net.item_id_embedding.weight
    views = {}
    for m in net.modalities:
        h = e
        if m in active:
            graph = dense_sym(brute_consistent_knn([net.feature(a) for a in active], active.index(m), net.knn_k))
            for _ in range(net.n_mm_layers):
                h = graph @ h
        views[m] = h
    behaviour = brute_behaviour_graph(users, items, n_users, n_items, 2, 2)
    h = e
    for _ in range(net.n_mm_layers):
        h = behaviour @ h
    views["b"] = h
    return U, I, views


@pytest.mark.parametrize("n_mm_layers", [1, 2])
@pytest.mark.parametrize("masked", [(), ("v",), ("t",), ("v", "t")], ids=["joint", "v", "t", "both"])
def test_damrs_forward_matches_the_dense_equations(tiny_dataset, tmp_path, masked, n_mm_layers):
    net, train = build(tmp_path, tiny_dataset["root"], n_mm_layers=n_mm_layers)
    with torch.no_grad():
        U, I, views = reference_parts(net, train, masked)
        users, items = net.forward(frozenset(masked))
    torch.testing.assert_close(users, U)
    torch.testing.assert_close(items, I + (views["v"] + views["t"] + views["b"]) / 3, rtol=1e-5, atol=1e-6)


def reference_loss(net, train, batch):
    """The reference's loss terms, as its equations read, for two modalities (candidates of
    the alignment: the real items, columns 1..)."""
    U, I, views = reference_parts(net, train, ())
    h_t, h_v, h_s = views["t"], views["v"], views["b"]
    users, pos, neg = batch["userID"], batch["itemID"], batch["neg_itemID"]
    u_id, i_id = torch.unique(users), torch.unique(torch.cat([pos, neg]))

    def label_prediction(x):
        return torch.softmax(F.normalize(x[i_id], dim=1) @ F.normalize(x[1:], dim=1).T, dim=1)

    def pseudo_labels(p1, p2, p3):
        mm = (p1 + p2 + p3 + p3).topk(10, dim=-1).indices
        return mm, p3.clone().scatter_(1, mm, 0).topk(10, dim=-1).indices

    def discrimination(mm, single, x):
        anchor, candidates = F.normalize(x[i_id], dim=1), F.normalize(x[1:], dim=1)
        mm_score = torch.exp((anchor[:, None, :] * candidates[mm]).sum(2) / 0.2).sum(1)
        single_score = torch.exp((anchor[:, None, :] * candidates[single]).sum(2) / 0.2).sum(1)
        total = torch.exp(anchor @ candidates.T / 0.2).sum(1)
        return (-torch.log(mm_score / total + 1e-9) - torch.log(single_score / (total - mm_score) + 1e-9)).mean()

    p_t, p_v, p_s = label_prediction(h_t), label_prediction(h_v), label_prediction(h_s)
    relation = (discrimination(*pseudo_labels(p_t, p_v, p_s), h_s) + discrimination(*pseudo_labels(p_t, p_s, p_v), h_v)
                + discrimination(*pseudo_labels(p_v, p_s, p_t), h_t)) / 3

    def kl(p1, p2):
        return p1 * torch.log(p1) - p1 * torch.log(p2) + (1 - p1) * torch.log(1 - p1) - (1 - p1) * torch.log(1 - p2)

    content = (h_t + h_s + h_v) / 3
    p_g = torch.sigmoid(U[u_id] @ F.normalize(I[i_id], dim=-1).T)
    p_c = torch.sigmoid(U[u_id] @ F.normalize(content[i_id], dim=-1).T)
    user_alignment = (kl(p_g, p_c) + kl(p_c, p_g)).mean()

    u = U[users]
    p = torch.sigmoid(torch.stack([(u * F.normalize(h[pos], dim=-1)).sum(1) for h in (h_t, h_s, h_v)]))
    n = torch.sigmoid(torch.stack([(u * F.normalize(h[neg], dim=-1)).sum(1) for h in (h_t, h_s, h_v)]))
    positive = (p.mean(0) * torch.exp(-torch.var(p, dim=0)) ** 2).clamp(0, 1)
    negative = ((p.max(0).values - n.mean()) * (p.mean(0) < n.mean()).float()).clamp(0, 1)
    reps = I + content
    d = (u * (reps[pos] - reps[neg])).sum(1)
    bpr = -(torch.log(torch.sigmoid(d)) * positive + torch.log(torch.sigmoid(-d)) * negative).mean()
    return {"bpr": bpr, "item_alignment": net.neighbor_weight * relation, "user_alignment": net.kl_weight * user_alignment}


def test_damrs_loss_terms_match_the_reference_equations(tiny_dataset, tmp_path):
    net, train = build(tmp_path, tiny_dataset["root"], kl_weight=0.7, neighbor_weight=0.3)
    batch = next(iter(train))
    net.train().calculate_loss(batch)
    with torch.no_grad():
        expected = reference_loss(net, train, batch)
    assert set(net.last_loss_terms) == set(expected) | {"loss"}
    for name, value in expected.items():
        torch.testing.assert_close(net.last_loss_terms[name], value, rtol=1e-5, atol=1e-7, msg=name)


def test_damrs_graphs_are_cached_and_reused(tiny_dataset, tmp_path, monkeypatch):
    saved = tmp_path / "saved"
    first, _ = build(tmp_path, tiny_dataset["root"])
    first.forward(frozenset({"v"}))  # the "only t" graphs
    kinds = sorted(name.split("-")[0] + "-" + name.split("-")[1] for name in os.listdir(saved / "graphs"))
    assert kinds == ["consistent-knn"] * 3 + ["item-behaviour"]
    calls = []
    monkeypatch.setattr(graphs, "consistent_knn_neighbours", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(graphs, "co_interaction_neighbours", lambda *a, **k: calls.append(1))
    second, _ = build(tmp_path, tiny_dataset["root"])
    second.forward(frozenset({"v"}))
    assert calls == []
    for a, b in zip(first.forward(frozenset({"v"})), second.forward(frozenset({"v"}))):
        torch.testing.assert_close(a, b)


def test_damrs_rejects_a_bad_setting(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="item_graph_min_users"):
        build(tmp_path, tiny_dataset["root"], item_graph_min_users=0)


# ----------------------------------------------------------------------------- no OGM-GE variant
MODULATION_REFUSAL = "DAMRS_OGMGE cannot be built: DAMRS has no parameters of a single modality"


def test_damrs_ogmge_is_refused_through_run(tiny_dataset, run_config):
    from recbole_ckd.quick_start import run

    with pytest.raises(ValueError, match=MODULATION_REFUSAL):
        run("DAMRS_OGMGE", "tiny", config_dict=run_config(tiny_dataset["root"]))


def test_damrs_ogmge_is_refused_through_the_command_line(tiny_dataset, tmp_path, capsys):
    from conftest import fast_args

    import run_recbole_ckd

    argv = ["--model=DAMRS_OGMGE", "--dataset=tiny", f"--data_path={tiny_dataset['root']}",
            f"--checkpoint_dir={tmp_path}/saved"] + fast_args()
    with pytest.raises(SystemExit) as exit_info:
        run_recbole_ckd.main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].find(MODULATION_REFUSAL) >= 0


def test_the_balancing_study_of_damrs_leaves_out_ogmge():
    from recbole_ckd import leaderboard as lb

    labels = [entry.label for entry in lb.study_entries("balancing", ["DAMRS", "VBPR"])]
    assert "DAMRS_OGMGE" not in labels and "DAMRS_MDrop" in labels and "VBPR_OGMGE" in labels
