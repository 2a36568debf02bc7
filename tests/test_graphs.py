"""The blocked sparse kNN item graphs against a naive dense computation, and their disk cache."""

import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recbole_ckd.model import graphs


def features(n=20, dim=6, seed=0):
    """``n`` real items plus the padding row 0 (zeros), as the dataset aligns them."""
    x = torch.randn(n + 1, dim, generator=torch.Generator().manual_seed(seed))
    x[0] = 0
    return x


def dense_knn(x, k, weighted, normalization):
    """The reference computation: full similarity matrix, top-k per row, row-sum degrees."""
    n = x.shape[0]
    real = F.normalize(x[1:].double(), dim=1)
    sim = real @ real.T
    k = min(k, n - 1)
    values, index = sim.topk(k, dim=1)
    adjacency = torch.zeros_like(sim).scatter_(1, index, values if weighted else torch.ones_like(values))
    degree = adjacency.sum(dim=1)
    if normalization == "sym":
        scale = degree.pow(-0.5)
        adjacency = scale[:, None] * adjacency * scale[None, :]
    else:
        adjacency = adjacency / degree[:, None]
    full = torch.zeros(n, n, dtype=torch.float64)
    full[1:, 1:] = adjacency
    return full


@pytest.mark.parametrize("block_size", [1, 3, 7, 64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("normalization", ["sym", "row"])
def test_blocked_sparse_knn_equals_the_dense_reference(block_size, weighted, normalization):
    x = features()
    if weighted:  # non-negative similarities: with negative ones a row sum can be <= 0 (the reference's D^-1/2 is NaN)
        x = x.abs()
    for k in (1, 4, 50):  # 50 > n_items - 1: every real item is a neighbour
        graph = graphs.knn_graph(x, k, weighted=weighted, normalization=normalization, block_size=block_size)
        assert graph.is_sparse and graph.shape == (21, 21)
        dense = graph.to_dense().double()
        torch.testing.assert_close(dense, dense_knn(x, k, weighted, normalization), atol=1e-6, rtol=1e-5)
        # padding row 0: no edges, and nobody's neighbour
        rows, cols = graph.indices()
        assert not (rows == 0).any() and not (cols == 0).any()
        assert graph.values().numel() == 20 * min(k, 20)


def test_neighbours_include_self_and_do_not_depend_on_the_block_size():
    x = features(n=30, dim=4, seed=1)
    reference = graphs.knn_neighbours(x, 5, block_size=1000)
    for block_size in (1, 2, 9):
        for a, b in zip(graphs.knn_neighbours(x, 5, block_size=block_size), reference):
            torch.testing.assert_close(a, b)
    rows, cols, sims = reference
    self_loops = rows == cols
    assert self_loops.sum() == 30 and torch.allclose(sims[self_loops], torch.ones(30))


def test_differentiable_neighbours_match_and_carry_the_dense_gradient():
    x = features(n=15, dim=5, seed=2).requires_grad_(True)
    rows, cols, sims = graphs.knn_neighbours_with_grad(x, 4, block_size=4)
    fixed = graphs.knn_neighbours(x.detach(), 4)
    assert torch.equal(rows, fixed[0]) and torch.equal(cols, fixed[1])
    torch.testing.assert_close(sims.detach(), fixed[2])
    weights = torch.rand(len(sims), generator=torch.Generator().manual_seed(0))
    (weights * sims).sum().backward()
    ours = x.grad.clone()

    y = x.detach().clone().requires_grad_(True)
    normed = F.normalize(y, dim=1)
    dense = normed @ normed.T  # the naive way: the full matrix, then the kept pairs
    (weights * dense[rows, cols]).sum().backward()
    torch.testing.assert_close(ours, y.grad)


def test_normalised_sum_of_parts_equals_the_dense_sum():
    n = 6
    a = (torch.tensor([[1, 2, 2, 3], [2, 1, 3, 3]]), torch.tensor([0.5, 1.0, 2.0, 1.5]))
    b = (torch.tensor([[2, 3, 5], [3, 3, 1]]), torch.tensor([1.0, 0.25, 3.0]))
    summed = graphs.sparse_sum([a, b], n)
    dense = torch.zeros(n, n)
    for indices, values in (a, b):
        dense.index_put_((indices[0], indices[1]), values, accumulate=True)
    torch.testing.assert_close(summed.to_dense(), dense)
    # normalising the duplicated pairs equals normalising the summed matrix
    indices = torch.cat([a[0], b[0]], dim=1)  # with the duplicate pair (2, 3)
    values = graphs.normalized_values(indices[0], indices[1], torch.cat([a[1], b[1]]), n, "sym")
    scale = torch.where(dense.sum(1) > 0, dense.sum(1), torch.ones(n)).pow(-0.5)
    expected = scale[:, None] * dense * scale[None, :]
    torch.testing.assert_close(torch.sparse_coo_tensor(indices, values, (n, n)).to_dense(), expected)
    with pytest.raises(ValueError, match="normalization"):
        graphs.normalized_values(indices[0], indices[1], values, n, "col")


def test_interaction_edges_are_distinct_pairs():
    class Dataset:
        item_num = 5

        def inter_matrix(self, form="coo"):
            return sp.coo_matrix((np.ones(5), ([1, 1, 2, 1, 3], [4, 2, 2, 4, 1])), shape=(4, 5))

    users, items = graphs.interaction_edges(Dataset())
    assert sorted(zip(users.tolist(), items.tolist())) == [(1, 2), (1, 4), (2, 2), (3, 1)]


# ----------------------------------------------------------------------------- the cache
def cached(cache_dir):
    return sorted(f for f in os.listdir(cache_dir) if f.endswith(".pth"))


def test_cache_reuse_invalidation_and_corruption(tmp_path, monkeypatch, checkpoint_writes):
    cache_dir = str(tmp_path / "graphs")
    x = features()
    first = graphs.knn_graph(x, 4, weighted=True, cache_dir=cache_dir)
    (name,) = cached(cache_dir)
    path = os.path.join(cache_dir, name)
    assert checkpoint_writes == [path]
    checkpoint_writes.clear()

    real = graphs.knn_neighbours
    calls = []

    def failing(*args, **kwargs):
        raise AssertionError("the cached graph should have been reused")

    # the second call reads the file: no neighbour search, the same graph
    monkeypatch.setattr(graphs, "knn_neighbours", failing)
    again = graphs.knn_graph(x.clone(), 4, weighted=True, cache_dir=cache_dir)
    torch.testing.assert_close(again.to_dense(), first.to_dense())
    assert torch.equal(again.indices(), first.indices())
    assert cached(cache_dir) == [name] and checkpoint_writes == []  # not written again

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(graphs, "knn_neighbours", counting)
    # changed features, k, weighting or normalisation: a new file each
    changed = x.clone()
    changed[3, 0] += 0.5
    graphs.knn_graph(changed, 4, weighted=True, cache_dir=cache_dir)
    graphs.knn_graph(x, 5, weighted=True, cache_dir=cache_dir)
    graphs.knn_graph(x, 4, weighted=False, cache_dir=cache_dir)
    graphs.knn_graph(x, 4, weighted=True, normalization="row", cache_dir=cache_dir)
    assert len(calls) == 4 and len(cached(cache_dir)) == 5
    assert len(set(checkpoint_writes)) == 4 and path not in checkpoint_writes  # four new files, the first untouched

    # a corrupted file is rebuilt (and rewritten), not trusted
    for garbage in (b"not a checkpoint", None):
        if garbage is None:
            with open(path, "r+b") as f:
                f.truncate(50)
        else:
            with open(path, "wb") as f:
                f.write(garbage)
        calls.clear()
        checkpoint_writes.clear()
        rebuilt = graphs.knn_graph(x, 4, weighted=True, cache_dir=cache_dir)
        assert calls == [1] and checkpoint_writes == [path]
        torch.testing.assert_close(rebuilt.to_dense(), first.to_dense())
        calls.clear()
        graphs.knn_graph(x, 4, weighted=True, cache_dir=cache_dir)  # the rewritten file is good
        assert calls == []
    # writes are atomic: no temporary file is left behind
    assert not [f for f in os.listdir(cache_dir) if f.startswith(".tmp-")]


def test_a_foreign_file_under_the_cache_name_is_rebuilt(tmp_path, monkeypatch):
    from recbole_ckd.compat import save_checkpoint

    cache_dir = str(tmp_path / "graphs")
    x = features()
    first = graphs.knn_graph(x, 3, cache_dir=cache_dir)
    (name,) = cached(cache_dir)
    save_checkpoint({"something": torch.zeros(2)}, os.path.join(cache_dir, name))  # readable, wrong content
    rebuilt = graphs.knn_graph(x, 3, cache_dir=cache_dir)
    torch.testing.assert_close(rebuilt.to_dense(), first.to_dense())


def _tampered(state, how):
    indices, values = state["indices"].clone(), state["values"].clone()
    if how == "shape":
        return {**state, "shape": [state["shape"][0] + 1] * 2}
    if how == "index out of range":
        indices[1, 0] = state["shape"][0]
    elif how == "negative index":
        indices[0, -1] = -1
    elif how == "NaN":
        values[2] = float("nan")
    elif how == "one value changed":
        values[0] += 0.25
    elif how == "no checksum":
        return {k: v for k, v in state.items() if k != "checksum"}
    return {**state, "indices": indices, "values": values}


@pytest.mark.parametrize("how", ["shape", "index out of range", "negative index", "NaN", "one value changed",
                                 "no checksum"])
def test_a_readable_but_wrong_cached_graph_is_rebuilt_with_a_warning(tmp_path, monkeypatch, caplog, how):
    from recbole_ckd.compat import load_checkpoint, save_checkpoint

    cache_dir = str(tmp_path / "graphs")
    x = features()
    first = graphs.knn_graph(x, 3, weighted=True, cache_dir=cache_dir)
    (name,) = cached(cache_dir)
    path = os.path.join(cache_dir, name)
    state = load_checkpoint(path)
    assert graphs.cached_graph_problem(state, x.shape[0]) is None
    save_checkpoint({k: v for k, v in _tampered(state, how).items() if k != "format"}, path)
    calls = []
    real = graphs.knn_neighbours
    monkeypatch.setattr(graphs, "knn_neighbours", lambda *a, **k: calls.append(1) or real(*a, **k))
    with caplog.at_level("WARNING"):
        rebuilt = graphs.knn_graph(x, 3, weighted=True, cache_dir=cache_dir)
    assert calls == [1]
    torch.testing.assert_close(rebuilt.to_dense(), first.to_dense())
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert path in line and "building it again" in line
    assert graphs.cached_graph_problem(load_checkpoint(path), x.shape[0]) is None  # rewritten whole


# ----------------------------------------------------------------------------- CSR products
def random_edges(n_dst, n_src, n_edges, seed=0):
    """Edges with repeated pairs, in no particular order."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(n_dst, (n_edges,), generator=generator), torch.randint(n_src, (n_edges,), generator=generator)


def csr_sorted(dst, src, n_src):
    order = torch.argsort(dst * n_src + src, stable=True)
    return dst[order], src[order]


@pytest.mark.parametrize("in_csr_order", [False, True])
def test_edge_product_equals_gather_and_index_add_and_its_gradients_check(in_csr_order):
    dst, src = random_edges(9, 7, 40)
    if in_csr_order:  # edges already sorted by (dst, src): the products skip their permutation
        dst, src = csr_sorted(dst, src, 7)
    product = graphs.EdgeProduct(dst, src, 9, 7)
    assert (product._index.order is None) == in_csr_order
    weights = torch.rand(40, dtype=torch.float64, requires_grad=True)
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64)
    expected = torch.zeros(9, 3, dtype=torch.float64).index_add(0, dst, weights[:, None] * x[src])
    torch.testing.assert_close(product.mm(weights, x), expected)
    expected_t = torch.zeros(7, 3, dtype=torch.float64).index_add(0, src, weights[:, None] * y[dst])
    torch.testing.assert_close(product.t().mm(weights, y), expected_t)
    torch.testing.assert_close(product.edge_dots(y, x), (y[dst] * x[src]).sum(dim=1))
    x.requires_grad_(), y.requires_grad_()
    assert torch.autograd.gradcheck(product.mm, (weights, x))
    assert torch.autograd.gradcheck(product.t().mm, (weights, y))
    assert torch.autograd.gradcheck(product.edge_dots, (y, x))


@pytest.mark.parametrize("in_csr_order", [False, True])
def test_edge_softmax_is_a_softmax_over_each_rows_edges_and_its_gradient_checks(in_csr_order):
    dst, src = random_edges(9, 7, 40, seed=2)  # rows 0..8 of dst; some rows of src have no edge
    dst[dst == 4] = 5  # a dst row without edges
    if in_csr_order:
        dst, src = csr_sorted(dst, src, 7)
    product = graphs.EdgeProduct(dst, src, 9, 7)
    scores = (torch.randn(40, dtype=torch.float64) * 30).requires_grad_()  # large: the shift matters
    for rows, n_rows, softmax in ((dst, 9, product.softmax), (src, 7, product.t().softmax)):
        alpha = softmax(scores)
        for row in range(n_rows):
            edges = (rows == row).nonzero().flatten()
            if len(edges):
                torch.testing.assert_close(alpha[edges], torch.softmax(scores[edges], dim=0))
        assert torch.isfinite(alpha).all()
        assert torch.autograd.gradcheck(softmax, (scores,))


def test_spmm_equals_torch_sparse_mm_and_keeps_its_index_on_the_graph():
    rows, cols = random_edges(8, 8, 30, seed=1)
    values = torch.rand(30, dtype=torch.float64)
    uncoalesced = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (8, 8))
    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    for graph in (uncoalesced, uncoalesced.coalesce()):
        torch.testing.assert_close(graphs.spmm(graph, x), torch.sparse.mm(graph, x.detach()))
    graph = uncoalesced.coalesce()
    graphs.spmm(graph, x)
    assert graph._edge_product is not None  # built once, reused by the next product
    assert torch.autograd.gradcheck(lambda x: graphs.spmm(graph, x), (x,))
    learned = torch.rand(30, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: graphs.spmm(torch.sparse_coo_tensor(torch.stack([rows, cols]), v, (8, 8)), x), (learned,))
    live = torch.sparse_coo_tensor(torch.stack([rows, cols]), learned, (8, 8)).coalesce()
    graphs.spmm(live, x)
    assert not hasattr(live, "_edge_product")  # learned values: the index is not kept


# ----------------------------------------------------------------------------- the user-user graph
def brute_force_co_interactions(pairs, n_users, k):
    """The reference: every pair of users' shared items counted by set intersection, then each
    user's top ``k`` of the users it shares any item with, by count, ties to the smaller id."""
    items_of = [set() for _ in range(n_users)]
    for u, i in pairs:
        items_of[u].add(i)
    expected = {}
    for u in range(n_users):
        shared = [(v, len(items_of[u] & items_of[v])) for v in range(n_users) if v != u]
        shared = [(v, c) for v, c in shared if c > 0]
        shared.sort(key=lambda vc: (-vc[1], vc[0]))
        expected[u] = shared[:k]
    return expected


def random_pairs(n_users, n_items, n_pairs, seed):
    rng = np.random.default_rng(seed)
    pairs = {(int(rng.integers(1, n_users)), int(rng.integers(n_items))) for _ in range(n_pairs)}
    return sorted(pairs)


@pytest.mark.parametrize("block_size", [1, 3, 7, 1000])
def test_co_interaction_neighbours_equal_the_brute_force_counts(block_size):
    # few items: many ties; user 0 (padding) and some others have no items; sparse users have < k neighbours
    for seed, (n_users, n_items, n_pairs) in enumerate([(15, 6, 30), (20, 40, 50), (12, 3, 20)]):
        pairs = random_pairs(n_users, n_items, n_pairs, seed)
        users, items = np.array(pairs).T
        for k in (1, 3, 100):
            rows, cols, counts = graphs.co_interaction_neighbours(users, items, n_users, n_items, k, block_size)
            got = {u: [] for u in range(n_users)}
            for u, v, c in zip(rows.tolist(), cols.tolist(), counts.tolist()):
                got[u].append((v, c))
            assert got == brute_force_co_interactions(pairs, n_users, k), (seed, k)
    # the data covers what matters: a tie cut at the 3rd place, a user with 1 or 2 neighbours, none
    full = [brute_force_co_interactions(random_pairs(*shape, seed), shape[0], 100)
            for seed, shape in enumerate([(15, 6, 30), (20, 40, 50), (12, 3, 20)])]
    lists = [v for expected in full for v in expected.values()]
    assert any(len(v) > 3 and v[2][1] == v[3][1] for v in lists)
    assert any(0 < len(v) < 3 for v in lists) and all(expected[0] == [] for expected in full)


def test_co_interaction_graph_by_hand_and_cached(tmp_path, monkeypatch):
    # users 1..4; 1 and 2 share items 0 and 1, 1 and 3 share item 1, 4 shares nothing
    users, items = [1, 1, 2, 2, 3, 4, 1], [0, 1, 0, 1, 1, 5, 0]  # (1, 0) twice: one shared item
    cache_dir = str(tmp_path / "graphs")
    graph = graphs.co_interaction_graph(users, items, 5, 6, k=1, cache_dir=cache_dir)
    expected = torch.zeros(5, 5)
    expected[1, 2], expected[2, 1], expected[3, 1] = 2, 2, 1  # user 3 ties 1 and 2 (one item each): the smaller id
    torch.testing.assert_close(graph.to_dense(), expected)
    (name,) = cached(cache_dir)
    assert name.startswith("users-")

    def failing(*args, **kwargs):
        raise AssertionError("the cached graph should have been reused")

    monkeypatch.setattr(graphs, "co_interaction_neighbours", failing)
    again = graphs.co_interaction_graph(users, items, 5, 6, k=1, cache_dir=cache_dir)
    torch.testing.assert_close(again.to_dense(), expected)
    monkeypatch.undo()
    graphs.co_interaction_graph(users, items, 5, 6, k=2, cache_dir=cache_dir)  # another k
    graphs.co_interaction_graph(users[:-2], items[:-2], 5, 6, k=1, cache_dir=cache_dir)  # other interactions
    assert len(cached(cache_dir)) == 3
