"""FREEDOM (Zhou and Shen, ACM MM 2023): a frozen multimodal item graph and a denoised user-item graph."""

import torch
from torch import nn

from recbole_ckd.model import graphs
from recbole_ckd.model.multimodal import FixedItemGraphs, ItemGraphRecommender, PrunedUserItemGraph, bpr, margin


class FREEDOM(FixedItemGraphs, PrunedUserItemGraph, ItemGraphRecommender):
    """FREEDOM: LATTICE's item-item graph frozen at its initial kNN structure, plus a user-item
    graph pruned at random, in a degree-sensitive way, every epoch.

    With ID embeddings ``e_u``, ``e_i`` and each modality's features ``f_i^m``:

    - *Frozen item-item graph*: per modality, ``S_m`` links each item to its top-``knn_k``
      cosine neighbours among the raw features (self included), unweighted, normalised
      ``D^-1/2 S D^-1/2`` (row sums); ``S = sum_m w_m S_m`` with fixed weights that sum to 1.
      Built once and cached under ``<checkpoint_dir>/graphs``. ``h = S^{n_mm_layers} e_I``.
    - *Denoised user-item graph*: LightGCN (mean of layers ``0..n_ui_layers``) over the training
      graph ``D^-1/2 A D^-1/2``. In training, :meth:`pre_epoch` samples, every epoch
      (:class:`~recbole_ckd.model.multimodal.PrunedUserItemGraph`),
      ``int(|E| (1 - dropout))`` of the ``|E|`` training edges without replacement, edge ``(u, i)``
      with probability proportional to ``1 / sqrt(d_u d_i)`` (edges between popular nodes are the
      likeliest to be dropped), and normalises the kept graph with its own degrees. The torch
      RNG of the model's device draws the sample, so a resumed run draws what the uninterrupted
      one did. In evaluation the full graph is used, as in the reference.
    - Representations ``u = x_u``, ``i = x_i + h_i``, scored by dot product.

    Loss (the reference's): ``BPR(u, i) + mm_bpr_weight * sum_m BPR(x_u, W_m f^m + b_m)``, the
    second term a BPR between the users' representations and each modality's projected features
    (``feat_embed_dim``, which must equal ``embedding_size``), over the same triples;
    ``mm_bpr_weight`` is what the reference calls ``reg_weight``. The reference has no L2 term,
    so ``reg_weight`` (this project's L2 on the batch representations, the base class's
    ``objective``) is 0 by default. A CKD student keeps every term (:meth:`objective`), so its
    projections and fine-tuned feature tables train as the plain model's do.

    Modality weights: ``modality_weights`` (a dict, normalised to sum 1) if given; otherwise the
    reference's ``mm_image_weight`` for the image modality ``v`` and ``1 - mm_image_weight``
    shared equally by the others (``v: 0.1, t: 0.9`` with the default naming; equal weights
    when there is no ``v``, weight 1 for a single modality).

    Masking modality m (docs/method.md, section 2): ``S_m`` is dropped from ``S`` and the remaining weights
    are renormalised to sum 1 (with only zero-weight modalities left there is no item-item
    term). The graph is the only place where the ranking uses features, and FREEDOM has no
    user-side parameter that belongs to one modality, so the outputs do not depend on m's
    features. The auxiliary BPR term of a masked modality is left out of the loss: with the mean
    vector for every item its two projected items coincide, so the term is the constant log 2
    with zero gradient.

    Choices where the paper is silent, taken from the reference code: Xavier-uniform ID
    embeddings, PyTorch's default Linear initialisation, the self loop in every kNN row, the
    feature tables fine-tuned (``train_features``; the reference loads them with
    ``freeze=False``: a trained copy, see ``MultimodalRecommender.init_trained_features``; only
    the modalities the model uses get one)
    while the frozen graph keeps the raw features' structure. This implementation's own
    choices: the padding item (row 0) has no kNN neighbours and no edges; a repeated
    interaction is one edge; at least one edge is kept; any number of modalities, weighted as
    above; the defaults ``dropout: 0.8`` and ``mm_bpr_weight: 1e-4`` are picked from the authors'
    grids (``[0.8, 0.9]`` and ``[0, 1e-5, 1e-4, 1e-3]``), which they searched per dataset.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        dim = int(config["embedding_size"])
        self.feat_embed_dim = int(config["feat_embed_dim"])
        self.n_mm_layers = int(config["n_mm_layers"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.dropout = float(config["dropout"])
        self.mm_bpr_weight = float(config["mm_bpr_weight"])
        if self.n_mm_layers < 0 or self.n_ui_layers < 0:
            raise ValueError("FREEDOM needs n_mm_layers >= 0 and n_ui_layers >= 0.")
        if self.feat_embed_dim != dim:
            raise ValueError(
                f"FREEDOM scores users against projected features: feat_embed_dim ({self.feat_embed_dim}) must equal "
                f"embedding_size ({dim})."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"FREEDOM's dropout (the share of edges pruned) must lie in [0, 1), got {self.dropout}.")

        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_id_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        self.projection = nn.ModuleDict({m: nn.Linear(self.feature_dim(m), self.feat_embed_dim) for m in self.modalities})
        self.init_trained_features(config, [m for m in self.modalities if m not in self.default_masked])

        self.build_fixed_item_graphs(config)
        self.build_pruned_graph(dataset, 1.0 - self.dropout)

    # ------------------------------------------------------------ representations
    def _collaborative(self):
        """``(x_U, x_I)``: LightGCN over the pruned graph in training, the full graph otherwise."""
        users, items = self.user_embedding.weight, self.item_id_embedding.weight
        return self.lightgcn(self.training_graph(), users, items, self.n_ui_layers)

    def _item_graph_term(self, masked):
        adjacency = self.item_adjacency(masked)
        if adjacency is None:
            return 0.0
        return graphs.propagate(adjacency, self.item_id_embedding.weight, self.n_mm_layers)

    # ------------------------------------------------------------ training
    def objective(self, interaction, step):
        """BPR (with ``reg_weight``'s L2, 0 by default) plus the modality BPR terms between the
        batch users' representations and each unmasked modality's projected features."""
        terms = super().objective(interaction, step)
        user_reps = step.joint[0]
        pos, neg = interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]
        items = torch.cat([pos, neg])
        distinct = self.distinct_items(items)  # each distinct item projected once, for every modality
        modality_bpr = 0.0
        for m in self.modalities:
            if m in self.default_masked:
                continue  # the mean features give a constant term (see the class docstring)
            projected = self.project_rows(self.projection[m], self.trained_feature(m), items, distinct)
            pos_m, neg_m = projected.split(len(pos))
            modality_bpr = modality_bpr + bpr(margin(user_reps, pos_m, neg_m))
        terms["modality_bpr"] = self.mm_bpr_weight * modality_bpr
        return terms
