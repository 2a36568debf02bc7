"""DA-MRS (Xv et al., KDD 2024): denoising and aligning multimodal content and user feedback."""

import torch
import torch.nn.functional as F
from torch import nn

from recbole_ckd.model import graphs
from recbole_ckd.model.multimodal import MultimodalRecommender

BEHAVIOUR = "behaviour"  # the name of the view over the item-item behaviour graph


def symmetric_binary_kl(logits_p, logits_q):
    """``KL(p || q) + KL(q || p)`` of Bernoulli distributions ``p = sigmoid(logits_p)``,
    ``q = sigmoid(logits_q)``, per entry: the log-ratios of both outcomes combine into the
    difference of the logits, ``(p - q) (logits_p - logits_q)`` (exact, and finite where a
    probability saturates)."""
    return (torch.sigmoid(logits_p) - torch.sigmoid(logits_q)) * (logits_p - logits_q)


class DAMRS(MultimodalRecommender):
    """DA-MRS on LightGCN: denoised item-item graphs per modality, an item-item behaviour graph,
    a denoised BPR loss and two alignment losses.

    - *Collaborative part*: LightGCN on the symmetric-normalised training graph, the mean of
      layers ``0..n_ui_layers``: ``(U, I)``.
    - *Denoised item-item graphs* (one per modality): a pair of items is a candidate only where
      its cosine similarity of the raw features is at least the mean similarity in *every*
      modality (consistent content similarity); each item links to its top ``min(knn_k,
      candidates)`` by modality m's similarity, edges of weight 1, ``D^-1/2 S_m D^-1/2``.
    - *Item-item behaviour graph*: each item links to itself and to the ``item_graph_topk``
      items with which it shares the most training users, among those sharing at least
      ``item_graph_min_users``; edges of weight 1, ``D^-1/2 S_b D^-1/2``.
    - *Views*: ``h^m = S_m^L e_I`` and ``h^b = S_b^L e_I`` (``L = n_mm_layers``, ``e_I`` the item
      ID embeddings). Representations: users ``U``, items ``I + mean(h^1..h^M, h^b)``.
    - *Denoised BPR*: ``-mean(w+ log sigmoid(d) + w- log sigmoid(-d))``, ``d`` the margin of the
      triple; with ``s^x = sigmoid(<U_u, h^x_i / |h^x_i|>)`` over the views x, ``w+ = mean_x
      s^x(pos) * exp(-var_x s^x(pos))^2`` and ``w- = max_x s^x(pos) - mean s(neg)`` where the
      positive's mean falls below the batch's mean over every view and negative (else 0), both
      clipped to [0, 1] and constant (no gradient).
    - *Alignment guided by item relations* (``neighbor_weight``): for each view x and each of
      the batch's distinct items, ``P^x = softmax_j cos(h^x_i, h^x_j)`` over all items; the 10
      items of largest ``sum_y P^y + P^x`` are its multimodal positives, the next 10 by ``P^x``
      its single-view positives, and ``-log(sum_mm e / sum_all e) - log(sum_single e /
      (sum_all e - sum_mm e))`` with ``e = exp(cos / 0.2)``; the mean over items and views.
    - *Alignment guided by user preference* (``kl_weight``): for the batch's distinct users and
      items, ``p_g = sigmoid(U_u . I_i / |I_i|)`` and ``p_c = sigmoid(U_u . c_i / |c_i|)`` with
      ``c = mean(h^1..h^M, h^b)``; the mean of ``KL(p_g || p_c) + KL(p_c || p_g)`` (Bernoulli).

    Reference: MMRec's ``DAMRS`` (the authors' DA-MRS+LightGCN). MMRec reads the behaviour graph
    from ``item_graph_dict_2.npy``, a file it does not make: the authors' preprocessing writes
    there, for every item, its top-2 items by shared training users among those with at least
    two, with the counts, and the model uses the pairs (with a self loop per item) and ignores
    the counts. Here it is built from the training split (a sparse product ``R^T R`` in blocks
    of items, top-k per row, ties to the smaller id) and cached under ``<checkpoint_dir>/graphs``.
    Differences from the reference: any number of modalities (candidates must pass every
    modality's mean; ``M + 1`` views are averaged; the pseudo-labels of view x sum every view's
    ``P`` plus ``P^x`` again, which for two modalities is the reference's ``P^y + P^z + 2 P^x``);
    an item's candidate count is that of its consistent pairs (the reference counts the nonzero
    masked text similarities, the same but for a similarity of exactly 0); the kNN graphs are
    built in blocks with the mean similarity in closed form (no ``n x n`` matrix) and cached;
    the padding item (row 0) has no kNN neighbours, is no one's, and is no candidate of the
    alignment softmax; degrees have no ``1e-7`` added (every node with an edge has degree >= 1);
    logarithms of sigmoids are computed as ``logsigmoid`` and the symmetric KL in closed form
    (equal values, no ``log 0``); the
    reference's unused feature projections (``image_trs``, ``text_trs``), feature tables and
    ``reg_weight`` are left out: DA-MRS has no L2 term and reads the features only to build graphs.

    Masking modality m (docs/method.md, section 2), "the same model with m's information
    removed": DA-MRS uses a modality's features only through graphs, so

    - m's own view skips its item-item propagation (``S_m`` replaced by the identity: a kNN graph
      of identical mean features is degenerate), ``h^m = e_I``; the view keeps its place in the
      mean, so the architecture is unchanged;
    - the other modalities' graphs are the denoised graphs of the unmasked modalities only: the
      consistency test would otherwise still read m's features (with one unmasked modality,
      its candidates are the pairs above its own mean). These graphs are built when a mode first
      needs them and cached like the others;
    - the behaviour graph and every parameter are shared (DA-MRS has no parameter of one
      modality, so nothing is averaged, and OGM-GE has no modality parameters to modulate).
    """

    has_modality_parameters = False  # see the masking notes: no OGM-GE variant
    PSEUDO_POSITIVES = 10  # positives per item and kind in the item-relation alignment (fixed in the reference)
    TEMPERATURE = 0.2  # of the item-relation alignment (fixed in the reference)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        dim = config["embedding_size"]
        self.n_ui_layers = int(config["n_ui_layers"])
        self.n_mm_layers = int(config["n_mm_layers"])
        self.knn_k = int(config["knn_k"])
        self.kl_weight = float(config["kl_weight"])
        self.neighbor_weight = float(config["neighbor_weight"])
        if self.n_ui_layers < 0 or self.n_mm_layers < 0:
            raise ValueError(f"n_ui_layers and n_mm_layers must be >= 0, got {self.n_ui_layers} and {self.n_mm_layers}.")
        if self.knn_k < 1:
            raise ValueError(f"DAMRS needs knn_k >= 1, got {self.knn_k}.")
        topk, min_users = int(config["item_graph_topk"]), int(config["item_graph_min_users"])
        if topk < 0 or min_users < 1:
            raise ValueError(f"DAMRS needs item_graph_topk >= 0 and item_graph_min_users >= 1, got {topk} and {min_users}.")

        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_id_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)

        self.register_buffer("norm_adj", self.bipartite_adjacency(dataset, "sym"), persistent=False)
        behaviour = graphs.item_behaviour_graph(*graphs.interaction_edges(dataset), self.n_users, self.n_items,
                                                topk, min_users, self.graph_cache_dir)
        self.register_buffer("behaviour_graph", behaviour.to(self.device), persistent=False)
        self._denoised_graphs = {}
        self.denoised_graphs(self.default_masked)  # built now, not in the first training step

    def denoised_graphs(self, masked):
        """``{m: S_m}`` of the unmasked modalities, each denoised by the unmasked modalities only."""
        active = tuple(m for m in self.modalities if m not in masked)
        key = (active, self.norm_adj.device)
        if key not in self._denoised_graphs:
            built = graphs.consistent_knn_graphs([self.feature(m) for m in active], self.knn_k, self.graph_cache_dir)
            self._denoised_graphs[key] = {m: graph.to(self.norm_adj.device) for m, graph in zip(active, built)}
        return self._denoised_graphs[key]

    # ------------------------------------------------------------ representations
    def item_view(self, graph):
        """``S^L e_I``, or ``e_I`` without a graph."""
        items = self.item_id_embedding.weight
        if graph is not None:
            items = graphs.propagate(graph, items, self.n_mm_layers)
        return items

    def propagate(self, masked=frozenset(), memo=None):
        """``{"users": U, "items": I, "views": {name: h}}``, the views of the modalities and the
        behaviour graph. ``memo`` (a dict) shares what several masking modes have in common."""
        memo = {} if memo is None else memo
        if "collaborative" not in memo:
            memo["collaborative"] = self.lightgcn(self.norm_adj, self.user_embedding.weight,
                                                  self.item_id_embedding.weight, self.n_ui_layers)
            memo[BEHAVIOUR] = self.item_view(self.behaviour_graph)
        active = frozenset(self.modalities) - frozenset(masked)
        views = {}
        for m in self.modalities:
            key = ("view", m, active if m in active else None)
            if key not in memo:
                memo[key] = self.item_view(self.denoised_graphs(masked)[m] if m in active else None)
            views[m] = memo[key]
        views[BEHAVIOUR] = memo[BEHAVIOUR]
        users, items = memo["collaborative"]
        return {"users": users, "items": items, "views": views}

    @staticmethod
    def content(parts):
        """``mean(h^1..h^M, h^b)``."""
        return torch.stack(list(parts["views"].values())).mean(0)

    def forward(self, masked=frozenset()):
        parts = self.propagate(masked)
        return parts["users"], parts["items"] + self.content(parts)

    def batch_representations_modes(self, users, items, modes, memo=None):
        """Every mode's batch rows, the shared views computed once; each mode's parts kept in
        ``memo`` for the objective."""
        memo, result = {} if memo is None else memo, {}
        for name, masked in modes.items():
            parts = memo[masked] = self.propagate(masked, memo)
            result[name] = (parts["users"][users], (parts["items"] + self.content(parts))[items])
        return result

    # ------------------------------------------------------------ training
    def feedback_weights(self, parts, users, pos, neg):
        """``(w+, w-)`` of the denoised BPR, without gradient."""
        with torch.no_grad():
            user_reps = parts["users"][users]
            views = torch.stack(list(parts["views"].values()))  # [views, n_items, d]
            pos_scores = torch.sigmoid((user_reps * F.normalize(views[:, pos], dim=-1)).sum(-1))
            neg_scores = torch.sigmoid((user_reps * F.normalize(views[:, neg], dim=-1)).sum(-1))
            pos_mean, neg_mean = pos_scores.mean(0), neg_scores.mean()
            positive = (pos_mean * torch.exp(-pos_scores.var(0)).pow(2)).clamp(0, 1)
            negative = ((pos_scores.max(0).values - neg_mean) * (pos_mean < neg_mean)).clamp(0, 1)
        return positive, negative

    def item_relation_alignment(self, views, items):
        """The neighbour discrimination of the batch's distinct ``items``, averaged over the views."""
        normed = [F.normalize(view, dim=1) for view in views]
        cosines = [x[items] @ x[1:].T for x in normed]  # candidates: every real item (column j is item j + 1)
        with torch.no_grad():
            labels = [torch.softmax(cos, dim=1) for cos in cosines]
            total = sum(labels)
        n = min(self.PSEUDO_POSITIVES, cosines[0].shape[1])
        losses = []
        for cos, label in zip(cosines, labels):
            multimodal = (total + label).topk(n, dim=1).indices
            single = label.scatter(1, multimodal, 0.0).topk(n, dim=1).indices
            e = torch.exp(cos / self.TEMPERATURE)
            every, mm = e.sum(1), e.gather(1, multimodal).sum(1)
            losses.append(-torch.log(mm / every + 1e-9) - torch.log(e.gather(1, single).sum(1) / (every - mm) + 1e-9))
        return torch.stack(losses).mean()

    def objective(self, interaction, step):
        """The denoised BPR and the two alignment terms (DA-MRS has no L2 term)."""
        users, pos, neg = self.batch_triples(interaction)
        parts = step.memo[self.default_masked]
        positive, negative = self.feedback_weights(parts, users, pos, neg)
        d = step.margins["joint"]
        bpr = -(F.logsigmoid(d) * positive + F.logsigmoid(-d) * negative).mean()
        items = torch.unique(torch.cat([pos, neg]))
        relation = self.item_relation_alignment(list(parts["views"].values()), items)
        user_reps = parts["users"][torch.unique(users)]
        behaviour_logits = user_reps @ F.normalize(parts["items"][items], dim=-1).T
        content_logits = user_reps @ F.normalize(self.content(parts)[items], dim=-1).T
        kl = symmetric_binary_kl(behaviour_logits, content_logits).mean()
        return {"bpr": bpr, "item_alignment": self.neighbor_weight * relation, "user_alignment": self.kl_weight * kl}
