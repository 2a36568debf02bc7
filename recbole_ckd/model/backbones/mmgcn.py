"""MMGCN (Wei et al., ACM MM 2019): one graph branch per modality over the user-item graph."""

import torch
import torch.nn.functional as F
from torch import nn

from recbole_ckd.model.graphs import spmm
from recbole_ckd.model.multimodal import MultimodalRecommender


class ModalityGraphBranch(nn.Module):
    """One modality's branch: its user preferences and projected item features, propagated
    over the user-item graph for ``n_layers`` layers.

    Per layer: ``h = leaky_relu(A (x W))`` (neighbourhood aggregation) and
    ``x_hat = leaky_relu(L x) + id_embedding`` (the node's own signal plus the shared ID
    embedding), combined as ``x = leaky_relu(G h + x_hat)``.
    """

    def __init__(self, feature_dim, latent_dim, embedding_size, n_users, n_layers):
        super().__init__()
        self.projection = nn.Linear(feature_dim, latent_dim)
        # the per-modality user preference: a trained parameter (the reference left it a plain tensor)
        self.user_preference = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, latent_dim)))
        dims = [latent_dim] + [embedding_size] * n_layers
        self.conv = nn.ParameterList(
            [nn.Parameter(nn.init.xavier_normal_(torch.empty(dims[k], dims[k]))) for k in range(n_layers)]
        )
        self.linear = nn.ModuleList([nn.Linear(dims[k], embedding_size) for k in range(n_layers)])
        self.gate = nn.ModuleList([nn.Linear(dims[k], embedding_size) for k in range(n_layers)])

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
            h = F.leaky_relu(spmm(graph, x @ conv))
            x_hat = F.leaky_relu(linear(x)) + id_embedding
            x = F.leaky_relu(gate(h) + x_hat)
        return x


class MMGCN(MultimodalRecommender):
    """MMGCN: a graph branch per modality, averaged into one representation per node.

    Each branch propagates its modality's signal over the user-item training graph (mean
    aggregation), with an ID embedding shared by all branches; the final user and item
    representations are the mean of the branch outputs, scored by dot product.

    Choices the paper leaves open (as in MMRec): items' raw features pass an affine projection
    to ``latent_dim`` first; mean aggregation; the gated sum (not concatenation) of neighbourhood
    and own signal; BPR with L2 on the batch representations.

    Masking modality m replaces m's item features by their mean (projected once) and m's user
    preferences by their mean over users; the branch still propagates, but carries no
    item-specific information of m.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        size = config["embedding_size"]
        self.id_embedding = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users + self.n_items, size)))
        self.branches = nn.ModuleDict(
            {
                m: ModalityGraphBranch(self.feature_dim(m), config["latent_dim"], size, self.n_users, config["n_layers"])
                for m in self.modalities
            }
        )
        self.register_buffer("graph", self.bipartite_adjacency(dataset, "mean"), persistent=False)

    def _branch(self, m, masked):
        features = self.feature_mean(m) if masked else self.feature(m)
        return self.branches[m](self.graph, features, masked, self.id_embedding, self.n_items)

    def _combine(self, outputs, masked):
        representation = torch.stack([outputs[m, m in masked] for m in self.modalities]).mean(dim=0)
        return representation.split([self.n_users, self.n_items])

    def forward(self, masked=frozenset()):
        return self._combine({(m, m in masked): self._branch(m, m in masked) for m in self.modalities}, masked)

    def batch_representations_modes(self, users, items, modes):
        # a branch's output depends only on whether its own modality is masked: compute each
        # (modality, masked) state once for all modes
        states = {(m, m in masked) for masked in modes.values() for m in self.modalities}
        outputs = {state: self._branch(*state) for state in states}
        result = {}
        for name, masked in modes.items():
            user_reps, item_reps = self._combine(outputs, masked)
            result[name] = (user_reps[users], item_reps[items])
        return result
