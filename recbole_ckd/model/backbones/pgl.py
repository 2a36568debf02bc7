"""PGL (Yu et al., AAAI 2025): message passing on a principal subgraph of the user-item graph."""

import torch
import torch.nn.functional as F
from torch import nn

from recbole_ckd.model import graphs
from recbole_ckd.model.multimodal import FixedItemGraphs, MultimodalRecommender, PrunedUserItemGraph


class PGL(FixedItemGraphs, PrunedUserItemGraph, MultimodalRecommender):
    """PGL: P. Yu, Z. Tan, G. Lu, B.-K. Bao, "Mind Individual Information! Principal Graph
    Learning for Multimedia Recommendation", AAAI 2025. Reference: MMRec's ``PGL`` (from the
    authors' code, github.com/demonph10/PGL).

    Per modality m, users have a free embedding ``p^m_u`` and items the normalised projection of
    their (fine-tuned) features, ``q^m_i = normalize(W_m f^m_i + b_m)`` (``feat_embed_dim``, which
    must equal ``embedding_size``). A node's input is the concatenation over the modalities,
    ``x_u = [p^m_u]_m``, ``x_i = [q^m_i]_m``; there are no item ID embeddings.

    - *Principal subgraph*, extracted from the normalised training graph ``L = D^-1/2 A D^-1/2``
      by one of the paper's two operators (``mode``):

      - ``local`` (*local-aware*, the reference's default): every epoch, :meth:`pre_epoch` keeps
        ``int(|E| keep_share)`` of the training edges (``keep_share`` 0.3), edge ``(u, i)``
        drawn with probability proportional to ``1 / sqrt(d_u d_i)`` without replacement, and
        normalises the kept graph with its own degrees (FREEDOM's sampling,
        :class:`~recbole_ckd.model.multimodal.PrunedUserItemGraph`). The torch RNG of the
        model's device draws it, so a run is reproducible from its seed and a resumed run draws
        what the uninterrupted one did;
      - ``global`` (*global-aware*): with the top-``embedding_size`` singular values
        ``s_1 >= ... >= s_r`` of ``L`` and their vectors, ``q = r / 4`` and
        ``P = sum_{k <= q} s_k s_{r-q+k} u_k v_k^T``, entries with ``|P_ij| < 1e-3`` dropped
        (:func:`~recbole_ckd.model.graphs.principal_graph`): a fixed, signed graph over all
        nodes (user-user and item-item entries too), built once, deterministically, and cached
        under ``<checkpoint_dir>/graphs``.

      Training propagates over the subgraph, evaluation over the full graph ``L``, as in the
      reference.
    - *Message passing*: LightGCN (mean of layers ``0..n_ui_layers``) of ``x`` over that graph.
    - *Item-item graph*: FREEDOM's frozen kNN graphs of the raw features (top-``knn_k`` cosine,
      self included, unweighted, ``D^-1/2 S_m D^-1/2``), ``S = sum_m w_m S_m`` with
      ``mm_image_weight`` for ``v`` (:class:`~recbole_ckd.model.multimodal.FixedItemGraphs`);
      ``h = S^{n_mm_layers} x_I``.
    - Representations ``u = LightGCN(x)_u``, ``i = LightGCN(x)_i + h_i``, scored by dot product.

    Loss (the reference's): BPR plus ``cl_weight`` times the mean of two InfoNCE terms
    (temperature ``cl_temperature``), one between two dropout views (rate ``dropout``) of the
    batch users' representations and one between two of the positive items'. The reference calls
    ``cl_weight`` ``reg_weight``, and MMRec's grid holds only 0, so it is 0 by default (the terms
    are then neither computed nor their dropout masks drawn); this project's ``reg_weight`` (L2
    on the batch representations) is 0 too, as the reference has none.

    Differences from MMRec's code, on purpose:

    - ``global`` mode builds ``P`` a block of rows at a time (the reference forms the dense
      ``(|U| + |I|)^2`` matrix, which does not fit in memory at the sizes of the usual
      datasets), from the eigenvectors of the symmetric ``L`` (its singular triplets, by dense
      decomposition for small graphs and ARPACK's Lanczos iteration from a fixed start vector
      otherwise, where the reference calls SVDLIBC through ``sparsesvd``);
    - the share of edges kept, hard-coded to 0.3 in the reference, is the key ``keep_share``;
    - the InfoNCE is computed as a cross-entropy of the scaled cosine logits (the same value,
      without overflow at low temperatures); the temperature 0.2 is the key ``cl_temperature``;
    - MMRec caches the item-item graph in a file named by ``knn_k`` and the image weight alone;
      here the cache is keyed by the features and every parameter;
    - any number of modalities (the reference takes exactly an image and a text modality),
      with FREEDOM's weights; a repeated interaction is one edge, at least one edge is kept,
      and the padding item (row 0) has no edges and no kNN neighbours.

    Choices where the paper is silent, taken from the reference code: Xavier-uniform user
    embeddings, PyTorch's default Linear initialisation, the feature tables fine-tuned
    (``train_features``, the reference loads them with ``freeze=False``; only the modalities the
    model uses get one), MMRec's learning-rate schedule (``learning_rate_scheduler: [0.96, 50]``).

    Masking modality m (docs/method.md, section 2): every item's ``q^m_i`` is computed from m's
    mean feature vector (one row for all items), every user's ``p^m_u`` is replaced by its mean
    over users, and ``S_m`` is dropped from the item-item graph, the remaining weights
    renormalised (with every modality masked there is no item-item term). m's block of the
    representations then carries the graphs' degrees but no item- or user-specific information
    of m. The principal subgraph is extracted from the interactions alone, so masking does not
    touch it.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        dim = int(config["embedding_size"])
        self.feat_embed_dim = int(config["feat_embed_dim"])
        self.n_mm_layers = int(config["n_mm_layers"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.dropout = float(config["dropout"])
        self.cl_weight = float(config["cl_weight"])
        self.cl_temperature = float(config["cl_temperature"])
        keep_share = float(config["keep_share"])
        self.mode = config["mode"]
        if self.mode not in ("local", "global"):
            raise ValueError(f"PGL's mode (the principal subgraph's extraction) must be 'local' or 'global', "
                             f"got {self.mode!r}.")
        if self.mode == "global" and dim < 4:
            raise ValueError(f"PGL's global mode takes a quarter of embedding_size ({dim}) singular vectors: "
                             f"it needs embedding_size >= 4.")
        if self.n_mm_layers < 0 or self.n_ui_layers < 0:
            raise ValueError("PGL needs n_mm_layers >= 0 and n_ui_layers >= 0.")
        if self.feat_embed_dim != dim:
            raise ValueError(
                f"PGL propagates user embeddings and projected item features together: feat_embed_dim "
                f"({self.feat_embed_dim}) must equal embedding_size ({dim})."
            )
        if not 0.0 < keep_share <= 1.0:
            raise ValueError(f"PGL's keep_share (the share of edges in the principal subgraph) must lie in (0, 1], "
                             f"got {keep_share}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"PGL's dropout (of the contrastive views) must lie in [0, 1), got {self.dropout}.")
        if self.cl_temperature <= 0:
            raise ValueError(f"PGL's cl_temperature must be > 0, got {self.cl_temperature}.")

        self.user_embedding = nn.ParameterDict(
            {m: nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, dim))) for m in self.modalities}
        )
        self.projection = nn.ModuleDict({m: nn.Linear(self.feature_dim(m), self.feat_embed_dim) for m in self.modalities})
        self.init_trained_features(config, [m for m in self.modalities if m not in self.default_masked])
        self.build_fixed_item_graphs(config)
        if self.mode == "local":
            self.build_pruned_graph(dataset, keep_share)
        else:  # one principal subgraph for all epochs: nothing drawn
            self.build_pruned_graph(dataset, 1.0)
            principal = graphs.principal_graph(self.full_graph, dim, cache_dir=self.graph_cache_dir)
            self.register_buffer("principal_graph", principal.to(self.device), persistent=False)

    def training_graph(self):
        """The principal subgraph in training, the full graph otherwise."""
        if self.mode == "global" and self.training:
            return self.principal_graph
        return super().training_graph()

    # ------------------------------------------------------------ representations
    def node_inputs(self, masked=frozenset(), memo=None):
        """``(x_U, x_I)``: per-modality user embeddings and normalised projected item features,
        concatenated over the modalities, the masked ones at their mean. ``memo`` (a dict) keeps
        each modality's projected features for the other masking modes of the same step."""
        projected = {} if memo is None else memo.setdefault("projected", {})
        users, items = [], []
        for m in self.modalities:
            if m in masked:
                users.append(self.user_mean(self.user_embedding[m]).expand(self.n_users, -1))
                mean = F.normalize(self.projection[m](self.trained_feature_mean(m)))
                items.append(mean.expand(self.n_items, -1))
            else:
                if m not in projected:
                    projected[m] = F.normalize(self.projection[m](self.trained_feature(m)))
                users.append(self.user_embedding[m])
                items.append(projected[m])
        return torch.cat(users, dim=1), torch.cat(items, dim=1)

    def forward(self, masked=frozenset()):
        return self.tables(masked)

    def tables(self, masked=frozenset(), memo=None):
        """:meth:`forward`, sharing ``memo`` with the other modes of a step."""
        user_inputs, item_inputs = self.node_inputs(masked, memo)
        users, items = self.lightgcn(self.training_graph(), user_inputs, item_inputs, self.n_ui_layers)
        adjacency = self.item_adjacency(masked)
        if adjacency is not None:
            items = items + graphs.propagate(adjacency, item_inputs, self.n_mm_layers)
        return users, items

    def batch_representations_modes(self, users, items, modes, memo=None):
        """Every mode's tables, each modality's features projected once for all of them."""
        memo, result = {} if memo is None else memo, {}
        for name, masked in modes.items():
            user_reps, item_reps = self.tables(masked, memo)
            result[name] = (user_reps[users], item_reps[items])
        return result

    # ------------------------------------------------------------ training
    def info_nce(self, view1, view2):
        """``mean_a -log(exp(<v1_a, v2_a> / t) / sum_b exp(<v1_a, v2_b> / t))`` of the
        L2-normalised rows."""
        logits = F.normalize(view1, dim=1) @ F.normalize(view2, dim=1).T / self.cl_temperature
        return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))

    def contrastive(self, reps):
        """InfoNCE between two dropout views of ``reps``."""
        p = self.dropout
        return self.info_nce(F.dropout(reps, p, self.training), F.dropout(reps, p, self.training))

    def objective(self, interaction, step):
        """BPR (with ``reg_weight``'s L2, 0 by default) plus ``cl_weight`` times the contrastive
        terms of the batch users and positive items."""
        terms = super().objective(interaction, step)
        if self.cl_weight:  # at weight 0 (the default) neither computed nor drawn
            user_reps, pos_reps, _ = step.joint
            terms["contrastive"] = self.cl_weight * (self.contrastive(user_reps) + self.contrastive(pos_reps)) / 2
        return terms
