"""Tuned configurations: those a leaderboard takes from the sweeps' folder, and a tuned study's own sweeps."""

import csv
import dataclasses
import json
import math
import os
import shutil

import yaml

from recbole_ckd.errors import saving


def tuned_configs(sweeps_dir, dataset, models):
    """Best configurations (and their search spaces) that sweeps left in ``sweeps_dir``."""
    from recbole_ckd.errors import ConfigError
    from recbole_ckd.settings_files import read_yaml

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


def _describe_range(kind, low, high):
    return f"{kind} [{low:g}, {high:g}]"


# A tuned study's rows choose among this many of their sweep's best trials: each runs at every seed
# (validation only), and the best mean validation score wins. One seed's validation can favour a
# setting that another seed's early stopping ends in a plateau.
CANDIDATES = 3


def tune_study(dataset, entries, trials, seeds, output, config_files=None, cmd_args=(), config_dict=None,
               search="random", scheduler="none", cpus_per_trial=1.0, gpus_per_trial=0.0, ray_address=None):
    """Each row's own sweep (:func:`recbole_ckd.tune.run_sweep`) over its space
    (:func:`~recbole_ckd.leaderboard.studies.tuning_space`), ``trials`` trials each, in
    ``<output>/<dataset>/sweeps/<label>/``; a finished one is reused. The row's :data:`CANDIDATES` best trials
    then run at every seed, validation only, and the best mean validation score selects the row's setting
    (:func:`_select`). A CKD row's teachers train with the plain backbone's selected learning rate and L2
    weight, so every CKD row of a backbone, its trials and its seeds share them. Returns ``(tuned, spaces)``
    keyed by row label: the selected configuration files and ``{key: range}``."""
    from recbole_ckd.config import Config
    from recbole_ckd.errors import ConfigError
    from recbole_ckd.leaderboard.studies import distinct_entries, tuning_space
    from recbole_ckd.tune import finished_sweep, run_sweep

    budget = {"trials": trials, "search": search, "scheduler": scheduler}
    rows = []  # every row's folder, settings and space, checked before anything is written
    for entry in distinct_entries(entries):
        folder = os.path.join(output, dataset, "sweeps", entry.label)
        row_args = list(cmd_args) + [f"--{key}={value}" for key, value in sorted(entry.overrides.items())]
        space = tuning_space(entry, Config(entry.model, dataset, config_files, cmd_args=row_args))
        fixed = sorted({key for key, *_ in space} & _given_keys(cmd_args))
        if fixed:  # the command line outranks the tuned values: the seeds would not run with them
            raise ConfigError(f"--{fixed[0]}: a tuned study searches it (the row {entry.label}'s sweep); drop it "
                              "from the command line, or leave out --tune_trials")
        rows.append((entry, folder, row_args, space))
    for _, folder, _, _ in rows:
        os.makedirs(folder, exist_ok=True)
        _check_budget(folder, budget)
    tuned, spaces = {}, {}
    for k, (entry, folder, row_args, space) in enumerate(rows, start=1):
        row_args = row_args + _teacher_args(entry, tuned, cmd_args)
        hyper_file = os.path.join(folder, "space.test")
        with open(hyper_file, "w") as f:  # RecBole's syntax: a loguniform range is given by its exponents
            f.writelines(f"{key} {kind} " + (f"{math.log(low)!r},{math.log(high)!r}" if kind == "loguniform"
                                             else f"{low!r},{high!r}") + "\n" for key, kind, low, high in space)
        best = finished_sweep(entry.model, dataset, hyper_file, config_files, row_args, folder)
        print(f"[{k}/{len(rows)}] sweep of {entry.label}: "
              + (f"finished ({best})" if best else f"{trials} trial(s) ..."), flush=True)
        if best is None:
            best = run_sweep(entry.model, dataset, hyper_file, config_files, row_args, num_samples=trials,
                             search=search, scheduler=scheduler, cpus_per_trial=cpus_per_trial,
                             gpus_per_trial=gpus_per_trial, output=folder, ray_address=ray_address, verbose=0,
                             evaluate_best=False)["best_config_file"]
        keys = [key for key, *_ in space]
        candidates = _candidate_files(best, keys)
        tuned[entry.label] = _select(dataset, entry, candidates, keys, seeds, folder, config_files, config_dict,
                                     ray_address, cpus_per_trial, gpus_per_trial)
        _drop_unread_checkpoints(dataset, entry, best, keys, candidates, tuned[entry.label], seeds, config_files,
                                 config_dict)
        spaces[entry.label] = {key: _describe_range(kind, low, high) for key, kind, low, high in space}
    return tuned, spaces


def setting_controls(entries, tuned):
    """The plain backbone at each variant row's selected learning rate and L2 weight: each row's sweep draws
    its own points, so a variant's gain over the tuned backbone mixes its method with its setting, and this
    control separates them. Returns ``({row label: control label}, [control entries])``. A control is the row
    ``<backbone>-at-<row>``: the backbone's selected configuration with the row's values of the shared keys
    (:data:`~recbole_ckd.leaderboard.studies.SHARED_SPACE`). Rows that selected the same values share one
    control, and a row that selected the backbone's own values is compared with the backbone's row."""
    from recbole_ckd.leaderboard.studies import SHARED_SPACE, Entry
    from recbole_ckd.model import variant_backbone_name
    from recbole_ckd.settings_files import read_yaml

    controls, by_setting = {}, {}
    for entry in entries:
        backbone = variant_backbone_name(entry.model)
        if backbone not in tuned or entry.label not in tuned:
            continue
        selected, own = read_yaml(tuned[backbone]), read_yaml(tuned[entry.label])
        setting = {key: own[key] for key, *_ in SHARED_SPACE if key in own}
        if all(selected.get(key) == value for key, value in setting.items()):
            controls[entry.label] = backbone
            continue
        key = (backbone, tuple(setting.items()))
        by_setting.setdefault(key, Entry(f"{backbone}-at-{entry.label}", backbone, setting))
        controls[entry.label] = by_setting[key].label
    return controls, list(by_setting.values())


def _given_keys(cmd_args):
    return {arg[2:].split("=", 1)[0] for arg in cmd_args}


def _teacher_args(entry, tuned, cmd_args):
    """A CKD row's teachers: the learning rate and L2 weight selected for its plain backbone's row (when the
    study tuned that row and the command line does not set them)."""
    from recbole_ckd.model import ckd_backbone_name
    from recbole_ckd.settings_files import read_yaml
    from recbole_ckd.tune import TEACHER_KEYS

    backbone = ckd_backbone_name(entry.model)
    if backbone not in tuned:
        return []
    selected = read_yaml(tuned[backbone])
    return [f"--{own}={selected[key]!r}" for key, own in TEACHER_KEYS.items()
            if key in selected and own not in _given_keys(cmd_args)]


def _candidate_files(best, keys, count=CANDIDATES):
    """A row's ``count`` best finished trials on validation as configuration files, best first: the sweep's
    ``best`` file, then ``candidate-<k>.yaml`` beside it, each ``best`` with that trial's values of ``keys``."""
    from recbole_ckd.settings_files import read_yaml

    rows = _trial_rows(best)
    if count < 2 or not rows:
        return [best]
    chosen = read_yaml(best)
    done = [row for row in rows if row["status"] == "done" and _finite(row["best_valid_score"])]
    done.sort(key=lambda row: -float(row["best_valid_score"]))  # stable: a tie keeps the trials' order
    others = [row for row in done if any(float(row[key]) != chosen[key] for key in keys)]
    files = [best]
    for rank, row in enumerate(others[:count - 1], start=2):
        path = os.path.join(os.path.dirname(best), f"candidate-{rank}.yaml")
        with saving(path), open(path, "w") as f:
            f.write(f"# candidate {rank} of the sweep: trial {row['trial']}, validation {row['best_valid_score']}\n")
            yaml.safe_dump({**chosen, **{key: float(row[key]) for key in keys}}, f, sort_keys=False)
        files.append(path)
    return files


def _trial_rows(best):
    """The rows of the trial table beside a sweep's ``best`` file (none when it has no table)."""
    table = best.replace("-best.yaml", "-trials.csv")
    if not os.path.isfile(table):
        return []
    with open(table, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _finite(text):
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _select(dataset, entry, candidates, keys, seeds, folder, config_files, config_dict, ray_address, cpus, gpus):
    """The candidate file whose runs at every seed have the best mean validation score (the first on a tie).
    The runs train and validate only; their scores are kept in ``<folder>/selection/``, their checkpoints
    serve the selected candidate's cells (which then only evaluate), and ``selection.md`` shows every score."""
    from recbole_ckd.errors import Interrupted
    from recbole_ckd.leaderboard.cells import plan_cells, run_missing, write_json
    from recbole_ckd.leaderboard.statistics import mean_std
    from recbole_ckd.settings_files import read_yaml

    if len(candidates) == 1:
        return candidates[0]
    plans = [[dataclasses.replace(cell, label=f"{entry.label} candidate {rank}")  # the name in the log only
              for cell in plan_cells(dataset, [entry], seeds, config_files, config_dict, {entry.label: path})]
             for rank, path in enumerate(candidates, start=1)]
    record_dir = os.path.join(folder, "selection")

    def record_path(cell):
        return os.path.join(record_dir, f"seed{cell.seed}-{cell.key}.json")

    scores = {}
    for cell in (cell for plan in plans for cell in plan):
        if os.path.isfile(record_path(cell)):
            with open(record_path(cell), encoding="utf-8") as f:
                scores[cell] = json.load(f)["best_valid_score"]

    def finished(cell, record):
        scores[cell] = record["best_valid_score"]
        write_json({"seed": cell.seed, "run_key": cell.key, "valid_metric": record["valid_metric"],
                    "best_valid_score": scores[cell]}, record_path(cell))

    missing = [cell for plan in plans for cell in plan if cell not in scores]
    if missing:
        print(f"  selecting among the {len(candidates)} best trials of {entry.label}: {len(missing)} run(s) at the "
              "study's seeds, validation only ...", flush=True)
    try:
        run_missing(dataset, missing, finished, lambda message: print("  " + message, flush=True), ray_address,
                    cpus, gpus, evaluate_test=False)
    except KeyboardInterrupt:
        raise Interrupted(f"the selection of {entry.label}'s setting stopped; its finished runs are kept in "
                          f"{record_dir}. Run the same command again to go on.") from None
    means = [mean_std([scores[cell] for cell in plan])[0] for plan in plans]
    chosen = means.index(max(means))
    lines = [f"Best validation score of {entry.label}'s {len(candidates)} best trials at every seed; the best mean "
             "selects the row's setting.", "",
             "| candidate | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | selected |",
             "| --- |" + " --- |" * (len(seeds) + 2)]
    for rank, (path, plan, mean) in enumerate(zip(candidates, plans, means), start=1):
        values = read_yaml(path)
        lines.append(f"| {rank}: " + ", ".join(f"{key} {values[key]:.4g}" for key in keys) + " | "
                     + " | ".join(f"{scores[cell]:.4f}" for cell in plan)
                     + f" | {mean:.4f} | {'yes' if rank == chosen + 1 else ''} |")
    with saving(os.path.join(folder, "selection.md")), open(os.path.join(folder, "selection.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return candidates[chosen]


def _drop_unread_checkpoints(dataset, entry, best, keys, candidates, selected, seeds, config_files, config_dict):
    """Delete the run folders of a selected row's sweep trials and of its other candidates' seeds: only the
    ``selected`` setting's runs are read again (by its cells), and a study would otherwise keep two
    checkpoints of every trial. The CKD teachers, in their own folders, stay."""
    from recbole_ckd.config import Config
    from recbole_ckd.run_keys import default_run_dir

    def run_dir(file, settings):
        return default_run_dir(Config(entry.model, dataset, list(config_files or []) + [file],
                                      {**(config_dict or {}), **entry.overrides, **settings}))

    trials = [row for row in _trial_rows(best) if all(_finite(row[key]) for key in keys)]
    unread = {run_dir(best, {key: float(row[key]) for key in keys}) for row in trials}  # at the sweep's seed
    unread |= {run_dir(path, {"seed": seed}) for path in candidates for seed in seeds}
    unread -= {run_dir(selected, {"seed": seed}) for seed in seeds}
    present = sorted(folder for folder in unread if os.path.isdir(folder))
    for folder in present:
        shutil.rmtree(folder)
    if present:
        print(f"  {entry.label}: removed the checkpoints of {len(present)} trial and candidate run(s) no cell reads",
              flush=True)


def _check_budget(folder, budget):
    """Record a row's sweep budget in its folder, or refuse another one: Ray resumes (or reuses) a sweep
    with the budget it began with, which the page would then misstate."""
    from recbole_ckd.errors import ConfigError
    from recbole_ckd.settings_files import read_yaml

    path = os.path.join(folder, "budget.yaml")
    if os.path.isfile(path):
        recorded = read_yaml(path)
        if recorded != budget:
            raise ConfigError(f"--tune_trials={budget['trials']} --search={budget['search']} --scheduler="
                              f"{budget['scheduler']}: {folder} holds a sweep of another budget "
                              f"({_budget_text(recorded)}); give that budget, or another --output, or delete the "
                              "folder to tune again.")
        return
    with saving(path), open(path, "w") as f:
        yaml.safe_dump(budget, f, sort_keys=False)


def _budget_text(budget):
    return ", ".join(f"{key} {value}" for key, value in budget.items()) if isinstance(budget, dict) else str(budget)
