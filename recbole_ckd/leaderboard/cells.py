"""Cells: every (entry, seed) run, planned, run here or as Ray tasks, and cached as JSON files keyed by run key."""

import glob
import json
import math
import os
import tempfile
from dataclasses import dataclass

from recbole_ckd.errors import Interrupted, saving
from recbole_ckd.leaderboard.studies import distinct_entries
from recbole_ckd.leaderboard.tables import TABLE_METRICS
from recbole_ckd.run_keys import RUN_KEY_LENGTH


def write_json(record, path):
    """Atomic: a cell file is either complete or absent."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    try:
        with saving(path), os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True, default=float)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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


def tuned_file(tuned, label, model):
    """The tuned configuration of a row: its own (a tuned study's), else its model's (``--sweeps``)."""
    return (tuned or {}).get(label) or (tuned or {}).get(model)


def plan_cells(dataset, models, seeds, config_files=None, config_dict=None, tuned=None):
    """Every cell's config, built (and so validated) before the first cell runs; ``models`` are
    model names or :class:`Entry` rows. The paths are made absolute, as a Ray task on another
    node or in another folder needs them."""
    from recbole_ckd.config import Config
    from recbole_ckd.run_keys import config_key

    plan = []
    for entry in distinct_entries(models):
        # a row's own tuned configuration (a tuned study's), else its model's, which then serves every
        # entry of that model (CKD's ablations too)
        row_tuned = tuned_file(tuned, entry.label, entry.model)
        files = tuple(os.path.abspath(f) for f in list(config_files or []) + ([row_tuned] if row_tuned else []))
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
        path, record, stale = _find_cell(cell_dir, cell.label, cell.seed, cell.key, log)
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
        write_json(record, os.path.join(cell_dir, f"{cell.label}-seed{cell.seed}-{recorded_run_key(record)}.json"))
        records[cell] = record

    try:
        run_missing(dataset, missing, finished, log, ray_address, cpus_per_cell, gpus_per_cell)
    except KeyboardInterrupt:
        left = len(plan) - len(records)
        raise Interrupted(f"the leaderboard stopped with {left} of {len(plan)} cells unfinished; the finished ones are "
                          f"cached in {cell_dir}. Run the same command again: only the missing cells run, each "
                          "resuming from its last checkpoint.") from None
    cells = {}
    for cell in plan:
        cells.setdefault(cell.label, []).append(records[cell])
    return cells


def run_missing(dataset, missing, finished, log, ray_address=None, cpus_per_cell=None, gpus_per_cell=None,
                evaluate_test=True):
    """Run the ``missing`` cells, one after another in this process or as Ray tasks (:func:`_run_on_ray`) when
    ``ray_address`` is given or this machine holds more than one cell at once; ``finished(cell, record)`` as
    each ends. ``evaluate_test=False``: train and validate only (the test split is not evaluated)."""
    if not missing:
        return
    if ray_address is not None or cells_at_once(cpus_per_cell, gpus_per_cell) > 1:
        _run_on_ray(dataset, missing, finished, log, ray_address, 1.0 if cpus_per_cell is None else cpus_per_cell,
                    gpus_per_cell or 0.0, evaluate_test)
        return
    from recbole_ckd.quick_start import run

    if cpus_per_cell or gpus_per_cell:
        log(f"one cell at a time, in this process: this machine has room for fewer than two cells of "
            f"{cpus_per_cell or 1:g} CPU(s) and {gpus_per_cell or 0:g} GPU(s) ({os.cpu_count()} CPUs)")
    for k, cell in enumerate(missing, start=1):
        log(f"[{k}/{len(missing)} to run] {cell.name()}: running ...")
        finished(cell, run(cell.model, dataset, list(cell.files) or None, cell.settings, evaluate_test=evaluate_test))


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


def _run_on_ray(dataset, cells, finished, log, ray_address, cpus, gpus, evaluate_test=True):
    """The cells as Ray tasks of ``cpus`` CPUs and ``gpus`` GPUs each, at once as far as the cluster
    holds them; ``finished(cell, record)`` as each ends. A failed cell is reported and the others
    go on; its error is raised once they have ended."""
    from recbole_ckd.cluster import ray_session, sigterm_as_sigint

    with ray_session(ray_address, "--leaderboard", gpus) as ray, sigterm_as_sigint():
        task = ray.remote(_cell_task).options(num_cpus=cpus, num_gpus=gpus)
        pending = {task.remote(dataset, cell.model, list(cell.files) or None, cell.settings, evaluate_test): cell
                   for cell in cells}
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


def _cell_task(dataset, model, files, settings, evaluate_test=True):
    """A cell inside a Ray task: an ordinary run on the devices Ray gave the task."""
    from recbole_ckd.cluster import assigned_devices
    from recbole_ckd.quick_start import run

    return run(model, dataset, files, {**settings, **assigned_devices()}, evaluate_test=evaluate_test)


def _find_cell(cell_dir, label, seed, key, log):
    """``(path, record, stale keys)``: the cached cell of ``label`` and ``seed`` whose run key is
    ``key`` (record None if there is none) and the run keys of the other cells of that pair. A cell
    file that cannot be read or lacks what the page shows is reported (``log``) and not used: it is
    computed again."""
    stale = []
    for path in sorted(glob.glob(os.path.join(glob.escape(cell_dir), f"{label}-seed{seed}-*.json"))):
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
            problem = cell_problem(record)
        except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON
            problem = f"not readable ({type(err).__name__})"
        if problem:
            log(f"warning: cached cell {path} is unusable ({problem}); running it again")
            continue
        recorded = recorded_run_key(record)
        if recorded == key:
            return path, record, stale
        stale.append(str(recorded))
    return None, None, stale


CELL_FIELDS = ("model", "seed", "valid_metric", "best_valid_score", "test_masking", "test_result")


def cell_problem(record):
    """What a cached cell lacks of what the page shows (None if nothing): the run's identity, its
    selection and every table metric of its test result, as finite numbers."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [k for k in CELL_FIELDS if k not in record]
    if missing:
        return f"no {', '.join(missing)}"
    test = record["test_result"]
    if not isinstance(test, dict):
        return "test_result is not a mapping"
    bad = [m for m in TABLE_METRICS if not (isinstance(test.get(m), (int, float)) and math.isfinite(test[m]))]
    return f"test_result has no number for {', '.join(bad)}" if bad else None


def recorded_run_key(record):
    """The run key of a cell; cells written before they stored it carry it in their checkpoint
    folder's name (``<model>-<key>``)."""
    if record.get("run_key"):
        return record["run_key"][:RUN_KEY_LENGTH]
    if record.get("checkpoint"):
        return os.path.basename(os.path.dirname(record["checkpoint"])).rsplit("-", 1)[-1]
    return None
