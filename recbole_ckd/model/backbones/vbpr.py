"""VBPR (He and McAuley, AAAI 2016) with one branch per modality."""

import torch
from torch import nn

from recbole_ckd.model.multimodal import MultimodalRecommender


class VBPR(MultimodalRecommender):
    """Late fusion: ``score(u, i) = <g_u, g_i> + sum_m <theta_u^m, E_m f_i^m>``.

    Each modality m has its own user preference ``theta^m`` (``modality_embedding_size``) and
    its own affine projection ``E_m`` of the item features, so the representations are the
    concatenations ``[g_u; theta_u^v; theta_u^t]`` and ``[g_i; E_v f_i^v; E_t f_i^t]``.
    Choices the paper leaves open: no bias terms (as in MMRec), projections with a bias, Xavier
    initialisation.

    Masking modality m puts the mean user preference and the projection of the mean feature in
    m's slot, so m then adds the same constant to every user-item score: it cancels in every
    margin, and the item-specific information of m is gone.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        dim, modality_dim = config["embedding_size"], config["modality_embedding_size"]
        self.user_id_embedding = nn.Embedding(self.n_users, dim)
        self.item_id_embedding = nn.Embedding(self.n_items, dim)
        self.user_preference = nn.ModuleDict({m: nn.Embedding(self.n_users, modality_dim) for m in self.modalities})
        self.projection = nn.ModuleDict({m: nn.Linear(self.feature_dim(m), modality_dim) for m in self.modalities})
        for module in self.modules():
            if isinstance(module, (nn.Embedding, nn.Linear)):
                nn.init.xavier_normal_(module.weight)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def _user_parts(self, users, masked):
        parts = [self.user_id_embedding.weight if users is None else self.user_id_embedding(users)]
        n = self.n_users if users is None else len(users)
        for m in self.modalities:
            weight = self.user_preference[m].weight
            if m in masked:
                parts.append(self.user_mean(weight).expand(n, -1))
            else:
                parts.append(weight if users is None else weight[users])
        return torch.cat(parts, dim=1)

    def _item_parts(self, items, masked):
        parts = [self.item_id_embedding.weight if items is None else self.item_id_embedding(items)]
        n = self.n_items if items is None else len(items)
        for m in self.modalities:
            if m in masked:
                # affine projection: project the mean once instead of a tiled mean matrix
                parts.append(self.projection[m](self.feature_mean(m)).expand(n, -1))
            else:
                features = self.feature(m) if items is None else self.feature(m)[items]
                parts.append(self.projection[m](features))
        return torch.cat(parts, dim=1)

    def forward(self, masked=frozenset()):
        return self._user_parts(None, masked), self._item_parts(None, masked)

    def batch_representations(self, users, items, masked=frozenset()):
        return self._user_parts(users, masked), self._item_parts(items, masked)
