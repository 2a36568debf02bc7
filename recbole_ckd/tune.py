"""Sweeps: a RecBole-style ``hyper.test`` searched with Ray Tune, selected on validation only.

A trial is one ordinary run (:func:`recbole_ckd.quick_start.run`) with the trial's values in
its config dict: it reports the validation metric after every validation and never touches
the test set. Teachers of a CKD model are trained once before the trials start (or, when the
sweep changes teacher-side keys, once per distinct setting, under a file lock). After the
search, the best configuration is chosen on validation, written as a YAML file that
``--config_files`` accepts, and only then evaluated on the test set.
"""

import ast
import csv
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from recbole_ckd.cluster import ray_session, require_ray, sigterm_as_sigint
from recbole_ckd.errors import DiskFull, Interrupted, UserError, saving
from recbole_ckd.run_keys import CKD_KEYS
from recbole_ckd.sweep_signing import (
    check_sweep_folder,
    check_sweep_key,
    check_sweep_signature,
    record_sweep,
    sign_sweep,
    sweep_digest,
)

HYPER_TYPES = ("choice", "uniform", "loguniform", "quniform")
SEARCH_ALGORITHMS = ("random", "grid", "optuna", "hyperopt")
# Keys a sweep of a CKD model searches for the student only: the teachers keep the configured value,
# through their own key, and so are trained once for every trial.
TEACHER_KEYS = {"learning_rate": "teacher_learning_rate", "reg_weight": "teacher_reg_weight"}
SHIPPED_HYPER_FILE = Path(__file__).resolve().parent / "hyper.test"  # the top-level hyper.test, in a wheel too


class HyperFileError(UserError, ValueError):
    """A malformed hyper.test line; the message names the file and the line."""


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    values: tuple
    line: int

    def describe(self):
        return f"{self.kind} {list(self.values)}"


def _numbers(text, count, where):
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count:
        raise HyperFileError(f"{where}: expected {count} comma-separated numbers, got {text!r}")
    return values


def resolve_hyper_file(path):
    """``path`` as given, or, when no such file is here and it is the bare name of the sweep space
    recbole-ckd ships (``--hyper=hyper.test``), that installed file."""
    if os.path.exists(path) or path != SHIPPED_HYPER_FILE.name:
        return path
    print(f"--hyper={path}: not in {os.getcwd()}; using the sweep space recbole-ckd ships: {SHIPPED_HYPER_FILE}", flush=True)
    return str(SHIPPED_HYPER_FILE)


def parse_hyper_file(path):
    """``{name: Param}`` from RecBole's syntax: ``name choice [..]``, ``name uniform a,b``,
    ``name loguniform a,b`` (exponents, as in RecBole: the value is ``exp(uniform(a, b))``),
    ``name quniform a,b,q``. Blank lines and ``#`` comments are skipped; fields may be
    separated by spaces or tabs."""
    params = {}
    try:
        with open(path, "r", encoding="utf-8-sig") as f:  # -sig: a BOM an editor put first is not part of a name
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as err:
        raise HyperFileError(f"--hyper={path}: cannot be read ({getattr(err, 'strerror', None) or err}); give a "
                             "hyper.test file, one parameter per line.") from None
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}, line {number}"
        fields = line.split(None, 2)
        if len(fields) < 3:
            raise HyperFileError(f"{where}: expected '<name> <type> <values>', got {line!r}")
        name, kind, text = fields[0], fields[1], "".join(fields[2].split())
        if kind == "choice":
            try:
                values = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise HyperFileError(f"{where}: choice values must be a Python list like [0.1,0.2], got {text!r}") from None
            if not isinstance(values, list) or not values:
                raise HyperFileError(f"{where}: choice values must be a non-empty list, got {text!r}")
            values = tuple(values)
        elif kind in ("uniform", "loguniform"):
            values = _numbers(text, 2, where)
            if values[0] >= values[1]:
                raise HyperFileError(f"{where}: {kind} needs low < high, got {text!r}")
        elif kind == "quniform":
            values = _numbers(text, 3, where)
            if values[0] >= values[1] or values[2] <= 0:
                raise HyperFileError(f"{where}: quniform needs low < high and q > 0, got {text!r}")
        else:
            raise HyperFileError(f"{where}: unknown type {kind!r}; use one of {', '.join(HYPER_TYPES)}")
        if name in params:
            raise HyperFileError(f"{where}: {name!r} is already defined on line {params[name].line}")
        params[name] = Param(name, kind, values, number)
    if not params:
        raise HyperFileError(f"{path}: no parameters to search")
    return params


def search_space(params, algorithm="random"):
    """Ray Tune domains for the parsed parameters; ``grid`` turns every choice into a grid."""
    from ray import tune

    space = {}
    for p in params.values():
        if p.kind == "choice":
            space[p.name] = tune.grid_search(list(p.values)) if algorithm == "grid" else tune.choice(list(p.values))
        elif p.kind == "uniform":
            space[p.name] = tune.uniform(*p.values)
        elif p.kind == "loguniform":
            space[p.name] = tune.loguniform(math.exp(p.values[0]), math.exp(p.values[1]))
        else:
            space[p.name] = tune.quniform(*p.values)
    return space


def check_space(params, hyper_file, make_config):
    """Build a trial's Config for every choice and both ends of every range (and a step of a quniform
    one), so that an unknown key or a value out of its range is refused, naming its line, before
    anything is trained."""
    from recbole_ckd.errors import ConfigError

    for p in params.values():
        if p.kind == "choice":
            candidates = list(p.values)
        elif p.kind == "loguniform":
            candidates = [math.exp(v) for v in p.values]
        elif p.kind == "quniform":  # the values Ray draws are multiples of q: both ends and the step
            low, high, q = p.values
            candidates = [round(low / q) * q, round(high / q) * q, (round(low / q) + 1) * q]
        else:
            candidates = list(p.values)
        for value in candidates:
            try:
                make_config({p.name: value})
            except ConfigError as err:
                raise HyperFileError(f"{hyper_file}, line {p.line}: {p.name} = {value!r} is refused: {err}") from None


def make_searcher(algorithm, metric, mode, seed):
    """Ray's variant generator for random and grid, or a Bayesian searcher if installed; each draws from
    ``seed`` (the config's), so the same sweep tries the same settings on every run."""
    if algorithm in ("random", "grid"):
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed)
    try:
        if algorithm == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            return OptunaSearch(metric=metric, mode=mode, seed=seed)
        if algorithm == "hyperopt":
            from ray.tune.search.hyperopt import HyperOptSearch

            return HyperOptSearch(metric=metric, mode=mode, random_state_seed=seed)
    except (ImportError, AssertionError) as err:
        raise HyperFileError(f"--search={algorithm} needs the package: pip install {algorithm} ({err})") from None
    raise HyperFileError(f"Unknown search algorithm {algorithm!r}; use one of {', '.join(SEARCH_ALGORITHMS)}")


# ----------------------------------------------------------------------------- the trial
def trial(params, base):
    """One sweep trial, inside a Ray worker: an ordinary run reporting validation only."""
    from recbole_ckd import compat
    from recbole_ckd.cluster import assigned_devices
    from recbole_ckd.quick_start import run

    report_metrics = compat.ray_tune_api().report
    config_dict = {**base["config_dict"], **params, **assigned_devices(), "show_progress": False}
    bigger = base["bigger"]
    best = {"score": None, "epoch": None, "last": 0}

    def report(epoch, valid_score):
        if best["score"] is None or (valid_score > best["score"] if bigger else valid_score < best["score"]):
            best.update(score=valid_score, epoch=epoch)
        best["last"] = epoch + 1
        report_metrics({"valid_score": valid_score, "best_valid_score": best["score"], "best_epoch": best["epoch"],
                        "epoch": epoch + 1})

    result = run(base["model"], base["dataset"], base["config_files"], config_dict, callback_fn=report,
                 evaluate_test=False)
    if result["best_valid_score"] != best["score"]:
        # the trial resumed and its best validation came before the interruption (or it had finished):
        # the trainer's best, restored from its checkpoint, is the trial's result
        report_metrics({"valid_score": result["best_valid_score"], "best_valid_score": result["best_valid_score"],
                        "best_epoch": None, "epoch": best["last"]})


# ----------------------------------------------------------------------------- the sweep
def select_best(trials, bigger=True):
    """The trial with the best validation score; test results play no part."""
    finished = [t for t in trials if t.get("best_valid_score") is not None and t.get("status") == "done"]
    if not finished:
        raise UserError("No trial reported a validation score; see the errors in the trial table above.")
    return (max if bigger else min)(finished, key=lambda t: t["best_valid_score"])


def trial_table(trials, param_names, metric):
    """The trials as markdown: parameters, best validation metric and its epoch, status."""
    head = ["trial", *param_names, f"best valid {metric}", "epoch", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for t in trials:
        score = t.get("best_valid_score")
        cells = [t["trial_id"], *[_fmt(t["params"].get(n)) for n in param_names],
                 "-" if score is None else f"{score:.4f}", _fmt(t.get("best_epoch")),
                 t["status"] + (f": {t['error']}" if t.get("error") else "")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _fmt(value):
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _ray_trials(results):
    """Ray's trial of each result, which keeps the id and configuration of a trial that never
    reported (its result has neither): a result grid lists its experiment's trials in order."""
    trials = list(getattr(getattr(results, "_experiment_analysis", None), "trials", None) or [])
    return trials if len(trials) == len(results) else [None] * len(results)


def _collect(results):
    trials = []
    for result, ray_trial in zip(results, _ray_trials(results)):
        metrics = result.metrics or {}
        error = result.error
        # Ray marks a trial's last result done when it returned or a scheduler stopped it; a trial
        # interrupted (Ctrl-C, SIGTERM) or never started has no such result, whatever its status says.
        # A trial stopped by a full disk is unfinished too: its setting is not at fault, and it resumes.
        status = ("unfinished" if _disk_full(error) else "ERROR") if error else "done" if metrics.get("done") \
            else "unfinished"
        trials.append({
            "trial_id": metrics.get("trial_id") or getattr(ray_trial, "trial_id", None)
            or os.path.basename(str(result.path or "")),
            "params": dict(result.config or getattr(ray_trial, "config", None) or {}),
            "best_valid_score": metrics.get("best_valid_score"),
            "best_epoch": None if metrics.get("best_epoch") is None else int(metrics["best_epoch"]),
            "epochs": metrics.get("epoch"),
            "status": status,
            "error": (str(error).strip().splitlines() or [""])[-1][:200] if error else None,
        })
    return trials


def _disk_full(error):
    """Whether a trial's error is :class:`~recbole_ckd.errors.DiskFull`: Ray hands it back as itself, as the
    cause of its task error, or (when it could not unpickle it) as that error's text."""
    return (isinstance(error, DiskFull) or isinstance(getattr(error, "cause", None), DiskFull)
            or f"{DiskFull.__module__}.{DiskFull.__name__}:" in str(error))


def run_sweep(model, dataset, hyper_file, config_files=None, cmd_args=(), num_samples=4, search="random",
              scheduler="none", cpus_per_trial=1.0, gpus_per_trial=0.0, output="sweeps", ray_address=None,
              max_epochs_asha=None, verbose=1, evaluate_best=True):
    """Run the sweep and return ``{"trials", "best", "best_config_file", "test_result"}``; with
    ``evaluate_best=False`` the selected configuration is not run on the test set (test_result None:
    a tuned leaderboard's seeds evaluate it)."""
    from recbole_ckd.quick_start import run
    from recbole_ckd.reports import format_report

    hyper_file = resolve_hyper_file(hyper_file)
    params = parse_hyper_file(hyper_file)
    if search not in SEARCH_ALGORITHMS:
        raise HyperFileError(f"--search={search}: unknown search algorithm; use one of {', '.join(SEARCH_ALGORITHMS)}")
    tune = require_ray("--hyper", tune=True).tune
    output = os.path.abspath(output)
    name = f"{model}-{dataset}"
    path = os.path.join(output, name)
    resume = tune.Tuner.can_restore(path)
    if resume:  # before anything else runs: Ray's resume state is pickles
        check_sweep_signature(path)
    check_sweep_key()  # now, not when the sweep signs its folder after training
    config_files = [os.path.abspath(f) for f in (config_files or [])]
    overrides, base_dict = _trial_settings(model, dataset, params, hyper_file, config_files, cmd_args)
    digest = sweep_digest(params, model, dataset, overrides)
    check_sweep_folder(path, digest)  # before anything is trained: a rerun with another space, model or config
    early_stopping = _early_stopping(scheduler, overrides, max_epochs_asha)
    _train_teachers_once(model, dataset, params, config_files, overrides, base_dict)
    base = {"model": model, "dataset": dataset, "config_files": config_files or None, "config_dict": base_dict,
            "bigger": overrides["valid_metric_bigger"]}
    record_sweep(path, digest)
    results = _fit(base, params, search, overrides["seed"], num_samples, early_stopping, cpus_per_trial,
                   gpus_per_trial, output, name, resume, ray_address, verbose)

    trials = _collect(results)
    table = trial_table(trials, list(params), overrides["valid_metric"])
    print(table, flush=True)
    unfinished = [t for t in trials if t["status"] == "unfinished"]
    if unfinished:  # no selection and no test set on a partial search
        disk = " (some on a full disk: free some space first)" if any(t["error"] for t in unfinished) else ""
        raise Interrupted(
            f"the sweep stopped with {len(unfinished)} of {len(trials)} trials unfinished{disk}; its state is saved "
            f"in {path}. Run the same command again (same --output) to resume it; the best configuration and its "
            "test result come only when every trial has ended."
        )
    best = select_best(trials, overrides["valid_metric_bigger"])
    best_config_file = _write_outputs(output, name, trials, params, table, best,
                                      {"model": model, "dataset": dataset, **base_dict}, overrides["valid_metric"])
    print(f"best configuration (validation only): {best_config_file}", flush=True)
    if not evaluate_best:
        return {"trials": trials, "best": best, "best_config_file": best_config_file, "test_result": None}
    # the test set is used once, for the selected configuration (its trial's checkpoint resumes)
    test = run(model, dataset, config_files + [best_config_file], {"show_progress": False})
    print(format_report(test), flush=True)
    return {"trials": trials, "best": best, "best_config_file": best_config_file, "test_result": test}


def finished_sweep(model, dataset, hyper_file, config_files=None, cmd_args=(), output="sweeps"):
    """The best configuration file of this very sweep (same space, model, dataset and config) when
    ``output`` holds it finished, else None: a rerun then needs neither Ray nor training. A folder
    holding another sweep is refused, as :func:`run_sweep` refuses it."""
    name = f"{model}-{dataset}"
    path, best = os.path.join(os.path.abspath(output), name), os.path.join(os.path.abspath(output), f"{name}-best.yaml")
    if not os.path.isfile(best):
        return None
    params = parse_hyper_file(hyper_file)
    config_files = [os.path.abspath(f) for f in (config_files or [])]
    overrides, _ = _trial_settings(model, dataset, params, hyper_file, config_files, cmd_args)
    check_sweep_folder(path, sweep_digest(params, model, dataset, overrides))  # another sweep: refused
    return best  # plain YAML: nothing of Ray's state is loaded


def _trial_settings(model, dataset, params, hyper_file, config_files, cmd_args):
    """``(the resolved config, the dict every trial starts from)``; the space is checked against it."""
    from recbole_ckd.config import Config
    from recbole_ckd.model import ckd_backbone_name

    overrides = Config(model, dataset, config_files or None, cmd_args=cmd_args)  # validates, resolves paths
    base_dict = {key: overrides.final_config_dict[key] for key in overrides.cmd_config_dict}
    # absolute paths: Ray workers run in their own folders (Config's data_path ends in the dataset)
    base_dict.update(data_path=os.path.dirname(overrides["data_path"]), checkpoint_dir=overrides["checkpoint_dir"])
    # trials must never delete the shared teachers, whether a config file or the command line asks
    base_dict["retrain_teachers"] = False
    check_space(params, hyper_file, lambda values: Config(model, dataset, config_files or None, {**base_dict, **values}))
    if ckd_backbone_name(model) is not None:
        for key, own_key in TEACHER_KEYS.items():
            if key in params and overrides[own_key] is None:
                # the swept value is the student's: keep the teachers at the configured one
                base_dict[own_key] = overrides[key]
    return overrides, base_dict


def _train_teachers_once(model, dataset, params, config_files, overrides, base_dict):
    """A CKD model's teachers, trained (or loaded) once before the trials when no swept key can change them."""
    from recbole_ckd.model import ckd_backbone_name
    from recbole_ckd.quick_start import train_teachers

    if ckd_backbone_name(model) is not None and set(params) <= (CKD_KEYS - set(TEACHER_KEYS.values())) | set(TEACHER_KEYS):
        print("Training (or loading) the teachers once, before the trials ...", flush=True)
        teacher_dict = {**base_dict, "retrain_teachers": overrides["retrain_teachers"]}
        for label, folder in train_teachers(model, dataset, config_files or None, teacher_dict).items():
            print(f"  {label}: {folder}", flush=True)


def _early_stopping(scheduler, overrides, max_epochs_asha):
    """Ray's ASHA scheduler for ``--scheduler=asha``, None for ``none``."""
    from ray import tune

    if scheduler == "none":
        return None
    if scheduler != "asha":
        raise HyperFileError(f"--scheduler={scheduler}: unknown scheduler; use 'asha' or 'none'")
    max_t = max_epochs_asha or overrides["epochs"]
    # a trial gets at least half its patience before ASHA may stop it
    return tune.schedulers.ASHAScheduler(time_attr="epoch", max_t=max_t,
                                         grace_period=min(max_t, max(1, overrides["stopping_step"] // 2)))


def _fit(base, params, search, seed, num_samples, early_stopping, cpus_per_trial, gpus_per_trial, output, name, resume,
         ray_address, verbose):
    """Ray Tune's results of the trials (a new sweep, or the saved one resumed); the folder is signed
    once Ray has stopped writing it."""
    from ray import tune

    from recbole_ckd.compat import ray_tune_api

    api = ray_tune_api()
    # a trial stopped before its first validation has no result files; the newest Ray warns of each
    # one when it restores (or ends) the sweep, and the trial table already marks it unfinished
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    path = os.path.join(output, name)
    metric, mode = "valid_score", "max" if base["bigger"] else "min"
    trainable = tune.with_resources(tune.with_parameters(trial, base=base),
                                    {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    fitting = False
    try:
        with ray_session(ray_address, "--hyper", gpus_per_trial):
            if resume:
                print(f"Resuming the sweep in {path}", flush=True)
                tuner = tune.Tuner.restore(path, trainable, resume_errored=True)
            else:
                tuner = tune.Tuner(
                    trainable,
                    param_space=search_space(params, search),
                    tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=num_samples,
                                                search_alg=make_searcher(search, metric, mode, seed),
                                                scheduler=early_stopping),
                    run_config=api.RunConfig(name=name, storage_path=output, verbose=verbose,
                                             failure_config=api.FailureConfig(max_failures=0, fail_fast=False)),
                )
            fitting = True
            with sigterm_as_sigint():  # Ray stops on SIGINT, saving the state of every trial
                results = tuner.fit()
        sign_sweep(path)  # once Ray has stopped writing: the state this sweep leaves may be resumed
    except KeyboardInterrupt:
        if not fitting:
            raise
        # a second Ctrl-C (the first one stops Ray, which saves and returns): during Ray's last save, Ray's
        # shutdown or the signing; either way the folder is not signed, and a resume would refuse it
        raise Interrupted(f"the sweep was stopped before Ray saved its state, so {path} cannot be resumed; delete "
                          "it and run the command again (finished teachers and trial checkpoints are reused).") from None
    return results


def _write_outputs(output, name, trials, params, table, best, settings, valid_metric):
    """The trial table (markdown, CSV), the searched ranges and the best configuration
    (``settings`` plus the best trial's values, a file ``--config_files`` accepts); returns its path."""
    os.makedirs(output, exist_ok=True)
    with saving(output), open(os.path.join(output, f"{name}-trials.md"), "w") as f:
        f.write(table + "\n")
    with saving(output), open(os.path.join(output, f"{name}-trials.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", *params, "best_valid_score", "best_epoch", "status", "error"])
        for t in trials:
            writer.writerow([t["trial_id"], *[t["params"].get(n) for n in params], t["best_valid_score"],
                             t["best_epoch"], t["status"], t["error"] or ""])
    with saving(output), open(os.path.join(output, f"{name}-space.yaml"), "w") as f:  # the ranges, for the leaderboard
        yaml.safe_dump({p.name: p.describe() for p in params.values()}, f, sort_keys=False)
    best_config_file = os.path.join(output, f"{name}-best.yaml")
    with saving(best_config_file), open(best_config_file, "w") as f:
        f.write(f"# best of the sweep {name} on validation {valid_metric} "
                f"({best['best_valid_score']:.4f}, trial {best['trial_id']})\n")
        yaml.safe_dump({k: _plain(v) for k, v in {**settings, **best["params"]}.items()}, f, sort_keys=False)
    return best_config_file


def _plain(value):
    """YAML-safe plain values (numpy scalars from the searchers become Python numbers)."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
