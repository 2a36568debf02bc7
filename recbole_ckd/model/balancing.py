"""Modality-balancing baselines as plug-ins over ``forward(masked)``, for every backbone.

Like ``<Backbone>_CKD``, each is a mixin over the backbone, derived by :func:`make_balanced_model`:

- ``<Backbone>_MDrop``, modality dropout (ModDrop: Neverova, Wolf, Taylor and Nebout, "ModDrop:
  adaptive multi-modal gesture recognition", TPAMI 2016): with probability ``mdrop_prob`` a
  training triple (or the whole batch, ``mdrop_unit: batch``) has one modality, drawn
  uniformly, masked; the backbone's own objective is trained on those margins.
- ``<Backbone>_OGMGE``, on-the-fly gradient modulation with generalisation enhancement (Peng,
  Wei, Deng, Wang and Hu, "Balanced Multimodal Learning via On-the-fly Gradient Modulation",
  CVPR 2022), adapted to pairwise ranking: the gradients of the dominant modality's own
  parameters are damped by how much its "only m" mode out-ranks the others', plus Gaussian noise.

Both rank with every modality at inference, exactly like the backbone. docs/method.md, section 9.
"""

import functools

import torch

from recbole_ckd.model.multimodal import EpochStats, TrainingPass


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
def dropout_choice(n_triples, n_modalities, prob, unit, device=None):
    """Per triple, ``0`` (nothing masked) or ``1 + k`` (modality ``k`` masked): a modality is masked
    with probability ``prob``, drawn uniformly; ``unit="batch"`` takes one draw for all triples."""
    draws = n_triples if unit == "triple" else 1
    masked = torch.rand(draws, device=device) < prob
    which = torch.randint(n_modalities, (draws,), device=device)
    return torch.where(masked, which + 1, torch.zeros_like(which)).expand(n_triples)


class ModalityDropoutMixin(BalancingMixin):
    """The backbone trained with one modality masked at random (per triple or per batch)."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.mdrop_prob, self.mdrop_unit = config["mdrop_prob"], config["mdrop_unit"]

    def dropout_choice(self, n_triples):
        return dropout_choice(n_triples, len(self.modalities), self.mdrop_prob, self.mdrop_unit, self.device)

    def training_pass(self, interaction):
        """The backbone's step with each triple's margin taken from its drawn mode; the terms
        that read the representations (L2, auxiliary losses) see the unmasked forward."""
        if self.mdrop_prob == 0:  # exactly the backbone, no random draws
            return super().training_pass(interaction)
        triples = self.batch_triples(interaction)
        modes = {"joint": frozenset(), **{f"without_{m}": frozenset({m}) for m in self.modalities}}
        step = self.triple_margins(*triples, modes)
        choice = self.dropout_choice(len(triples[0]))
        stacked = torch.stack([step.margins[name] for name in modes])  # [1 + M, B], in choice's order
        dropped = stacked.gather(0, choice[None]).squeeze(0)
        self.balancing_stats.add({"masked_share": (choice > 0).float().mean()})
        return TrainingPass({**step.margins, "joint": dropped}, step.joint, step.memo)


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
    the gradient of every parameter of modality ``m`` (:meth:`modality_parameters`) becomes
    ``k_m * g + N(0, std(g)^2)`` (the noise with ``ogm_noise``, as the authors' code adds it to
    both modalities' parameters); shared parameters (ID embeddings) are untouched.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.ogm_alpha, self.ogm_noise = config["ogm_alpha"], config["ogm_noise"]
        self.ogm_epochs = tuple(int(e) for e in config["ogm_epochs"])
        self.coefficients = None  # {m: k_m} of the current step while modulating
        self.epoch = 0
        for m, params in self.modality_parameters().items():
            if not params:
                raise ValueError(f"{type(self).__name__}: {self.backbone.__name__} declares no parameters of modality '{m}'.")
            for param in params:
                param.register_hook(functools.partial(self._modulate, m))

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


VARIANT_MIXINS = {"MDrop": ModalityDropoutMixin, "OGMGE": GradientModulationMixin}
VARIANT_DOCS = {"MDrop": "modality dropout", "OGMGE": "OGM-GE gradient modulation"}


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
