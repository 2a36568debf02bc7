"""Leaderboards: many models over many seeds, one protocol, one page.

Every cell (model, seed) is an ordinary run (:func:`recbole_ckd.quick_start.run`) and is
cached as JSON under ``<output>/<dataset>/cells/``: rerunning after an interruption or after
adding a model only runs what is missing. The page ``<output>/<dataset>.md`` follows RecBole's
result pages: the experimental setting, the properties used, dataset statistics, a method x
metric table (mean and standard deviation over seeds), each ``_CKD`` model against its
backbone with a paired test across seeds, published reference numbers where they exist, tuned
values next to their ranges, and diagnostic plots.

The modules: :mod:`~recbole_ckd.leaderboard.studies` (what runs), :mod:`~recbole_ckd.leaderboard.cells`
(running and caching it), :mod:`~recbole_ckd.leaderboard.statistics`, :mod:`~recbole_ckd.leaderboard.tables`,
:mod:`~recbole_ckd.leaderboard.plots`, :mod:`~recbole_ckd.leaderboard.published` (the reference numbers and
their sources) and :mod:`~recbole_ckd.leaderboard.page` (the page),
:mod:`~recbole_ckd.leaderboard.sweeps` (tuned configurations, and a tuned study's sweeps) and
:mod:`~recbole_ckd.leaderboard.command` (``--leaderboard``).
"""

from recbole_ckd.leaderboard.cells import Cell, cells_at_once, plan_cells, recorded_run_key, run_cells, run_plan
from recbole_ckd.leaderboard.command import MAX_SEED_COUNT, parse_models, parse_seeds, run_leaderboard
from recbole_ckd.leaderboard.page import PROTOCOL_TEXT, STATISTICS_ORDER, write_page
from recbole_ckd.leaderboard.plots import plot_modalities, plot_study_modalities, plot_weights, study_modes
from recbole_ckd.leaderboard.published import PUBLISHED, SOURCES
from recbole_ckd.leaderboard.statistics import mean_std, paired_t_test, relative_improvement
from recbole_ckd.leaderboard.studies import (
    BALANCING_STUDY,
    METHOD_SPACES,
    SHARED_SPACE,
    STUDIES,
    Entry,
    as_entry,
    study_entries,
    tuning_space,
)
from recbole_ckd.leaderboard.sweeps import tune_study, tuned_configs
from recbole_ckd.leaderboard.tables import (
    TABLE_METRICS,
    ablation_comparisons,
    comparison_table,
    method_table,
    summarize,
    variant_comparisons,
)

__all__ = [
    "BALANCING_STUDY", "Cell", "Entry", "MAX_SEED_COUNT", "METHOD_SPACES", "PROTOCOL_TEXT", "PUBLISHED",
    "SHARED_SPACE", "SOURCES", "STATISTICS_ORDER", "STUDIES", "TABLE_METRICS", "ablation_comparisons", "as_entry",
    "cells_at_once", "comparison_table", "mean_std", "method_table", "paired_t_test", "parse_models", "parse_seeds", "plan_cells",
    "plot_modalities", "plot_study_modalities", "plot_weights", "recorded_run_key", "relative_improvement",
    "run_cells", "run_leaderboard", "run_plan", "study_entries", "study_modes", "summarize", "tune_study",
    "tuned_configs", "tuning_space", "variant_comparisons", "write_page",
]
