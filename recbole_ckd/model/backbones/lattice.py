"""LATTICE (Zhang et al., ACM MM 2021): a learned item-item graph on top of LightGCN."""

import torch
import torch.nn.functional as F
from torch import nn

from recbole_ckd.model import graphs
from recbole_ckd.model.multimodal import ItemGraphRecommender


class LATTICE(ItemGraphRecommender):
    """LATTICE: item ID embeddings propagated over a learned multimodal item-item graph, added
    to a LightGCN over the user-item graph.

    With ID embeddings ``e_u``, ``e_i`` and each modality's (fine-tuned) features ``f_i^m``:

    - *Modality-aware graph learning*: per modality, ``S_m`` keeps the top-``knn_k`` cosine
      similarities of each item among the projected features ``W_m f^m + b_m``
      (``feat_embed_dim``; self included). Modality weights ``alpha = softmax(a)`` (``a``
      learned, initialised equal) combine them, ``L = norm(sum_m alpha_m S_m)``, with
      ``norm(A) = D^-1/2 A D^-1/2`` and ``D`` the row sums.
    - *Skip connection to the initial graphs*: ``O_m = norm(S_m^0)``, the same kNN graph of the
      raw features (weighted, frozen, built once and cached under ``<checkpoint_dir>/graphs``);
      the item graph is ``A = (1 - lambda) L + lambda sum_m alpha_m O_m``
      (``lambda_coeff``).
    - *Item graph convolution*: ``h = A^{n_layers} e_I`` (no transformation, no non-linearity).
    - *Collaborative part*: LightGCN on the user-item graph ``D^-1 (R + I)`` (self loops, row
      normalised, as the reference), the mean of layers ``0..n_ui_layers``; ``cf_model: mf``
      uses the ID embeddings directly.
    - Representations ``u = x_u`` and ``i = x_i + h_i / |h_i|``, scored by dot product.

    Loss (the reference's): BPR with L2 on the batch representations (``reg_weight``; the base
    class's ``objective``).

    Training schedule (the reference's, both the authors' code and MMRec): the learned graph is
    rebuilt once per epoch, at the first training step after :meth:`pre_epoch`, from the
    current parameters; that step back-propagates through it (into the projections, the
    feature tables and the modality weights ``a``), and the later steps of the epoch reuse it
    detached. Here the graph is detached as soon as its gradient has been taken once (a tensor
    hook), so a CKD student, which calls several modes in one step, back-propagates through
    the graph in every mode of that first step. Every forward in evaluation mode (or without
    gradient) rebuilds the learned graph from the current parameters, as the reference does
    when it ranks.

    Masking modality m (docs/method.md, section 2): m's item-item terms, ``S_m`` in the learned graph and
    ``O_m`` in the skip connection, are dropped, and the weights of the remaining modalities
    are renormalised (``alpha`` is the softmax over the unmasked modalities' ``a`` only). LATTICE
    uses modality features nowhere else and has no user-side parameter that belongs to one
    modality, so nothing else changes and the outputs do not depend on m's features. With every
    modality masked there is no item-item term: ``i = x_i``.

    Choices where the paper is silent, taken from the reference code: Xavier-uniform ID
    embeddings, PyTorch's default Linear initialisation, the self loop in every kNN row, the
    ``D^-1 (R + I)`` user-item graph, the L2-normalised item-graph term, the feature tables
    fine-tuned (``train_features``; the reference loads them with ``freeze=False``: a
    trained copy, see ``MultimodalRecommender.init_trained_features``; only the modalities the
    model uses get one). This
    implementation's own choices: the padding item (row 0) has no kNN neighbours; the L2 term
    is divided by the actual batch size (the reference divides by the configured one, which
    differs only on the last, smaller batch); any number of modalities; NGCF as ``cf_model`` is
    not offered. MMRec's learning-rate schedule (``learning_rate_scheduler: [0.96, 50]``,
    ``lr * 0.96^(epoch / 50)``) is the default in ``properties/model/LATTICE.yaml``.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        dim = int(config["embedding_size"])
        self.feat_embed_dim = int(config["feat_embed_dim"])
        self.knn_k = int(config["knn_k"])
        self.lambda_coeff = float(config["lambda_coeff"])
        self.n_layers = int(config["n_layers"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.cf_model = config["cf_model"]
        if self.cf_model not in ("lightgcn", "mf"):
            raise ValueError(f"LATTICE's cf_model must be 'lightgcn' or 'mf', got {self.cf_model!r}.")
        if self.n_layers < 0 or self.n_ui_layers < 0 or self.knn_k < 1:
            raise ValueError("LATTICE needs n_layers >= 0, n_ui_layers >= 0 and knn_k >= 1.")
        if not 0.0 <= self.lambda_coeff <= 1.0:
            raise ValueError(f"lambda_coeff must lie in [0, 1], got {self.lambda_coeff}.")

        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_id_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        self.projection = nn.ModuleDict(
            {m: nn.Linear(self.feature_dim(m), self.feat_embed_dim) for m in self.modalities}
        )
        # equal logits: [0.5, 0.5] for two modalities, as the reference
        self.modal_weight = nn.Parameter(torch.full((len(self.modalities),), 1.0 / len(self.modalities)))
        self.init_trained_features(config, [m for m in self.modalities if m not in self.default_masked])

        self.build_item_graphs(self.knn_k, weighted=True)  # the initial graphs O_m
        if self.cf_model == "lightgcn":
            self.register_buffer("norm_adj", self.bipartite_adjacency(dataset, "mean", self_loops=True), persistent=False)
        self._learned = {}  # modality -> (rows, cols, similarities) of this epoch's learned graph
        self._learned_stale = True  # rebuild at the next training step
        self._learned_live = False  # its similarities still carry gradient
        self._adjacency_cache = {}  # active modalities -> this epoch's detached item graph

    # ------------------------------------------------------------ graphs
    def _knn(self, m):
        return graphs.knn_neighbours_with_grad(self.projection[m](self.trained_feature(m)), self.knn_k)

    def _learned_consumed(self, grad):
        """Backward hook: the graph's gradient has been taken, the rest of the epoch reuses it
        detached (and the model holds no autograd graph between steps)."""
        self._learned_live = False
        self._learned = {m: (r, c, s.detach()) for m, (r, c, s) in self._learned.items()}

    def _learned_graphs(self, active):
        """``({m: (rows, cols, sims)}, live)``: the learned kNN graph of each active modality."""
        if not (self.training and torch.is_grad_enabled()):
            with torch.no_grad():
                return {m: self._knn(m) for m in active}, False
        if self._learned_stale:
            self._learned, self._adjacency_cache = {}, {}
            self._learned_live, self._learned_stale = True, False
        for m in active:
            if m in self._learned:
                continue
            if self._learned_live:
                rows, cols, sims = self._knn(m)
                if sims.requires_grad:
                    sims.register_hook(self._learned_consumed)
            else:  # first needed after the graph step of this epoch
                with torch.no_grad():
                    rows, cols, sims = self._knn(m)
            self._learned[m] = (rows, cols, sims)
        return {m: self._learned[m] for m in active}, self._learned_live

    def item_adjacency(self, masked=frozenset()):
        """The item graph ``A`` for the unmasked modalities (sparse ``[n_items, n_items]``), or
        None when every modality is masked."""
        active = tuple(m for m in self.modalities if m not in masked)
        if not active:
            return None
        learned, live = self._learned_graphs(active)
        cacheable = self.training and torch.is_grad_enabled() and not live
        if cacheable and active in self._adjacency_cache:
            return self._adjacency_cache[active]
        index = torch.tensor([self.modalities.index(m) for m in active], device=self.modal_weight.device)
        weights = torch.softmax(self.modal_weight[index], dim=0)
        if not live:
            weights = weights.detach()
        rows = torch.cat([learned[m][0] for m in active])
        cols = torch.cat([learned[m][1] for m in active])
        sims = torch.cat([w * learned[m][2] for w, m in zip(weights, active)])
        values = graphs.normalized_values(rows, cols, sims, self.n_items, "sym")
        parts = [(torch.stack([rows, cols]), (1.0 - self.lambda_coeff) * values)]
        for w, m in zip(weights, active):
            original = self.item_graph(m)
            parts.append((original.indices(), self.lambda_coeff * w * original.values()))
        adjacency = graphs.sparse_sum(parts, self.n_items)
        if cacheable:
            adjacency = adjacency.coalesce()
            self._adjacency_cache[active] = adjacency
        return adjacency

    # ------------------------------------------------------------ representations
    def _collaborative(self):
        """``(x_U, x_I)``: LightGCN over the user-item graph, or the ID embeddings (``mf``)."""
        users, items = self.user_embedding.weight, self.item_id_embedding.weight
        if self.cf_model == "mf":
            return users, items
        return self.lightgcn(self.norm_adj, users, items, self.n_ui_layers)

    def _item_graph_term(self, masked):
        if all(m in masked for m in self.modalities):
            return 0.0
        h = self.item_id_embedding.weight
        if self.n_layers:
            adjacency = self.item_adjacency(masked)
            for _ in range(self.n_layers):
                h = graphs.spmm(adjacency, h)
        return F.normalize(h, dim=1)

    # ------------------------------------------------------------ hooks
    def pre_epoch(self, epoch):
        """The learned graph is rebuilt at the first training step of every epoch."""
        self._learned_stale = True

    def load_state_dict(self, state_dict, strict=True):
        self._learned_stale = True
        return super().load_state_dict(state_dict, strict=strict)
