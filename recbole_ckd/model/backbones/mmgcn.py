"""MMGCN (Wei et al., ACM MM 2019): one graph branch per modality over the user-item graph."""

import torch
import torch.nn.functional as F
from torch import nn

from recbole_ckd.model.graphs import spmm
from recbole_ckd.model.multimodal import MultimodalRecommender


class ModalityGraphBranch(nn.Module):
    """One modality's branch: its user preferences and projected item features, propagated
    over the user-item graph ``A_hat`` for ``n_layers`` layers of size ``dim``.

    Input ``x = normalize([P; W f + b])`` (row-wise L2), then per layer ``l``:
    ``h = leaky_relu(A_hat conv_l(x))`` (neighbourhood aggregation of transformed nodes),
    ``x_hat = leaky_relu(linear_l(x)) + e`` (the node's own signal plus the shared ID embedding)
    and ``x = leaky_relu(gate_l(h) + x_hat)``; every layer is a biased ``Linear(dim, dim)``.
    """

    def __init__(self, feature_dim, dim, n_users, n_layers, train_preference):
        super().__init__()
        self.projection = nn.Linear(feature_dim, dim)
        preference = nn.init.xavier_normal_(torch.empty(n_users, dim))
        if train_preference:
            self.user_preference = nn.Parameter(preference)
        else:  # the reference's: a fixed random table (kept in checkpoints, so a teacher reloads it)
            self.register_buffer("user_preference", preference)
        self.conv = nn.ModuleList([nn.Linear(dim, dim) for _ in range(n_layers)])
        self.linear = nn.ModuleList([nn.Linear(dim, dim) for _ in range(n_layers)])
        self.gate = nn.ModuleList([nn.Linear(dim, dim) for _ in range(n_layers)])

    def forward(self, graph, features, masked, id_embedding, n_items):
        if masked:
            # affine projection: project the mean feature once; users get their mean preference
            items = self.projection(features).expand(n_items, -1)
            users = self.user_preference[1:].mean(dim=0, keepdim=True).expand_as(self.user_preference)
        else:
            items = self.projection(features)
            users = self.user_preference
        x = F.normalize(torch.cat([users, items], dim=0), dim=1)
        for conv, linear, gate in zip(self.conv, self.linear, self.gate):
            h = F.leaky_relu(spmm(graph, conv(x)))
            x_hat = F.leaky_relu(linear(x)) + id_embedding
            x = F.leaky_relu(gate(h) + x_hat)
        return x


class MMGCN(MultimodalRecommender):
    """MMGCN: a graph branch per modality, averaged into one representation per node.

    Each branch (:class:`ModalityGraphBranch`) propagates its modality's signal over the
    user-item training graph with self loops, row-normalised (``D^-1 (A + I)``), with an ID
    embedding ``e = [e_U; e_I]`` shared by all branches and added at every layer; the user and
    item representations are the mean of the branch outputs, scored by dot product. Loss: BPR
    plus L2 on the batch representations (the base class's ``objective``).

    The reference is the CKD authors' MMGCN, which this reproduces by default: item features
    projected by a biased linear layer to ``embedding_size`` (64), L2-normalised branch inputs,
    three layers (``n_layers: 3``; the reference hard-codes three), biased ``Linear(64, 64)``
    convolution, self and gate layers with PyTorch's default initialisation, Xavier-uniform ID
    embeddings, Xavier-normal user preferences, the "add" combination of neighbourhood and own
    signal, the output of the last layer. Differences, on purpose:

    - the per-modality user preferences are trained parameters. In the reference they are plain
      tensors: never trained, never saved, and drawn anew when a teacher is reloaded.
      ``train_preference: False`` reproduces the first two (a fixed random table; it is saved
      here, so a reloaded teacher keeps the table it was trained with);
    - ``n_layers`` is honoured (the reference, and MMRec's MMGCN, ignore it).

    MMRec's MMGCN differs from both (concatenation of neighbourhood and own signal, a 256-d
    image projection and raw text features, no self loops); it is not reproduced.

    Masking modality m replaces m's item features by their mean (projected once) and m's user
    preferences by their mean over users, as the reference does; the branch still propagates
    (it still carries the ID embedding and the graph), but no item-specific information of m.
    """

    reference_code = "the CKD authors' code"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        size = config["embedding_size"]
        n_layers = int(config["n_layers"])
        if n_layers < 1:
            raise ValueError(f"MMGCN needs n_layers >= 1, got {n_layers}.")
        user_embedding = nn.init.xavier_uniform_(torch.empty(self.n_users, size))
        item_embedding = nn.init.xavier_uniform_(torch.empty(self.n_items, size))
        self.id_embedding = nn.Parameter(torch.cat([user_embedding, item_embedding]))
        self.branches = nn.ModuleDict(
            {
                m: ModalityGraphBranch(self.feature_dim(m), size, self.n_users, n_layers, config["train_preference"])
                for m in self.modalities
            }
        )
        self.register_buffer("graph", self.bipartite_adjacency(dataset, "mean", self_loops=True), persistent=False)

    def _branch(self, m, masked):
        features = self.feature_mean(m) if masked else self.feature(m)
        return self.branches[m](self.graph, features, masked, self.id_embedding, self.n_items)

    def _combine(self, outputs, masked):
        representation = torch.stack([outputs[m, m in masked] for m in self.modalities]).mean(dim=0)
        return representation.split([self.n_users, self.n_items])

    def forward(self, masked=frozenset()):
        return self._combine({(m, m in masked): self._branch(m, m in masked) for m in self.modalities}, masked)

    def batch_representations_modes(self, users, items, modes, memo=None):
        # a branch's output depends only on whether its own modality is masked: compute each
        # (modality, masked) state once for all modes
        states = {(m, m in masked) for masked in modes.values() for m in self.modalities}
        outputs = {state: self._branch(*state) for state in states}
        result = {}
        for name, masked in modes.items():
            user_reps, item_reps = self._combine(outputs, masked)
            result[name] = (user_reps[users], item_reps[items])
        return result
