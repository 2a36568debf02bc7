"""ItemKNNCBF (Dacrema et al., RecSys 2019): content-based item kNN, the non-neural baseline of
"Are We Really Making Much Progress? A Worrying Analysis of Recent Neural Recommendation Approaches"."""

import torch
from torch import nn

from recbole_ckd.model import graphs
from recbole_ckd.model.multimodal import MultimodalRecommender


class ItemKNNCBF(MultimodalRecommender):
    """ItemKNNCBF: a user's score for an item sums the item's content similarity to the items the
    user interacted with in training. Nothing is learnt.

    With ``x_i`` the concatenation of item ``i``'s features over all modalities (MMRec concatenates
    image then text; the cosine does not depend on the order):

    - shrunk cosine ``sim(i, j) = <x_i, x_j> / (|x_i| |x_j| + shrink)``;
    - ``S[i, j] = sim(i, j)`` if ``j`` is among the ``knn_k`` most similar items of ``i`` (itself
      included when it ranks there), else 0;
    - ``score(u, j) = sum_i R[u, i] S[i, j]``, ``R`` the 0/1 training interactions.

    In the dot-product form of every backbone, :meth:`forward` returns the score table ``R S`` as
    the user table and the identity as the item table; :meth:`full_sort_predict` and
    :meth:`predict` read the user table directly (the product with the identity, skipped).

    Masking modality m (docs/method.md, section 2): m's features are replaced by their mean over
    all items before the similarities are computed, so ``S`` (and every score) then depends on
    the other modalities' features only; with every modality masked all items are alike.

    Nothing to train (``trains = False``): the score depends on no parameter. The trainer runs
    its epochs over a constant zero loss on a placeholder parameter (it needs one to build its
    optimizer), so ``properties/model/ItemKNNCBF.yaml`` sets ``epochs: 1`` as MMRec does. There
    is therefore nothing for a CKD student or a balancing baseline to change: ``ItemKNNCBF_CKD``,
    ``ItemKNNCBF_MDrop`` and ``ItemKNNCBF_OGMGE`` are refused.

    Differences from MMRec's code: the padding item (id 0) is nobody's neighbour (MMRec has no
    padding item; with it, a zero row would take a neighbour slot from items of negative
    similarity); a repeated interaction counts once (MMRec sums duplicates, which its datasets
    do not have); masking, as above (MMRec has none).
    """

    trains = False

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.knn_k = config["knn_k"]
        self.shrink = config["shrink"]
        if not (isinstance(self.knn_k, int) and 1 <= self.knn_k <= self.n_items - 1):
            raise ValueError(f"knn_k is {self.knn_k!r}; it must be an integer from 1 to the number of "
                             f"items ({self.n_items - 1}).")
        if not (isinstance(self.shrink, (int, float)) and self.shrink >= 0):
            raise ValueError(f"shrink is {self.shrink!r}; it must be a number >= 0.")
        users, items = graphs.interaction_edges(dataset)
        interactions = torch.sparse_coo_tensor(torch.stack([users, items]), torch.ones(len(users)),
                                               (self.n_users, self.n_items)).coalesce()
        self.register_buffer("_interactions", interactions, persistent=False)
        self.placeholder = nn.Parameter(torch.zeros(1))  # the trainer's optimizer needs a parameter
        # the fixed features make every S constant: each masking's neighbours are found once, at its
        # first use (MMRec too computes its S once, when the model is built)
        self._neighbours = {}

    def similarity(self, masked=frozenset()):
        """``S`` ``[n_items, n_items]``: each item's ``knn_k`` nearest items by shrunk cosine."""
        key = (frozenset(masked), self.placeholder.device)  # the model may have moved since
        if key not in self._neighbours:
            self._neighbours[key] = self.nearest(masked)
        values, neighbours = self._neighbours[key]
        return torch.zeros(self.n_items, self.n_items, device=values.device).scatter_(1, neighbours, values)

    def nearest(self, masked):
        """``(similarities, items)`` ``[n_items, knn_k]``: each item's ``knn_k`` nearest items."""
        features = torch.cat([
            self.feature_mean(m).expand_as(self.feature(m)) if m in masked else self.feature(m)
            for m in self.modalities
        ], dim=1)
        norms = features.norm(dim=1, keepdim=True)
        sim = (features @ features.T) / (norms * norms.T + self.shrink)
        sim[:, 0] = float("-inf")  # the padding item
        return sim.topk(self.knn_k, dim=1)

    def forward(self, masked=frozenset()):
        scores = torch.sparse.mm(self._interactions, self.similarity(masked))
        return scores, torch.eye(self.n_items, device=scores.device)

    def calculate_loss(self, interaction):
        loss = 0.0 * self.placeholder.sum()
        self.record_terms({"loss": loss})
        return loss

    def predict(self, interaction):
        scores, _ = self.eval_tables()
        return scores[interaction[self.USER_ID], interaction[self.ITEM_ID]]

    def full_sort_predict(self, interaction):
        scores, _ = self.eval_tables()
        return scores[interaction[self.USER_ID]].reshape(-1)
