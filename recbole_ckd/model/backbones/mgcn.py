"""MGCN (Yu et al., ACM MM 2023): multi-view graph convolution with purified modality views."""

import torch
import torch.nn.functional as F
from torch import nn

from recbole_ckd.model.graphs import spmm
from recbole_ckd.model.multimodal import MultimodalRecommender


def info_nce(view1, view2, temperature):
    """InfoNCE with in-batch negatives: row b of ``view1`` against every row of ``view2``,
    the positive being row b (cosine similarities over ``temperature``, mean over the batch).

    ``-log(exp(s_bb / t) / sum_c exp(s_bc / t))``, computed as a cross-entropy (log-sum-exp)."""
    view1, view2 = F.normalize(view1, dim=1), F.normalize(view2, dim=1)
    logits = view1 @ view2.T / temperature
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


class MGCN(MultimodalRecommender):
    """MGCN: a user-item view, one purified item-item view per modality, and a behaviour-aware fuser.

    With ID embeddings ``e_u``, ``e_i`` and each modality's features ``f_i^m``:

    - *Behaviour-guided purifier*: ``x_i^m = e_i * sigmoid(W_m^g (W_m f_i^m + b_m) + b_m^g)``;
      the ID embedding gates out the modality noise unrelated to behaviour.
    - *User-item view*: LightGCN on the symmetric-normalised training graph ``A``, the mean of
      layers ``0..n_ui_layers``: ``h = mean_l A^l [e_U; e_I]`` (the "content" embedding).
    - *Item-item views*: per modality, ``n_layers`` propagations of ``x^m`` over the modality's
      kNN item graph ``S_m`` (top-``knn_k`` cosine neighbours of the raw features, weighted by
      their cosine similarity, ``D^-1/2 S D^-1/2`` with ``D`` the row sums, built once, cached under ``<checkpoint_dir>/graphs``); users take
      ``R x^m`` with ``R`` the user-item block of ``A``, giving ``z^m`` for every node.
    - *Behaviour-aware fuser*: attention ``w^m = softmax_m(q^T tanh(W_q z^m + b_q))`` gives the
      common part ``c = sum_m w^m z^m``; each modality's specific part ``z^m - c`` is gated by
      the node's behaviour ``sigmoid(W_m^p h + b_m^p)``; the side embedding is
      ``s = (c + sum_m gate_m * (z^m - c)) / (M + 1)``.
    - Representation ``h + s`` for users and items; score ``<h_u + s_u, h_i + s_i>``.

    Loss (the reference's, in :meth:`objective`, which a CKD student keeps): BPR with L2 on the
    batch representations (``reg_weight``), plus ``cl_weight * [InfoNCE(s_I[pos], h_I[pos]) +
    InfoNCE(s_U[users], h_U[users])]``, temperature ``cl_temperature``, in-batch negatives.

    Choices where the paper is silent, taken from the authors' code (which MMRec ships):
    Xavier-uniform ID embeddings and PyTorch's default Linear initialisation; the feature
    tables are fine-tuned (``train_features``; the reference loads them with
    ``freeze=False``), while the kNN graphs are built once from the raw features; the kNN
    graph keeps each item's own row among its top-k (self loop), as the reference does;
    ``(M + 1)`` generalises the reference's division by 3 (two modalities plus the common
    part) to any number of modalities. This implementation's own choices: the L2 term is
    divided by the actual batch size (the reference divides by the configured batch size,
    which differs only on the last, smaller batch); the padding item (row 0) has no kNN
    neighbours. The reference's learning-rate schedule (``learning_rate_scheduler: [0.96, 50]``,
    ``lr * 0.96^(epoch / 50)``) is the default in ``properties/model/MGCN.yaml``.

    Masking modality m (docs/method.md, section 2):

    - m's features are replaced by the mean feature vector over items (of the trained table
      when features are fine-tuned), projected once: the purifier gate of m is then one vector
      shared by every item, so ``x_i^m = e_i * g_m`` carries no item-specific information of m;
    - m's item-item graph term is dropped: ``S_m`` is built from m's features, and a kNN graph of
      mean features is degenerate, so m's view skips the item-item propagation (``S_m`` is
      replaced by the identity; MGCN mixes no graphs across modalities, so there are no
      remaining graph weights to renormalise). Users still aggregate ``R x^m``. Each other
      modality keeps its own graph, unaffected;
    - MGCN has no per-user parameter that belongs to one modality (the preference gates are
      shared weights applied to the user-item view), so nothing user-side is averaged.

    m's view stays in the fuser, so the architecture and the fuser's weights are unchanged;
    the outputs do not depend on m's features at all.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        dim = config["embedding_size"]
        self.n_ui_layers = int(config["n_ui_layers"])
        self.n_layers = int(config["n_layers"])
        self.cl_weight = float(config["cl_weight"])
        self.cl_temperature = float(config["cl_temperature"])
        if self.n_ui_layers < 0 or self.n_layers < 0:
            raise ValueError(f"n_ui_layers and n_layers must be >= 0, got {self.n_ui_layers} and {self.n_layers}.")

        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_id_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        self.projection = nn.ModuleDict({m: nn.Linear(self.feature_dim(m), dim) for m in self.modalities})
        self.purifier = nn.ModuleDict({m: nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid()) for m in self.modalities})
        self.preference_gate = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid()) for m in self.modalities}
        )
        self.query_common = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))

        self.build_item_graphs(config["knn_k"], weighted=True)
        adjacency = self.bipartite_adjacency(dataset, "sym")
        self.register_buffer("norm_adj", adjacency, persistent=False)
        self.register_buffer("user_item", self._user_item_block(adjacency), persistent=False)
        self.init_trained_features(config)

    def _user_item_block(self, adjacency):
        """``R``: the user rows and item columns of the normalised bipartite graph, ``[n_users, n_items]``."""
        rows, cols = adjacency.indices()
        keep = rows < self.n_users
        indices = torch.stack([rows[keep], cols[keep] - self.n_users])
        return torch.sparse_coo_tensor(indices, adjacency.values()[keep], (self.n_users, self.n_items)).coalesce()

    # ------------------------------------------------------------ representations
    def modality_features(self, m, is_masked):
        """Projected features ``W_m f^m + b_m``: ``[n_items, d]``, or ``[1, d]`` (the projected mean) when masked."""
        if is_masked:
            return self.projection[m](self.trained_feature_mean(m))
        return self.projection[m](self.trained_feature(m))

    def user_item_view(self):
        """``h``: LightGCN over the ID embeddings, the mean of layers ``0..n_ui_layers``."""
        return torch.cat(self.lightgcn(self.norm_adj, self.user_embedding.weight, self.item_id_embedding.weight,
                                       self.n_ui_layers))

    def item_item_view(self, m, is_masked):
        """``z^m`` of every node: the purified item embeddings propagated over m's kNN graph (not
        when m is masked: its graph term is dropped, see the class docstring), users by ``R``."""
        items = self.item_id_embedding.weight * self.purifier[m](self.modality_features(m, is_masked))
        if not is_masked:
            graph = self.item_graph(m)
            for _ in range(self.n_layers):
                items = spmm(graph, items)
        return torch.cat([spmm(self.user_item, items), items])

    def propagate(self, masked=frozenset(), memo=None):
        """``(h + s, s, h)`` over all ``n_users + n_items`` nodes: representation, side, content.

        ``memo`` (a dict) shares the views that several masking modes have in common."""
        memo = {} if memo is None else memo
        if "content" not in memo:
            memo["content"] = self.user_item_view()
        content = memo["content"]
        views = []
        for m in self.modalities:
            key = (m, m in masked)
            if key not in memo:
                memo[key] = self.item_item_view(m, m in masked)
            views.append(memo[key])

        # behaviour-aware fuser
        attention = torch.softmax(torch.cat([self.query_common(view) for view in views], dim=1), dim=1)
        common = sum(attention[:, k : k + 1] * view for k, view in enumerate(views))
        side = common
        for m, view in zip(self.modalities, views):
            side = side + self.preference_gate[m](content) * (view - common)
        side = side / (len(views) + 1)
        return content + side, side, content

    def forward(self, masked=frozenset()):
        representation, _, _ = self.propagate(masked)
        return representation.split([self.n_users, self.n_items])

    def batch_representations_modes(self, users, items, modes, memo=None):
        """Every mode's batch rows; the user-item view and each modality's (masked or unmasked)
        view are computed once for all modes, and each mode's ``(h + s, s, h)`` is kept in
        ``memo`` for the objective."""
        memo, result = {} if memo is None else memo, {}
        for name, masked in modes.items():
            memo[masked] = self.propagate(masked, memo)
            user_reps, item_reps = memo[masked][0].split([self.n_users, self.n_items])
            result[name] = (user_reps[users], item_reps[items])
        return result

    # ------------------------------------------------------------ training
    def objective(self, interaction, step):
        """BPR, L2 on the batch representations and the InfoNCE between side and content views."""
        users, pos = interaction[self.USER_ID], interaction[self.ITEM_ID]
        _, side, content = step.memo[self.default_masked]
        side_users, side_items = side.split([self.n_users, self.n_items])
        content_users, content_items = content.split([self.n_users, self.n_items])
        contrastive = info_nce(side_items[pos], content_items[pos], self.cl_temperature) + info_nce(
            side_users[users], content_users[users], self.cl_temperature
        )
        return {**super().objective(interaction, step), "contrastive": self.cl_weight * contrastive}
