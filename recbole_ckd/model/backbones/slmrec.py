"""SLMRec (Tao et al., IEEE Transactions on Multimedia 2022): self-supervised learning for multimedia recommendation."""

import torch
import torch.nn.functional as F
from torch import nn

from recbole_ckd.model.multimodal import MultimodalRecommender, l2_per_triple


def info_nce(queries, keys, temperature):
    """In-batch InfoNCE: cross-entropy of ``queries keys^T / temperature`` with row ``b``'s
    positive in column ``b`` (every other row of the batch a negative)."""
    logits = queries @ keys.T / temperature
    return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device))


class SLMRec(MultimodalRecommender):
    """SLMRec: Z. Tao, X. Liu, Y. Xia, X. Wang, L. Yang, X. Huang, T.-S. Chua, "Self-Supervised
    Learning for Multimedia Recommendation", IEEE Transactions on Multimedia, 2022.

    Branches. Users have one ID embedding ``e_U``, items an ID embedding ``e_I``; each modality m
    has a biased projection ``W_m`` of its row-wise L2-normalised item features ``f^m``. Every
    branch is LightGCN (the mean of layers ``0..n_layers``) over the user-item training graph
    ``D^-1/2 A D^-1/2``, all with the same user input ``e_U``: the ID branch propagates
    ``[e_U; e_I]``, modality m's branch ``[e_U; W_m f^m]``, giving ``(h_U^b, h_I^b)`` for
    ``b in {id} + modalities``. The branches are concatenated and fused by one biased linear
    layer for users and one for items: ``u = L_U[h_u^id, h_u^m1, ...]``,
    ``i = L_I[h_i^id, h_i^m1, ...]``, scored by dot product.

    Loss, on a batch of pairs ``(u, i)``: the main task is in-batch InfoNCE over the
    L2-normalised representations, ``CE(norm(u) norm(i)^T / temp)`` (the batch's other items
    are the negatives), plus ``ssl_alpha`` times the fine-and-coarse (FAC) self-supervised
    task on the batch items: a hierarchy of spaces starting from the ID branch,
    ``s_0 = h_i^id``, ``s_k = G_k s_{k-1}``, where the k-th modality ``m_k`` is contrasted with
    its space by ``InfoNCE(s_k, H_{m_k} h_i^{m_k})`` at temperature ``ssl_temp`` (``G_k``,
    ``H_m`` biased linear maps, no normalisation, as in the reference). Every space has
    ``embedding_size`` dimensions but the last, which has half (the paper's video, audio, text
    order: the text space, last, is the coarsest). A CKD student keeps every term
    (:meth:`objective`); its distillation uses the sampled negatives, which the plain model's
    loss does not read.

    The reference is MMRec's SLMRec with its default ``ssl_task: FAC`` and
    ``mm_fusion_mode: concat``, which this reproduces: Xavier-uniform ID embeddings and
    weights, PyTorch's default biases, symmetric normalisation without self loops (MMRec's
    ``adj_type: pre``), modality features normalised once and not fine-tuned, ``weight_decay``
    as the only regulariser (``reg_weight``, this project's L2 on the batch representations, is
    0 by default). Differences, on purpose:

    - any number of modalities, in the dataset's order, each with a level of the FAC hierarchy.
      With two (image, text), MMRec maps the image space to the text space through two stacked
      linear layers, the first one the level of an audio modality its datasets lack (its
      contrastive term is commented out); here it is one linear map, ``G_2``, the same function
      class (a product of linear maps is linear), one layer fewer. MMRec also builds the unused
      audio projection; it is left out;
    - scores are the dot products; MMRec ranks by their sigmoid (the same order);
    - MMRec's other self-supervised tasks (``FD``, ``FM``, ``FD+FM``), the ``mean`` fusion and
      the ``normal`` initialisation fail in its own code (they read config keys and layers it
      never defines, or a fusion layer of the wrong width); they are not offered, so MMRec's
      ``ssl_task``, ``mm_fusion_mode``, ``init`` and ``adj_type`` keys are not read. The
      embedding size and the layer count use this project's names (MMRec: ``recdim``,
      ``layer_num``); MMRec's ``reg`` is in its grid but read nowhere;
    - ranking uses the current parameters (MMRec's full-sort prediction reads the tables of its
      last training batch); the padding user and item (id 0) have no edges; a repeated
      interaction is one edge; the branches propagate together as one wider table (the same
      values).

    Masking modality m (docs/method.md, section 2): m's branch propagates ``W_m`` applied to the
    mean of m's normalised features over items, for every item. SLMRec has no user-side
    parameter of its own per modality (users enter every branch through the shared ``e_U``), so
    nothing else changes: the masked branch still carries the graph and the ID embeddings, but
    no item-specific information of m, and so do the fused tables and m's FAC term (which is
    kept: it is not constant, since the branch's propagated user embeddings still differ by item).
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.dim = int(config["embedding_size"])
        self.n_layers = int(config["n_layers"])
        self.temp, self.ssl_temp = float(config["temp"]), float(config["ssl_temp"])
        self.ssl_alpha = float(config["ssl_alpha"])
        if self.n_layers < 0 or self.dim < 2:
            raise ValueError(f"SLMRec needs n_layers >= 0 and embedding_size >= 2, got {self.n_layers} and {self.dim}.")
        if self.temp <= 0 or self.ssl_temp <= 0 or self.ssl_alpha < 0:
            raise ValueError(f"SLMRec needs temp > 0, ssl_temp > 0 and ssl_alpha >= 0, "
                             f"got {self.temp}, {self.ssl_temp} and {self.ssl_alpha}.")
        for m in self.modalities:  # the model's input: normalised features, and their mean for masking
            normalised = F.normalize(self.feature(m).float(), dim=1)
            self.register_buffer(f"_normalised_{m}", normalised, persistent=False)
            self.register_buffer(f"_normalised_mean_{m}", normalised[1:].mean(dim=0, keepdim=True), persistent=False)

        self.user_embedding = nn.Embedding(self.n_users, self.dim)
        self.item_embedding = nn.Embedding(self.n_items, self.dim)
        self.dense = nn.ModuleDict({m: nn.Linear(self.feature_dim(m), self.dim) for m in self.modalities})
        width = self.dim * (len(self.modalities) + 1)
        self.user_fusion, self.item_fusion = nn.Linear(width, self.dim), nn.Linear(width, self.dim)
        sizes = [self.dim] * (len(self.modalities) - 1) + [self.dim // 2]  # FAC: the last space is the coarsest
        previous = [self.dim] + sizes[:-1]
        self.fac_step = nn.ModuleDict({m: nn.Linear(a, b) for m, a, b in zip(self.modalities, previous, sizes)})
        self.fac_head = nn.ModuleDict({m: nn.Linear(self.dim, b) for m, b in zip(self.modalities, sizes)})
        weights = [self.user_embedding.weight, self.item_embedding.weight, self.user_fusion.weight, self.item_fusion.weight]
        weights += [layer.weight for group in (self.dense, self.fac_step, self.fac_head) for layer in group.values()]
        for weight in weights:
            nn.init.xavier_uniform_(weight)
        self.register_buffer("graph", self.bipartite_adjacency(dataset, "sym"), persistent=False)

    # ------------------------------------------------------------ representations
    def branch_input(self, m, masked):
        """Modality ``m``'s item input ``W_m f^m`` ``[n_items, d]`` (the projected mean if masked)."""
        if masked:
            return self.dense[m](getattr(self, f"_normalised_mean_{m}")).expand(self.n_items, -1)
        return self.dense[m](getattr(self, f"_normalised_{m}"))

    def branches(self, states, memo):
        """``memo[state] = (h_U, h_I)`` for every ``state`` (``"id"`` or ``(m, masked)``) not yet in
        ``memo``, the missing branches propagated together as one wider table."""
        missing = [state for state in dict.fromkeys(states) if state not in memo]
        if missing:
            items = [self.item_embedding.weight if s == "id" else self.branch_input(*s) for s in missing]
            users = self.user_embedding.weight.repeat(1, len(missing))
            h_users, h_items = self.lightgcn(self.graph, users, torch.cat(items, dim=1), self.n_layers)
            for state, h_u, h_i in zip(missing, h_users.split(self.dim, dim=1), h_items.split(self.dim, dim=1)):
                memo[state] = (h_u, h_i)
        return [memo[state] for state in states]

    def states(self, masked):
        return ["id"] + [(m, m in masked) for m in self.modalities]

    def fuse(self, tables):
        users, items = zip(*tables)
        return self.user_fusion(torch.cat(users, dim=1)), self.item_fusion(torch.cat(items, dim=1))

    def forward(self, masked=frozenset()):
        return self.fuse(self.branches(self.states(masked), {}))

    def batch_representations_modes(self, users, items, modes, memo=None):
        memo = {} if memo is None else memo
        self.branches([s for masked in modes.values() for s in self.states(masked)], memo)
        result = {}
        for name, masked in modes.items():
            user_reps, item_reps = self.fuse(self.branches(self.states(masked), memo))
            result[name] = (user_reps[users], item_reps[items])
        return result

    # ------------------------------------------------------------ training
    def fac(self, items, memo):
        """The fine-and-coarse task on ``items``: ``{m: InfoNCE(s_k, H_m h^m)}`` in the model's own mode."""
        tables = self.branches(self.states(self.default_masked), memo)
        space, losses = tables[0][1][items], {}
        for m, (_, h_items) in zip(self.modalities, tables[1:]):
            space = self.fac_step[m](space)
            losses[m] = info_nce(space, self.fac_head[m](h_items[items]), self.ssl_temp)
        return losses

    def objective(self, interaction, step):
        """In-batch InfoNCE on the joint representations, ``ssl_alpha`` times each modality's FAC
        term, and ``reg_weight``'s L2 (0 by default)."""
        user_reps, pos_reps, _ = step.joint
        terms = {"infonce": info_nce(F.normalize(user_reps, dim=1), F.normalize(pos_reps, dim=1), self.temp)}
        for m, loss in self.fac(interaction[self.ITEM_ID], step.memo).items():
            terms[f"fac_{m}"] = self.ssl_alpha * loss
        terms["l2"] = self.reg_weight * l2_per_triple(*step.joint)
        return terms
