"""MVGAE (Yi and Chen, IEEE Transactions on Multimedia 2021): a multi-modal variational graph auto-encoder."""

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from recbole_ckd.model.graphs import spmm
from recbole_ckd.model.multimodal import MultimodalRecommender, l2_per_triple

MAX_LOGVAR = 10.0  # log-variances are clamped to at most this before sampling and in the KL term
PRODUCT_EPS = 1e-8  # added to every expert's variance in the product of experts
NOISE_SCALE = 0.1  # the reparameterisation's noise is scaled down by this factor (the reference's)


def product_of_experts(mus, logvars):
    """The Gaussian product of the experts ``N(mu_k, exp(logvar_k))``: precisions
    ``T_k = 1 / (exp(logvar_k) + eps)`` add, ``mu = sum T_k mu_k / sum T_k``; ``(mu, logvar)``."""
    precisions = [1.0 / (logvar.exp() + PRODUCT_EPS) for logvar in logvars]
    total = sum(precisions)
    mu = sum(p * m for p, m in zip(precisions, mus)) / total
    return mu, -total.log()


def kl_to_standard_normal(mu, logvar):
    """``-0.5 sum_d (1 + logvar - mu^2 - exp(logvar))`` per row, the log-variance clamped."""
    logvar = logvar.clamp(max=MAX_LOGVAR)
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)


def reconstruction_loss(z, users, pos, neg):
    """The reference's ranking reconstruction: with ``s = sigmoid(z)``, the positive score
    ``sigmoid(<s_u, s_i>)`` against the hardest of the batch's negatives,
    ``sigmoid(max_k <s_u, s_{j_k}>)``, as ``-sum log2 sigmoid(pos - neg)`` over the batch
    (``users``, ``pos``, ``neg``: node indices into ``z``)."""
    s = torch.sigmoid(z)
    s_users, s_neg = s[users], s[neg]
    with torch.no_grad():  # the maximum's gradient reaches only its argument: find it, then score that pair alone
        hardest = (s_users @ s_neg.T).argmax(dim=1)
    pos_scores = torch.sigmoid((s_users * s[pos]).sum(dim=1))
    neg_scores = torch.sigmoid((s_users * s_neg[hardest]).sum(dim=1))
    return -torch.log2(torch.sigmoid(pos_scores - neg_scores)).sum()


class GraphEncoder(nn.Module):
    """One modality's variational graph encoder over the user-item graph ``A_hat = D^-1 (A + I)``
    (the mean over a node's neighbours and itself).

    Input ``x = normalize([P; MLP(f)])`` (row-wise L2; ``P`` a fixed random table of user
    preferences, ``MLP`` a biased ``Linear(dim_f, latent_dim)``). A graph convolution is
    ``conv(x) = normalize(A_hat x W + b)``. Per layer ``x = leaky_relu(G(leaky_relu(conv(x))))``
    (the first layer maps ``latent_dim`` to ``dim``, the others ``dim`` to ``dim``), then
    ``mu = G_mu(leaky_relu(conv_mu(x))) + leaky_relu(L_mu(x))`` and likewise ``logvar``.
    """

    def __init__(self, feature_dim, latent_dim, dim, n_users, n_layers):
        super().__init__()
        self.register_buffer("preference", nn.init.xavier_normal_(torch.empty(n_users, latent_dim)))
        self.mlp = nn.Linear(feature_dim, latent_dim)
        sizes = [latent_dim] + [dim] * n_layers
        self.conv = nn.ModuleList([self.graph_conv(a, dim) for a in sizes[:-1]])
        self.gate = nn.ModuleList([nn.Linear(dim, dim) for _ in range(n_layers)])
        self.conv_mu, self.conv_logvar = self.graph_conv(dim, dim), self.graph_conv(dim, dim)
        self.gate_mu, self.gate_logvar = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.self_mu, self.self_logvar = nn.Linear(dim, dim), nn.Linear(dim, dim)
        # the reference's initialisation: the second gate keeps PyTorch's default
        for layer in [self.mlp, self.gate[0], self.gate_mu, self.gate_logvar, self.self_mu, self.self_logvar]:
            nn.init.xavier_normal_(layer.weight)

    @staticmethod
    def graph_conv(in_dim, out_dim):
        """``W`` Xavier-normal, ``b`` uniform in ``+-1/sqrt(in_dim)``."""
        layer = nn.Linear(in_dim, out_dim)
        nn.init.xavier_normal_(layer.weight)
        nn.init.uniform_(layer.bias, -in_dim**-0.5, in_dim**-0.5)
        return layer

    def forward(self, graph, features):
        x = F.normalize(torch.cat([self.preference, self.mlp(features)]), dim=1)

        def conv(layer, x):
            return F.leaky_relu(F.normalize(spmm(graph, x @ layer.weight.T) + layer.bias, dim=1))

        for layer, gate in zip(self.conv, self.gate):
            x = F.leaky_relu(gate(conv(layer, x)))
        mu = self.gate_mu(conv(self.conv_mu, x)) + F.leaky_relu(self.self_mu(x))
        logvar = self.gate_logvar(conv(self.conv_logvar, x)) + F.leaky_relu(self.self_logvar(x))
        return mu, logvar


class MVGAE(MultimodalRecommender):
    """MVGAE: J. Yi, Z. Chen, "Multi-Modal Variational Graph Auto-Encoder for Recommendation
    Systems", IEEE Transactions on Multimedia, 2021.

    Each modality m has a variational graph encoder (:class:`GraphEncoder`) giving a Gaussian
    posterior ``N(mu_m, exp(logvar_m))`` for every user and item node; a collaborative encoder
    of the same form reads a fixed random item table instead of features. The modality
    posteriors are fused by a product of experts, and that product again with the collaborative
    one: ``(mu, logvar) = PoE(PoE(m_1, m_2, ...), c)``. Ranking scores are
    ``<sigmoid(mu_u), sigmoid(mu_i)>``.

    Loss, on a batch of triples ``(u, i, j)``: for the fused posterior and for each expert
    alone (every modality and the collaborative one), a reconstruction term on a sample
    ``z = mu + 0.1 eps exp(logvar / 2)`` (:func:`reconstruction_loss`) plus ``beta`` times the
    KL divergence to ``N(0, I)``, averaged over the real user and item nodes. A CKD student
    keeps every term (:meth:`objective`). The reconstruction scores are sigmoids of dot products
    of sigmoids: at ``embedding_size: 64`` a dot product is near 16.6, where the sigmoid is 1 to
    float32 precision (about a third of the scores are exactly 1.0 at initialisation on
    synth-x01), so the reconstruction's gradient is about a thousandth of the KL terms' there
    and shrinks as the KL terms pull every mean towards 0. In effect the model trains its KL
    terms only and ranks with what the graph propagation of the fixed random inputs leaves,
    which on generated data can rank no better than a random order. The reference computes the
    same loss; it is kept as it is.

    The reference is MMRec's MVGAE, which this reproduces in its default settings (one layer,
    ``embedding_size: 64``, a hidden size of 128, no concatenation, the sigmoid of its
    "amazon" branch, which MMRec always takes): fixed (untrained) random user preferences
    and collaborative item table, Xavier-normal weights with the reference's exceptions, the
    log-variance clamped at 10, the noise scaled by 0.1. Differences, on purpose:

    - MMRec's loss indexes its node table with the raw item ids, which are the first rows of
      the table, the users' (it offsets items by the number of users only when it builds the
      graph), so its reconstruction never reads an item's row while ranking reads only item
      rows; here the items' own rows are used;
    - MMRec's convolutions apply dropout 0.1 to their output in training. It is left out, so
      the forward is deterministic: it is what the student's distillation compares across
      modes, with the same representations as the full-table forward. The only random draws are
      the reparameterisation's (below);
    - MMRec ranks with the tables of its last training batch (so with that batch's dropout);
      here ranking uses the current parameters. Both rank with the posterior mean, never a
      sample (MMRec's sampling step also returns ``mu`` outside training), so evaluation draws
      nothing;
    - MMRec's per-layer self-connection layers feed nothing without concatenation, and are left
      out; ``n_layers`` is honoured for any value >= 1 (MMRec builds two layers at most and
      ignores larger values); any number of modalities is supported; the padding nodes (id 0)
      are left out of the KL mean; a repeated interaction is one edge;
    - the fixed random tables are saved in checkpoints, so a reloaded teacher keeps its own.

    Randomness. Each training step draws the noise of every posterior it samples from a
    generator seeded with the run's ``seed`` and the model's count of training steps, which is
    part of its state (checkpoints, ``state_dict``): a resumed run draws what the
    uninterrupted one did, and the backbone, its student and its balancing variants draw the
    same noise for the same step, whatever else they compute. (The other backbones' draws come
    from torch's global generator, whose state the checkpoints keep; its position within a step
    depends on what else the step drew (a student's distillation triples, a variant's modality
    dropout), so a student's or a variant's backbone terms would not be the backbone's for the
    same state and batch.)

    Masking modality m (docs/method.md, section 2) drops m's factor from the product of
    experts: the fused posterior is the product of the remaining experts, which is how a
    product of experts forms its posterior when a modality is not observed (the collaborative
    expert alone when every modality is masked). The literal rule, m's encoder run on its mean
    features and mean preferences, would keep an expert whose precision was learnt on real
    inputs and which still pulls the product, now towards a posterior that describes no item:
    as for the item graphs of LATTICE and FREEDOM, structure that the features drive (here the
    experts' weighting) is dropped rather than fed with means. The result depends on no part of
    m's encoder or features. A masked modality's own loss terms are left out as well (a
    teacher of another modality does not train m's encoder).
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.dim = int(config["embedding_size"])
        latent_dim = int(config["latent_dim"])
        n_layers = int(config["n_layers"])
        self.beta = float(config["beta"])
        if n_layers < 1 or self.beta < 0:
            raise ValueError(f"MVGAE needs n_layers >= 1 and beta >= 0, got {n_layers} and {self.beta}.")
        self.seed = int(config["seed"])
        self.training_steps = 0

        def encoder(feature_dim):
            return GraphEncoder(feature_dim, latent_dim, self.dim, self.n_users, n_layers)

        self.encoders = nn.ModuleDict({m: encoder(self.feature_dim(m)) for m in self.modalities})
        self.collaborative = encoder(self.dim)
        self.register_buffer("collaborative_items", nn.init.xavier_normal_(torch.empty(self.n_items, self.dim)))
        self.register_buffer("graph", self.bipartite_adjacency(dataset, "mean", self_loops=True), persistent=False)
        real = torch.ones(self.n_users + self.n_items, dtype=torch.bool)
        real[[0, self.n_users]] = False  # the padding user and item
        self.register_buffer("_real_nodes", real, persistent=False)

    # ------------------------------------------------------------ state
    def get_extra_state(self):
        return torch.tensor(self.training_steps)

    def set_extra_state(self, state):
        self.training_steps = int(state)

    # ------------------------------------------------------------ representations
    def posteriors(self, names, memo):
        """``memo[name] = (mu, logvar)`` over all nodes for every expert ``name`` (a modality or
        ``"c"``), each encoder run once."""
        for name in names:
            if name not in memo:
                if name == "c":
                    memo[name] = self.collaborative(self.graph, self.collaborative_items)
                else:
                    memo[name] = self.encoders[name](self.graph, self.feature(name))
        return [memo[name] for name in names]

    def fused(self, masked, memo):
        """The product posterior ``(mu, logvar)`` with the ``masked`` modalities' experts left out."""
        experts = self.posteriors([m for m in self.modalities if m not in masked], memo)
        (collaborative,) = self.posteriors(["c"], memo)
        outer = [product_of_experts(*zip(*experts)), collaborative] if experts else [collaborative]
        return product_of_experts(*zip(*outer))

    def forward(self, masked=frozenset()):
        return torch.sigmoid(self.fused(masked, {})[0]).split([self.n_users, self.n_items])

    def batch_representations_modes(self, users, items, modes, memo=None):
        memo, result = {} if memo is None else memo, {}
        for name, masked in modes.items():
            user_reps, item_reps = torch.sigmoid(self.fused(masked, memo)[0]).split([self.n_users, self.n_items])
            result[name] = (user_reps[users], item_reps[items])
        return result

    # ------------------------------------------------------------ training
    def noise_generator(self, device):
        """This training step's generator on ``device``, seeded with the run's seed and the step count."""
        digest = hashlib.blake2b(f"MVGAE/{self.seed}/{self.training_steps}".encode(), digest_size=8).digest()
        return torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little") >> 1)

    def objective(self, interaction, step):
        """For the fused posterior, each unmasked modality's and the collaborative one: the
        reconstruction of a sample and ``beta`` times the KL term; ``reg_weight``'s L2 (0 by default)."""
        users, pos, neg = self.batch_triples(interaction)
        pos, neg = pos + self.n_users, neg + self.n_users
        generator = self.noise_generator(users.device)
        self.training_steps += 1
        active = [m for m in self.modalities if m not in self.default_masked]
        posteriors = {"fused": self.fused(self.default_masked, step.memo)}
        posteriors.update(zip(active + ["c"], self.posteriors(active + ["c"], step.memo)))
        terms = {}
        for name, (mu, logvar) in posteriors.items():
            noise = torch.randn(mu.shape, generator=generator, device=mu.device)
            z = mu + NOISE_SCALE * noise * (0.5 * logvar.clamp(max=MAX_LOGVAR)).exp()
            suffix = "" if name == "fused" else f"_{name}"
            terms[f"recon{suffix}"] = reconstruction_loss(z, users, pos, neg)
            terms[f"kl{suffix}"] = self.beta * kl_to_standard_normal(mu, logvar)[self._real_nodes].mean()
        terms["l2"] = self.reg_weight * l2_per_triple(*step.joint)
        return terms
