"""LATTICE and FREEDOM: the representations against a naive dense computation of the reference
formulas, the learned graph's schedule, FREEDOM's pruned graph, the graph cache and the
students' terms (the masking invariant and end-to-end runs are in test_contract.py)."""

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import attach_random_teachers, build_model, fast_config, scores, write_tiny_mmrec

from recbole_ckd.compat import load_checkpoint
from recbole_ckd.model import MODELS, graphs
from recbole_ckd.quick_start import run

BACKBONES = ["LATTICE", "FREEDOM"]


def build(name, root, tmp_path, seed=0, **extra):
    model, train = build_model(name, root, tmp_path / "saved", seed, gd_samples=7, **extra)
    return train.config, train, model



# ----------------------------------------------------------------------------- dense references
def dense_knn(x, k, weighted):
    """Reference kNN on the real items (rows 1..): full cosine matrix, top-k per row (self included)."""
    real = F.normalize(x[1:].double(), dim=1)
    sim = real @ real.T
    values, index = sim.topk(k, dim=1)
    return torch.zeros_like(sim).scatter_(1, index, values if weighted else torch.ones_like(values))


def sym(adjacency):
    degree = adjacency.sum(dim=1)
    scale = degree.pow(-0.5)
    scale[torch.isinf(scale)] = 0
    return scale[:, None] * adjacency * scale[None, :]


def pad(adjacency):
    n = adjacency.shape[0] + 1
    full = torch.zeros(n, n, dtype=adjacency.dtype)
    full[1:, 1:] = adjacency
    return full


def dense_interactions(model, dataset):
    r = torch.zeros(model.n_users, model.n_items, dtype=torch.float64)
    inter = dataset.inter_matrix(form="coo")
    r[torch.from_numpy(inter.row).long(), torch.from_numpy(inter.col).long()] = 1.0
    return r


def bipartite(r):
    n_users, n_items = r.shape
    a = torch.zeros(n_users + n_items, n_users + n_items, dtype=torch.float64)
    a[:n_users, n_users:] = r
    a[n_users:, :n_users] = r.T
    return a


def lightgcn(adjacency, users, items, layers):
    ego = torch.cat([users, items]).double()
    total = ego
    for _ in range(layers):
        ego = adjacency @ ego
        total = total + ego
    return (total / (layers + 1)).split([users.shape[0], items.shape[0]])


def lattice_dense_item_graph(model, masked=()):
    active = [m for m in model.modalities if m not in masked]
    logits = torch.stack([model.modal_weight[model.modalities.index(m)] for m in active])
    weights = torch.softmax(logits.double(), dim=0)
    k = model.knn_k
    projected = {m: model.projection[m](model.trained_feature(m)).detach() for m in active}
    learned = sum(w * dense_knn(projected[m], k, True) for w, m in zip(weights, active))
    original = sum(w * sym(dense_knn(model.feature(m), k, True)) for w, m in zip(weights, active))
    return pad((1 - model.lambda_coeff) * sym(learned) + model.lambda_coeff * original)


@pytest.mark.parametrize("masked", [(), ("v",), ("t",)])
def test_lattice_matches_the_dense_reference(tiny_dataset, tmp_path, masked):
    _, train, model = build("LATTICE", tiny_dataset["root"], tmp_path)
    model.eval()
    with torch.no_grad():
        expected_graph = lattice_dense_item_graph(model, masked)
        ours = model.item_adjacency(frozenset(masked)).to_dense().double()
        torch.testing.assert_close(ours, expected_graph, atol=1e-6, rtol=1e-5)

        # the user-item graph D^-1 (R + I), LightGCN, plus the L2-normalised item-graph term
        a = bipartite(dense_interactions(model, train.dataset))
        a = a + torch.eye(len(a), dtype=torch.float64)
        a = a / a.sum(dim=1, keepdim=True)
        users, items = lightgcn(a, model.user_embedding.weight, model.item_id_embedding.weight, model.n_ui_layers)
        h = expected_graph @ model.item_id_embedding.weight.double()
        items = items + F.normalize(h, dim=1)
        ours_u, ours_i = model.forward(frozenset(masked))
    torch.testing.assert_close(ours_u.double(), users, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours_i.double(), items, atol=1e-5, rtol=1e-4)


def test_lattice_mf_variant_uses_the_id_embeddings(tiny_dataset, tmp_path):
    _, _, model = build("LATTICE", tiny_dataset["root"], tmp_path, cf_model="mf")
    model.eval()
    with torch.no_grad():
        users, items = model.forward()
        h = lattice_dense_item_graph(model) @ model.item_id_embedding.weight.double()
    torch.testing.assert_close(users, model.user_embedding.weight)
    expected = model.item_id_embedding.weight.double() + F.normalize(h, dim=1)
    torch.testing.assert_close(items.double(), expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="cf_model"):
        build("LATTICE", tiny_dataset["root"], tmp_path, cf_model="ngcf")


def test_freedom_matches_the_dense_reference(tiny_dataset, tmp_path):
    _, train, model = build("FREEDOM", tiny_dataset["root"], tmp_path)
    assert model.modality_weight == pytest.approx({"v": 0.1, "t": 0.9})
    model.eval()
    k = model.knn_k
    s_v, s_t = (sym(dense_knn(model.feature(m), k, False)) for m in ("v", "t"))
    for masked, expected in [((), 0.1 * s_v + 0.9 * s_t), (("v",), s_t), (("t",), s_v)]:
        ours = model.item_adjacency(frozenset(masked)).to_dense().double()
        torch.testing.assert_close(ours, pad(expected), atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        a = sym(bipartite(dense_interactions(model, train.dataset)))
        users, items = lightgcn(a, model.user_embedding.weight, model.item_id_embedding.weight, model.n_ui_layers)
        items = items + pad(0.1 * s_v + 0.9 * s_t) @ model.item_id_embedding.weight.double()
        ours_u, ours_i = model.forward()
    torch.testing.assert_close(ours_u.double(), users, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours_i.double(), items, atol=1e-5, rtol=1e-4)


def test_freedom_loss_is_bpr_plus_the_modality_bpr_terms(tiny_dataset, tmp_path):
    _, train, model = build("FREEDOM", tiny_dataset["root"], tmp_path, mm_bpr_weight=0.3, reg_weight=0.01)
    model.pre_epoch(0)
    batch = next(iter(train))
    u, i, j = batch["userID"], batch["itemID"], batch["neg_itemID"]
    loss = model.calculate_loss(batch)
    users, items = model.forward()

    def bpr(a, p, n):
        return -torch.log(torch.sigmoid((a * p).sum(1) - (a * n).sum(1))).mean()

    expected = bpr(users[u], items[i], items[j])
    expected = expected + 0.01 * 0.5 * (users[u].pow(2).sum() + items[i].pow(2).sum() + items[j].pow(2).sum()) / len(u)
    for m in ("v", "t"):
        projected = model.projection[m](model.feature(m))  # the offsets start at zero
        expected = expected + 0.3 * bpr(users[u], projected[i], projected[j])
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)

    # a teacher (only t) leaves out the masked modality's constant term
    _, train, teacher = build("FREEDOM", tiny_dataset["root"], tmp_path, active_modalities=["t"], mm_bpr_weight=0.3)
    assert set(teacher.feature_table) == {"t"}
    teacher.calculate_loss(batch).backward()
    assert teacher.projection["v"].weight.grad is None and teacher.projection["t"].weight.grad is not None


def test_freedom_weights_generalise_to_any_modalities(tmp_path):
    write_tiny_mmrec(str(tmp_path / "data"), dims={"v": 8, "t": 4, "a": 3})
    three = {"modalities": {"v": "image_feat.npy", "t": "text_feat.npy", "a": "a_feat.npy"}}
    _, _, model = build("FREEDOM", str(tmp_path / "data"), tmp_path, **three)
    assert model.modality_weight == pytest.approx({"v": 0.1, "t": 0.45, "a": 0.45})
    no_image = {"modalities": {"t": "text_feat.npy", "a": "a_feat.npy"}}
    _, _, model = build("FREEDOM", str(tmp_path / "data"), tmp_path, **no_image)
    assert model.modality_weight == pytest.approx({"t": 0.5, "a": 0.5})
    _, _, model = build("FREEDOM", str(tmp_path / "data"), tmp_path, modality_weights={"v": 1, "t": 2, "a": 1}, **three)
    assert model.modality_weight == pytest.approx({"v": 0.25, "t": 0.5, "a": 0.25})
    with pytest.raises(ValueError, match="modality_weights"):
        build("FREEDOM", str(tmp_path / "data"), tmp_path, modality_weights={"v": 1, "t": 1}, **three)
    # the renormalised graph without v (weights 1, 2, 1): t at 2/3, a at 1/3
    s = {m: model.item_graph(m).to_dense() for m in ("t", "a")}
    torch.testing.assert_close(model.item_adjacency(frozenset({"v"})).to_dense(), 2 / 3 * s["t"] + 1 / 3 * s["a"])


def test_ckd_students_accept_both_backbones(tiny_dataset, tmp_path):
    for name in ("LATTICE_CKD", "FREEDOM_CKD"):
        _, _, student = build(name, tiny_dataset["root"], tmp_path)  # its check that masking changes scores passes
        assert student.is_ckd_student
    # FREEDOM's student keeps its backbone's modality BPR terms: projections and fine-tuned features
    assert set(student.projection) == set(student.feature_table) == {"v", "t"}


# ----------------------------------------------------------------------------- LATTICE's learned graph
def graph_grads(model):
    return {
        "projection": [model.projection[m].weight.grad for m in model.modalities],
        "offset": [model.feature_table[m].grad for m in model.modalities],
        "modal_weight": model.modal_weight.grad,
    }


def test_lattice_learned_graph_gets_gradient_in_the_first_step_of_each_epoch_only(tiny_dataset, tmp_path):
    _, train, model = build("LATTICE", tiny_dataset["root"], tmp_path)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    batches = iter(train)
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        model.calculate_loss(next(batches)).backward()
        grads = graph_grads(model)
        assert model.item_id_embedding.weight.grad is not None
        optimizer.step()
        return grads

    model.pre_epoch(0)
    first = step()
    assert all(g is not None and g.abs().sum() > 0 for g in first["projection"] + first["offset"])
    assert first["modal_weight"] is not None and first["modal_weight"].abs().sum() > 0
    assert not any(sims.requires_grad for _, _, sims in model._learned.values())  # no autograd graph kept
    copy.deepcopy(model)  # hence the model can be copied between steps
    graph_before = model.item_adjacency().coalesce()
    second = step()
    assert all(g is None for g in second["projection"] + second["offset"]) and second["modal_weight"] is None
    torch.testing.assert_close(model.item_adjacency().coalesce().to_dense(), graph_before.to_dense())  # reused

    model.pre_epoch(1)  # a new epoch: the graph is rebuilt from the updated parameters, with gradient
    third = step()
    assert all(g is not None for g in third["projection"]) and third["modal_weight"] is not None
    assert not torch.allclose(model.item_adjacency().coalesce().to_dense(), graph_before.to_dense())


def test_lattice_student_back_propagates_through_the_graph_in_every_mode(tiny_dataset, tmp_path):
    _, train, student = build("LATTICE_CKD", tiny_dataset["root"], tmp_path)
    torch.manual_seed(1)
    tables = {m: (torch.randn(student.n_users, 5), torch.randn(student.n_items, 5)) for m in student.modalities}
    student.set_teacher_tables(tables)
    student.train()
    student.pre_epoch(0)
    student.calculate_loss(next(iter(train))).backward()
    assert all(student.projection[m].weight.grad.abs().sum() > 0 for m in student.modalities)


def test_lattice_evaluation_rebuilds_the_graph_from_the_current_parameters(tiny_dataset, tmp_path):
    _, _, model = build("LATTICE", tiny_dataset["root"], tmp_path)
    model.eval()
    before = scores(model)
    with torch.no_grad():
        model.projection["v"].weight.mul_(-1.0)
    assert not torch.allclose(scores(model), before)


# ----------------------------------------------------------------------------- FREEDOM's pruned graph
def edge_set(graph):
    graph = graph.coalesce()
    return set(map(tuple, graph.indices().T.tolist()))


def test_freedom_pruned_graph_is_resampled_every_epoch_and_seeded(tiny_dataset, tmp_path):
    _, train, model = build("FREEDOM", tiny_dataset["root"], tmp_path)
    n_edges = len(model._edge_users)
    keep = int(n_edges * (1 - model.dropout))
    model.eval()
    full = scores(model)
    torch.manual_seed(5)
    model.pre_epoch(0)
    first = model.pruned_graph.coalesce()
    model.pre_epoch(1)
    second = model.pruned_graph.coalesce()
    assert first._nnz() == second._nnz() == 2 * keep
    assert edge_set(first) != edge_set(second)
    assert edge_set(first) <= edge_set(model.full_graph)
    torch.manual_seed(5)
    model.pre_epoch(0)
    assert edge_set(model.pruned_graph) == edge_set(first)
    torch.testing.assert_close(model.pruned_graph.coalesce().values(), first.values())

    # the kept graph is normalised with its own degrees: 1 / sqrt(d_u d_i)
    rows, cols = first.indices()
    degree = torch.bincount(rows, minlength=model.n_users + model.n_items).float()
    torch.testing.assert_close(first.values(), (degree[rows] * degree[cols]).rsqrt())
    # the sampling weights: 1 / sqrt(d_u d_i) of the full graph
    d_u = torch.bincount(model._edge_users, minlength=model.n_users).float()
    d_i = torch.bincount(model._edge_items, minlength=model.n_items).float()
    torch.testing.assert_close(model._edge_probabilities, (d_u[model._edge_users] * d_i[model._edge_items]).rsqrt())

    # training sees the pruned graph, evaluation the full one
    torch.testing.assert_close(scores(model), full)
    model.train()
    assert not torch.allclose(scores(model), full)


def test_freedom_pruning_in_training_resumes_deterministically(tiny_dataset, tmp_path, monkeypatch, epoch_log):
    seen = []
    real = MODELS["FREEDOM"].pre_epoch

    def spy(self, epoch):
        real(self, epoch)
        seen.append((epoch, edge_set(self.pruned_graph)))

    monkeypatch.setattr(MODELS["FREEDOM"], "pre_epoch", spy)
    reference = run("FREEDOM", "tiny", config_dict=fast_config(tiny_dataset["root"], tmp_path / "a", epochs=4))
    assert [e for e, _ in seen] == [0, 1, 2, 3] and seen[0][1] != seen[1][1]
    graphs_drawn = dict(seen)

    epoch_log.interrupt(2)
    seen.clear()
    with pytest.raises(KeyboardInterrupt):
        run("FREEDOM", "tiny", config_dict=fast_config(tiny_dataset["root"], tmp_path / "b", epochs=4))
    resumed = run("FREEDOM", "tiny", config_dict=fast_config(tiny_dataset["root"], tmp_path / "b", epochs=4))
    # interrupted as epoch 2 began (before its graph was drawn), resumed at epoch 2
    assert epoch_log.interrupted == [(None, 2)] and [e for e, _ in seen] == [0, 1, 2, 3]
    assert all(edges == graphs_drawn[e] for e, edges in seen)  # the resumed epochs drew the same graphs
    ours, theirs = (load_checkpoint(tmp_path / d / r["checkpoint"])["state_dict"] for r, d in ((resumed, "b"), (reference, "a")))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


# ----------------------------------------------------------------------------- the graph cache
@pytest.mark.parametrize("name", BACKBONES)
def test_models_reuse_the_cached_graphs(tiny_dataset, tmp_path, monkeypatch, name):
    _, _, first = build(name, tiny_dataset["root"], tmp_path)
    cache_dir = str(tmp_path / "saved" / "graphs")
    files = sorted(os.listdir(cache_dir))
    assert len(files) == 2  # one per modality

    def failing(*args, **kwargs):
        raise AssertionError("the cached graph should have been reused")

    monkeypatch.setattr(graphs, "knn_neighbours", failing)
    _, _, second = build(name, tiny_dataset["root"], tmp_path)
    assert sorted(os.listdir(cache_dir)) == files
    for m in ("v", "t"):
        a, b = first.item_graph(m), second.item_graph(m)
        assert torch.equal(a.indices(), b.indices()) and torch.equal(a.values(), b.values())
    monkeypatch.undo()
    build(name, tiny_dataset["root"], tmp_path, knn_k=5)  # another k: new graphs
    assert len(os.listdir(cache_dir)) == 4


def test_freedom_student_loss_has_the_modality_bpr_terms(tiny_dataset, tmp_path):
    _, train, student = build("FREEDOM_CKD", tiny_dataset["root"], tmp_path, kd_weight=0.5, mm_bpr_weight=0.2)
    attach_random_teachers(student.train())
    batch = next(iter(train))
    student.calculate_loss(batch)
    u, i, j = batch["userID"], batch["itemID"], batch["neg_itemID"]
    with torch.no_grad():
        users, _ = student.forward()
        expected = 0.0
        for m in ("v", "t"):
            projected = student.projection[m](student.feature_table[m])
            expected += -F.logsigmoid((users[u] * (projected[i] - projected[j])).sum(1)).mean()
    torch.testing.assert_close(student.last_loss_terms["modality_bpr"], 0.2 * expected)
    # and the feature tables it fine-tunes get a gradient
    student.zero_grad()
    student.calculate_loss(batch).backward()
    assert all(student.feature_table[m].grad.abs().sum() > 0 for m in ("v", "t"))
