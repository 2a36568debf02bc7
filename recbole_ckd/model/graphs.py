"""Item-item kNN graphs from modality features and the user-user co-interaction graph: built in
blocks, stored sparse, cached.

No dense ``n x n`` matrix is ever formed: similarities (or co-interaction counts) are computed
for a block of rows at a time and only each row's top-k survives, so Clothing (23k items) and
Elec (63k items) fit. Graphs are cached on disk keyed by their inputs and the parameters that
determine them.
"""

import hashlib
import logging
import os
import warnings

import numpy as np
import scipy.sparse as sp
import torch

from recbole_ckd.compat import CheckpointError, load_checkpoint, save_checkpoint

GRAPH_FORMAT_VERSION = 1
# up to this many nodes, principal_graph decomposes the graph densely (exact, and ARPACK needs rank < n)
DENSE_EIGEN_LIMIT = 4096


def knn_neighbours(features, k, block_size=2048):
    """Top-k cosine neighbours of every item (self included, as LATTICE and FREEDOM do).

    ``features`` is ``[n_items, dim]`` with row 0 the padding id: row 0 gets no neighbours
    and is never anyone's neighbour (a zero row's cosine is undefined). Returns ``(rows,
    cols, similarities)`` of the ``(n_items - 1) * k`` kept pairs.
    """
    n = features.shape[0]
    k = min(k, n - 1)
    normed = torch.nn.functional.normalize(features.float(), dim=1)
    rows, cols, sims = [], [], []
    for start in range(1, n, block_size):
        stop = min(start + block_size, n)
        sim = normed[start:stop] @ normed.T
        sim[:, 0] = -float("inf")
        values, index = sim.topk(k, dim=1)
        rows.append(torch.arange(start, stop, device=features.device).repeat_interleave(k))
        cols.append(index.reshape(-1))
        sims.append(values.reshape(-1))
    return torch.cat(rows), torch.cat(cols), torch.cat(sims)


def knn_neighbours_with_grad(features, k, block_size=2048):
    """:func:`knn_neighbours` whose similarities carry gradient to ``features`` (LATTICE's
    learned graph).

    The neighbours are chosen in blocks without gradient (the top-k selection is not
    differentiable anyway); the cosine similarity of each kept pair is then computed again
    from the two rows (a gather), so the autograd graph holds ``(n_items - 1) * k`` pairs,
    never a block of ``block_size x n_items`` similarities.
    """
    with torch.no_grad():
        rows, cols, _ = knn_neighbours(features.detach(), k, block_size)
    normed = torch.nn.functional.normalize(features.float(), dim=1)
    sims = (normed[rows] * normed[cols]).sum(dim=1)
    return rows, cols, sims


def normalized_values(rows, cols, values, n, normalization="sym"):
    """The edge values of :func:`normalized_adjacency` (differentiable in ``values``).

    Degrees are row sums (over duplicates too: duplicate pairs count as their sum); a node of
    non-positive degree is left unscaled.
    """
    degree = torch.zeros(n, device=values.device, dtype=values.dtype).index_add(0, rows, values)
    safe = torch.where(degree > 0, degree, torch.ones_like(degree))
    if normalization == "sym":
        inverse = safe.pow(-0.5)
        return values * inverse[rows] * inverse[cols]
    if normalization == "row":
        return values * safe.pow(-1.0)[rows]
    raise ValueError(f"normalization must be 'sym' or 'row', got {normalization!r}")


def normalized_adjacency(rows, cols, values, n, normalization="sym"):
    """Sparse ``D^-1/2 A D^-1/2`` (``sym``) or ``D^-1 A`` (``row``) as a coalesced COO tensor,
    ``D`` the row sums of ``A``."""
    values = normalized_values(rows, cols, values, n, normalization)
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n)).coalesce()


def knn_graph(features, k, weighted=False, normalization="sym", cache_dir=None, block_size=2048):
    """The normalised kNN item graph of ``features`` (sparse, on the features' device).

    ``weighted`` keeps the cosine similarities as edge weights (LATTICE); otherwise edges are
    1 (FREEDOM, MGCN). With ``cache_dir``, the graph is stored there keyed by a digest of the
    features and the parameters, and reused while they are unchanged (:func:`cached_graph`).
    """
    digest = None
    if cache_dir:
        digest = hashlib.sha256(features.detach().cpu().float().contiguous().numpy().tobytes())
        digest.update(repr((GRAPH_FORMAT_VERSION, k, weighted, normalization, tuple(features.shape))).encode())

    def build():
        rows, cols, sims = knn_neighbours(features, k, block_size)
        values = sims if weighted else torch.ones_like(sims)
        return normalized_adjacency(rows, cols, values, features.shape[0], normalization)

    return cached_graph(cache_dir, "knn", digest, features.shape[0], features.device, build)


def cached_graph(cache_dir, kind, digest, n, device, build):
    """The sparse ``n x n`` graph ``build()`` returns, stored as ``<cache_dir>/<kind>-<digest>.pth``
    (``digest`` a hashlib object over everything the graph depends on) with a checksum of its
    content, and read from there onto ``device`` while the file passes :func:`cached_graph_problem`;
    a file that does not is built again, with a warning. Without ``cache_dir``, simply ``build()``."""
    path = None
    if cache_dir:
        path = os.path.join(cache_dir, f"{kind}-{digest.hexdigest()[:24]}.pth")
        if os.path.isfile(path):
            try:
                state = load_checkpoint(path, map_location="cpu")
                problem = cached_graph_problem(state, n)
            except CheckpointError:
                problem = "not a readable checkpoint"
            if problem is None:
                return torch.sparse_coo_tensor(state["indices"], state["values"], (n, n)).coalesce().to(device)
            logging.getLogger(__name__).warning(f"graph cache {path} is unusable ({problem}); building it again.")
    graph = build()
    if path:
        indices, values = graph.indices().cpu(), graph.values().cpu()
        save_checkpoint({"indices": indices, "values": values, "shape": [n, n],
                         "checksum": graph_checksum(indices, values, n)}, path)
    return graph


def graph_checksum(indices, values, n):
    """SHA-256 of a cached graph's content (int64 indices, float32 values, size)."""
    digest = hashlib.sha256(repr(n).encode())
    digest.update(indices.to(torch.int64).contiguous().numpy().tobytes())
    digest.update(values.to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def cached_graph_problem(state, n):
    """Why the cached graph ``state`` cannot be the ``n x n`` graph it is named for, or None."""
    indices, values = state.get("indices"), state.get("values")
    if not (isinstance(indices, torch.Tensor) and isinstance(values, torch.Tensor)):
        return "no indices and values"
    if state.get("shape") != [n, n]:
        return f"shape {state.get('shape')!r}, expected {[n, n]}"
    if indices.dtype != torch.int64 or indices.dim() != 2 or indices.shape[0] != 2 or values.shape != (indices.shape[1],):
        return f"indices {tuple(indices.shape)} and values {tuple(values.shape)} do not match"
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n):
        return f"an index outside [0, {n})"
    if not torch.isfinite(values).all():
        return "a value that is not finite"
    if state.get("checksum") != graph_checksum(indices, values, n):
        return "checksum mismatch"
    return None


def co_interaction_neighbours(users, items, n_users, n_items, k, block_size=4096, min_count=1):
    """For every user, the ``k`` other users with whom it shares the most items, and how many.

    ``(users, items)`` are interaction pairs (a repeated pair counts once). Two users are candidates when they share
    at least ``min_count`` items (and one); a user with fewer than ``k`` candidates keeps them all. Ties are broken by
    the smaller user id. The shared-item counts ``R R^T`` (``R`` the binary user-item matrix) are
    computed for a block of ``block_size`` users at a time, as a sparse product, so memory grows
    with the co-interacting pairs of one block, never with ``n_users^2``. Returns long tensors
    ``(rows, cols, counts)``, each row's neighbours by decreasing count.
    """
    users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    matrix = sp.csr_matrix((np.ones(len(users), dtype=np.int64), (users, items)), shape=(n_users, n_items))
    matrix.data[:] = 1  # the constructor sums repeated pairs
    transposed = matrix.T.tocsr()
    rows, cols, counts = [], [], []
    for start in range(0, n_users, block_size):
        block = (matrix[start:start + block_size] @ transposed).tocoo()
        row, col, count = block.row.astype(np.int64) + start, block.col.astype(np.int64), block.data
        other = row != col
        row, col, count = row[other], col[other], count[other]
        order = np.lexsort((col, -count, row))  # by row, then decreasing count, then smaller id
        row, col, count = row[order], col[order], count[order]
        rank = np.arange(len(row)) - np.searchsorted(row, row, side="left")
        keep = (rank < k) & (count >= min_count)  # by decreasing count: the same as dropping them first
        rows.append(row[keep])
        cols.append(col[keep])
        counts.append(count[keep])
    return tuple(torch.from_numpy(np.concatenate(parts)) for parts in (rows, cols, counts))


def co_interaction_graph(users, items, n_users, n_items, k, cache_dir=None, block_size=4096):
    """:func:`co_interaction_neighbours` as a sparse ``[n_users, n_users]`` tensor whose value at
    ``(u, v)`` is the number of items ``u`` and ``v`` share (``v`` one of ``u``'s top ``k``).
    With ``cache_dir``, the graph is stored there keyed by a digest of the interaction pairs and
    ``k``, and reused while they are unchanged."""
    users, items = torch.as_tensor(users).long().cpu(), torch.as_tensor(items).long().cpu()
    digest = None
    if cache_dir:
        digest = hashlib.sha256(torch.stack([users, items]).contiguous().numpy().tobytes())
        digest.update(repr((GRAPH_FORMAT_VERSION, k, n_users, n_items)).encode())

    def build():
        rows, cols, counts = co_interaction_neighbours(users, items, n_users, n_items, k, block_size)
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), counts.float(), (n_users, n_users)).coalesce()

    return cached_graph(cache_dir, "users", digest, n_users, "cpu", build)


def item_behaviour_graph(users, items, n_users, n_items, k, min_users, cache_dir=None):
    """DA-MRS's item-item behaviour graph: every item linked to itself and to the ``k`` other items
    with which it shares the most users, among those sharing at least ``min_users`` (ties: the
    smaller item id), edges of weight 1, ``D^-1/2 A D^-1/2`` with ``D`` the row sums, sparse
    ``[n_items, n_items]``. ``(users, items)`` are the training pairs; :func:`co_interaction_neighbours`
    with the roles of users and items swapped. With ``cache_dir``, cached keyed by the pairs, ``k``
    and ``min_users``."""
    users, items = torch.as_tensor(users).long().cpu(), torch.as_tensor(items).long().cpu()
    digest = None
    if cache_dir:
        digest = hashlib.sha256(torch.stack([users, items]).contiguous().numpy().tobytes())
        digest.update(repr((GRAPH_FORMAT_VERSION, k, min_users, n_users, n_items)).encode())

    def build():
        rows, cols, _ = co_interaction_neighbours(items, users, n_items, n_users, k, min_count=min_users)
        loops = torch.arange(n_items)
        rows, cols = torch.cat([loops, rows]), torch.cat([loops, cols])
        return normalized_adjacency(rows, cols, torch.ones(len(rows)), n_items, "sym")

    return cached_graph(cache_dir, "item-behaviour", digest, n_items, "cpu", build)


def consistent_knn_neighbours(features, k, block_size=2048):
    """DA-MRS's denoised kNN graphs of the modalities whose ``[n_items, dim]`` tables are
    ``features`` (row 0 padding): a pair of items is a candidate only where its cosine
    similarity is at least that modality's mean similarity (over all pairs of real items, self
    pairs included) in *every* modality; in modality m's graph each item keeps its top
    ``min(k, candidates)`` by m's similarity, non-candidates counting as 0 (self included when it
    is a candidate; row 0 gets no neighbours and is no one's). The mean is ``|sum_i f_i /
    |f_i||^2 / N^2`` over the ``N`` real items, so no ``N x N`` block is ever kept. Returns ``[(rows, cols)]``, one pair per
    modality, from one pass over the blocks."""
    n = features[0].shape[0]
    k = min(k, n - 1)
    normed = [torch.nn.functional.normalize(f.float(), dim=1) for f in features]
    means = [x[1:].sum(0).pow(2).sum() / (n - 1) ** 2 for x in normed]
    edges = [([], []) for _ in features]
    for start in range(1, n, block_size):
        stop = min(start + block_size, n)
        sims = [x[start:stop] @ x.T for x in normed]
        below = torch.stack([sim < mean for sim, mean in zip(sims, means)]).any(0)
        below[:, 0] = True
        keep = torch.arange(k, device=below.device)[None, :] < (~below).sum(1, keepdim=True)
        rows = torch.arange(start, stop, device=below.device)[:, None].expand(-1, k)[keep]
        for sim, (all_rows, all_cols) in zip(sims, edges):
            sim = sim.masked_fill(below, 0.0)
            sim[:, 0] = -float("inf")
            all_rows.append(rows)
            all_cols.append(sim.topk(k, dim=1).indices[keep])
    return [(torch.cat(rows), torch.cat(cols)) for rows, cols in edges]


def consistent_knn_graphs(features, k, cache_dir=None, block_size=2048):
    """:func:`consistent_knn_neighbours` as graphs with edges of weight 1, ``D^-1/2 A D^-1/2``
    (sparse, on the features' device), one per table; each cached in ``cache_dir`` keyed by every
    table compared, its position and ``k``."""
    n, device = features[0].shape[0], features[0].device
    digests = [None] * len(features)
    if cache_dir:
        shared = hashlib.sha256(repr((GRAPH_FORMAT_VERSION, k, [tuple(f.shape) for f in features])).encode())
        for table in features:
            shared.update(table.detach().cpu().float().contiguous().numpy().tobytes())
        digests = [shared.copy() for _ in features]
        for target, digest in enumerate(digests):
            digest.update(repr(target).encode())
    neighbours = []  # every table's, from one pass, computed when the first graph is not cached

    def build(target):
        if not neighbours:
            neighbours.extend(consistent_knn_neighbours(features, k, block_size))
        rows, cols = neighbours[target]
        return normalized_adjacency(rows, cols, torch.ones(len(rows), device=rows.device), n, "sym")

    return [cached_graph(cache_dir, "consistent-knn", digest, n, device, lambda target=target: build(target))
            for target, digest in enumerate(digests)]


def principal_graph(adjacency, rank, share=0.25, threshold=1e-3, cache_dir=None, block_size=2048):
    """PGL's global-aware principal subgraph of the symmetric sparse ``n x n`` graph ``adjacency``.

    With its top-``rank`` singular values ``s_1 >= ... >= s_rank`` and vectors ``u_k``, ``v_k``,
    and ``q = int(share * rank)``: ``P = sum_{k <= q} s_k s_{rank - q + k} u_k v_k^T``, the
    entries with ``|P_ij| < threshold`` dropped (sparse, on the graph's device). As the graph is
    symmetric, its singular triplets come from its eigenvectors ``x_k``: ``s_k = |l_k|``,
    ``u_k = x_k``, ``v_k = sign(l_k) x_k``; computed densely for small graphs, otherwise by
    Lanczos iteration (ARPACK) from a fixed start vector, so the result is deterministic.
    ``P`` is built a block of rows at a time. With ``cache_dir``, it is cached as
    :func:`cached_graph` does, keyed by the graph and the parameters.
    """
    n = adjacency.shape[0]
    adjacency = adjacency.coalesce().cpu()
    indices, values = adjacency.indices(), adjacency.values().double()
    rank = min(int(rank), n)
    digest = None
    if cache_dir:
        digest = hashlib.sha256(indices.contiguous().numpy().tobytes())
        digest.update(values.float().contiguous().numpy().tobytes())
        digest.update(repr((GRAPH_FORMAT_VERSION, n, rank, share, threshold)).encode())

    def build():
        if n <= DENSE_EIGEN_LIMIT:
            eigenvalues, vectors = torch.linalg.eigh(torch.sparse_coo_tensor(indices, values, (n, n)).to_dense())
        else:
            from scipy.sparse.linalg import eigsh

            matrix = sp.csr_matrix((values.numpy(), indices.numpy()), shape=(n, n))
            eigenvalues, vectors = eigsh(matrix, k=rank, which="LM", v0=np.ones(n))
            eigenvalues, vectors = torch.from_numpy(eigenvalues), torch.from_numpy(vectors)
        order = torch.argsort(eigenvalues.abs(), descending=True, stable=True)[:rank]
        singular, vectors = eigenvalues[order].abs(), vectors[:, order]
        q = int(share * rank)
        left = vectors[:, :q] * (singular[:q] * singular[rank - q:])
        right = vectors[:, :q] * torch.sign(eigenvalues[order][:q])
        rows, cols, kept = [], [], []
        for start in range(0, n, block_size):
            block = left[start:start + block_size] @ right.T
            r, c = torch.nonzero(block.abs() >= threshold, as_tuple=True)
            rows.append(r + start)
            cols.append(c)
            kept.append(block[r, c])
        graph_indices = torch.stack([torch.cat(rows), torch.cat(cols)])
        return torch.sparse_coo_tensor(graph_indices, torch.cat(kept).float(), (n, n)).coalesce()

    return cached_graph(cache_dir, "principal", digest, n, "cpu", build)


def sparse_sum(parts, n):
    """``sum_k A_k`` as one uncoalesced sparse ``[n, n]`` COO tensor (duplicate pairs add up,
    as :func:`torch.sparse.mm` treats them). ``parts`` are ``(indices [2, nnz], values)``
    pairs; the values may carry gradient (scaled by a learned weight, say)."""
    indices = torch.cat([indices for indices, _ in parts], dim=1)
    values = torch.cat([values for _, values in parts])
    return torch.sparse_coo_tensor(indices, values, (n, n))


# ----------------------------------------------------------------------------- products
# PyTorch marks CSR tensors as beta; these are the two kernels used (SpMM and SDDMM), covered by tests.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


class _CSRIndex:
    """The CSR index arrays of edges ``(row, col)``, sorted once; ``order`` maps CSR positions to
    edges, ``None`` when the edges are already in CSR order (no gather on every product then)."""

    def __init__(self, rows, cols, n_rows, n_cols):
        order = torch.argsort(rows * n_cols + cols, stable=True)
        identity = torch.equal(order, torch.arange(len(order), device=order.device))
        self.order = None if identity else order
        self.inverse = None if identity else torch.argsort(order)
        self.rows, self.counts = rows, torch.bincount(rows, minlength=n_rows)
        self.crow = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
        self.crow[1:] = torch.cumsum(self.counts, dim=0)
        self.col = cols if identity else cols[order]
        self.shape = (n_rows, n_cols)

    def per_edge(self, row_values):
        """``row_values[row_e]`` for every edge, in CSR order."""
        return row_values.repeat_interleave(self.counts, output_size=len(self.col))

    def row_sums(self, csr_values):
        return torch.segment_reduce(csr_values, "sum", offsets=self.crow)

    def matrix(self, edge_values):
        values = edge_values if self.order is None else edge_values[self.order]
        return torch.sparse_csr_tensor(self.crow, self.col, values, self.shape, check_invariants=False)

    def dots(self, a, b):
        """``<a[row_e], b[col_e]>`` of every edge, in edge order (a sampled dense product)."""
        pattern = torch.sparse_csr_tensor(self.crow, self.col, a.new_zeros(len(self.col)), self.shape,
                                          check_invariants=False)
        dots = torch.sparse.sampled_addmm(pattern, a, b.T, beta=0.0).values()
        return dots if self.inverse is None else dots[self.inverse]


class EdgeProduct:
    """Products over a fixed list of edges ``e = (dst, src)`` whose weights may change and carry
    gradient: ``mm`` (``out[dst] += w_e * x[src]``) and ``edge_dots`` (``<a[dst_e], b[src_e]>``).

    Both are CSR kernels (SpMM, SDDMM) forwards and backwards, with the index arrays of the
    matrix and of its transpose sorted once. A gather, multiply and ``index_add`` materialises
    ``[edges, dim]`` tensors several times per call, and ``torch.sparse.mm`` on a CSR tensor
    transposes it again in every backward pass.
    """

    def __init__(self, dst, src, n_dst, n_src):
        self._index = _CSRIndex(dst, src, n_dst, n_src)
        self._index_t = _CSRIndex(src, dst, n_src, n_dst)

    def mm(self, weights, x):
        """``W x`` with ``W[dst_e, src_e] = weights[e]``, differentiable in both."""
        return _EdgeMM.apply(weights, x, self._index, self._index_t)

    def edge_dots(self, a, b):
        """``<a[dst_e], b[src_e]>`` for every edge, differentiable in both."""
        return _EdgeDots.apply(a, b, self._index, self._index_t)

    def softmax(self, scores):
        """Softmax of per-edge ``scores`` over the edges into each ``dst``, differentiable. Edges
        in CSR order take one pass over the rows (about twice as fast); others the scatter
        version, since permuting them to CSR order and back costs more than it saves."""
        index = self._index
        if index.order is None:
            return _EdgeSoftmax.apply(scores, index)
        return segment_softmax(scores, index.rows, index.shape[0])

    def t(self):
        """The same edges the other way round, sharing the index arrays."""
        flipped = object.__new__(EdgeProduct)
        flipped._index, flipped._index_t = self._index_t, self._index
        return flipped


class _EdgeMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weights, x, index, index_t):
        ctx.save_for_backward(weights, x)
        ctx.index, ctx.index_t = index, index_t
        return index.matrix(weights) @ x

    @staticmethod
    def backward(ctx, grad):
        weights, x = ctx.saved_tensors
        grad_weights = ctx.index.dots(grad, x) if ctx.needs_input_grad[0] else None
        grad_x = ctx.index_t.matrix(weights) @ grad if ctx.needs_input_grad[1] else None
        return grad_weights, grad_x, None, None


class _EdgeDots(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, index, index_t):
        ctx.save_for_backward(a, b)
        ctx.index, ctx.index_t = index, index_t
        return index.dots(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        grad_a = ctx.index.matrix(grad) @ b if ctx.needs_input_grad[0] else None
        grad_b = ctx.index_t.matrix(grad) @ a if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None, None


class _EdgeSoftmax(torch.autograd.Function):
    """Softmax over each CSR row's edges, edges in CSR order: one pass over the rows forward and
    backward."""

    @staticmethod
    def forward(ctx, scores, index):
        shift = torch.segment_reduce(scores, "max", offsets=index.crow)
        exp = (scores - index.per_edge(shift)).exp()
        alpha = exp / index.per_edge(index.row_sums(exp))
        ctx.save_for_backward(alpha)
        ctx.index = index
        return alpha

    @staticmethod
    def backward(ctx, grad):
        (alpha,) = ctx.saved_tensors
        weighted = alpha * grad
        # d alpha_e / d s_f = alpha_e (1[e = f] - alpha_f) within a row
        return weighted - alpha * ctx.index.per_edge(ctx.index.row_sums(weighted)), None


def segment_softmax(scores, index, n_segments):
    """Softmax of ``scores`` within each group of equal ``index`` (edges grouped by a node, in
    any order), shifted by each group's maximum."""
    shift = scores.new_full((n_segments,), float("-inf"))
    shift = shift.scatter_reduce(0, index, scores.detach(), reduce="amax", include_self=True)
    exp = (scores - shift[index]).exp()
    total = scores.new_zeros(n_segments).index_add(0, index, exp)
    return exp / total[index]


def spmm(graph, x):
    """``graph @ x`` for a sparse COO ``graph``, through :class:`EdgeProduct`.

    The index arrays are built once per coalesced graph tensor and kept on it (a graph is a
    buffer that lives as long as its model, or a per-epoch sample); a graph whose values carry
    gradient, or an uncoalesced one, is coalesced and indexed on every call.
    """
    if not graph.is_coalesced():
        graph = graph.coalesce()
    product = getattr(graph, "_edge_product", None)
    if product is None:
        rows, cols = graph.indices()
        product = EdgeProduct(rows, cols, graph.shape[0], graph.shape[1])
        if not graph.requires_grad:
            graph._edge_product = product
    return product.mm(graph.values(), x)


def propagate(graph, x, layers):
    """``graph^layers x``: ``layers`` sparse products (``x`` itself at 0)."""
    for _ in range(layers):
        x = spmm(graph, x)
    return x


def interaction_edges(dataset):
    """The distinct (user, item) pairs of ``dataset``'s interactions (internal ids), as two long
    tensors: a repeated interaction is one edge of the user-item graph, as in LATTICE's and
    FREEDOM's reference code."""
    inter = dataset.inter_matrix(form="coo")
    users = torch.from_numpy(inter.row).long()
    items = torch.from_numpy(inter.col).long()
    n_items = int(dataset.item_num)
    pairs = torch.unique(users * n_items + items)
    return pairs // n_items, pairs % n_items
