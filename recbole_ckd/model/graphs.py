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


def normalized_adjacency(rows, cols, values, n, normalization="sym"):
    """Sparse ``D^-1/2 A D^-1/2`` (``sym``) or ``D^-1 A`` (``row``) as a coalesced COO tensor."""
    degree = torch.zeros(n, device=values.device).index_add_(0, rows, values)
    inverse = lambda d: torch.where(d > 0, d, torch.ones_like(d)).pow(-0.5 if normalization == "sym" else -1.0)  # noqa: E731
    if normalization == "sym":
        values = values * inverse(degree)[rows] * inverse(degree)[cols]
    elif normalization == "row":
        values = values * inverse(degree)[rows]
    else:
        raise ValueError(f"normalization must be 'sym' or 'row', got {normalization!r}")
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
