"""Leaderboards: many models over many seeds, one protocol, one page.

Every cell (model, seed) is an ordinary run (:func:`recbole_ckd.quick_start.run`) and is
cached as JSON under ``<output>/<dataset>/cells/``: rerunning after an interruption or after
adding a model only runs what is missing. The page ``<output>/<dataset>.md`` follows RecBole's
result pages: the experimental setting, the properties used, dataset statistics, a method x
metric table (mean and standard deviation over seeds), each ``_CKD`` model against its
backbone with a paired test across seeds, published reference numbers where they exist, tuned
values next to their ranges, and diagnostic plots.
"""

import csv
import glob
import json
import math
import os
import tempfile
from dataclasses import dataclass
from typing import NamedTuple

import yaml

from recbole_ckd.errors import Interrupted
from recbole_ckd.run_keys import RUN_KEY_LENGTH

TABLE_METRICS = ["recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@10", "precision@20"]

# MMRec's public leaderboard (evaluation/README.md of the MMRec repository): random per-user
# 8:1:1 split, full ranking, only training items masked at test time, embedding size 64.
MMREC_REFERENCE = {
    "source": "MMRec public leaderboard (train-only masking)",
    "baby": {
        "BPR": {"recall@10": 0.0357, "recall@20": 0.0575, "ndcg@10": 0.0192, "ndcg@20": 0.0249},
        "LightGCN": {"recall@10": 0.0479, "recall@20": 0.0754, "ndcg@10": 0.0257, "ndcg@20": 0.0328},
        "VBPR": {"recall@10": 0.0423, "recall@20": 0.0663, "ndcg@10": 0.0223, "ndcg@20": 0.0284},
        "MMGCN": {"recall@10": 0.0378, "recall@20": 0.0615, "ndcg@10": 0.0200, "ndcg@20": 0.0261},
        "GRCN": {"recall@10": 0.0539, "recall@20": 0.0833, "ndcg@10": 0.0288, "ndcg@20": 0.0363},
        "LATTICE": {"recall@10": 0.0547, "recall@20": 0.0850, "ndcg@10": 0.0292, "ndcg@20": 0.0370},
        "BM3": {"recall@10": 0.0564, "recall@20": 0.0883, "ndcg@10": 0.0301, "ndcg@20": 0.0383},
        "FREEDOM": {"recall@10": 0.0627, "recall@20": 0.0992, "ndcg@10": 0.0330, "ndcg@20": 0.0424},
    },
    "sports": {
        "BPR": {"recall@10": 0.0432, "recall@20": 0.0653, "ndcg@10": 0.0241, "ndcg@20": 0.0298},
        "LightGCN": {"recall@10": 0.0569, "recall@20": 0.0864, "ndcg@10": 0.0311, "ndcg@20": 0.0387},
        "VBPR": {"recall@10": 0.0558, "recall@20": 0.0856, "ndcg@10": 0.0307, "ndcg@20": 0.0384},
        "MMGCN": {"recall@10": 0.0370, "recall@20": 0.0605, "ndcg@10": 0.0193, "ndcg@20": 0.0254},
        "GRCN": {"recall@10": 0.0598, "recall@20": 0.0915, "ndcg@10": 0.0332, "ndcg@20": 0.0414},
        "LATTICE": {"recall@10": 0.0620, "recall@20": 0.0953, "ndcg@10": 0.0335, "ndcg@20": 0.0421},
        "BM3": {"recall@10": 0.0656, "recall@20": 0.0980, "ndcg@10": 0.0355, "ndcg@20": 0.0438},
        "FREEDOM": {"recall@10": 0.0717, "recall@20": 0.1089, "ndcg@10": 0.0385, "ndcg@20": 0.0481},
    },
}


# ----------------------------------------------------------------------------- arithmetic
def mean_std(values):
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def relative_improvement(new, old):
    """``(new - old) / old``; None when ``old`` is 0."""
    return None if old == 0 else (new - old) / old


def paired_t_test(a, b):
    """Two-sided paired t-test of ``a`` against ``b`` (same seeds): ``(t, p)``.

    None for fewer than two pairs; identical differences give t = +-inf, p = 0 (or t = 0,
    p = 1 when they are all zero).
    """
    from scipy import stats

    if len(a) != len(b):
        raise ValueError("paired test needs the same seeds on both sides")
    if len(a) < 2:
        return None
    differences = [x - y for x, y in zip(a, b)]
    mean, std = mean_std(differences)
    if std == 0:
        return (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    t = mean / (std / math.sqrt(len(a)))
    return t, float(2 * stats.t.sf(abs(t), df=len(a) - 1))


# ----------------------------------------------------------------------------- what runs
class Entry(NamedTuple):
    """One row of a leaderboard: ``label`` (its name in tables and cell files), the ``model`` that
    runs, and the config ``overrides`` that make it this variant (an ablation of a CKD model)."""

    label: str
    model: str
    overrides: dict


def as_entry(item):
    """A model name is the entry of that model with no overrides."""
    return item if isinstance(item, Entry) else Entry(item, item, {})


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
)
STUDIES = {"balancing": BALANCING_STUDY}


def study_entries(study, backbones):
    """Every entry of ``study`` for each backbone, backbone by backbone."""
    from recbole_ckd.model import MODELS

    if study not in STUDIES:
        raise ValueError(f"--study={study}: unknown study; the studies are {', '.join(sorted(STUDIES))}")
    for name in backbones:
        backbone = MODELS.get(name)
        if backbone is None or getattr(backbone, "backbone", None) is not None or not backbone.ranks_with_modalities:
            raise ValueError(f"--models: {name} is not a multimodal backbone that ranks with its modalities; "
                             f"--study={study} takes backbones, e.g. --models=VBPR,LATTICE,EgoGCN")
    return [Entry(label.format(B=name), model.format(B=name), dict(overrides))
            for name in backbones for label, model, overrides in STUDIES[study]]


# ----------------------------------------------------------------------------- cells
def _write_json(record, path):
    """Atomic: a cell file is either complete or absent."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True, default=float)
    os.replace(tmp, path)


@dataclass(frozen=True, eq=False)
class Cell:
    """One planned cell: what runs (``model`` with ``files`` and ``settings``, an ordinary run) and
    how it is shown and cached (``label``, ``seed`` and its run ``key``)."""

    label: str
    model: str
    seed: int
    files: tuple
    settings: dict
    key: str
    overrides: dict  # the settings that make this entry a variant of its model (an ablation), shown on the page

    def name(self):
        return f"{self.label} seed {self.seed}"


def plan_cells(dataset, models, seeds, config_files=None, config_dict=None, tuned=None):
    """Every cell's config, built (and so validated) before the first cell runs; ``models`` are
    model names or :class:`Entry` rows. The paths are made absolute, as a Ray task on another
    node or in another folder needs them."""
    from recbole_ckd.config import Config
    from recbole_ckd.run_keys import config_key

    plan = []
    for entry in map(as_entry, models):
        # a model's tuned configuration serves every entry of that model (CKD's ablations too)
        tuned_file = [tuned[entry.model]] if tuned and entry.model in tuned else []
        files = tuple(os.path.abspath(f) for f in list(config_files or []) + tuned_file)
        for seed in seeds:
            settings = {**(config_dict or {}), **entry.overrides, "seed": seed, "show_progress": False}
            config = Config(entry.model, dataset, list(files) or None, settings)
            settings.update(data_path=os.path.dirname(config["data_path"]), checkpoint_dir=config["checkpoint_dir"])
            plan.append(Cell(entry.label, entry.model, seed, files, settings, config_key(config)[:RUN_KEY_LENGTH],
                             entry.overrides))
    return plan


def run_cells(dataset, models, seeds, output, config_files=None, config_dict=None, tuned=None, log=None,
              ray_address=None, cpus_per_cell=None, gpus_per_cell=None):
    """Every (entry, seed) result, from the cache where present; returns ``{label: [records]}``
    (:func:`plan_cells`, then :func:`run_plan`)."""
    plan = plan_cells(dataset, models, seeds, config_files, config_dict, tuned)
    return run_plan(dataset, plan, output, log, ray_address, cpus_per_cell, gpus_per_cell)


def run_plan(dataset, plan, output, log=None, ray_address=None, cpus_per_cell=None, gpus_per_cell=None):
    """Every cell of ``plan``, from the cache where present; returns ``{label: [records]}`` in plan order.

    A cell is cached as ``<label>-seed<seed>-<run key>.json``, the run key being the digest of
    everything that determines the run (every resolved config key, properties files included,
    and the dataset files' contents; not runtime flags such as paths or logging). A cell is
    reused only while its run key is the one the current config and data resolve to; after an
    edit the cached cell is stale and the run happens again. The missing cells run one after
    another in this process, or as Ray tasks (:func:`_run_on_ray`) when ``ray_address`` is given or
    this machine holds more than one cell's ``cpus_per_cell`` / ``gpus_per_cell`` at once.
    """
    log = log or (lambda message: print(message, flush=True))
    cell_dir = os.path.join(output, dataset, "cells")
    records, missing = {}, []
    for done, cell in enumerate(plan, start=1):
        path, record, stale = _find_cell(cell_dir, cell.label, cell.seed, cell.key)
        if record is not None:
            log(f"[{done}/{len(plan)}] {cell.name()}: cached ({path})")
            records[cell] = record
            continue
        if stale:
            log(f"[{done}/{len(plan)}] {cell.name()}: {len(stale)} cached cell(s) computed under another config or "
                f"data (run keys {', '.join(stale)}; now {cell.key}): the properties, the config or the dataset changed")
        missing.append(cell)

    def finished(cell, record):
        record = {**record, "variant": cell.label, "overrides": cell.overrides}
        _write_json(record, os.path.join(cell_dir, f"{cell.label}-seed{cell.seed}-{recorded_run_key(record)}.json"))
        records[cell] = record

    parallel = ray_address is not None or cells_at_once(cpus_per_cell, gpus_per_cell) > 1
    try:
        if missing and parallel:
            _run_on_ray(dataset, missing, finished, log, ray_address, 1.0 if cpus_per_cell is None else cpus_per_cell,
                        gpus_per_cell or 0.0)
        else:
            from recbole_ckd.quick_start import run

            if missing and (cpus_per_cell or gpus_per_cell):
                log(f"one cell at a time, in this process: this machine has room for fewer than two cells of "
                    f"{cpus_per_cell or 1:g} CPU(s) and {gpus_per_cell or 0:g} GPU(s) ({os.cpu_count()} CPUs)")
            for k, cell in enumerate(missing, start=1):
                log(f"[{k}/{len(missing)} to run] {cell.name()}: running ...")
                finished(cell, run(cell.model, dataset, list(cell.files) or None, cell.settings))
    except KeyboardInterrupt:
        left = len(plan) - len(records)
        raise Interrupted(f"the leaderboard stopped with {left} of {len(plan)} cells unfinished; the finished ones are "
                          f"cached in {cell_dir}. Run the same command again: only the missing cells run, each "
                          "resuming from its last checkpoint.") from None
    cells = {}
    for cell in plan:
        cells.setdefault(cell.label, []).append(records[cell])
    return cells


def cells_at_once(cpus_per_cell, gpus_per_cell):
    """How many cells of ``cpus_per_cell`` and ``gpus_per_cell`` this machine runs at once (1 when
    neither is given: one cell after another, in this process)."""
    if not cpus_per_cell and not gpus_per_cell:
        return 1
    fits = [os.cpu_count() // cpus_per_cell] if cpus_per_cell else []
    if gpus_per_cell:
        import torch

        fits.append(torch.cuda.device_count() // gpus_per_cell)
    return int(min(fits))


def _run_on_ray(dataset, cells, finished, log, ray_address, cpus, gpus):
    """The cells as Ray tasks of ``cpus`` CPUs and ``gpus`` GPUs each, at once as far as the cluster
    holds them; ``finished(cell, record)`` as each ends. A failed cell is reported and the others
    go on; its error is raised once they have ended."""
    from recbole_ckd.cluster import ray_session, sigterm_as_sigint

    with ray_session(ray_address, "--leaderboard") as ray, sigterm_as_sigint():
        task = ray.remote(_cell_task).options(num_cpus=cpus, num_gpus=gpus)
        pending = {task.remote(dataset, cell.model, list(cell.files) or None, cell.settings): cell for cell in cells}
        resources = ray.cluster_resources()
        log(f"running {len(cells)} cell(s) as Ray tasks of {cpus:g} CPU(s) and {gpus:g} GPU(s) each, on "
            f"{resources.get('CPU', 0):g} CPU(s) and {resources.get('GPU', 0):g} GPU(s) in all")
        error = None
        for done in range(1, len(cells) + 1):
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ref)
            try:
                record = ray.get(ref)
            except ray.exceptions.RayError as err:  # the run's own error, or its worker died
                cause = getattr(err, "cause", None) or err
                error = error or cause
                log(f"[{done}/{len(cells)} to run] {cell.name()}: failed ({' '.join(str(cause).split())[:200]})")
                continue
            finished(cell, record)
            log(f"[{done}/{len(cells)} to run] {cell.name()}: done (valid {record['valid_metric']} "
                f"{record['best_valid_score']:.4f})")
    if error is not None:
        raise error


def _cell_task(dataset, model, files, settings):
    """A cell inside a Ray task: an ordinary run on the devices Ray gave the task."""
    from recbole_ckd.cluster import assigned_devices
    from recbole_ckd.quick_start import run

    return run(model, dataset, files, {**settings, **assigned_devices()})


def _find_cell(cell_dir, label, seed, key):
    """``(path, record, stale keys)``: the cached cell of ``label`` and ``seed`` whose run key is
    ``key`` (record None if there is none) and the run keys of the other cells of that pair."""
    stale = []
    for path in sorted(glob.glob(os.path.join(glob.escape(cell_dir), f"{label}-seed{seed}-*.json"))):
        with open(path) as f:
            record = json.load(f)
        recorded = recorded_run_key(record)
        if recorded == key:
            return path, record, stale
        stale.append(str(recorded))
    return None, None, stale


def recorded_run_key(record):
    """The run key of a cell; cells written before they stored it carry it in their checkpoint
    folder's name (``<model>-<key>``)."""
    if record.get("run_key"):
        return record["run_key"][:RUN_KEY_LENGTH]
    if record.get("checkpoint"):
        return os.path.basename(os.path.dirname(record["checkpoint"])).rsplit("-", 1)[-1]
    return None


# ----------------------------------------------------------------------------- tables
def summarize(cells, metrics=TABLE_METRICS):
    """``{model: {metric: (mean, std, values)}}`` over seeds, test results."""
    return {
        model: {m: (*mean_std(values := [r["test_result"][m] for r in records]), values) for m in metrics}
        for model, records in cells.items()
    }


def variant_comparisons(summary, cells, metrics=TABLE_METRICS):
    """Each variant (``X_CKD``, its ablations, ``X_MDrop``, ...) against its plain backbone ``X``:
    relative improvement of the means and the paired test across seeds."""
    from recbole_ckd.model import variant_backbone_name

    rows = []
    for label in summary:
        backbone = variant_backbone_name(cells[label][0]["model"])
        if backbone not in summary:
            continue
        for m in metrics:
            new, old = summary[label][m], summary[backbone][m]
            test = paired_t_test(new[2], old[2]) if len(new[2]) == len(old[2]) else None
            rows.append({"model": label, "backbone": backbone, "metric": m, "variant": new[0], "base": old[0],
                         "improvement": relative_improvement(new[0], old[0]),
                         "t": None if test is None else test[0], "p": None if test is None else test[1]})
    return rows


def _cell(mean, std):
    return f"{mean:.4f} ± {std:.4f}"


def method_table(summary, reference=None, metrics=TABLE_METRICS):
    head = ["method", *metrics]
    ref_metrics = [m for m in metrics if reference and any(m in v for v in reference.values())]
    head += [f"{m} (ref.)" for m in ref_metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for model, row in summary.items():
        cells = [_cell(*row[m][:2]) for m in metrics]
        ref = (reference or {}).get(model, {})
        cells += [f"{ref[m]:.4f}" if m in ref else "-" for m in ref_metrics]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_table(rows, n_seeds):
    lines = ["| variant | metric | backbone | variant | improvement | paired t | p |", "|" + " --- |" * 7]
    for r in rows:
        improvement = "-" if r["improvement"] is None else f"{100 * r['improvement']:+.2f}%"
        t = "-" if r["t"] is None else f"{r['t']:.2f}"
        p = "-" if r["p"] is None else f"{r['p']:.3g}"
        lines.append(f"| {r['model']} | {r['metric']} | {r['base']:.4f} | {r['variant']:.4f} | {improvement} | {t} | {p} |")
    note = (f"Paired two-sided t-test across the {n_seeds} seeds (same seed, same data, backbone vs its "
            "variant); with few seeds it has little power, read p together with the spread.")
    return "\n".join(lines) + "\n\n" + note


# ----------------------------------------------------------------------------- plots
def plot_modalities(cells, path):
    """The "1 + 1 < 2" picture: Recall@20 of each teacher, of the backbone and of its CKD
    student, each modality alone and jointly (test, mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recbole_ckd.model import ckd_backbone_name

    groups = {}
    for model, records in cells.items():
        backbone = ckd_backbone_name(model)
        if backbone is None:
            continue
        bars = {}
        for label_prefix, source in (("", model), ("backbone ", backbone)):
            for record in cells.get(source, []):
                for mode, result in (record.get("modes") or {}).items():
                    label = mode if source == model else label_prefix + mode
                    bars.setdefault(label, []).append(result["test"]["recall@20"])
        if bars:
            groups[model] = {k: sum(v) / len(v) for k, v in sorted(bars.items())}
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4), squeeze=False)
    for ax, (model, bars) in zip(axes[0], groups.items()):
        labels = list(bars)
        colors = ["tab:green" if l.startswith("teacher") else "tab:gray" if l.startswith("backbone") else "tab:blue"
                  for l in labels]
        ax.bar(range(len(labels)), [bars[l] for l in labels], color=colors)
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(model)
        ax.set_ylabel("test Recall@20")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def study_modes(cells):
    """``{backbone: {method: {mode: mean test Recall@20}}}`` for the study's picture: the plain
    backbone, its teachers, the CKD student and each balancing baseline, jointly and per "only m"."""
    from recbole_ckd.model import variant_backbone_name

    groups = {}
    for label, records in cells.items():
        model = records[0]["model"]
        if records[0].get("overrides"):
            continue  # ablations: the table has them
        backbone = variant_backbone_name(model) or model
        for record in records:
            for mode, result in (record.get("modes") or {}).items():
                if mode.startswith("backbone "):
                    continue  # the plain backbone has its own cells
                method, _, mode_name = mode.rpartition(" ")
                if method == "teacher":  # "teacher t" ranks with t only
                    method, mode_name = "teachers", f"only_{mode_name}"
                else:
                    method = label
                values = groups.setdefault(backbone, {}).setdefault(method, {}).setdefault(mode_name, [])
                values.append(result["test"]["recall@20"])
    return {b: {method: {mode: sum(v) / len(v) for mode, v in modes.items()} for method, modes in methods.items()}
            for b, methods in groups.items()}


def plot_study_modalities(cells, path):
    """Grouped bars per backbone: each mode (joint, only m) for every method of :func:`study_modes`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = study_modes(cells)
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4), squeeze=False)
    for ax, (backbone, methods) in zip(axes[0], groups.items()):
        modes = sorted({mode for values in methods.values() for mode in values}, key=lambda m: (m != "joint", m))
        width = 0.8 / len(methods)
        for k, (method, values) in enumerate(methods.items()):
            xs = [i + k * width for i, mode in enumerate(modes) if mode in values]
            ax.bar(xs, [values[mode] for mode in modes if mode in values], width, label=method)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(modes))], modes)
        ax.set_title(backbone)
        ax.set_ylabel("test Recall@20")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_weights(cells, path):
    """Per-epoch mean weight r_m of every CKD model during stage 2 (first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for model, records in cells.items():
        stats = records[0].get("epoch_stats") or []
        for key in sorted({k for row in stats for k in row if k.startswith("r_") and k.endswith("_mean")}):
            series[f"{model} {key[:-5]}"] = ([row["epoch"] for row in stats if key in row],
                                             [row[key] for row in stats if key in row])
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (x, y) in series.items():
        ax.plot(x, y, label=label)
    ax.axhline(1.0, color="black", linewidth=0.5, linestyle=":")
    ax.set_xlabel("epoch (stage 2)")
    ax.set_ylabel("mean weight r_m")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the page
def write_page(dataset, cells, output, config_files=None, config_dict=None, tuned=None, spaces=None, study=None):
    """Write ``<output>/<dataset>.md`` (``<dataset>-<study>.md`` for a study) and ``.csv`` (and the
    plots); returns the page path."""
    from recbole_ckd.settings_files import properties_dir, read_yaml
    from recbole_ckd.reports import describe_protocol

    summary = summarize(cells)
    comparisons = variant_comparisons(summary, cells)
    name = f"{dataset}-{study}" if study else dataset
    first = next(iter(cells.values()))[0]
    protocol = first["test_masking"]
    reference = MMREC_REFERENCE.get(dataset) if protocol == "train" else None
    seeds = sorted({r["seed"] for records in cells.values() for r in records})
    os.makedirs(output, exist_ok=True)

    with open(os.path.join(output, f"{name}.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "metric", "mean", "std", "n_seeds", "values"])
        for model, row in summary.items():
            for m, (mean, std, values) in row.items():
                writer.writerow([model, m, f"{mean:.6f}", f"{std:.6f}", len(values), " ".join(f"{v:.4f}" for v in values)])

    plot = plot_study_modalities if study else plot_modalities
    plots = {"modalities": plot(cells, os.path.join(output, f"{name}-modalities.png")),
             "weights": plot_weights(cells, os.path.join(output, f"{name}-weights.png"))}
    stats = _dataset_statistics(first, dataset)
    props = properties_dir()
    protocols = {describe_protocol(_training_protocol(r, dataset, config_files, config_dict))
                 for records in cells.values() for r in records}
    command = "--leaderboard" + (f" --study={study}" if study else "")
    lines = [f"# {dataset}: {f'the {study} study' if study else 'leaderboard'}", "",
             f"Generated by `python run_recbole_ckd.py {command}` (recbole-ckd); every number is the mean ± sample "
             f"standard deviation over seeds {', '.join(map(str, seeds))} of the test result at the best validation epoch.",
             "", "## Experimental setting", "",
             f"- Split: {stats.get('split', 'see the dataset')}",
             f"- Training protocol: {'; '.join(sorted(protocols))}.",
             f"- Evaluation: full ranking over all items; {PROTOCOL_TEXT.get(protocol, protocol)}.",
             f"- Selection: validation {first['valid_metric']}, on the protocol's schedule; test reported at the "
             "selected epoch.",
             f"- Code: {_code_versions(cells)}.",
             "- Counterfactual masking: a masked modality's item features are replaced by their mean over items and its "
             "user-side parameters by their mean over users; item-item graph terms of a masked modality are dropped.",
             "", "## Dataset statistics", "", stats["table"], "", "## Properties used", "",
             "```yaml", _properties_text(props, dataset, cells, config_files, config_dict), "```", "",
             "## Results (test)", "", method_table(summary, reference), ""]
    variants = {label: records[0] for label, records in cells.items() if records[0].get("overrides")}
    if variants:
        lines += ["Variants that are a model with other settings:", "", "| variant | model | settings |", "| --- | --- | --- |"]
        lines += [f"| {label} | {r['model']} | {', '.join(f'{k}: {v}' for k, v in sorted(r['overrides'].items()))} |"
                  for label, r in variants.items()]
        lines.append("")
    if reference:
        lines += [f"Reference columns: {MMREC_REFERENCE['source']}; same protocol, real Amazon features.", ""]
    if comparisons:
        lines += ["## Each variant against its backbone", "", comparison_table(comparisons, len(seeds)), ""]
    if tuned:
        lines += ["## Tuned values", "", "| model | key | tuned | range |", "| --- | --- | --- | --- |"]
        for model, path in tuned.items():
            best = read_yaml(path)
            for key, described in (spaces or {}).get(model, {}).items():
                lines.append(f"| {model} | {key} | {best.get(key)} | {described} |")
        lines.append("")
    if plots["modalities"] or plots["weights"]:
        lines += ["## Diagnostics", ""]
        if plots["modalities"]:
            who = "of the plain backbone, each teacher, the CKD student and each balancing baseline" if study else \
                "of each teacher, of the plain backbone and of the CKD student"
            lines += [f"Recall@20 {who}, each modality alone and jointly (\"1 + 1 < 2\"):", "",
                      f"![modalities]({os.path.basename(plots['modalities'])})", ""]
        if plots["weights"]:
            lines += ["Mean CKD weight r_m per epoch of stage 2 (above 1: the modality the student under-uses):", "",
                      f"![weights]({os.path.basename(plots['weights'])})", ""]
    page = os.path.join(output, f"{name}.md")
    with open(page, "w") as f:
        f.write("\n".join(lines))
    return page


PROTOCOL_TEXT = {
    "train": "training items removed from every ranking (MMRec's and the CKD reference's protocol)",
    "train_valid": "training and validation items removed from test rankings (RecBole's protocol)",
}


def _code_versions(cells):
    """The plugin versions (and commits) that computed the cells, for the page's provenance line."""
    versions = {}
    for records in cells.values():
        for record in records:
            code = record.get("code")
            label = "not recorded by cells older than that record" if not code else \
                f"recbole-ckd {code['recbole_ckd']}" + (f" at commit {code['commit']}" if code.get("commit") else "")
            versions[label] = versions.get(label, 0) + 1
    return "; ".join(f"{label} ({count} cells)" for label, count in sorted(versions.items()))


STATISTICS_ORDER = ["users", "items", "interactions", "density", "train", "valid", "test"]


def _in_order(items):
    """Statistics in a fixed order (a cell read back from JSON has its keys sorted), others last."""
    return sorted(items, key=lambda kv: (STATISTICS_ORDER.index(kv[0]) if kv[0] in STATISTICS_ORDER else 99, kv[0]))


def _dataset_statistics(record, dataset):
    stats = record.get("dataset_statistics") or {}
    rows = [("dataset", dataset)] + _in_order((k, v) for k, v in stats.items() if k != "split")
    table = "| statistic | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    split = stats.get("split")
    split = ", ".join(f"{k} {v}" for k, v in _in_order(split.items())) if split else "as configured"
    return {"table": table, "split": split}


def _training_protocol(record, dataset, config_files, config_dict):
    """A cell's training protocol; cells written before records carried it are resolved from the config."""
    if "training_protocol" in record:
        return record["training_protocol"]
    from recbole_ckd.config import Config
    from recbole_ckd.reports import training_protocol

    return training_protocol(Config(record["model"], dataset, config_files, {**(config_dict or {}), "seed": record["seed"]}))


def _properties_text(props, dataset, cells, config_files, config_dict):
    from recbole_ckd.model import MODELS

    parts = [f"# properties/overall.yaml\n{open(os.path.join(props, 'overall.yaml')).read().strip()}"]
    models = {records[0]["model"] for records in cells.values()}
    names = {name for model in models for name in (MODELS[model].config_names() if model in MODELS else [model])}
    for path in [os.path.join(props, "dataset", f"{dataset}.yaml")] + sorted(
        os.path.join(props, "model", f"{name}.yaml") for name in names
    ):
        if os.path.isfile(path):
            parts.append(f"# {os.path.relpath(path, os.path.dirname(props))}\n{open(path).read().strip()}")
    for path in config_files or []:
        parts.append(f"# {path}\n{open(path).read().strip()}")
    if config_dict:
        parts.append("# command line\n" + yaml.safe_dump(config_dict, sort_keys=True).strip())
    return "\n\n".join(parts)


def tuned_configs(sweeps_dir, dataset, models):
    """Best configurations (and their search spaces) that sweeps left in ``sweeps_dir``."""
    from recbole_ckd.settings_files import read_yaml
    from recbole_ckd.errors import ConfigError

    if not os.path.isdir(sweeps_dir):
        raise ConfigError(f"--sweeps={sweeps_dir} is not a folder; give the --output of the sweeps (default sweeps/).")
    tuned, spaces = {}, {}
    for model in models:
        best = os.path.join(sweeps_dir, f"{model}-{dataset}-best.yaml")
        if os.path.isfile(best):
            tuned[model] = best
            space = best.replace("-best.yaml", "-space.yaml")
            spaces[model] = read_yaml(space) if os.path.isfile(space) else {}
    return tuned, spaces


def run_leaderboard(dataset, models, seeds, output="results", config_files=None, cmd_args=(), sweeps_dir=None,
                    study=None, ray_address=None, cpus_per_cell=None, gpus_per_cell=None):
    """Run (or reuse) every cell and write the page; returns the page path. With ``study``,
    ``models`` are backbones and every entry of the study runs for each (:func:`study_entries`)."""
    from recbole_ckd.config import Config

    entries = study_entries(study, models) if study else [as_entry(m) for m in models]
    config_dict = {}
    if cmd_args:
        config_dict = dict(Config(entries[0].model, dataset, config_files, cmd_args=cmd_args).cmd_config_dict)
    tuned, spaces = tuned_configs(sweeps_dir, dataset, sorted({e.model for e in entries})) if sweeps_dir else ({}, {})
    cells = run_cells(dataset, entries, seeds, output, config_files, config_dict, tuned, ray_address=ray_address,
                      cpus_per_cell=cpus_per_cell, gpus_per_cell=gpus_per_cell)
    page = write_page(dataset, cells, output, config_files, config_dict, tuned, spaces, study)
    print(f"leaderboard: {page}")
    return page


MAX_SEED_COUNT = 100


def parse_seeds(text, base=2020):
    """``3`` -> [2020, 2021, 2022]; ``1,5,9`` -> [1, 5, 9]; ``7,`` -> [7]. Each seed once: a repeated
    seed would count one cell twice (and fake a zero spread)."""
    text = str(text)
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()] if "," in text else None
        count = None if seeds is not None else int(text)
    except ValueError:
        raise ValueError(f"--seeds={text}: give a count (3) or comma-separated integer seeds (1,2,3)") from None
    if seeds is not None:
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated or not seeds:
            raise ValueError(f"--seeds={text}: " + (f"seed(s) {repeated} given more than once; give each seed once"
                                                    if repeated else "no seed given"))
        return seeds
    if not 0 < count <= MAX_SEED_COUNT:
        raise ValueError(
            f"--seeds={text} asks for {count} seeds (a number is a count, at most {MAX_SEED_COUNT}); "
            f"for the single seed {text} write --seeds={text},"
        )
    return [base + k for k in range(count)]


def parse_models(text):
    """``BPR,VBPR`` -> ["BPR", "VBPR"]: each model once, every name resolved before any cell runs."""
    from recbole_ckd.registry import get_model

    models = [m.strip() for m in str(text).split(",") if m.strip()]
    repeated = sorted({m for m in models if models.count(m) > 1})
    if repeated or not models:
        raise ValueError(f"--models={text}: " + (f"{', '.join(repeated)} given more than once" if repeated
                                                 else "no model given"))
    for model in models:
        try:
            get_model(model)
        except ValueError as err:
            raise ValueError(f"--models: {err}") from None
    return models
