"""MMGCF (UMAP 2026): Multimodal Graph Collaborative Filtering, LightGCN late-fused with item features."""

import torch
import torch.nn.functional as F
from torch import nn

from recbole_ckd.model.multimodal import MultimodalRecommender, PrunedUserItemGraph, bpr, l2_per_triple

FUSION_MODES = ("mean", "sum", "concat")
WEIGHTINGS = ("equal", "alpha", "normalized")


class MMGCF(PrunedUserItemGraph, MultimodalRecommender):
    """MMGCF: "Multimodal Graph Collaborative Filtering for Recommendation with Graph
    Convolutional Networks", UMAP 2026 (doi.org/10.1145/3774935.3806158). Reference: MMRec's
    ``MMGCF``.

    LightGCN over the user-item graph gives ``x_u``, ``x_i`` (mean of layers ``0..n_ui_layers``
    of the ID embeddings ``e_u``, ``e_i``); each item is then late-fused with its projected
    features ``g^m_i = W_m f^m_i + b_m`` (``feat_embed_dim``; the raw features, frozen). With
    ``fuse`` the ``fusion_mode``: ``mean`` or ``sum`` of equally shaped vectors (``feat_embed_dim``
    must then equal ``embedding_size``), or ``concat``, a Linear layer of their concatenation:

    - ``weighting: equal``: ``i = fuse(x_i, fuse_m(g^m_i))`` (the modalities first; a single
      modality is taken as is);
    - ``weighting: alpha``: ``i = fuse(a x_i, (1 - a) g^1_i, ..., (1 - a) g^M_i)`` with
      ``a = sigmoid(alpha)``, ``alpha`` learned from 0;
    - ``weighting: normalized``: ``i = fuse(M x_i / |x_i|, g^1_i / |g^1_i|, ...)``, ``M`` the
      number of modalities.

    Users are ``u = x_u``; scores are dot products. In training, the user-item graph is pruned
    every epoch (``dropout``, the share of edges dropped): FREEDOM's degree-sensitive sampling
    (:class:`~recbole_ckd.model.multimodal.PrunedUserItemGraph`), drawn by the torch RNG of the
    model's device, so reproducible from the seed and resumable; ``dropout: 0`` trains on the
    full graph, which evaluation always uses.

    Loss (the reference's): BPR plus ``reg_weight`` times ``(|E_u|^2 + |E_i+|^2 + |E_j-|^2) /
    (2 B)`` on the batch's ID embeddings (not on the representations, unlike the base class).

    Differences from MMRec's code, on purpose: a ``concat`` model creates only the Linear layers
    its weighting uses (the reference creates all three; the unused ones never train); any
    number of modalities (the reference takes an image and a text modality); a repeated
    interaction is one edge and at least one edge is kept. Choices where the reference is
    silent or this project's conventions rule: Xavier-uniform ID embeddings and PyTorch's
    default Linear initialisation, as the reference; the defaults ``n_ui_layers: 2``,
    ``reg_weight: 1e-3``, ``fusion_mode: mean``, ``weighting: equal`` (the reference's
    recommended one), ``dropout: 0.2`` are picked from MMRec's grid.

    Masking modality m (docs/method.md, section 2): every item's ``g^m_i`` is the projection
    of m's mean feature vector (one row for all items), in every weighting and fusion mode;
    MMGCF has no user-side parameter that belongs to one modality and uses the features
    nowhere else, so the outputs do not depend on m's features.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        dim = int(config["embedding_size"])
        self.feat_embed_dim = int(config["feat_embed_dim"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.fusion_mode = config["fusion_mode"]
        self.weighting = config["weighting"]
        self.dropout = float(config["dropout"])
        if self.n_ui_layers < 0:
            raise ValueError(f"MMGCF needs n_ui_layers >= 0, got {self.n_ui_layers}.")
        if self.fusion_mode not in FUSION_MODES:
            raise ValueError(f"MMGCF's fusion_mode must be one of {list(FUSION_MODES)}, got {self.fusion_mode!r}.")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"MMGCF's weighting must be one of {list(WEIGHTINGS)}, got {self.weighting!r}.")
        if self.fusion_mode != "concat" and self.feat_embed_dim != dim:
            raise ValueError(
                f"MMGCF's fusion_mode {self.fusion_mode!r} adds ID and feature embeddings: feat_embed_dim "
                f"({self.feat_embed_dim}) must equal embedding_size ({dim}), or use fusion_mode: concat."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MMGCF's dropout (the share of edges dropped) must lie in [0, 1), got {self.dropout}.")

        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_id_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        self.projection = nn.ModuleDict({m: nn.Linear(self.feature_dim(m), self.feat_embed_dim) for m in self.modalities})
        if self.weighting == "alpha":
            self.mm_alpha = nn.Parameter(torch.tensor(0.0))
        n_modalities = len(self.modalities)
        if self.fusion_mode == "concat":
            if self.weighting == "equal":
                if n_modalities > 1:
                    self.mm_concat = nn.Linear(n_modalities * self.feat_embed_dim, self.feat_embed_dim)
                self.id_mm_concat = nn.Linear(dim + self.feat_embed_dim, dim)
            else:
                self.all_concat = nn.Linear(dim + n_modalities * self.feat_embed_dim, dim)
        self.build_pruned_graph(dataset, 1.0 - self.dropout)

    # ------------------------------------------------------------ representations
    def _fuse(self, tensors, layer=None):
        if self.fusion_mode == "mean":
            return torch.stack(tensors).mean(dim=0)
        if self.fusion_mode == "sum":
            return torch.stack(tensors).sum(dim=0)
        return layer(torch.cat(tensors, dim=-1))

    def fuse_items(self, item_reps, features):
        """The late fusion of LightGCN item rows ``item_reps`` with their projected features
        ``features`` (one tensor per modality, the same rows)."""
        if self.weighting == "alpha":
            alpha = torch.sigmoid(self.mm_alpha)
            return self._fuse([alpha * item_reps] + [(1.0 - alpha) * g for g in features], getattr(self, "all_concat", None))
        if self.weighting == "normalized":
            scaled = [len(features) * F.normalize(item_reps)] + [F.normalize(g) for g in features]
            return self._fuse(scaled, getattr(self, "all_concat", None))
        modal = self._fuse(features, getattr(self, "mm_concat", None)) if len(features) > 1 else features[0]
        return self._fuse([item_reps, modal], getattr(self, "id_mm_concat", None))

    def projected_features(self, masked, items=None, distinct=None, cache=None):
        """``[g^m]`` for every modality, of all items or of the rows ``items``; a masked
        modality's is its mean features' projection for every row. ``cache`` (a dict) shares each
        modality's projection between the modes of a step."""
        rows = self.n_items if items is None else len(items)
        cache = {} if cache is None else cache
        for m in self.modalities:
            if (m, m in masked) in cache:
                continue
            if m in masked:
                cache[m, True] = self.projection[m](self.feature_mean(m)).expand(rows, -1)
            elif items is None:
                cache[m, False] = self.projection[m](self.feature(m))
            else:
                cache[m, False] = self.project_rows(self.projection[m], self.feature(m), items, distinct)
        return [cache[m, m in masked] for m in self.modalities]

    def _collaborative(self):
        """``(x_U, x_I)``: LightGCN over the pruned graph in training, the full graph otherwise."""
        users, items = self.user_embedding.weight, self.item_id_embedding.weight
        return self.lightgcn(self.training_graph(), users, items, self.n_ui_layers)

    def forward(self, masked=frozenset()):
        users, items = self._collaborative()
        return users, self.fuse_items(items, self.projected_features(masked))

    def batch_representations_modes(self, users, items, modes, memo=None):
        """The LightGCN tables once for all modes; each mode fuses only the batch's item rows."""
        user_all, item_all = self._collaborative()
        user_reps, item_reps = user_all[users], item_all[items]
        distinct, projected = self.distinct_items(items), {}
        return {
            name: (user_reps, self.fuse_items(item_reps, self.projected_features(masked, items, distinct, projected)))
            for name, masked in modes.items()
        }

    # ------------------------------------------------------------ training
    def objective(self, interaction, step):
        """BPR plus ``reg_weight`` times the L2 term of the batch's ID embeddings."""
        users, pos, neg = self.batch_triples(interaction)
        item_ids = self.item_id_embedding.weight
        l2 = l2_per_triple(self.user_embedding.weight[users], item_ids[pos], item_ids[neg])
        return {"bpr": bpr(step.margins["joint"]), "l2": self.reg_weight * l2}
