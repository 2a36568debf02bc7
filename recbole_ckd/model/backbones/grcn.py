"""GRCN (Wei et al., ACM MM 2020): graph-refined convolution over the user-item graph."""

import torch
import torch.nn.functional as F
from torch import nn

from recbole_ckd.model.multimodal import NodeTableRecommender, bpr


class GRCN(NodeTableRecommender):
    """GRCN: a graph refining layer per modality, then ID graph convolution on the refined graph.

    Per modality m (the *graph refining layer*):

    - item content ``f_i = normalize(leaky_relu(W_m x_i^m + b_m))`` and a user preference
      (prototype) ``p_u = normalize(P_m[u])``, both of size ``latent_dim``;
    - *neighbour routing*, ``n_routing`` iterations: ``a_ui = softmax_{i in N(u)} <p_u, f_i>``,
      ``p_u <- normalize(p_u + sum_{i in N(u)} a_ui f_i)``;
    - the affinity of every training edge, normalised on each side:
      ``a^m_{i->u} = softmax_{i in N(u)} <p_u, f_i>`` and ``a^m_{u->i} = softmax_{u in N(i)} <p_u, f_i>``;
    - the modality's content representation, one attention layer:
      ``c_u^m = p_u + sum_i a^m_{i->u} f_i``, ``c_i^m = f_i + sum_u a^m_{u->i} p_u``.

    *Pruning*: every directed edge ``j -> k`` gets the weight
    ``w_{j->k} = relu(max_m conf_j^m * a^m_{j->k})``, with ``conf`` a learned confidence of every
    node (users and items) in every modality; a non-positive weight prunes the edge.

    *Graph convolution*: ID embeddings ``x = normalize(E)`` propagated ``id_layers`` times over
    the refined graph with sum aggregation, ``x^(l+1)_k = sum_{j -> k} w_{j->k} x^(l)_j``, and
    ``id = x + x^(1) + ... + x^(id_layers)``. The representation of every node is the
    concatenation ``[id; c^m for every m]`` (``embedding_size + M * latent_dim``), scored by dot
    product.

    Loss (the authors'): BPR plus ``reg_weight`` times the mean square of the ID embeddings of
    the batch users and items and of the batch users' preferences, each as a mean over the
    elements of the reference's interleaved ``[2B, dim]`` user and item tensors.

    Choices, all from the authors' code (MMRec's copy is the same) unless said: no activation
    after either convolution (``has_act`` False), L2-normalised inputs (``has_norm`` True), sum
    aggregation, confidence-weighted max over modalities (``weight_mode: confid``),
    concatenation fusion, no edge dropout; Xavier-normal ID embeddings, preferences and
    confidences, Xavier-normal projection weights (MMRec; the authors' code keeps PyTorch's
    default) with PyTorch's default biases; the confidence of an edge is that of its source
    node. This implementation's own choices:

    - routing updates the users from their items, as the paper describes. Both reference codes
      pass user->item edges to a PyTorch Geometric layer that aggregates at the edge targets, so
      users receive nothing and their routing loop leaves the preferences unchanged;
      ``n_routing: 0`` reproduces that behaviour exactly;
    - MMRec also adds the mean square of the whole visual preference table to the L2 term (a
      visual-only term the authors' code lacks); it is not reproduced. The L2 term covers only
      the preferences of unmasked modalities (a masked modality's preferences act only through
      their mean);
    - the softmax over a node's edges shifts by the group's maximum (the reference does not; the
      softmax is the same, and the shift keeps it finite for any input).
    - every sum over edges and every per-edge dot product is a CSR product, the softmax over a
      user's edges one pass over the CSR rows (:class:`~recbole_ckd.model.graphs.EdgeProduct`,
      ``softmax``), and a masked modality's refining layer
      is computed in closed form (:meth:`_refine_masked`): the same values, without
      ``[edges x dim]`` intermediates.

    Masking modality m (docs/method.md, section 2): m's features are replaced by their mean over items
    (projected once) and m's preferences ``P_m`` by their mean over users, so every item has the
    same content and every user the same prototype in m (routing keeps them equal); m's
    content block is then one vector for every user with training items and one for every
    item with training users (an item without any keeps the mean content alone): it carries
    no item-specific information of m. m's refinement term is dropped from the pruning: the
    affinities of mean features are uniform over each neighbourhood (``1/deg``) and say nothing about an edge, so the edge
    weight is the max over the unmasked modalities only (with a max there are no weights to
    renormalise). With every modality masked no term is left; the weights are then computed
    from the masked inputs of all modalities (uniform affinities, the users' confidences
    replaced by their mean over users, the items' kept).
    """

    reference_code = "its authors' code"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        dim, latent = config["embedding_size"], config["latent_dim"]
        self.n_routing = int(config["n_routing"])
        self.id_layers = int(config["id_layers"])
        if self.n_routing < 0 or self.id_layers < 0:
            raise ValueError(
                f"n_routing and id_layers must be >= 0, got {self.n_routing} and {self.id_layers}."
            )
        inter = dataset.inter_matrix(form="coo")
        self.register_buffer("edge_users", torch.from_numpy(inter.row).long(), persistent=False)
        self.register_buffer("edge_items", torch.from_numpy(inter.col).long(), persistent=False)

        self.id_embedding = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users + self.n_items, dim)))
        self.preference = nn.ParameterDict(
            {m: nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, latent))) for m in self.modalities}
        )
        self.projection = nn.ModuleDict({m: nn.Linear(self.feature_dim(m), latent) for m in self.modalities})
        for layer in self.projection.values():
            nn.init.xavier_normal_(layer.weight)
        # column k: every node's confidence in modality k (users first, then items)
        self.confidence = nn.Parameter(
            nn.init.xavier_normal_(torch.empty(self.n_users + self.n_items, len(self.modalities)))
        )

    @property
    def edges(self):
        """The training edges (user <- item) as CSR products, built on the buffers' device."""
        return self.edge_product(self.edge_users, self.edge_items, self.n_users, self.n_items)

    # ------------------------------------------------------------ graph refining layer
    def refine(self, m, is_masked):
        """Modality ``m``: content representations ``[n_users + n_items, latent_dim]`` and the
        affinities of every training edge, ``(a_{i->u}, a_{u->i})``."""
        if is_masked:
            return self._refine_masked(m)
        edges = self.edges
        content = F.normalize(F.leaky_relu(self.projection[m](self.feature(m))), dim=1)
        preference = F.normalize(self.preference[m], dim=1)
        for _ in range(self.n_routing):
            weights = edges.softmax(edges.edge_dots(preference, content))
            preference = F.normalize(preference + edges.mm(weights, content), dim=1)
        scores = edges.edge_dots(preference, content)  # <p_u, f_i> of every edge
        to_user = edges.softmax(scores)  # a_{i->u}: over the user's items
        to_item = edges.t().softmax(scores)  # a_{u->i}: over the item's users
        user_rep = preference + edges.mm(to_user, content)
        item_rep = content + edges.t().mm(to_item, preference)
        return torch.cat([user_rep, item_rep]), to_user, to_item

    def _refine_masked(self, m):
        """:meth:`refine` of a masked modality in closed form. Every item has the same content
        ``c`` and every user the same prototype ``p``, so every affinity is uniform over its
        neighbourhood (``1/deg``), routing moves every user with items to the same prototype
        ``p'`` (``p <- normalize(p + c)``, ``n_routing`` times), and the representations are
        ``p' + c`` for users with items and ``c + p'`` for items with users (``p`` and ``c`` for
        the others)."""
        users, items = self.edge_users, self.edge_items
        content = F.normalize(F.leaky_relu(self.projection[m](self.feature_mean(m))), dim=1)
        prototype = F.normalize(self.user_mean(self.preference[m]), dim=1)
        routed = prototype
        for _ in range(self.n_routing):
            routed = F.normalize(routed + content, dim=1)
        user_degree = torch.bincount(users, minlength=self.n_users)
        item_degree = torch.bincount(items, minlength=self.n_items)
        has_items, has_users = (user_degree > 0)[:, None], (item_degree > 0)[:, None]
        user_rep = torch.where(has_items, routed + content, prototype)
        item_rep = torch.where(has_users, content + routed, content)
        to_user = 1.0 / user_degree[users].to(content.dtype)
        to_item = 1.0 / item_degree[items].to(content.dtype)
        return torch.cat([user_rep, item_rep]), to_user, to_item

    def edge_weights(self, affinities, masked):
        """Pruned weights ``(w_{i->u}, w_{u->i})`` of every training edge from the per-modality affinities."""
        users, items = self.edge_users, self.edge_items
        kept = [k for k, m in enumerate(self.modalities) if m not in masked]
        every_masked = not kept
        if every_masked:
            kept = list(range(len(self.modalities)))
        to_user, to_item = [], []
        for k in kept:
            user_conf = self.confidence[: self.n_users, k]
            if every_masked:  # a masked modality's user-side parameters at their mean over users
                user_conf = user_conf[1:].mean().expand(self.n_users)
            item_conf = self.confidence[self.n_users :, k]
            a_to_user, a_to_item = affinities[k]
            to_user.append(item_conf[items] * a_to_user)  # the source of i -> u is the item
            to_item.append(user_conf[users] * a_to_item)  # the source of u -> i is the user
        return (
            torch.relu(torch.stack(to_user).max(dim=0).values),
            torch.relu(torch.stack(to_item).max(dim=0).values),
        )

    # ------------------------------------------------------------ representations
    def representation(self, masked=frozenset(), memo=None):
        """``[n_users + n_items, embedding_size + M * latent_dim]``; ``memo`` (a dict) shares each
        modality's refining layer between masking modes."""
        memo = {} if memo is None else memo
        contents, affinities = [], []
        for m in self.modalities:
            key = (m, m in masked)
            if key not in memo:
                memo[key] = self.refine(m, m in masked)
            content, to_user, to_item = memo[key]
            contents.append(content)
            affinities.append((to_user, to_item))
        w_user, w_item = self.edge_weights(affinities, masked)

        x = F.normalize(self.id_embedding, dim=1)
        id_rep, layer = x, x
        for _ in range(self.id_layers):
            layer_users, layer_items = layer.split([self.n_users, self.n_items])
            layer = torch.cat([self.edges.mm(w_user, layer_items), self.edges.t().mm(w_item, layer_users)])
            id_rep = id_rep + layer
        return torch.cat([id_rep] + contents, dim=1)

    # ------------------------------------------------------------ training
    def objective(self, interaction, step):
        """BPR plus the authors' L2 (see the class docstring), on parameters, not representations."""
        return {"bpr": bpr(step.margins["joint"]), "l2": self.reg_weight * interleaved_l2(self, interaction)}


def interleaved_l2(model, interaction):
    """The L2 of GRCN's authors (and EgoGCN's, built on their code): the mean squares of the
    batch users' and items' ID embeddings (``model.id_embedding``, users first) and of the batch
    users' preferences of every unmasked modality (``model.preference``), each a mean over the
    elements of the reference's interleaved ``[2B, dim]`` tensors (every user twice, its
    positive then its negative)."""
    users = interaction[model.USER_ID]
    pos, neg = interaction[model.ITEM_ID], interaction[model.NEG_ITEM_ID]
    user_tensor = users.repeat_interleave(2)
    item_tensor = torch.stack([pos, neg], dim=1).reshape(-1) + model.n_users
    reg = (model.id_embedding[user_tensor].pow(2) + model.id_embedding[item_tensor].pow(2)).mean()
    for m in model.modalities:
        if m not in model.default_masked:  # a masked modality's preferences act only through their mean
            reg = reg + model.preference[m][user_tensor].pow(2).mean()
    return reg
