"""EgoGCN (Chen et al., ACM MM 2022): per-modality user-item graphs fused by edge-wise modulation."""

import torch
import torch.nn.functional as F
from torch import nn

from recbole_ckd.model import graphs
from recbole_ckd.model.backbones.grcn import interleaved_l2
from recbole_ckd.model.graphs import spmm
from recbole_ckd.model.multimodal import NodeTableRecommender, bpr

MODULATIONS = ("hard", "soft")
MASKED_FUSIONS = ("mean", "drop")


class EgoGCN(NodeTableRecommender):
    """EgoGCN: an MMGCN-style graph branch per modality whose messages are modulated, edge by
    edge, by the other modalities (EdGe-wise mOdulation, "EGO fusion"), plus an ID branch.

    Nodes are users and items; the edges are the distinct training interactions in both
    directions, ``j -> i`` (a message from ``j`` to ``i``), with no self loops. Per modality m:

    - inputs ``h^m = [normalize(P_m); normalize(leaky_relu(W_m x^m + b_m))]`` of size
      ``latent_dim`` (user preferences, projected item features);
    - one *EGO fusion* layer. The attention of an edge is
      ``a_ji = softmax_{j -> i} <h^m_i, h^m_j>`` (over the edges into ``i``); the message
      source is modulated by the neighbour's other modalities:

      * ``hard``: ``s_ji = mean_k h^k_j`` (mean over all modalities) where ``a_ji >
        alpha_threshold``, else ``h^m_j``; only the most attended edges carry the other
        modalities;
      * ``soft``: ``s_j = (h^m_j + sum_{k != m} sigmoid(G_mk h^k_j) * h^k_j) / M``, with a
        learned gate ``G_mk`` (``Linear(latent_dim, latent_dim)``) per ordered pair of modalities;

      with ``reattention``, ``a_ji`` is computed again from the modulated sources,
      ``softmax_{j -> i} <h^m_i, s_ji>``; then ``x_i = normalize(sum_{j -> i} a_ji s_ji)``
      (aggregation only, no residual: a node without training edges, an item seen only in
      validation or test, gets a zero branch output, as in the reference, and ranks by its ID
      embedding alone);
    - ``n_routing`` attention layers without modulation:
      ``x_i <- normalize(x_i + sum_{j -> i} softmax_{j -> i}(<x_i, x_j>) x_j)``.

    The ID branch: ``e = normalize(E)`` propagated over ``D^-1/2 A D^-1/2`` (no self loops,
    no weights, no activation), ``id = e + A e + ... + A^L e`` with ``L = id_layers``. The
    representation of every node is ``[id; x^m for every m]`` (``embedding_size + M *
    latent_dim``), scored by dot product.

    Loss (the authors'): BPR plus ``reg_weight`` times the mean square of the batch users' and
    items' ID embeddings and of the batch users' preferences, each a mean over the elements of
    the reference's interleaved ``[2B, dim]`` user and item tensors (as GRCN's, whose code
    EgoGCN's is built on).

    The reference is the authors' code (github.com/feiyuchen7/EgoGCN: ``Model_routing_21sp.py``,
    ``GATConv_pre.py`` for the fusion, ``GATConv_ori.py`` for routing, ``GCNConv.py`` for the ID
    branch), with the settings of its README's MovieLens example (EgoGCN-hard: ``weight_mode
    GCN``, ``reattn True``, ``central_item``, ``num_routing 3``, ``alpha_threshold '>0.4'``,
    ``weight_decay 1e-4``): 64-d ID embeddings and 64-d modality representations, Xavier-normal
    ID embeddings and preferences, PyTorch's default initialisation of the projections and
    gates, concatenation fusion. ``modulation: soft`` is its EgoGCN-soft
    (``alpha_threshold '=0'``); with three modalities the reference's ``(x + y + z) / 3`` is the
    mean over all modalities, which this generalises to any number. Differences, on purpose:

    - the reference's ID branch applies its third convolution to the first layer's output
      (``conv_embed_3(x_hat_1)``), so it returns ``e + A e + 2 A^2 e``; here layer ``l``
      propagates layer ``l - 1``. ``repeat_id_layer: True`` reproduces the reference (the last
      layer propagates the layer two before it, i.e. repeats the one before);
    - the preferences are normalised inside the forward, ``normalize(P_m)``; the reference
      overwrites the parameter itself in every forward (``preference.data =
      normalize(preference)``, evaluation included), which bypasses the normalisation's
      gradient. The L2 term is on the raw preferences (the reference's are unit rows when it is
      computed), only of unmasked modalities (a masked modality's preferences act only through
      their mean), as this project's GRCN;
    - the hard modulation's unused gates are not created (the reference builds them anyway);
    - not reproduced: the reference's ``central_user`` variant (on the symmetric edge set it only
      changes which message rule is used), its ``<`` threshold, its node-alignment variant
      (``--NA``, ``Model_routing_21NA.py``) and word-token text features. Its argparse defaults
      (``weight_mode confid``) disable the ID branch and are not the published setting;
    - the training is not the reference's: its MovieLens example trains with Adam at lr 2e-4,
      x0.8 every 50 epochs, for 300 epochs; here EgoGCN trains under the protocol shared by every
      backbone (Adam at ``learning_rate`` 1e-3, constant, early stopping on validation), so its
      results compare with the other backbones' on equal terms.

    Every sum over edges, every per-edge dot product and every softmax over a node's edges is a
    CSR pass (:class:`~recbole_ckd.model.graphs.EdgeProduct`; the edges are kept in CSR order):
    no ``[edges x dim]`` tensor and no dense matrix. The first attention of a branch depends only
    on its own modality's inputs, so masking modes that leave it alike share it.

    Masking modality m (docs/method.md, section 2): m's item features are replaced by their mean
    (projected once) and its preferences ``P_m`` by their mean over users, so every item has the
    same input and every user the same prototype in m, and m's first attention is uniform over
    each neighbourhood (``1 / deg``). Its own branch still propagates, and its fused edges still
    carry the other modalities: in the hard modulation, which edges of m's branch are fused then
    depends only on the target's degree (``1 / deg > alpha_threshold``), a fused edge's content
    being the mean of m's constant and the other modalities' representations of the neighbour
    (which the reattention then weighs), never item-specific information of m. In the other modalities' branches, a fused edge uses m's
    masked representation of the neighbour: by default (``masked_fusion: mean``) m enters every
    fused message as its mean, like every other use of masked features; nothing is dropped,
    since the fusion runs over the fixed training edges, not over a graph built from m's
    features, so the mean gives no degenerate structure. ``masked_fusion: drop`` instead drops
    the masked modalities from the fused messages and renormalises the mean over the modalities
    left (with every other modality masked, m's branch is then plain attention over m).
    """

    reference_code = "its authors' code"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        dim, latent = config["embedding_size"], config["latent_dim"]
        self.n_routing, self.id_layers = int(config["n_routing"]), int(config["id_layers"])
        self.modulation, self.masked_fusion = config["modulation"], config["masked_fusion"]
        self.alpha_threshold = float(config["alpha_threshold"])
        self.reattention = bool(config["reattention"])
        self.repeat_id_layer = bool(config["repeat_id_layer"])
        if self.n_routing < 0 or self.id_layers < 0:
            raise ValueError(f"n_routing and id_layers must be >= 0, got {self.n_routing} and {self.id_layers}.")
        if self.modulation not in MODULATIONS:
            raise ValueError(f"modulation must be one of {MODULATIONS}, got {self.modulation!r}.")
        if self.masked_fusion not in MASKED_FUSIONS:
            raise ValueError(f"masked_fusion must be one of {MASKED_FUSIONS}, got {self.masked_fusion!r}.")
        if self.repeat_id_layer and self.id_layers < 2:
            raise ValueError(f"repeat_id_layer needs id_layers >= 2, got {self.id_layers}.")

        users, items = graphs.interaction_edges(dataset)
        items = items + self.n_users
        # every training edge both ways: edge e carries a message from edge_src[e] to edge_dst[e];
        # sorted by (dst, src), the CSR order, so the products need no permutation
        dst, src = torch.cat([users, items]), torch.cat([items, users])
        order = torch.argsort(dst * self.n_nodes + src)
        self.register_buffer("edge_dst", dst[order], persistent=False)
        self.register_buffer("edge_src", src[order], persistent=False)
        self.register_buffer("id_graph", self.user_item_graph(users, items - self.n_users, "sym"), persistent=False)

        self.id_embedding = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users + self.n_items, dim)))
        self.preference = nn.ParameterDict(
            {m: nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, latent))) for m in self.modalities}
        )
        self.projection = nn.ModuleDict({m: nn.Linear(self.feature_dim(m), latent) for m in self.modalities})
        if self.modulation == "soft":
            self.gates = nn.ModuleDict(
                {
                    m: nn.ModuleDict({k: nn.Linear(latent, latent) for k in self.modalities if k != m})
                    for m in self.modalities
                }
            )

    @property
    def n_nodes(self):
        return self.n_users + self.n_items

    @property
    def edges(self):
        """The directed edges (``dst <- src``) as CSR products, built on the buffers' device."""
        return self.edge_product(self.edge_dst, self.edge_src, self.n_nodes, self.n_nodes)

    # ------------------------------------------------------------ branches
    def inputs(self, m, is_masked):
        """``h^m = [normalize(P_m); normalize(leaky_relu(W_m x^m + b_m))]``, ``[n_users + n_items,
        latent_dim]``; masked: the mean preference and the mean feature, projected once."""
        if is_masked:
            content = F.normalize(F.leaky_relu(self.projection[m](self.feature_mean(m))), dim=1)
            preference = F.normalize(self.user_mean(self.preference[m]), dim=1)
            return torch.cat([preference.expand(self.n_users, -1), content.expand(self.n_items, -1)])
        content = F.normalize(F.leaky_relu(self.projection[m](self.feature(m))), dim=1)
        return torch.cat([F.normalize(self.preference[m], dim=1), content])

    def attention(self, scores):
        """Softmax of per-edge scores over the edges into each node."""
        return self.edges.softmax(scores)

    def fusion(self, m, inputs, masked, memo):
        """The EGO fusion layer of modality ``m``'s branch (see the class docstring)."""
        edges, x = self.edges, inputs[m]
        others = [k for k in self.modalities if k != m and not (self.masked_fusion == "drop" and k in masked)]
        key = ("attention", m, m in masked)  # the first attention sees only m's inputs: shared by masking modes
        if key not in memo:
            scores = edges.edge_dots(x, x)  # <x_dst, x_src> of every edge
            memo[key] = scores, self.attention(scores)
        scores, alpha = memo[key]
        if self.modulation == "soft":
            # the gates depend only on the source node: the modulated source is a node table
            gated = sum((torch.sigmoid(self.gates[m][k](inputs[k])) * inputs[k] for k in others), x)
            source = gated / (1 + len(others))
            if self.reattention:
                alpha = self.attention(edges.edge_dots(x, source))
            out = edges.mm(alpha, source)
        else:
            fused = sum((inputs[k] for k in others), x) / (1 + len(others))
            chosen = (alpha > self.alpha_threshold).to(alpha.dtype)  # edges whose source is the fused one
            if self.reattention:
                alpha = self.attention((1 - chosen) * scores + chosen * edges.edge_dots(x, fused))
            out = edges.mm(alpha * (1 - chosen), x) + edges.mm(alpha * chosen, fused)
        return F.normalize(out, dim=1)

    def routing(self, x):
        """``n_routing`` attention layers: ``x <- normalize(x + sum softmax(<x_i, x_j>) x_j)``."""
        edges = self.edges
        for _ in range(self.n_routing):
            x = F.normalize(x + edges.mm(self.attention(edges.edge_dots(x, x)), x), dim=1)
        return x

    def branch(self, m, masked, memo=None):
        """Modality ``m``'s branch output ``[n_users + n_items, latent_dim]`` under ``masked``."""
        memo = {} if memo is None else memo
        inputs = {}
        for k in self.modalities:
            key = ("input", k, k in masked)
            if key not in memo:
                memo[key] = self.inputs(k, k in masked)
            inputs[k] = memo[key]
        return self.routing(self.fusion(m, inputs, masked, memo))

    def id_representation(self):
        """``e + A e + ... + A^L e`` with ``e = normalize(E)`` (``repeat_id_layer``: the reference's
        last layer, a copy of the one before)."""
        layers = [F.normalize(self.id_embedding, dim=1)]
        for layer in range(self.id_layers):
            source = layers[-2] if self.repeat_id_layer and layer == self.id_layers - 1 else layers[-1]
            layers.append(spmm(self.id_graph, source))
        return torch.stack(layers).sum(dim=0)

    # ------------------------------------------------------------ representations
    def representation(self, masked=frozenset(), memo=None):
        """``[n_users + n_items, embedding_size + M * latent_dim]``; ``memo`` (a dict) shares the ID
        branch, the inputs and the branches between masking modes."""
        memo = {} if memo is None else memo
        masked = frozenset(masked) & frozenset(self.modalities)
        if "id" not in memo:
            memo["id"] = self.id_representation()
        blocks = [memo["id"]]
        for m in self.modalities:
            key = ("branch", m, masked)
            if key not in memo:
                memo[key] = self.branch(m, masked, memo)
            blocks.append(memo[key])
        return torch.cat(blocks, dim=1)

    # ------------------------------------------------------------ training
    def objective(self, interaction, step):
        """BPR plus the authors' L2 (see the class docstring), on parameters, not representations."""
        return {"bpr": bpr(step.margins["joint"]), "l2": self.reg_weight * interleaved_l2(self, interaction)}
