"""SMORE (Ong and Khong, WSDM 2025): spectrum-based modality representation fusion graph convolution."""

import torch
from torch import nn

from recbole_ckd.model import graphs
from recbole_ckd.model.backbones.mgcn import MGCN
from recbole_ckd.model.graphs import spmm
from recbole_ckd.model.multimodal import MultimodalRecommender


def max_pool_graphs(parts, n):
    """The union of sparse ``[n, n]`` graphs whose value at an edge is the largest value any of
    them gives it (an edge missing from a graph does not count there), coalesced."""
    indices = torch.cat([part.indices() for part in parts], dim=1)
    values = torch.cat([part.values() for part in parts])
    keys, inverse = torch.unique(indices[0] * n + indices[1], return_inverse=True)
    pooled = values.new_full((len(keys),), float("-inf")).scatter_reduce(0, inverse, values, reduce="amax")
    return torch.sparse_coo_tensor(torch.stack([keys // n, keys % n]), pooled, (n, n)).coalesce()


class SMORE(MGCN):
    """SMORE: modality features denoised and fused in the frequency domain, one item-item view per
    modality plus a fused view, and modality-aware preference gates.

    With ID embeddings ``e_u``, ``e_i``, each modality's projected features ``x^m = W_m f^m + b_m``
    and ``F`` the orthonormal real FFT along the embedding dimension:

    - *Spectral denoising*: ``c^m = F^-1(F(x^m) * w_m)`` with a learned complex filter ``w_m``
      of ``d // 2 + 1`` frequencies per modality; *spectral fusion*:
      ``c^f = F^-1(w_f * prod_m F(x^m))`` (a product of spectra is a circular convolution of
      the modalities' features).
    - *Gating by the ID embedding*: ``x_i^m = e_i * sigmoid(W_m^g c_i^m + b_m^g)`` and the same
      for the fused ``c^f`` with its own gate.
    - *User-item view*: LightGCN on the symmetric-normalised training graph, the mean of layers
      ``0..n_ui_layers`` (the "content" embedding ``h``).
    - *Item-item views*: ``n_layers`` propagations of ``x^m`` over modality m's kNN graph
      ``S_m`` (top-k cosine neighbours of the raw features, self included, cosine-weighted,
      ``D^-1/2 S D^-1/2``; k is ``image_knn_k`` for ``v``, ``text_knn_k`` for ``t``, ``knn_k``
      for any other modality), and of the fused ``x^f`` over the max-pooled graph
      ``S_f[i, j] = max_m S_m[i, j]`` (over the graphs that hold the edge). Users take ``R z``
      with ``R`` the user-item block of the normalised training graph, giving ``z^m`` and
      ``z^f`` for every node.
    - *Modality-aware preferences*: ``a^m = softmax(W_2^m tanh(W_1^m z^f + b^m)) * z^m`` (a
      softmax over the embedding dimension, guided by the fused view), gated by the node's
      behaviour: ``s = (sum_m p^m * a^m + p^f * z^f) / (M + 1)`` with
      ``p = dropout(sigmoid(W^p h + b^p))`` per modality and for the fused view.
    - Representation ``h + s``; score ``<h_u + s_u, h_i + s_i>``. Loss, as MGCN's (the
      :meth:`objective` is MGCN's): BPR, L2 on the batch representations (``reg_weight``) and
      ``cl_weight`` times the InfoNCE of side and content views of the batch's users and
      positive items (temperature ``cl_temperature``).

    Reference: the authors' code, which MMRec ships (``SMORE``). Differences from it:
    any number of modalities (the reference takes exactly image and text: its fusion multiplies
    the two spectra, here all of them; it averages three views, here ``M + 1``); the L2 term is
    divided by the actual batch size (the reference divides by the configured batch size,
    which differs only on the last, smaller batch); the padding item (row 0) has no kNN
    neighbours; the preference gates' dropout mask is drawn once per training step and shared
    by every masking mode a CKD student computes in that step (one model, several masks of
    its inputs); ``dropout_rate`` defaults to 0, one end of MMRec's grid ``[0, 0.1]``. As in
    the reference, the feature tables are fine-tuned (``train_features``) while the kNN graphs
    are built once from the raw features, and the InfoNCE temperature is 0.2. The reference's
    learning-rate schedule (``[0.96, 50]``) is the default in ``properties/model/SMORE.yaml``.

    Masking modality m (docs/method.md, section 2), "the same model with m's information
    removed":

    - m's features are replaced by their mean over items (of the trained table when features
      are fine-tuned) *before* the spectral filters. ``F(x^m)`` is then one spectrum shared by
      every item, so ``c^m`` and m's gate are constants, and the fused spectrum
      ``w_f * F(mean x^m) * prod_{m' != m} F(x^{m'})`` is the other modalities' spectra under a
      fixed filter: the fused view keeps its place, its parameters and the other modalities'
      information, and carries nothing item-specific of m. Removing m's factor from the product
      (or m's branch) instead would change the model itself: the fusion filter and every
      weight after it were trained on a product that includes m's spectrum, and the fused
      view's scale and the ``M + 1`` views averaged would change with the mask;
    - m's kNN graph is built from m's features, and a kNN graph of identical mean features is
      degenerate, so m's own view skips the item-item propagation (``S_m`` replaced by the
      identity, as MGCN does) and ``S_m`` leaves the max-pool of the fused graph (which then
      pools the unmasked modalities' graphs; with every modality masked the fused view skips
      its propagation too). Users still aggregate ``R x``;
    - SMORE has no per-user parameter of one modality (the preference gates read the shared
      user-item view), so nothing user-side is averaged.
    """

    def __init__(self, config, dataset):
        MultimodalRecommender.__init__(self, config, dataset)  # SMORE builds its own modules, not MGCN's
        dim = config["embedding_size"]
        self.n_ui_layers = int(config["n_ui_layers"])
        self.n_layers = int(config["n_layers"])
        self.cl_weight = float(config["cl_weight"])
        self.cl_temperature = float(config["cl_temperature"])
        self.dropout_rate = float(config["dropout_rate"])
        if self.n_ui_layers < 0 or self.n_layers < 0:
            raise ValueError(f"n_ui_layers and n_layers must be >= 0, got {self.n_ui_layers} and {self.n_layers}.")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must lie in [0, 1), got {self.dropout_rate}.")

        def gate():
            return nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid())

        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_id_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        self.projection = nn.ModuleDict({m: nn.Linear(self.feature_dim(m), dim) for m in self.modalities})
        frequencies = dim // 2 + 1
        # complex filters as (real, imaginary) pairs, standard normal as in the reference
        self.spectral_filter = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(1, frequencies, 2)) for m in self.modalities}
        )
        self.fusion_filter = nn.Parameter(torch.randn(1, frequencies, 2))
        self.purifier = nn.ModuleDict({m: gate() for m in self.modalities})
        self.fusion_purifier = gate()
        self.query = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, dim, bias=False)) for m in self.modalities
        })
        self.preference_gate = nn.ModuleDict({m: gate() for m in self.modalities})
        self.fusion_preference_gate = gate()
        self.dropout = nn.Dropout(self.dropout_rate)

        self._build_knn_graphs(config)
        self._fused_graphs = {}  # S_f per set of unmasked modalities and device, built when first used
        adjacency = self.bipartite_adjacency(dataset, "sym")
        self.register_buffer("norm_adj", adjacency, persistent=False)
        self.register_buffer("user_item", self._user_item_block(adjacency), persistent=False)
        self.init_trained_features(config)

    def _build_knn_graphs(self, config):
        """Each modality's cosine-weighted kNN graph (its own k), cached under ``<checkpoint_dir>/graphs``."""
        keys = {"v": "image_knn_k", "t": "text_knn_k"}
        for m in self.modalities:
            key = keys.get(m, "knn_k")
            k = int(config[key])
            if k < 1:
                raise ValueError(f"SMORE needs {key} >= 1, got {k}.")
            graph = graphs.knn_graph(self.feature(m).to(self.device), k, weighted=True, normalization="sym",
                                     cache_dir=self.graph_cache_dir)
            self.register_buffer(f"_item_graph_{m}", graph.to(self.device), persistent=False)

    def fused_graph(self, masked):
        """``S_f``: the max-pool of the unmasked modalities' kNN graphs, or None when all are masked."""
        active = tuple(m for m in self.modalities if m not in masked)
        if not active:
            return None
        key = (active, self.item_graph(active[0]).device)
        if key not in self._fused_graphs:
            self._fused_graphs[key] = max_pool_graphs([self.item_graph(m) for m in active], self.n_items)
        return self._fused_graphs[key]

    # ------------------------------------------------------------ representations
    def spectrum(self, m, is_masked, memo):
        """``F(x^m)``: ``[n_items, d // 2 + 1]`` complex, or ``[1, ...]`` (the mean's) when masked."""
        key = ("spectrum", m, is_masked)
        if key not in memo:
            memo[key] = torch.fft.rfft(self.modality_features(m, is_masked), dim=1, norm="ortho")
        return memo[key]

    def propagate_items(self, items, graph):
        """``n_layers`` propagations of ``items`` over ``graph`` (none when ``graph`` is None),
        users by ``R``: the view of every node."""
        if graph is not None:
            for _ in range(self.n_layers):
                items = spmm(graph, items)
        return torch.cat([spmm(self.user_item, items), items])

    def modality_view(self, m, is_masked, memo):
        """``z^m``: m's denoised features gating the ID embeddings, over m's graph (not when masked)."""
        dim = self.item_id_embedding.weight.shape[1]
        denoised = torch.fft.irfft(self.spectrum(m, is_masked, memo) * torch.view_as_complex(self.spectral_filter[m]),
                                   n=dim, dim=1, norm="ortho")
        items = self.item_id_embedding.weight * self.purifier[m](denoised)
        return self.propagate_items(items, None if is_masked else self.item_graph(m))

    def fusion_view(self, masked, memo):
        """``z^f``: the fused spectrum's features gating the ID embeddings, over ``S_f``."""
        dim = self.item_id_embedding.weight.shape[1]
        spectrum = torch.view_as_complex(self.fusion_filter)
        for m in self.modalities:
            spectrum = spectrum * self.spectrum(m, m in masked, memo)
        fused = torch.fft.irfft(spectrum, n=dim, dim=1, norm="ortho")
        items = self.item_id_embedding.weight * self.fusion_purifier(fused)
        return self.propagate_items(items, self.fused_graph(masked))

    def preferences(self, content):
        """``{m: p^m}`` and ``p^f`` from the user-item view, with dropout in training."""
        gates = {m: self.dropout(self.preference_gate[m](content)) for m in self.modalities}
        return gates, self.dropout(self.fusion_preference_gate(content))

    def propagate(self, masked=frozenset(), memo=None):
        """``(h + s, s, h)`` over all ``n_users + n_items`` nodes: representation, side, content.

        ``memo`` (a dict) shares what several masking modes have in common: the user-item view
        and its preference gates (one dropout mask per step), each modality's spectrum and view."""
        memo = {} if memo is None else memo
        if "content" not in memo:
            memo["content"] = self.user_item_view()
            memo["preferences"] = self.preferences(memo["content"])
        content, (preference, fusion_preference) = memo["content"], memo["preferences"]
        fused = self.fusion_view(masked, memo)
        side = fusion_preference * fused
        for m in self.modalities:
            key = (m, m in masked)
            if key not in memo:
                memo[key] = self.modality_view(m, m in masked, memo)
            attention = torch.softmax(self.query[m](fused), dim=-1)
            side = side + preference[m] * attention * memo[key]
        side = side / (len(self.modalities) + 1)
        return content + side, side, content
