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
import torch.nn.functional as F

from recbole_ckd.model.multimodal import EpochStats, TrainingPass


def balancing_refusal(variant, backbone):
    return (
        f"{variant} cannot be built: {backbone} ranks with ID embeddings only at inference, so masking a modality "
        "changes nothing there and there is no modality to balance. Use the plain backbone instead."
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
    """OGM-GE for pairwise ranking.

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
