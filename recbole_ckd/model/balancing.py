"""Modality-balancing baselines as plug-ins over ``forward(masked)``, for every backbone.

Like ``<Backbone>_CKD``, each is a mixin over the backbone, derived by :func:`make_balanced_model`:

- ``<Backbone>_MDrop``, modality dropout (ModDrop: Neverova, Wolf, Taylor and Nebout, "ModDrop:
  adaptive multi-modal gesture recognition", TPAMI 2016): a training triple (or the whole batch,
  ``mdrop_unit: batch``) has each modality masked independently with probability ``mdrop_prob``,
  one kept when all are drawn (``mdrop_rule: independent``), or one modality, drawn uniformly,
  masked with that probability (``mdrop_rule: one_of``, the earlier rule); the backbone's own
  objective is trained on those margins.
- ``<Backbone>_OGMGE``, on-the-fly gradient modulation with generalisation enhancement (Peng,
  Wei, Deng, Wang and Hu, "Balanced Multimodal Learning via On-the-fly Gradient Modulation",
  CVPR 2022), adapted to pairwise ranking: the gradients of the dominant modality's encoder
  weights are damped by how much its "only m" mode out-ranks the others', plus Gaussian noise.
- ``<Backbone>_MMPareto`` (Wei and Hu, "MMPareto: Boosting Multimodal Learning with Innocent
  Unimodal Assistance", ICML 2024), adapted to pairwise ranking: the joint loss and each "only m"
  BPR loss, their gradients combined per parameter group by MMPareto's rule.

All rank with every modality at inference, exactly like the backbone. docs/method.md, section 9.
"""

import functools
import itertools

import torch
import torch.nn.functional as F

from recbole_ckd.model.multimodal import EpochStats, TrainingPass, bpr


def balancing_refusal(variant, backbone):
    return (
        f"{variant} cannot be built: {backbone} ranks with ID embeddings only at inference, so masking a modality "
        "changes nothing there and there is no modality to balance. Use the plain backbone instead."
    )


def untrained_refusal(variant, backbone):
    return (
        f"{variant} cannot be built: {backbone} has nothing to train (its scores follow from the training "
        "interactions and the features), so there is nothing for distillation or modality balancing to change. "
        "Use the plain backbone instead."
    )


def modulation_refusal(variant, backbone):
    return (
        f"{variant} cannot be built: {backbone} has no parameters of a single modality (it reads its features "
        "only to build graphs), so OGM-GE has no gradients to modulate. Use the plain backbone, its _MDrop or its _CKD variant."
    )


class BalancingMixin:
    """What every method that balances a backbone's modalities shares (the two baselines here
    and the CKD student): two or more modalities, all of them active, its own properties file
    after the backbone's, epoch statistics of its own."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if len(self.modalities) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least two modalities to balance; the dataset has {list(self.modalities)}."
            )
        if self.default_masked:
            raise ValueError(f"{type(self).__name__} balances all modalities; do not set active_modalities.")
        self.balancing_stats = EpochStats()

    @classmethod
    def config_names(cls):
        return [cls.backbone.__name__, cls.__name__]

    def pop_epoch_stats(self):
        return {**super().pop_epoch_stats(), **self.balancing_stats.pop()}


# ----------------------------------------------------------------------------- modality dropout
def dropped_modalities(n_triples, n_modalities, prob, unit="triple", rule="independent", generator=None, device=None):
    """``[n_triples, n_modalities]``, True where a triple's modality is masked.

    ``rule="independent"`` (ModDrop): each modality is masked with probability ``prob`` on its
    own; a draw that masks every modality keeps one of them, drawn uniformly, so a modality is
    masked with probability ``prob - prob^M / M``. ``rule="one_of"``: with probability ``prob``
    one modality, drawn uniformly, is masked. ``unit="batch"``: one draw for all triples."""
    draws = n_triples if unit == "triple" else 1
    if rule == "independent":
        dropped = torch.rand(draws, n_modalities, generator=generator, device=device) < prob
        kept = torch.randint(n_modalities, (draws,), generator=generator, device=device)
        keep_one = dropped.all(dim=1, keepdim=True) & F.one_hot(kept, n_modalities).bool()
        dropped = dropped & ~keep_one
    else:
        masked = torch.rand(draws, generator=generator, device=device) < prob
        which = torch.randint(n_modalities, (draws,), generator=generator, device=device)
        dropped = F.one_hot(which, n_modalities).bool() & masked[:, None]
    return dropped.expand(n_triples, -1)


class ModalityDropoutMixin(BalancingMixin):
    """The backbone trained with modalities masked at random (per triple or per batch, rule
    ``mdrop_rule``: :func:`dropped_modalities`)."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.mdrop_prob, self.mdrop_unit, self.mdrop_rule = config["mdrop_prob"], config["mdrop_unit"], config["mdrop_rule"]
        # every masked set the rule can draw, by its bit code (bit k: modality k masked); never all of them
        n = len(self.modalities)
        codes = [1 << k for k in range(n)] if self.mdrop_rule == "one_of" else range(1, (1 << n) - 1)
        self.dropout_modes = {0: frozenset(), **{
            code: frozenset(m for k, m in enumerate(self.modalities) if code >> k & 1) for code in codes
        }}

    @classmethod
    def describe(cls, config):
        rule = {"independent": "ModDrop's rule, each modality dropped independently (one kept when all are drawn)",
                "one_of": "one-of rule, one random modality dropped"}[config["mdrop_rule"]]
        return (f"modality dropout (ModDrop, Neverova et al., TPAMI 2016), {rule}, p = {config['mdrop_prob']:.4g} per "
                f"{config['mdrop_unit']}")

    def dropped_modalities(self, n_triples):
        return dropped_modalities(n_triples, len(self.modalities), self.mdrop_prob, self.mdrop_unit, self.mdrop_rule,
                                  device=self.device)

    def training_pass(self, interaction):
        """The backbone's step with each triple's margin taken from its drawn mode; the terms
        that read the representations (L2, auxiliary losses) see the unmasked forward."""
        if self.mdrop_prob == 0:  # exactly the backbone, no random draws
            return super().training_pass(interaction)
        triples = self.batch_triples(interaction)
        modes = {"joint" if not masked else "without_" + "_".join(sorted(masked)): masked
                 for masked in self.dropout_modes.values()}
        step = self.triple_margins(*triples, modes)
        dropped = self.dropped_modalities(len(triples[0]))
        code = (dropped.long() << torch.arange(len(self.modalities), device=dropped.device)).sum(dim=1)
        row = torch.full((1 << len(self.modalities),), -1, dtype=torch.long, device=dropped.device)
        row[list(self.dropout_modes)] = torch.arange(len(modes), device=dropped.device)
        stacked = torch.stack([step.margins[name] for name in modes])  # [modes, B], in dropout_modes' order
        margins = stacked.gather(0, row[code][None]).squeeze(0)
        self.balancing_stats.add({"masked_share": dropped.any(dim=1).float().mean(),
                                  **{f"masked_{m}": dropped[:, k].float().mean() for k, m in enumerate(self.modalities)}})
        return TrainingPass({**step.margins, "joint": margins}, step.joint, step.memo)


# ----------------------------------------------------------------------------- OGM-GE
def modulation_coefficients(scores, alpha):
    """OGM's ``k_m``: ``1 - tanh(alpha * rho_m)`` for a modality whose score exceeds the mean score
    of the others (``rho_m > 1``), else 1. ``scores`` ``[M]``; for M = 2 this is the paper's rule."""
    n = len(scores)
    others = (scores.sum() - scores) / (n - 1)
    ratio = scores / others
    return torch.where(ratio > 1, 1 - torch.tanh(alpha * ratio), torch.ones_like(ratio)), ratio


class GradientModulationMixin(BalancingMixin):
    """OGM-GE for pairwise ranking (refused for a backbone without modality parameters).

    A modality's score is ``s_m = sum_batch sigmoid(d_only_m)``, the probability mass with
    which its "only m" mode ranks the positive item first (OGM's per-modality confidence in
    the true class); ``rho_m = s_m / mean_{k != m} s_k``. During epochs ``ogm_epochs`` (inclusive)
    the gradient ``g`` of each modulated parameter of modality ``m`` becomes ``k_m * g``, plus
    ``N(0, (std(g) + 1e-8)^2)`` with ``ogm_noise`` (GE), drawn for every entry of that tensor at
    every modulated step and added to every modality's modulated parameters (``k_m = 1`` or not),
    as the authors' code does.

    Which parameters, ``ogm_scope``: ``encoders`` (the paper): the weight tensors (two or more
    dimensions) of the modality's dense encoder layers (:meth:`modality_encoders`), as the
    authors' code modulates the kernels of each modality's encoder and leaves its 1-d
    parameters, the fusion and the classifier alone; never an ID or feature table, whose
    gradient covers only a batch's rows (noise drawn over the whole table would move every row
    at every step). ``all`` (the rule before this key): every parameter of the modality
    (:meth:`modality_parameters`), tables included. Shared parameters (ID embeddings, fusion
    weights) are never touched.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.ogm_alpha, self.ogm_noise = config["ogm_alpha"], config["ogm_noise"]
        self.ogm_epochs = tuple(int(e) for e in config["ogm_epochs"])
        self.coefficients = None  # {m: k_m} of the current step while modulating
        self.epoch = 0
        for m, params in self.modulated_parameters(config["ogm_scope"]).items():
            if not params:
                raise ValueError(f"{type(self).__name__}: {self.backbone.__name__} declares no parameters of modality "
                                 f"'{m}' for ogm_scope={config['ogm_scope']}.")
            for param in params:
                param.register_hook(functools.partial(self._modulate, m))

    @classmethod
    def describe(cls, config):
        scope = {"encoders": "on each modality's dense encoder weights",
                 "all": "on every parameter of a modality, ID and feature tables included"}[config["ogm_scope"]]
        first, last = config["ogm_epochs"]
        name = "OGM-GE" if config["ogm_noise"] else "OGM without GE"
        return (f"on-the-fly gradient modulation ({name}, Peng et al., CVPR 2022) {scope}, alpha {config['ogm_alpha']:.4g}, "
                f"epochs {first}-{last}")

    def modulated_parameters(self, scope):
        """``{m: [parameters]}`` that ``ogm_scope`` modulates."""
        if scope == "all":
            return self.modality_parameters()
        return {m: [p for p in params if p.dim() >= 2] for m, params in self.modality_encoders().items()}

    def pre_epoch(self, epoch):
        parent = getattr(super(), "pre_epoch", None)
        if parent is not None:
            parent(epoch)
        self.epoch = epoch

    def modulating(self):
        first, last = self.ogm_epochs
        return self.training and first <= self.epoch <= last

    def training_pass(self, interaction):
        if not self.modulating():
            self.coefficients = None
            return super().training_pass(interaction)
        modes = {"joint": frozenset(), **{f"only_{m}": self.only(m) for m in self.modalities}}
        step = self.triple_margins(*self.batch_triples(interaction), modes)
        scores = torch.stack([torch.sigmoid(step.margins[f"only_{m}"].detach()).sum() for m in self.modalities])
        coefficients, ratios = modulation_coefficients(scores, self.ogm_alpha)
        self.coefficients = dict(zip(self.modalities, coefficients))
        self.balancing_stats.add({**{f"k_{m}": k for m, k in self.coefficients.items()},
                                  **{f"rho_{m}": r for m, r in zip(self.modalities, ratios)}})
        return step

    def _modulate(self, modality, grad):
        if self.coefficients is None:
            return grad
        modulated = grad * self.coefficients[modality]
        if self.ogm_noise and grad.numel() > 1:
            modulated = modulated + torch.randn_like(grad) * (grad.std() + 1e-8)
        return modulated


# ----------------------------------------------------------------------------- MMPareto
PARETO_GAMMA = 1.5  # the authors' scale of every combined gradient


def min_norm_weights(gram):
    """The weights ``w`` on the simplex that minimise ``|sum_i w_i g_i|^2 = w^T G w`` for the Gram
    matrix ``G`` ``[n, n]`` of ``n`` gradients (MGDA's min-norm element), exactly: the minimum is
    on some face of the simplex, and on each face it solves a small linear system (the
    Lagrangian's), so every face is tried (``n`` is the number of losses, a handful)."""
    n = len(gram)
    gram64 = gram.double().cpu()
    best, best_value = None, float("inf")
    for size in range(1, n + 1):
        for face in itertools.combinations(range(n), size):
            index = list(face)
            system = torch.zeros(size + 1, size + 1, dtype=torch.float64)
            system[:size, :size] = 2 * gram64[index][:, index]
            system[:size, size] = system[size, :size] = 1.0
            target = torch.zeros(size + 1, dtype=torch.float64)
            target[size] = 1.0
            on_face = (torch.linalg.pinv(system) @ target)[:size]
            if (on_face < -1e-9).any() or abs(float(on_face.sum()) - 1) > 1e-6:
                continue
            weights = torch.zeros(n, dtype=torch.float64)
            weights[index] = on_face.clamp_min(0)
            value = float(weights @ gram64 @ weights)
            if value < best_value - 1e-12:
                best, best_value = weights, value
    return best.to(dtype=gram.dtype, device=gram.device)


def pareto_combination(group_grads):
    """MMPareto's gradient of one parameter group shared by several losses.

    ``group_grads``: per loss, its gradients of the group's tensors. If every pair of the losses' (flattened)
    gradients has a positive cosine, the weights are equal; otherwise they are the min-norm
    weights (:func:`min_norm_weights`). The direction is ``n * sum_i w_i g_i`` (the plain sum for
    equal weights); each tensor's is scaled up to the norm of the plain sum of the losses' gradients
    if shorter, then by ``PARETO_GAMMA``. Returns the new gradient per tensor and whether the
    gradients conflicted."""
    n = len(group_grads)
    flat = torch.stack([torch.cat([g.reshape(-1) for g in grads]) for grads in group_grads])
    gram = flat @ flat.T
    norms = gram.diagonal().sqrt()
    cosines = gram / (norms[:, None] * norms[None, :]).clamp_min(1e-12)
    conflict = bool((cosines[~torch.eye(n, dtype=torch.bool, device=gram.device)] <= 0).any())
    weights = min_norm_weights(gram) if conflict else torch.full((n,), 1.0 / n, dtype=gram.dtype, device=gram.device)
    combined = []
    for k in range(len(group_grads[0])):
        direction = n * sum(w * grads[k] for w, grads in zip(weights, group_grads))
        length, wanted = direction.norm(), sum(grads[k] for grads in group_grads).norm()
        scale = torch.where(wanted > length, wanted / length.clamp_min(1e-12), torch.ones_like(length))
        combined.append(direction * scale * PARETO_GAMMA)
    return combined, conflict


class ParetoMixin(BalancingMixin):
    """MMPareto for pairwise ranking.

    The losses: the backbone's whole objective on the joint mode and, per modality m, the BPR
    loss of its "only m" mode (every other modality masked). Each parameter group is combined
    over the losses that own it (:func:`pareto_combination`): modality m's parameters
    (:meth:`modality_parameters`) over the joint loss and the "only m" loss, as the paper
    combines a modality's encoder gradients from the multimodal and its unimodal loss; the shared
    parameters (ID embeddings, fusion weights) over the joint loss and every "only m" loss.
    Ranking uses every modality, like the backbone.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        groups = self.modality_parameters()
        owned = {id(p) for params in groups.values() for p in params}
        self.pareto_groups = {"shared": (None, [p for p in self.parameters() if id(p) not in owned]),
                              **{m: (m, params) for m, params in groups.items()}}

    @classmethod
    def describe(cls, config):
        return "Pareto integration of the joint and each \"only m\" loss's gradients (MMPareto, Wei and Hu, ICML 2024)"

    def calculate_loss(self, interaction):
        modes = {"joint": frozenset(), **{f"only_{m}": self.only(m) for m in self.modalities}}
        step = self.triple_margins(*self.batch_triples(interaction), modes)
        terms = self.objective(interaction, step)
        unimodal = {m: bpr(step.margins[f"only_{m}"]) for m in self.modalities}
        losses = {"joint": sum(terms.values()), **unimodal}
        params = [p for p in self.parameters() if p.requires_grad]
        grads = {}
        for name, loss in losses.items():
            found = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            grads[name] = {id(p): torch.zeros_like(p) if g is None else g for p, g in zip(params, found)}
        new, conflicts = {}, {}
        for group, (modality, members) in self.pareto_groups.items():
            members = [p for p in members if p.requires_grad]
            if not members:
                continue
            owners = ["joint"] + (list(self.modalities) if modality is None else [modality])
            combined, conflicts[f"conflict_{group}"] = pareto_combination(
                [[grads[name][id(p)] for p in members] for name in owners])
            new.update(zip(map(id, members), combined))
        total = sum(losses.values())
        self.record_terms({**terms, **{f"bpr_only_{m}": loss for m, loss in unimodal.items()}, "loss": total})
        self.balancing_stats.add({name: float(value) for name, value in conflicts.items()})
        # the loss's value, with the combined gradients as its gradients
        surrogate = sum((p * new[id(p)].detach()).sum() for p in params)
        return total.detach() + surrogate - surrogate.detach()


VARIANT_MIXINS = {"MDrop": ModalityDropoutMixin, "OGMGE": GradientModulationMixin, "MMPareto": ParetoMixin}
VARIANT_DOCS = {"MDrop": "modality dropout", "OGMGE": "OGM-GE gradient modulation", "MMPareto": "MMPareto gradient integration"}


def make_balanced_model(backbone, suffix):
    """The ``<Backbone>_<suffix>`` class: the baseline's mixin over ``backbone``."""
    return type(
        f"{backbone.__name__}_{suffix}",
        (VARIANT_MIXINS[suffix], backbone),
        {
            "backbone": backbone,
            "__doc__": f"{backbone.__name__} trained with {VARIANT_DOCS[suffix]} (docs/method.md, section 9).",
            "__module__": __name__,
        },
    )
