"""The ``--leaderboard`` command: its ``--seeds`` and ``--models`` parsed, every cell run (or reused) and the page written."""

from recbole_ckd.leaderboard.cells import run_cells
from recbole_ckd.leaderboard.page import write_page
from recbole_ckd.leaderboard.studies import FIRST_SEED, as_entry, study_entries
from recbole_ckd.leaderboard.sweeps import setting_controls, tune_study, tuned_configs


def run_leaderboard(dataset, models, seeds, output="results", config_files=None, cmd_args=(), sweeps_dir=None,
                    study=None, ray_address=None, cpus_per_cell=None, gpus_per_cell=None, tune_trials=None,
                    search="random", scheduler="none"):
    """Run (or reuse) every cell and write the page; returns the page path. With ``study``,
    ``models`` are backbones and every entry of the study runs for each (:func:`study_entries`); with
    ``tune_trials`` too, each entry first gets its own sweep of that many trials (:func:`tune_study`)
    and its seeds run with the setting selected on validation, and so does the plain backbone at each
    variant's selected learning rate and L2 weight (:func:`setting_controls`)."""
    from recbole_ckd.config import Config

    entries = study_entries(study, models) if study else [as_entry(m) for m in models]
    config_dict = {}
    if cmd_args:
        config_dict = dict(Config(entries[0].model, dataset, config_files, cmd_args=cmd_args).cmd_config_dict)
    tuned, spaces, budget, controls, control_entries = {}, {}, None, {}, []
    if tune_trials:
        tuned, spaces = tune_study(dataset, entries, tune_trials, seeds, output, config_files, cmd_args, config_dict,
                                   search, scheduler, 1.0 if cpus_per_cell is None else cpus_per_cell,
                                   gpus_per_cell or 0.0, ray_address)
        budget = {"trials": tune_trials, "search": search, "scheduler": scheduler}
        controls, control_entries = setting_controls(entries, tuned)
    elif sweeps_dir:
        tuned, spaces = tuned_configs(sweeps_dir, dataset, sorted({e.model for e in entries}))
    cells = run_cells(dataset, entries + control_entries, seeds, output, config_files, config_dict, tuned,
                      ray_address=ray_address, cpus_per_cell=cpus_per_cell, gpus_per_cell=gpus_per_cell)
    control_cells = {entry.label: cells.pop(entry.label) for entry in control_entries}
    page = write_page(dataset, cells, output, config_files, config_dict, tuned, spaces, study, budget,
                      {row: (label, control_cells.get(label) or cells[label]) for row, label in controls.items()})
    print(f"leaderboard: {page}")
    return page


MAX_SEED_COUNT = 100


def parse_seeds(text, base=FIRST_SEED):
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
        outside = [s for s in seeds if not 0 <= s <= 2**32 - 1]
        if outside:
            raise ValueError(f"--seeds={text}: seed(s) {outside} outside [0, 2**32 - 1] (numpy's seeds); give others")
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
    """``BPR,VBPR`` (or ``bpr,vbpr``) -> ["BPR", "VBPR"]: each model once, every name resolved before any
    cell runs."""
    from recbole_ckd.registry import canonical_model_name, get_model

    try:
        models = [canonical_model_name(m.strip()) for m in str(text).split(",") if m.strip()]
    except ValueError as err:
        raise ValueError(f"--models: {err}") from None
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
