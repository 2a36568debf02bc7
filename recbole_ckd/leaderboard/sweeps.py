"""Tuned configurations: those a leaderboard takes from the sweeps' folder, and a tuned study's own sweeps."""

import math
import os

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


def tuned_file(tuned, label, model):
    """The tuned configuration of a row: its own (a tuned study's), else its model's (``--sweeps``)."""
    return (tuned or {}).get(label) or (tuned or {}).get(model)


def _describe_range(kind, low, high):
    return f"{kind} [{low:g}, {high:g}]"


def tune_study(dataset, entries, trials, output, config_files=None, cmd_args=(), search="random", scheduler="none",
               cpus_per_trial=1.0, gpus_per_trial=0.0, ray_address=None):
    """Each row's own sweep (:func:`recbole_ckd.tune.run_sweep`) over its space
    (:func:`~recbole_ckd.leaderboard.studies.tuning_space`), ``trials`` trials each, selected on validation
    only, in ``<output>/<dataset>/sweeps/<label>/``; a finished one is reused. Returns ``(tuned, spaces)``
    keyed by row label: the selected configuration files and ``{key: range}``."""
    from recbole_ckd.config import Config
    from recbole_ckd.errors import ConfigError
    from recbole_ckd.leaderboard.studies import tuning_space
    from recbole_ckd.tune import finished_sweep, run_sweep

    budget = {"trials": trials, "search": search, "scheduler": scheduler}
    rows = []  # every row's folder, settings and space, checked before anything is written
    for entry in entries:
        folder = os.path.join(output, dataset, "sweeps", entry.label)
        row_args = list(cmd_args) + [f"--{key}={value}" for key, value in sorted(entry.overrides.items())]
        space = tuning_space(entry, Config(entry.model, dataset, config_files, cmd_args=row_args))
        fixed = sorted({key for key, *_ in space} & {arg[2:].split("=", 1)[0] for arg in cmd_args})
        if fixed:  # the command line outranks the tuned values: the seeds would not run with them
            raise ConfigError(f"--{fixed[0]}: a tuned study searches it (the row {entry.label}'s sweep); drop it "
                              "from the command line, or leave out --tune_trials")
        rows.append((entry, folder, row_args, space))
    for _, folder, _, _ in rows:
        os.makedirs(folder, exist_ok=True)
        _check_budget(folder, budget)
    tuned, spaces = {}, {}
    for k, (entry, folder, row_args, space) in enumerate(rows, start=1):
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
        tuned[entry.label] = best
        spaces[entry.label] = {key: _describe_range(kind, low, high) for key, kind, low, high in space}
    return tuned, spaces


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
