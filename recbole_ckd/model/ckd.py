"""The CKD student: any backbone with ``forward(masked)`` plus counterfactual distillation.

The student's loss is its backbone's whole objective (``objective``, the same method the plain
backbone trains with) plus ``kd_weight`` times the distillation term; nothing is removed. One
generic mixin; ``<Backbone>_CKD`` classes are derived from it by :func:`make_ckd_model`, so no
backbone carries a copy of the CKD code. The method is described in ``docs/method.md``.
"""

import torch
import torch.nn.functional as F

from recbole_ckd.model.balancing import BalancingMixin
from recbole_ckd.model.multimodal import EpochStats, TrainingPass
from recbole_ckd.model.multimodal import margin as margins

EPS = 1e-8


# ----------------------------------------------------------------------------- loss pieces

def specific_distillation(teacher_margin, student_margin):
    """One-sided hinge: the teacher's margin is a floor the student may exceed (per triple)."""
    return F.relu(teacher_margin - student_margin)


def generic_distillation(teacher_margin, student_margin, temperature):
    """Tempered BCE between the teacher's and the student's pair preferences (a scalar)."""
    p_teacher = torch.sigmoid(teacher_margin / temperature)
    p_student = torch.sigmoid(student_margin / temperature)
    return -(p_teacher * torch.log(p_student + EPS) + (1 - p_teacher) * torch.log(1 - p_student + EPS)).mean()


def counterfactual_effect(joint_margin, without_margin, only_margin, clamp=(1e-8, 10.0)):
    """``c_m = clamp((d_J - d_without_m) / d_only_m)``, detached.

    A non-positive numerator or denominator gives the floor (the modality shows no effect);
    0/0 is taken as no effect too, instead of the NaN a plain division would give.
    """
    low, high = clamp
    ratio = (joint_margin - without_margin).detach() / only_margin.detach()
    return torch.nan_to_num(ratio, nan=low).clamp(low, high)


def teacher_gap(teacher_margin, only_margin, clamp=(1e-8, 10.0)):
    """``clamp(sigmoid(d_only_m) / sigmoid(d_teacher_m))``, detached: how much of its teacher's
    preference the student's "only m" mode already holds (the ``teacher_gap`` ablation, which
    replaces the counterfactual effect by this factual estimate)."""
    low, high = clamp
    return (torch.sigmoid(only_margin.detach()) / torch.sigmoid(teacher_margin.detach())).clamp(low, high)


def modality_weights(effects):
    """``r_m = M (1/c_m) / sum_k (1/c_k)`` per triple: the larger effect gets the smaller weight.

    ``effects`` is ``[M, B]``; the weights of every triple sum to M. For M = 2 this is the
    reference ``r_t = 2 c_v / (c_t + c_v)``.
    """
    inverse = 1.0 / effects
    return effects.shape[0] * inverse / inverse.sum(dim=0, keepdim=True)


def ckd_refusal(backbone, modality):
    return (
        f"{backbone} cannot be a CKD student: masking modality '{modality}' does not change its scores (it ranks "
        "with ID embeddings only at inference), so every counterfactual effect is zero and CKD's weights are "
        "undefined (docs/method.md, section 2). Use the plain backbone instead."
    )


# ----------------------------------------------------------------------------- the student
class CKDStudentMixin(BalancingMixin):
    """Turns a backbone into a CKD student; the backbone's own forward is untouched."""

    is_ckd_student = True  # the registry trains it with CKDTrainer

    @classmethod
    def describe(cls, config):
        terms = [name for name, on in (("specific", config["ckd_specific"]), ("generic", config["ckd_generic"])) if on]
        return (f"counterfactual knowledge distillation (CKD, Zhang et al., ACM MM 2024): {' and '.join(terms)} "
                f"term{'s' if len(terms) > 1 else ''}, {config['ckd_weighting']} weights")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.kd_weight = config["kd_weight"]
        self.gd_weight = config["gd_weight"]
        self.kd_temperature = config["kd_temperature"]
        self.gd_samples = config["gd_samples"]
        self.cf_clamp = tuple(config["cf_clamp"])
        # ablation switches (docs/method.md, section 8); the Config refuses both terms off
        self.use_specific, self.use_generic = config["ckd_specific"], config["ckd_generic"]
        self.weighting = config["ckd_weighting"]
        self.check_masking_changes_scores()
        train_users = torch.unique(dataset.inter_feat[dataset.uid_field])
        self.register_buffer("_train_users", train_users, persistent=False)
        self.teacher_tables = {}
        self.weight_stats = EpochStats()

    @torch.no_grad()
    def check_masking_changes_scores(self):
        """CKD needs scores that depend on every modality at inference (docs/method.md, section 2)."""
        was_training = self.training
        self.eval()  # no dropout: two forwards must differ only through the mask
        try:
            self._check_masking_changes_scores()
        finally:
            self.train(was_training)

    def _check_masking_changes_scores(self):
        users, items = self.forward()
        joint = users[1:65] @ items[1:].T
        for m in self.modalities:
            users, items = self.forward(frozenset({m}))
            masked = users[1:65] @ items[1:].T
            # compare rankings, not values: a masked modality may add a constant to every score
            if torch.allclose(joint - joint.mean(1, keepdim=True), masked - masked.mean(1, keepdim=True), atol=1e-6):
                raise ValueError(ckd_refusal(self.backbone.__name__, m))

    def set_teacher_tables(self, tables):
        """Frozen ``(user_reps, item_reps)`` of every modality's teacher, computed once."""
        missing = set(self.modalities) - set(tables)
        if missing:
            raise ValueError(f"No teacher tables for modalities {sorted(missing)}.")
        self.teacher_tables = {m: (u.detach().to(self.device), i.detach().to(self.device)) for m, (u, i) in tables.items()}

    def modes(self):
        """Masked sets of the student's forward modes: joint, only-m, and without-m for M > 2."""
        modes = {"joint": frozenset()}
        for m in self.modalities:
            modes[f"only_{m}"] = self.only(m)
        if len(self.modalities) > 2:
            for m in self.modalities:
                modes[f"without_{m}"] = frozenset({m})
        return modes

    def without_key(self, m):
        """With two modalities, "without t" is "only v"."""
        if len(self.modalities) == 2:
            (other,) = set(self.modalities) - {m}
            return f"only_{other}"
        return f"without_{m}"

    def calculate_loss(self, interaction):
        if self.kd_weight == 0:  # exactly the backbone: no distillation, no extra random draws
            return super().calculate_loss(interaction)
        if not self.teacher_tables:
            raise RuntimeError("The CKD student has no teachers: train it with CKDTrainer.")
        users, pos, neg = self.batch_triples(interaction)
        batch = len(users)
        g_users, g_a, g_b = self.generic_triples() if self.use_generic else (users[:0], pos[:0], neg[:0])
        # one forward for the BPR triples and the generic triples, every mode at once; the
        # backbone's objective reads its joint part
        step = self.triple_margins(
            torch.cat([users, g_users]), torch.cat([pos, g_a]), torch.cat([neg, g_b]), self.modes(), joint_rows=batch
        )
        batch_margin = {name: d[:batch] for name, d in step.margins.items()}
        gen_margin = {name: d[batch:] for name, d in step.margins.items()}
        terms = self.objective(interaction, TrainingPass(batch_margin, step.joint, step.memo))

        teacher_batch, specific, generic = {}, [], []
        for m in self.modalities:
            t_users, t_items = self.teacher_tables[m]
            teacher_batch[m] = margins(t_users[users], t_items[pos], t_items[neg])
            only = batch_margin[f"only_{m}"]
            specific.append(specific_distillation(teacher_batch[m], only) if self.use_specific else torch.zeros_like(only))
            if self.use_generic:
                teacher_gen = margins(t_users[g_users], t_items[g_a], t_items[g_b])
                generic.append(generic_distillation(teacher_gen, gen_margin[f"only_{m}"], self.kd_temperature))
            else:
                generic.append(only.new_zeros(()))
        weights = self.distillation_weights(batch_margin, teacher_batch)  # [M, B], no gradient
        specific, generic = torch.stack(specific), torch.stack(generic)  # [M, B], [M]
        distill = (weights * (specific + self.gd_weight * generic[:, None])).sum(dim=0).mean()
        terms["distill"] = self.kd_weight * distill
        loss = self.sum_terms(terms)
        # diagnostics, not loss terms: the unweighted pieces (named in a NaN report too) and the weights r_m
        pieces = {"specific": specific.mean(dim=1).sum(), "generic": generic.sum()}
        self.last_loss_terms.update({name: value.detach() for name, value in pieces.items()})
        for k, m in enumerate(self.modalities):
            pieces[f"r_{m}_sum"], pieces[f"r_{m}_sq"] = weights[k].sum(), weights[k].pow(2).sum()
        self.weight_stats.add({**pieces, "triples": batch})
        return loss

    def distillation_weights(self, batch_margin, teacher_margin):
        """The weights ``r_m`` ``[M, B]`` of ``ckd_weighting``: from the counterfactual effects (the
        method), from each "only m" mode's gap to its teacher, or all 1 (docs/method.md, section 8)."""
        joint = batch_margin["joint"]
        if self.weighting == "uniform":
            return torch.ones(len(self.modalities), len(joint), device=joint.device)
        if self.weighting == "teacher_gap":
            effects = [teacher_gap(teacher_margin[m], batch_margin[f"only_{m}"], self.cf_clamp) for m in self.modalities]
        else:
            effects = [counterfactual_effect(joint, batch_margin[self.without_key(m)], batch_margin[f"only_{m}"], self.cf_clamp)
                       for m in self.modalities]
        return modality_weights(torch.stack(effects))

    def generic_triples(self):
        """G random triples: users with training data (without replacement when G <= their
        number), items a and b uniform over all items, unfiltered."""
        n_users = len(self._train_users)
        g = self.gd_samples
        if g <= n_users:
            users = self._train_users[torch.randperm(n_users, device=self.device)[:g]]
        else:
            users = self._train_users[torch.randint(n_users, (g,), device=self.device)]
        items = torch.randint(1, self.n_items, (2, g), device=self.device)
        return users, items[0], items[1]

    # ------------------------------------------------------------------ epoch statistics
    def pop_epoch_stats(self):
        """Mean loss terms per step, the unweighted specific and generic terms, and the mean and
        standard deviation of each r_m over the epoch's triples."""
        result = super().pop_epoch_stats()
        means = self.weight_stats.pop()  # per-step means: ratios of them are ratios of totals
        if not means:
            return result
        result["specific"], result["generic"] = means["specific"], means["generic"]  # 0 when ablated
        for m in self.modalities:
            mean = means[f"r_{m}_sum"] / means["triples"]
            var = max(means[f"r_{m}_sq"] / means["triples"] - mean**2, 0.0)
            result[f"r_{m}_mean"] = mean
            result[f"r_{m}_std"] = var**0.5
        return result


def make_ckd_model(backbone):
    """The ``<Backbone>_CKD`` class: the student mixin over ``backbone``."""
    return type(
        f"{backbone.__name__}_CKD",
        (CKDStudentMixin, backbone),
        {
            "backbone": backbone,
            "__doc__": f"{backbone.__name__} trained as a CKD student (docs/method.md, section 4).",
            "__module__": __name__,
        },
    )
