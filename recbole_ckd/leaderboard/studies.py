"""What a leaderboard runs: its rows (:class:`Entry`) and the studies that expand backbones into rows."""

from typing import NamedTuple

FIRST_SEED = 2020  # --seeds=N runs the seeds FIRST_SEED, ..., FIRST_SEED + N - 1


class Entry(NamedTuple):
    """One row of a leaderboard: ``label`` (its name in tables and cell files), the ``model`` that
    runs, and the config ``overrides`` that make it this variant (an ablation of a CKD model)."""

    label: str
    model: str
    overrides: dict


def as_entry(item):
    """A model name is the entry of that model with no overrides."""
    return item if isinstance(item, Entry) else Entry(item, item, {})


def distinct_entries(models):
    """``models`` as :class:`Entry` rows, each label and each (model, overrides) once: two rows that share
    either would share cell files or runs, so one row's seeds would count twice or its checkpoints go
    with the other's."""
    entries = [as_entry(m) for m in models]
    for k, entry in enumerate(entries):
        for earlier in entries[:k]:
            if entry.label == earlier.label or (entry.model, entry.overrides) == (earlier.model, earlier.overrides):
                raise ValueError(f"the rows {earlier.label} and {entry.label} are "
                                 + ("the same label" if entry.label == earlier.label else "the same model and settings")
                                 + "; give each row once")
    return entries


# The balancing study (--study=balancing), per backbone B: the plain model, CKD, its ablations
# (docs/method.md, section 8) and the balancing baselines (section 9), as (label, model, overrides).
BALANCING_STUDY = (
    ("{B}", "{B}", {}),
    ("{B}_CKD", "{B}_CKD", {}),
    ("{B}_CKD-no_specific", "{B}_CKD", {"ckd_specific": False}),
    ("{B}_CKD-no_generic", "{B}_CKD", {"ckd_generic": False}),
    ("{B}_CKD-uniform_weights", "{B}_CKD", {"ckd_weighting": "uniform"}),
    ("{B}_CKD-teacher_gap", "{B}_CKD", {"ckd_weighting": "teacher_gap"}),
    ("{B}_MDrop", "{B}_MDrop", {}),
    ("{B}_OGMGE", "{B}_OGMGE", {}),
    ("{B}_MMPareto", "{B}_MMPareto", {}),
)

STUDIES = {"balancing": BALANCING_STUDY}

# A tuned study (--tune_trials=N): each row's own sweep searches the shared keys and its method's
# keys, as (key, distribution, low, high); loguniform draws log-uniformly from [low, high]. The L2
# weight is reg_weight, searched for the backbones that have one (DAMRS has none).
SHARED_SPACE = (
    ("learning_rate", "loguniform", 1e-4, 1e-2),
    ("reg_weight", "loguniform", 1e-6, 1e-1),
)
METHOD_SPACES = {  # by the model's suffix (the plain backbone has none); MMPareto has no knob of its own
    "CKD": (
        ("kd_weight", "loguniform", 1e-3, 1.0),
        ("kd_temperature", "loguniform", 0.05, 2.0),
        ("gd_weight", "loguniform", 1e-2, 10.0),  # its default, 5.0, inside the range
    ),
    "MDrop": (("mdrop_prob", "uniform", 0.1, 0.9),),
    "OGMGE": (("ogm_alpha", "loguniform", 0.01, 1.0),),
    "MMPareto": (),
}
GENERIC_TERM_KEYS = {"kd_temperature", "gd_weight"}  # they shape CKD's generic term only


def tuning_space(entry, config):
    """The space of ``entry``'s sweep: the shared keys its resolved ``config`` has, and its method's
    but those of a term the entry's ablation removes (a search over them would spend its trials on noise)."""
    method = entry.model.rsplit("_", 1)[1] if "_" in entry.model else None
    unused = GENERIC_TERM_KEYS if entry.overrides.get("ckd_generic") is False else set()
    return tuple(p for p in SHARED_SPACE if p[0] in config) + tuple(
        p for p in METHOD_SPACES.get(method, ()) if p[0] not in unused)


def study_entries(study, backbones):
    """Every entry of ``study`` for each backbone, backbone by backbone, but the variants a backbone
    has not (DAMRS_OGMGE: :func:`~recbole_ckd.registry.model_refusal`)."""
    from recbole_ckd.model import MODELS
    from recbole_ckd.registry import model_refusal

    if study not in STUDIES:
        raise ValueError(f"--study={study}: unknown study; the studies are {', '.join(sorted(STUDIES))}")
    for name in backbones:
        backbone = MODELS.get(name)
        if (backbone is None or getattr(backbone, "backbone", None) is not None or not backbone.ranks_with_modalities
                or not backbone.trains):
            raise ValueError(f"--models: {name} is not a trained multimodal backbone that ranks with its modalities; "
                             f"--study={study} takes backbones, e.g. --models=VBPR,LATTICE,EgoGCN")
    return [Entry(label.format(B=name), model.format(B=name), dict(overrides))
            for name in backbones for label, model, overrides in STUDIES[study]
            if model_refusal(model.format(B=name)) is None]
