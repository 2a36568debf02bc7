"""DRAGON (Zhou et al., ECAI 2023): DualGNN's modality branches and user-user graph, concatenated,
plus a frozen multimodal item-item graph."""

import torch

from recbole_ckd.model import graphs
from recbole_ckd.model.backbones.dualgnn import DualGNN
from recbole_ckd.model.multimodal import FixedItemGraphs


class DRAGON(FixedItemGraphs, DualGNN):
    """DRAGON: H. Zhou, X. Zhou, L. Zhang, Z. Shen, "Enhancing Dyadic Relations with Homogeneous
    Graphs for Multimodal Recommendation", ECAI 2023.

    The *heterogeneous graph* part is :class:`DualGNN`'s: per modality m, the branch
    ``x^m = x + A_hat x + ... + A_hat^{n_layers} x`` of ``x = normalize([P_m; MLP_m(f^m)])`` over
    the user-item training graph ``A_hat = D^-1/2 A D^-1/2``. The branches are *concatenated*
    (``M d`` per node): users ``[alpha_{u,m} x^m_u]_m`` with their learned per-user modality
    weights ``alpha_u`` (a softmax of Xavier-normal values at initialisation, trained freely),
    items ``[x^m_i]_m``.

    The *homogeneous graphs*:

    - item-item: each modality's frozen kNN graph of the raw features (top-``knn_k`` cosine,
      self included, unweighted, ``D^-1/2 S_m D^-1/2``), mixed with fixed weights,
      ``S = sum_m w_m S_m`` (``mm_image_weight`` for ``v``, see
      :class:`~recbole_ckd.model.multimodal.FixedItemGraphs`); built once and cached under
      ``<checkpoint_dir>/graphs``. ``i <- i + S^{n_mm_layers} i``;
    - user-user: each user's top ``user_knn_k`` co-interacting users (shared training items),
      softmax-weighted by those counts, ``u <- u + sum_v softmax(c_uv) v``, as in DualGNN.

    Scores are dot products. Loss (MMRec's): BPR with a base-2 logarithm plus ``reg_weight``
    times the mean square of the batch users' preferences of every unmasked modality and of the
    whole fusion-weight table.

    Differences from MMRec's code, on purpose: all of :class:`DualGNN`'s (the user-user graph
    built by the library, no random padding of short neighbour lists, unused layers left out,
    ``n_layers`` honoured, ranking with the current parameters, any number of modalities, the
    L2 term of a teacher, no edges for the padding ids; MMRec's in-place sum does not occur in
    its DRAGON), and:

    - MMRec caches the item-item graph in a file named by ``knn_k`` alone, so a changed feature
      file or modality weight silently reuses a stale graph; here the cache is keyed by the
      features and every parameter;
    - MMRec loads the feature tables as trainable embeddings and defines projections to
      ``feat_embed_dim``, but its forward pass uses neither (the branches read the raw
      features); they are left out, so there is no ``feat_embed_dim`` or ``train_features``;
    - the item-item graph weights of any number of modalities are FREEDOM's.

    Masking modality m (docs/method.md, section 2): m's branch is computed from the mean of its
    features (projected once) and of ``P_m``, every user's ``alpha_{u,m}`` is replaced by its mean
    over users, both before the concatenation and the user-user graph, and ``S_m`` is dropped
    from the item-item graph, the remaining weights renormalised (with every modality masked
    there is no item-item term). m's block of the representations then carries the user-item
    graph's degrees but no item-specific information of m.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.n_mm_layers = int(config["n_mm_layers"])
        if self.n_mm_layers < 0:
            raise ValueError(f"DRAGON needs n_mm_layers >= 0, got {self.n_mm_layers}.")
        self.build_fixed_item_graphs(config)

    def fuse(self, outputs, masked):
        alpha = self.fusion_weights(masked)
        users = torch.cat(
            [alpha[:, k : k + 1] * outputs[m][: self.n_users] for k, m in enumerate(self.modalities)], dim=1
        )
        items = torch.cat([outputs[m][self.n_users :] for m in self.modalities], dim=1)
        adjacency = self.item_adjacency(masked)
        if adjacency is not None:
            items = items + graphs.propagate(adjacency, items, self.n_mm_layers)
        return self.smooth_users(users), items
