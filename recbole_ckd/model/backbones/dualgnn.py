"""DualGNN (Wang et al., IEEE Transactions on Multimedia 2021): per-modality graph branches over
the user-item graph, fused per user and smoothed over a user-user co-interaction graph."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from recbole_ckd.model import graphs
from recbole_ckd.model.multimodal import MultimodalRecommender, bpr


class DualGNN(MultimodalRecommender):
    """DualGNN: Q. Wang, Y. Wei, J. Yin, J. Wu, X. Song, L. Nie, "DualGNN: Dual Graph Neural
    Network for Multimedia Recommendation", IEEE Transactions on Multimedia, 2021.

    Per modality m, a *single-modal representation learning* branch: the input
    ``x = normalize([P_m; MLP_m(f^m)])`` (row-wise L2; ``P_m`` the users' preferences in m,
    ``MLP_m`` a biased ``Linear(dim_m, 4 d)``, leaky ReLU, biased ``Linear(4 d, d)``),
    propagated over the user-item training graph ``A_hat = D^-1/2 A D^-1/2`` (no self loops):
    ``x^m = x + A_hat x + ... + A_hat^{n_layers} x``.

    *Multi-modal fusion*: each user weighs its modalities with its own learned weights
    ``alpha_u`` (initialised as a softmax over the modalities of Xavier-normal values, then
    trained freely), ``u = sum_m alpha_{u,m} x^m_u``; an item sums them, ``i = sum_m x^m_i``.

    *User co-occurrence graph*: each user's top ``user_knn_k`` users by the number of training
    items they share (built by :func:`~recbole_ckd.model.graphs.co_interaction_graph` from
    the training split, cached under ``<checkpoint_dir>/graphs``; ties to the smaller internal
    user id), weighted by a softmax of those counts over the user's neighbours:
    ``u <- u + sum_{v in N(u)} softmax(c_uv) v``. Scores are dot products.

    Loss (MMRec's): BPR with a base-2 logarithm, ``-mean(log2 sigmoid(d))``, plus ``reg_weight``
    times the mean square of the batch users' preferences of every unmasked modality and of the
    whole fusion-weight table.

    Differences from MMRec's code, on purpose:

    - the user graph is built by the library from the training split; MMRec reads it from a
      file written by a separate preprocessing script, which stores each user's top 200 and
      lets the model keep the first 40 (here only the top ``user_knn_k`` are built: the same
      neighbours, but for ties at the cut, which MMRec leaves to ``torch.topk``'s order and
      this implementation gives to the smaller id, for a graph that does not depend on the
      platform);
    - a user with fewer than ``user_knn_k`` neighbours keeps exactly its neighbours. MMRec
      pads the list to 40 by redrawing neighbours at random every epoch, which doubles some of
      them in the softmax; it is a side effect of a fixed-size index tensor, not in the paper;
    - items fuse as the sum of their branches and users as ``sum_m alpha_{u,m} x^m_u``. In
      MMRec's code the in-place sum of the item tables also adds the text branch into the
      visual one, so its users get ``alpha_v (x^v + x^t) + alpha_t x^t``;
    - MMRec also builds item-side fusion weights (used only in its L2 term, so they only
      decay), an edge-dropped graph per modality and linear layers that its forward pass never
      uses; they are left out. ``n_layers`` is honoured (MMRec hard-codes two propagation
      layers, the default here);
    - ranking uses the current parameters; MMRec ranks with the tables of its last training
      batch;
    - any number of modalities, each fused with its weight (MMRec's code handles image and
      text, and with a single one uses its branch without a weight);
    - the L2 term leaves out the preferences of a masked modality (they act only through their
      mean; this concerns teachers, never the plain model), and its fusion-weight mean runs over
      the padding user's row too;
    - the padding user and item (id 0) have no edges; a repeated interaction is one edge.

    Masking modality m (docs/method.md, section 2): m's branch is computed from the mean of m's
    features over items (projected once) and the mean of ``P_m`` over users, and every user's
    weight ``alpha_{u,m}`` is replaced by its mean over users, before the fusion and the
    user-user graph. The masked branch still propagates over the user-item graph, so it
    carries the graph's degrees but no item-specific information of m.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.dim = int(config["embedding_size"])
        self.n_layers = int(config["n_layers"])
        self.user_knn_k = int(config["user_knn_k"])
        if self.n_layers < 0 or self.user_knn_k < 1:
            raise ValueError(f"{type(self).__name__} needs n_layers >= 0 and user_knn_k >= 1, "
                             f"got n_layers={self.n_layers} and user_knn_k={self.user_knn_k}.")
        self.preference = nn.ParameterDict(
            {m: nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, self.dim))) for m in self.modalities}
        )
        self.projection = nn.ModuleDict(
            {
                m: nn.Sequential(
                    nn.Linear(self.feature_dim(m), 4 * self.dim), nn.LeakyReLU(), nn.Linear(4 * self.dim, self.dim)
                )
                for m in self.modalities
            }
        )
        initial = nn.init.xavier_normal_(torch.empty(self.n_users, len(self.modalities), 1))
        self.user_weight = nn.Parameter(F.softmax(initial, dim=1).squeeze(-1))
        users, items = graphs.interaction_edges(dataset)
        self.register_buffer("graph", self.user_item_graph(users, items, "sym"), persistent=False)
        self.register_buffer("user_graph", self.softmax_user_graph(users, items), persistent=False)

    def softmax_user_graph(self, users, items):
        """The co-interaction graph with each row's counts turned into a softmax over its neighbours."""
        counts = graphs.co_interaction_graph(users, items, self.n_users, self.n_items, self.user_knn_k,
                                             cache_dir=self.graph_cache_dir)
        rows, cols = counts.indices()
        weights = graphs.segment_softmax(counts.values(), rows, self.n_users)
        return torch.sparse_coo_tensor(counts.indices(), weights, counts.shape).coalesce().to(self.device)

    # ------------------------------------------------------------ representations
    def branch(self, m, masked):
        """Modality ``m``'s node table ``[n_users + n_items, d]`` (users first)."""
        if masked:
            items = self.projection[m](self.feature_mean(m)).expand(self.n_items, -1)
            users = self.user_mean(self.preference[m]).expand(self.n_users, -1)
        else:
            items = self.projection[m](self.feature(m))
            users = self.preference[m]
        layer = F.normalize(torch.cat([users, items]), dim=1)
        total = layer
        for _ in range(self.n_layers):
            layer = graphs.spmm(self.graph, layer)
            total = total + layer
        return total

    def fusion_weights(self, masked):
        """``alpha`` ``[n_users, M]``, a masked modality's column at its mean over users."""
        if not masked:
            return self.user_weight
        keep = torch.tensor([m not in masked for m in self.modalities], device=self.user_weight.device)
        return torch.where(keep, self.user_weight, self.user_mean(self.user_weight))

    def fuse(self, outputs, masked):
        """``(user table, item table)`` from the branch tables ``{m: [n_users + n_items, d]}``."""
        alpha = self.fusion_weights(masked)
        users = sum(alpha[:, k : k + 1] * outputs[m][: self.n_users] for k, m in enumerate(self.modalities))
        items = sum(outputs[m][self.n_users :] for m in self.modalities)
        return self.smooth_users(users), items

    def smooth_users(self, users):
        """``u + sum_v softmax(c_uv) v`` over the user-user graph."""
        return users + graphs.spmm(self.user_graph, users)

    def forward(self, masked=frozenset()):
        return self.fuse({m: self.branch(m, m in masked) for m in self.modalities}, masked)

    def batch_representations_modes(self, users, items, modes, memo=None):
        # a branch depends only on whether its own modality is masked: each state computed once
        states = {(m, m in masked) for masked in modes.values() for m in self.modalities}
        branches = {state: self.branch(*state) for state in states}
        result = {}
        for name, masked in modes.items():
            user_reps, item_reps = self.fuse({m: branches[m, m in masked] for m in self.modalities}, masked)
            result[name] = (user_reps[users], item_reps[items])
        return result

    # ------------------------------------------------------------ training
    def objective(self, interaction, step):
        """MMRec's loss: base-2 BPR plus the L2 of the batch users' preferences and the fusion weights."""
        users = interaction[self.USER_ID]
        reg = self.user_weight.pow(2).mean()
        for m in self.modalities:
            if m not in self.default_masked:  # a masked modality's preferences act only through their mean
                reg = reg + self.preference[m][users].pow(2).mean()
        return {"bpr": bpr(step.margins["joint"]) / math.log(2), "l2": self.reg_weight * reg}
