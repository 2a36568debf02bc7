"""Item-item kNN graphs from modality features: built in blocks, stored sparse, cached.

No dense ``n_items x n_items`` matrix is ever formed: similarities are computed for a block of
rows at a time and only each row's top-k survives, so Clothing (23k items) and Elec (63k
items) fit. Graphs are cached on disk keyed by the features and the parameters that
determine them.
"""

import hashlib
import os

import torch

from recbole_ckd.compat import CheckpointError, load_checkpoint, save_checkpoint

GRAPH_FORMAT_VERSION = 1


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
    features and the parameters, and reused while they are unchanged.
    """
    path = None
    if cache_dir:
        digest = hashlib.sha256(features.detach().cpu().float().contiguous().numpy().tobytes())
        digest.update(repr((GRAPH_FORMAT_VERSION, k, weighted, normalization, tuple(features.shape))).encode())
        path = os.path.join(cache_dir, f"knn-{digest.hexdigest()[:24]}.pth")
        if os.path.isfile(path):
            try:
                state = load_checkpoint(path, map_location=features.device)
                return torch.sparse_coo_tensor(state["indices"], state["values"], tuple(state["shape"])).coalesce()
            except (CheckpointError, KeyError):
                pass  # unreadable cache: build it again below
    rows, cols, sims = knn_neighbours(features, k, block_size)
    values = sims if weighted else torch.ones_like(sims)
    graph = normalized_adjacency(rows, cols, values, features.shape[0], normalization)
    if path:
        save_checkpoint({"indices": graph.indices().cpu(), "values": graph.values().cpu(), "shape": list(graph.shape)}, path)
    return graph


def sparse_sum(parts, n):
    """``sum_k A_k`` as one uncoalesced sparse ``[n, n]`` COO tensor (duplicate pairs add up,
    as :func:`torch.sparse.mm` treats them). ``parts`` are ``(indices [2, nnz], values)``
    pairs; the values may carry gradient (scaled by a learned weight, say)."""
    indices = torch.cat([indices for indices, _ in parts], dim=1)
    values = torch.cat([values for _, values in parts])
    return torch.sparse_coo_tensor(indices, values, (n, n))


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
