"""BM3 (Zhou et al., WWW 2023): bootstrapped latent representations, no negative sampling."""

import torch
import torch.nn.functional as F
from torch import nn

from recbole_ckd.model.multimodal import MultimodalRecommender


def alignment_loss(online, target):
    """``1 - mean_b cos(online_b, target_b)``; the target is a constant (stop-gradient)."""
    return 1.0 - F.cosine_similarity(online, target.detach(), dim=-1).mean()


class BM3(MultimodalRecommender):
    """BM3: LightGCN over ID embeddings, trained by bootstrapping instead of negatives.

    Representations. LightGCN on the symmetric-normalised user-item training graph, the mean
    of layers ``0..n_layers``; items add their own ID embedding once more (a residual), so
    ``h_u = mean_l e_u^(l)`` and ``h_i = mean_l e_i^(l) + e_i^(0)``. Each modality m has an
    affine projection ``W_m`` of its item features into the same space. One linear
    *predictor* ``p`` is shared by the ID and every modality branch.

    Training (per batch of positive pairs ``(u, i)``; no negative item is ever sampled):

    - online view: ``p(h_u)``, ``p(h_i)``, ``p(W_m f_i^m)``;
    - target view: ``dropout(h_u)``, ``dropout(h_i)``, ``dropout(W_m f_i^m)``, detached;
    - ``C(a, b) = 1 - cos(a, sg(b))`` averaged over the batch, and
      ``L = C(p(h_u), h~_i) + C(p(h_i), h~_u)
      + reg_weight * (||H_U||_F + ||H_I||_F) / |I|
      + cl_weight * sum_m [C(p(W_m f_i^m), h~_i) + C(p(W_m f_i^m), (W_m f_i^m)~)]``,
      ``~`` marking the target view: per modality, alignment with the item's ID target
      (inter-modality) and with its own dropped-out features (masked-feature loss). Any number
      of modalities is supported.

    Ranking, as in the reference's full-sort prediction: ``<p(h_u), p(h_i)>``, from ID
    embeddings only. :meth:`forward` therefore ignores ``masked``: no modality is used at
    inference, so every masking mode gives the same tables, every counterfactual effect is
    zero, and ``BM3_CKD`` is refused when it is built (docs/method.md, section 2). BM3 builds no
    item-item graph, so the graph-dropping rule of docs/method.md, section 2, does not apply to it.

    Negatives: ``properties/model/BM3.yaml`` sets ``train_neg_sample_args: ~``, which RecBole
    1.2.1 turns into ``distribution: none``; its training dataloader then yields the training
    interactions as they are, whatever ``input_type`` says (that attribute only lays out sampled
    negatives). A config that asks for negatives is refused here, since they would be sampled
    for nothing.

    Choices where the paper is silent, taken from MMRec's implementation: ``1 - cos`` as the
    alignment loss; unsquared Frobenius norms of the whole online tables (before the
    predictor) divided by the number of items as the regulariser; Xavier-uniform ID
    embeddings, Xavier-normal predictor and projection weights, PyTorch's default biases;
    modality feature tables fine-tuned (``train_features``, MMRec loads them with
    ``freeze=False``). This implementation's own choices: the padding user and item (id 0)
    are left out of the regulariser; the dropout mask of the target view is drawn per table
    row and gathered, so a row repeated in a batch shares its mask as in the reference, which
    drops out whole tables; each distinct batch item's features are projected once, or the
    whole table when most items occur (``project_rows``: the same values and gradients as
    projecting all items and then indexing, at the smaller cost).

    Masking (``active_modalities``): a masked modality's auxiliary losses see the mean of its
    feature table over all items (the rule of docs/method.md, section 2, for every use of a masked modality's
    features); scores are unaffected either way.
    """

    ranks_with_modalities = False  # features only feed auxiliary losses

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        sampling = config["train_neg_sample_args"] or {}
        if sampling.get("distribution", "none") != "none":
            raise ValueError(
                f"BM3 is trained without negative sampling (its losses use positive user-item pairs only), but "
                f"train_neg_sample_args is {sampling}. Remove train_neg_sample_args from your config "
                "(properties/model/BM3.yaml sets it to ~)."
            )
        dim = config["embedding_size"]
        self.n_layers = int(config["n_layers"])
        self.dropout = float(config["dropout"])
        self.cl_weight = float(config["cl_weight"])
        if self.n_layers < 0:
            raise ValueError(f"n_layers must be >= 0, got {self.n_layers}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")

        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.predictor = nn.Linear(dim, dim)
        nn.init.xavier_normal_(self.predictor.weight)
        self.projection = nn.ModuleDict({m: nn.Linear(self.feature_dim(m), dim) for m in self.modalities})
        for layer in self.projection.values():
            nn.init.xavier_normal_(layer.weight)
        self.init_trained_features(config)
        self.register_buffer("graph", self.bipartite_adjacency(dataset, "sym"), persistent=False)

    # ------------------------------------------------------------ representations
    def propagate(self):
        """LightGCN tables before the predictor: ``(h_U [n_users, d], h_I [n_items, d])``."""
        users, items = self.lightgcn(self.graph, self.user_embedding.weight, self.item_embedding.weight, self.n_layers)
        return users, items + self.item_embedding.weight

    def forward(self, masked=frozenset()):
        """The ranking tables ``p(h_U), p(h_I)``; ``masked`` is ignored (no modality is used at inference)."""
        users, items = self.propagate()
        return self.predictor(users), self.predictor(items)

    def projected_features(self, m, items, masked=frozenset(), distinct=None):
        """Projected features ``W_m f_i^m`` of ``items``; a masked modality's are its projected mean
        (``distinct``: :meth:`distinct_items` of ``items``, shared by the modalities)."""
        if m in masked:
            return self.projection[m](self.trained_feature_mean(m)).expand(len(items), -1)
        return self.project_rows(self.projection[m], self.trained_feature(m), items, distinct)

    def target_view(self, values, index, n_rows):
        """``values`` (rows ``index`` of an ``n_rows`` table) detached, with dropout; the mask is
        drawn per table row, so a row that occurs twice in a batch gets the same mask."""
        values = values.detach()
        if self.dropout == 0.0:
            return values
        keep = torch.empty(n_rows, values.shape[1], device=values.device).bernoulli_(1.0 - self.dropout)
        return values * keep[index] / (1.0 - self.dropout)

    # ------------------------------------------------------------ training
    def calculate_loss(self, interaction):
        users, items = interaction[self.USER_ID], interaction[self.ITEM_ID]
        user_table, item_table = self.propagate()
        h_u, h_i = user_table[users], item_table[items]
        u_target = self.target_view(h_u, users, self.n_users)
        i_target = self.target_view(h_i, items, self.n_items)
        terms = {
            "ui": alignment_loss(self.predictor(h_u), i_target),
            "iu": alignment_loss(self.predictor(h_i), u_target),
            "reg": (user_table[1:].norm() + item_table[1:].norm()) / (self.n_items - 1),
        }
        multimodal, distinct = 0.0, self.distinct_items(items)
        for m in self.modalities:
            h_m = self.projected_features(m, items, self.default_masked, distinct)
            online = self.predictor(h_m)
            terms[f"align_{m}"] = alignment_loss(online, i_target)
            terms[f"mask_{m}"] = alignment_loss(online, self.target_view(h_m, items, self.n_items))
            multimodal = multimodal + terms[f"align_{m}"] + terms[f"mask_{m}"]
        loss = terms["ui"] + terms["iu"] + self.reg_weight * terms["reg"] + self.cl_weight * multimodal
        self.record_terms({**terms, "loss": loss})
        return loss
