"""VBPR (He and McAuley, AAAI 2016) with one branch per modality."""

import torch
from torch import nn

from recbole_ckd.model.multimodal import MultimodalRecommender, TrainingPass


class VBPR(MultimodalRecommender):
    """Late fusion: ``score(u, i) = <g_u, g_i> + sum_m <theta_u^m, E_m f_i^m>``.

    Each modality m has its own user preference ``theta^m`` (``modality_embedding_size``) and
    its own affine projection ``E_m`` of the item features, so the representations are the
    concatenations ``[g_u; theta_u^v; theta_u^t]`` and ``[g_i; E_v f_i^v; E_t f_i^t]``.
    Loss: BPR plus L2 on the batch representations (the base class's ``objective``).

    As the CKD authors' VBPR (the reference for this backbone): every block has the same size
    by default (``modality_embedding_size: ~`` means ``embedding_size``: 64 / 64 / 64, so
    192-d vectors), no bias terms in the score, one projection with a bias per modality
    (PyTorch's default initialisation), Xavier-uniform embeddings and user preferences, raw
    features as they are. Differences: none in the model; ``modality_embedding_size`` may be
    set to another size.

    Masking modality m puts the mean user preference and the projection of the mean feature in
    m's slot, so m then adds the same constant to every user-item score: it cancels in every
    margin, and the item-specific information of m is gone.
    """

    reference_code = "the CKD authors' code"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        dim = config["embedding_size"]
        modality_dim = config["modality_embedding_size"] or dim
        self.user_id_embedding = nn.Embedding(self.n_users, dim)
        self.item_id_embedding = nn.Embedding(self.n_items, dim)
        self.user_preference = nn.ModuleDict({m: nn.Embedding(self.n_users, modality_dim) for m in self.modalities})
        self.projection = nn.ModuleDict({m: nn.Linear(self.feature_dim(m), modality_dim) for m in self.modalities})
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.xavier_uniform_(module.weight)

    def _parts(self, users, items, masked_anywhere):
        """Every slot once: ID parts, and per modality its real and (where needed) mean parts."""
        all_users, all_items = users is None, items is None
        n_users = self.n_users if all_users else len(users)
        n_items = self.n_items if all_items else len(items)
        parts = {
            "user_id": self.user_id_embedding.weight if all_users else self.user_id_embedding(users),
            "item_id": self.item_id_embedding.weight if all_items else self.item_id_embedding(items),
        }
        if not all_items:
            # project each distinct item once (a batch repeats items; CKD's extra triples more so)
            distinct = self.distinct_items(items)
        for m in self.modalities:
            weight = self.user_preference[m].weight
            parts[("user", m)] = weight if all_users else weight[users]
            if all_items:
                parts[("item", m)] = self.projection[m](self.feature(m))
            else:
                parts[("item", m)] = self.project_rows(self.projection[m], self.feature(m), items, distinct)
            if m in masked_anywhere:
                # affine projection: project the mean once instead of a tiled mean matrix
                parts[("user_mean", m)] = self.user_mean(weight).expand(n_users, -1)
                parts[("item_mean", m)] = self.projection[m](self.feature_mean(m)).expand(n_items, -1)
        return parts

    @staticmethod
    def _assemble(parts, modalities, masked):
        user = [parts["user_id"]] + [parts[("user_mean" if m in masked else "user", m)] for m in modalities]
        item = [parts["item_id"]] + [parts[("item_mean" if m in masked else "item", m)] for m in modalities]
        return torch.cat(user, dim=1), torch.cat(item, dim=1)

    def forward(self, masked=frozenset()):
        return self._assemble(self._parts(None, None, masked), self.modalities, masked)

    def batch_representations(self, users, items, masked=frozenset()):
        return self._assemble(self._parts(users, items, masked), self.modalities, masked)

    def batch_representations_modes(self, users, items, modes, memo=None):
        parts = self._parts(users, items, frozenset().union(*modes.values()))
        return {name: self._assemble(parts, self.modalities, masked) for name, masked in modes.items()}

    def triple_margins(self, users, pos, neg, modes, joint_rows=None):
        """Margins as sums of branch margins, every branch computed once for all modes.

        A masked branch contributes exactly nothing to a margin (its item part is the same
        vector for both items), so a mode's margin is the ID margin plus the margins of its
        unmasked branches; the joint representations come from the same parts, assembled for
        the first ``joint_rows`` triples only.
        """
        n = len(pos)
        joint_masked = modes.get("joint")
        parts = self._parts(users, torch.cat([pos, neg]), joint_masked or frozenset())

        def branch_margin(user, item):
            return (user * (item[:n] - item[n:])).sum(dim=-1)

        id_margin = branch_margin(parts["user_id"], parts["item_id"])
        branch = {m: branch_margin(parts[("user", m)], parts[("item", m)]) for m in self.modalities}
        margins = {
            name: id_margin + sum(branch[m] for m in self.modalities if m not in masked) for name, masked in modes.items()
        }
        if joint_masked is None:
            return TrainingPass(margins, None, {})
        k = n if joint_rows is None else joint_rows

        def rows(key, part):  # user parts have a row per triple, item parts one per pos and per neg
            user_side = (key if isinstance(key, str) else key[0]).startswith("user")
            return part[:k] if user_side else torch.cat([part[:k], part[n : n + k]])

        user_reps, item_reps = self._assemble({key: rows(key, part) for key, part in parts.items()}, self.modalities,
                                              joint_masked)
        return TrainingPass(margins, (user_reps, item_reps[:k], item_reps[k:]), {})
