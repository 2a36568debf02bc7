"""LGMRec (Guo et al., AAAI 2024): "LGMRec: Local and Global Graph Learning for Multimodal
Recommendation", local (graph) and global (hypergraph) embeddings of users and items."""

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from recbole_ckd.model import graphs
from recbole_ckd.model.graphs import spmm
from recbole_ckd.model.multimodal import NodeTableRecommender, bpr

CF_MODELS = ("lightgcn", "mf")
TEMPERATURE = 0.2  # MMRec's fixed tau, of the Gumbel softmax and of the contrastive loss


def info_nce(anchors, positives, candidates, temperature=TEMPERATURE):
    """``-sum_b log(exp(<a_b, p_b> / tau) / sum_c exp(<a_b, c> / tau))`` over cosine similarities."""
    anchors, positives, candidates = (F.normalize(x, dim=1) for x in (anchors, positives, candidates))
    positive = (anchors * positives).sum(dim=1) / temperature
    return (torch.logsumexp(anchors @ candidates.T / temperature, dim=1) - positive).sum()


class LGMRec(NodeTableRecommender):
    """LGMRec: each node's representation is its local embedding plus ``alpha`` times its global one.

    With ``A`` the training graph over users and items (distinct interactions, both directions,
    no self loops), ``L = D^-1/2 A D^-1/2``, ``R`` the user-item 0/1 matrix and ``f_i^m`` item
    ``i``'s fixed features of modality m:

    - *Collaborative embedding* (CGE): ``E = mean_l L^l [e_U; e_I]`` over ``l = 0..n_ui_layers``
      (``cf_model: lightgcn``), or the ID embeddings themselves (``cf_model: mf``).
    - *Modality embeddings* (MGE): items ``x_i^m = f_i^m W_m`` (no bias), users the mean of their
      training items' ``x^m``; then ``n_mm_layers`` propagations by ``L`` (the last layer kept).
      The local embedding is ``E + sum_m normalize(L^{n_mm_layers} [x_U^m; x_I^m])``.
    - *Global embeddings* (GHE): per modality, ``hyper_num`` hyperedges; item ``i`` is assigned
      to them by ``H_I^m = softmax((f_i^m V_m + g) / tau)``, user ``u`` by
      ``H_U^m = softmax(((R f^m V_m)_u + g) / tau)``, ``g`` Gumbel noise in training (a soft
      Gumbel softmax, ``tau = 0.2``), then dropout keeping ``keep_rate``. ``n_hyper_layer``
      layers: ``Z = H_I^T Y``, ``Y = H_I Z`` (from ``Y = E_I``), and users ``H_U Z``. The global
      embedding is ``normalize(sum_m [H_U^m Z^m; Y^m])``.
    - Representation ``local + alpha * global``, scored by dot product.

    Loss: ``BPR + cl_weight * L_hcl + reg_weight * (|U[u]| + |I[i+]| + |I[j-]|) / B`` (Frobenius
    norms of the batch representations, unsquared), with the contrastive loss between two
    modalities' global embeddings ``L_hcl = InfoNCE(u^a, u^b; all users) + InfoNCE(i^a, i^b; all
    items)`` over the batch's users and positive items (the anchor in modality a, the
    candidates in b, cosine similarities over ``tau = 0.2``, summed over the batch).

    Masking modality m (docs/method.md, section 2): its hypergraph is built from its features,
    and from the mean vector every item would have the same hyperedge assignment (the degenerate
    graph of that rule), so m's global branch is dropped (with every modality masked there is no
    global term) and the contrastive pairs that involve m are left out of the loss; m's local
    embedding propagates the projection of m's mean feature vector (one vector, projected
    once). Nothing user-side belongs to m alone, so nothing else changes.

    Any number of modalities: the contrastive loss sums over every pair ``(a, b)`` with ``a``
    before ``b`` in the dataset's modality order (with two, exactly the paper's one term).

    Differences from MMRec's code and why:

    - the random draws of a training step (Gumbel noise, dropout masks) come from a generator
      seeded with ``seed`` and the model's count of training steps (a buffer, saved in
      checkpoints), not from the global generator: every mode of one step (the CKD student's
      joint, "only m" and "without m") sees the same draws, a plain model and its student in
      the same state draw the same, and a resumed run draws what the uninterrupted one did;
      the draws have MMRec's distributions;
    - in evaluation the assignments are ``softmax(logits / tau)`` without Gumbel noise (MMRec
      draws noise in evaluation too, so its rankings are random): rankings are deterministic;
    - the padding user and item (id 0, which MMRec does not have) belong to no hyperedge and
      are no candidates of the contrastive loss;
    - ``L`` and the user mean leave out MMRec's ``+1e-7`` on the degrees (identical but for
      rounding on every node with an edge);
    - the contrastive loss is written with ``logsumexp`` (the same value, numerically safe);
    - any number of modalities, and masking, as above.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        dim = config["embedding_size"]
        self.cf_model = config["cf_model"]
        self.n_ui_layers = config["n_ui_layers"]
        self.n_mm_layers = config["n_mm_layers"]
        self.n_hyper_layer = config["n_hyper_layer"]
        self.hyper_num = config["hyper_num"]
        self.keep_rate = float(config["keep_rate"])
        self.alpha = float(config["alpha"])
        self.cl_weight = float(config["cl_weight"])
        self.draw_seed = int(config["seed"])
        if self.cf_model not in CF_MODELS:
            raise ValueError(f"cf_model is {self.cf_model!r}; it must be one of {', '.join(CF_MODELS)}.")
        counts = {"n_ui_layers": (self.n_ui_layers, 0), "n_mm_layers": (self.n_mm_layers, 0),
                  "n_hyper_layer": (self.n_hyper_layer, 1), "hyper_num": (self.hyper_num, 1)}
        for key, (value, low) in counts.items():
            if not (isinstance(value, int) and value >= low):
                raise ValueError(f"{key} is {value!r}; it must be an integer >= {low}.")
        if not 0 < self.keep_rate <= 1:
            raise ValueError(f"keep_rate is {self.keep_rate}; it must be in (0, 1].")
        if config["feat_embed_dim"] != dim:
            raise ValueError(f"feat_embed_dim ({config['feat_embed_dim']}) must equal embedding_size ({dim}): "
                             "the modality embeddings are added to the collaborative one.")

        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_id_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        self.projection = nn.ParameterDict(
            {m: nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.feature_dim(m), dim))) for m in self.modalities})
        self.hyperedges = nn.ParameterDict(
            {m: nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.feature_dim(m), self.hyper_num)))
             for m in self.modalities})
        self.register_buffer("training_steps", torch.zeros((), dtype=torch.long))

        users, items = graphs.interaction_edges(dataset)
        self.register_buffer("_graph", self.user_item_graph(users, items, "sym"), persistent=False)
        degree = torch.bincount(users, minlength=self.n_users).float()
        shape = (self.n_users, self.n_items)
        edges = torch.stack([users, items])
        self.register_buffer("_user_items", torch.sparse_coo_tensor(edges, torch.ones(len(users)), shape).coalesce(),
                             persistent=False)
        self.register_buffer("_user_item_mean", torch.sparse_coo_tensor(edges, 1.0 / degree[users], shape).coalesce(),
                             persistent=False)

    # ------------------------------------------------------------ branches
    def modality_encoders(self):
        # its dense encoders are bare matrices (feature -> embedding projection, feature -> hyperedge
        # weights), not nn.Linear layers; neither has a row per user or item
        return {m: [self.projection[m], self.hyperedges[m]] for m in self.modalities}

    def collaborative(self):
        """``E`` ``[n_users + n_items, d]``: LightGCN over the ID embeddings, or the embeddings (mf)."""
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight])
        if self.cf_model == "mf":
            return ego
        return torch.cat(self.lightgcn(self._graph, self.user_embedding.weight, self.item_id_embedding.weight,
                                       self.n_ui_layers))

    def modality_embedding(self, m, masked):
        """``L^{n_mm_layers} [x_U^m; x_I^m]``, from m's mean feature vector when ``masked``."""
        if masked:
            items = (self.feature_mean(m) @ self.projection[m]).expand(self.n_items, -1)
        else:
            items = self.feature(m) @ self.projection[m]
        nodes = torch.cat([spmm(self._user_item_mean, items), items])
        return graphs.propagate(self._graph, nodes, self.n_mm_layers)

    def draws(self, m):
        """``(Gumbel noise, dropout scale)`` of items and of users for modality m's assignments in
        the current training step (see the class docstring)."""
        generator = torch.Generator(device=self.device)
        index = self.modalities.index(m)
        generator.manual_seed(self.draw_seed + 1_000_003 * (len(self.modalities) * int(self.training_steps) + index))
        result = []
        for n in (self.n_items, self.n_users):
            shape = (n, self.hyper_num)
            gumbel = -torch.empty(shape, device=self.device).exponential_(generator=generator).log()
            keep = torch.rand(shape, device=self.device, generator=generator) < self.keep_rate
            result.append((gumbel, keep / self.keep_rate))
        return result

    def assignments(self, m):
        """``(H_I^m, H_U^m)``: soft hyperedge assignments of items and users."""
        item_logits = self.feature(m) @ self.hyperedges[m]
        user_logits = spmm(self._user_items, item_logits)
        if not self.training:
            return F.softmax(item_logits / TEMPERATURE, dim=1), F.softmax(user_logits / TEMPERATURE, dim=1)
        (item_gumbel, item_keep), (user_gumbel, user_keep) = self.draws(m)
        return (F.softmax((item_logits + item_gumbel) / TEMPERATURE, dim=1) * item_keep,
                F.softmax((user_logits + user_gumbel) / TEMPERATURE, dim=1) * user_keep)

    def hypergraph_embedding(self, m, collaborative):
        """``[H_U^m Z^m; Y^m]`` after ``n_hyper_layer`` layers from the collaborative item embeddings."""
        item_hyper, user_hyper = self.assignments(m)
        items = collaborative[self.n_users:]
        for _ in range(self.n_hyper_layer):
            hyperedges = item_hyper[1:].T @ items[1:]  # the padding item belongs to no hyperedge
            items = item_hyper @ hyperedges
            users = user_hyper @ hyperedges
        return torch.cat([users, items])

    # ------------------------------------------------------------ representations
    def representation(self, masked=frozenset(), memo=None):
        """``[n_users + n_items, d]``; ``memo`` (a dict) shares every branch between the modes of a step."""
        memo = {} if memo is None else memo
        if "collaborative" not in memo:
            memo["collaborative"] = self.collaborative()
        collaborative = memo["collaborative"]
        local, global_ = 0, 0
        for m in self.modalities:
            key = ("local", m, m in masked)
            if key not in memo:
                memo[key] = F.normalize(self.modality_embedding(m, m in masked))
            local = local + memo[key]
            if m not in masked:
                if ("global", m) not in memo:
                    memo[("global", m)] = self.hypergraph_embedding(m, collaborative)
                global_ = global_ + memo[("global", m)]
        nodes = collaborative + local
        if torch.is_tensor(global_):
            nodes = nodes + self.alpha * F.normalize(global_)
        return nodes

    def triple_margins(self, users, pos, neg, modes, joint_rows=None):
        if self.training:  # a new training step: new random draws
            self.training_steps += 1
        return super().triple_margins(users, pos, neg, modes, joint_rows)

    # ------------------------------------------------------------ training
    def objective(self, interaction, step):
        users, pos, _ = self.batch_triples(interaction)
        user_reps, pos_reps, neg_reps = step.joint
        terms = {"bpr": bpr(step.margins["joint"])}
        active = [m for m in self.modalities if m not in self.default_masked]
        pairs = list(itertools.combinations(active, 2))
        if pairs:
            contrast = 0
            for a, b in pairs:
                user_a, item_a = step.memo[("global", a)].split([self.n_users, self.n_items])
                user_b, item_b = step.memo[("global", b)].split([self.n_users, self.n_items])
                contrast = contrast + info_nce(user_a[users], user_b[users], user_b[1:])
                contrast = contrast + info_nce(item_a[pos], item_b[pos], item_b[1:])
            terms["hcl"] = self.cl_weight * contrast
        norms = user_reps.norm() + pos_reps.norm() + neg_reps.norm()
        terms["reg"] = self.reg_weight * norms / len(user_reps)
        return terms
