"""Every patch that RecBole 1.2.1 needs against today's packages, in one place.

Each patch is guarded: it only acts where the installed package lacks what RecBole expects,
so on the stack RecBole was written for (numpy 1.26, scipy < 1.13, torch < 2.6, pandas 2) it is a
no-op. The one switch that is not about RecBole, the Ray Tune API of the installed Ray, is here too.

| trigger | what breaks in RecBole 1.2.1 | what this module does |
| --- | --- | --- |
| numpy >= 2 | ``Config`` runs ``np.float = np.float_`` (and ``complex_``, ``unicode_``); ray 2.6 uses ``np.bool8`` | restore the removed aliases |
| scipy >= 1.13 | LightGCN calls ``dok_matrix._update`` | give ``dok_matrix`` an ``_update`` |
| torch >= 2.6 | ``torch.load`` of RecBole's pickled checkpoints (``weights_only``) | :func:`save_checkpoint` / :func:`load_checkpoint`: tensors and plain metadata, loaded with ``weights_only=True``; the plugin's trainers use them for every model, RecBole's included |
| ``Config`` reads ``sys.argv`` | breaks inside Ray workers and in library use | :class:`recbole_ckd.config.Config` takes the command line as an argument (``cmd_args``); ``None`` means no command line |
| pandas >= 3 | RecBole's NaN filling (``feat[field].fillna(inplace=True)``) does nothing under copy-on-write and prints a ``ChainedAssignmentError`` per column | :func:`_fill_nan` assigns the filled columns; the multimodal dataset also validates its inputs |
| ``init_logger`` (any version) | a second run in one process (a leaderboard, the tests) opens a log file that ``logging.basicConfig`` never attaches (a leaked file, a ``ResourceWarning``), and logs into the first run's file | :func:`init_logger`: the previous run's handlers are closed first, and an unattached log file is never opened |
| pandas >= 2.2, torch >= 2.4 | every run prints FutureWarnings from RecBole's own code (chained ``fillna(inplace=True)``, ``torch.cuda.amp.GradScaler``) that its users cannot act on | those FutureWarnings, raised in RecBole's modules only, are not shown |
| pandas >= 3 | every run prints ``Pandas4Warning`` (RecBole's ``reset_index(inplace=True)``) and torch's "NumPy array is not writable" ``UserWarning`` (RecBole turns each read-only column into a tensor, then drops the DataFrame) | those two, raised in RecBole's modules only, are not shown |
| numpy >= 2 | ``Interaction.sort`` sorts a tensor with ``np.argsort``: a ``__array_wrap__`` ``DeprecationWarning`` per sort | :func:`_interaction_sort`: the same stable sort with ``torch.argsort`` |
| ``ensure_dir`` (any version) | it checks, then creates: two runs that start together in a fresh folder (parallel leaderboard cells, sweep trials) race, and one dies with ``FileExistsError`` | :func:`_ensure_dir`: ``os.makedirs(..., exist_ok=True)`` in every RecBole module that imported it |
| Ray with ``ray.tune.RunConfig`` (the newest, 2.60; not RecBole's doing) | ``ray.air.session.report`` and ``ray.air.RunConfig`` are deprecated ("will be an error"); ``ray.tune`` has ``report``, ``RunConfig`` and ``FailureConfig`` | :func:`ray_tune_api`: ``ray.tune``'s where it has ``RunConfig``, ``ray.air``'s on the pinned 2.6.3 |
"""

import logging
import os
import tempfile
import warnings
from typing import Callable, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from recbole_ckd.errors import UserError, saving

_NUMPY_ALIASES = {
    "float_": "float64",
    "complex_": "complex128",
    "unicode_": "str_",
    "bool8": "bool_",
}


def _patch_numpy():
    for old, new in _NUMPY_ALIASES.items():
        with warnings.catch_warnings():  # numpy 1.24+ warns on access to the deprecated names
            warnings.simplefilter("ignore", DeprecationWarning)
            present = hasattr(np, old)
        if not present:
            setattr(np, old, getattr(np, new))


def _dok_update(self, data):
    """What ``dok_matrix._update`` did before scipy 1.13: a bulk dict update, no checks."""
    if hasattr(self, "_dict"):
        self._dict.update(data)
    else:
        for key, value in data.items():
            self[key] = value


def _patch_scipy():
    if not hasattr(sp.dok_matrix, "_update"):
        sp.dok_matrix._update = _dok_update


def _major(module):
    return int(module.__version__.split(".")[0])


def _fill_nan(self):
    """RecBole's ``Dataset._fill_nan`` with the filled columns assigned back: under pandas 3's
    copy-on-write its ``feat[field].fillna(inplace=True)`` fills a copy and leaves the NaNs."""
    from recbole.utils import FeatureType

    for feat_name in self.feat_name_list:
        feat = getattr(self, feat_name)
        for field in feat:
            ftype = self.field2type[field]
            if ftype == FeatureType.TOKEN:
                feat[field] = feat[field].fillna(value=0)
            elif ftype == FeatureType.FLOAT:
                feat[field] = feat[field].fillna(value=feat[field].mean())
            else:
                dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                feat[field] = feat[field].apply(lambda x: np.array([], dtype=dtype) if isinstance(x, float) else x)


def _patch_pandas():
    import pandas as pd

    if _major(pd) < 3:
        return
    from recbole.data.dataset import Dataset

    Dataset._fill_nan = _fill_nan
    for message, category in (("", getattr(pd.errors, "Pandas4Warning", DeprecationWarning)),
                              ("The given NumPy array is not writable", UserWarning)):
        warnings.filterwarnings("ignore", message=message, category=category, module=r"recbole\.")


def _interaction_sort(self, by, ascending=True):
    """RecBole's ``Interaction.sort`` (stable, last key first) with ``torch.argsort``: numpy 2
    deprecates how ``np.argsort`` hands a tensor back."""
    by = [by] if isinstance(by, str) else by
    ascending = [ascending] if isinstance(ascending, bool) else ascending
    if not isinstance(by, (list, tuple)) or not isinstance(ascending, (list, tuple)):
        raise TypeError(f"Wrong type of by [{by}] or ascending [{ascending}].")
    missing = [b for b in by if b not in self.interaction]
    if missing:
        raise ValueError(f"[{missing[0]}] is not exist in interaction [{self}].")
    if len(ascending) == 1:
        ascending = list(ascending) * len(by)
    if len(by) != len(ascending):
        raise ValueError(f"by [{by}] and ascending [{ascending}] should have same length.")
    for b, a in zip(by[::-1], ascending[::-1]):
        key = self.interaction[b] if self.interaction[b].dim() == 1 else self.interaction[b][..., 0]
        index = torch.argsort(key, stable=True)
        self._reindex(index if a else index.flip(0))


def _patch_interaction_sort():
    if _major(np) >= 2:
        from recbole.data.interaction import Interaction

        Interaction.sort = _interaction_sort


def _ensure_dir(dir_path):
    """RecBole's ``ensure_dir`` without the race between its check and its ``makedirs``."""
    os.makedirs(dir_path, exist_ok=True)


def _patch_ensure_dir():
    import recbole.data.dataset.dataset
    import recbole.data.utils
    import recbole.trainer.trainer
    import recbole.utils
    import recbole.utils.logger
    import recbole.utils.utils

    if "exists" not in recbole.utils.utils.ensure_dir.__code__.co_names:
        return  # a RecBole whose ensure_dir does not check first
    for module in (recbole.utils, recbole.utils.utils, recbole.utils.logger, recbole.data.utils,
                   recbole.data.dataset.dataset, recbole.trainer.trainer):
        if getattr(module, "ensure_dir", None) is not None:
            module.ensure_dir = _ensure_dir


def _quiet_recbole_future_warnings():
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")


def apply():
    """Apply every guarded patch; safe to call any number of times."""
    _patch_numpy()
    _patch_scipy()
    _patch_pandas()
    _patch_interaction_sort()
    _patch_ensure_dir()
    _quiet_recbole_future_warnings()


class TuneAPI(NamedTuple):
    report: Callable
    RunConfig: type
    FailureConfig: type


def ray_tune_api():
    """Ray Tune's ``report(metrics)``, ``RunConfig`` and ``FailureConfig`` of the installed Ray:
    ``ray.tune``'s own where it has them (the newest Ray deprecates the others), ``ray.air``'s on
    the pinned 2.6.3, whose ``ray.tune`` has no ``RunConfig``."""
    from ray import tune

    if hasattr(tune, "RunConfig"):
        return TuneAPI(tune.report, tune.RunConfig, tune.FailureConfig)
    from ray import air
    from ray.air import session

    return TuneAPI(session.report, air.RunConfig, air.FailureConfig)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file is truncated, foreign, or was written by something else."""


CHECKPOINT_FORMAT = "recbole_ckd/1"


def save_checkpoint(state, path):
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically.

    The file appears under its final name only once it is complete, so an interrupted run
    never leaves a half-written checkpoint behind.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pth")
    except OSError as err:
        raise CheckpointError(f"{path} cannot be written ({err.strerror}); give a writable --checkpoint_dir.") from err
    try:
        with saving(path), os.fdopen(fd, "wb") as f:  # a file, not its name: torch then lets a failed write's OSError through
            torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint written by :func:`save_checkpoint`, never unpickling code."""
    path = os.fspath(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # truncated zip, pickled objects, random bytes ...
        raise CheckpointError(
            f"{path} is not a readable recbole-ckd checkpoint ({type(err).__name__}: {err}). "
            "It may be truncated or written by another program; delete it to start over."
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} was not written by recbole-ckd (format {state.get('format') if isinstance(state, dict) else None!r}, "
            f"expected {CHECKPOINT_FORMAT!r}); delete it to start over."
        )
    return state


apply()


class _RunLogFile(logging.FileHandler):
    """RecBole's log file, opened at its first record: a handler that ``basicConfig`` does not
    attach (the root logger already has handlers) then never holds an open file."""

    def __init__(self, filename, mode="a", encoding=None, delay=False, errors=None):
        super().__init__(filename, mode, encoding, True, errors)


def init_logger(config):
    """RecBole's ``init_logger`` with one log file per run and nothing left open: the handlers
    the previous run installed are removed and closed first."""
    from recbole.utils import init_logger as recbole_init_logger

    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_recbole_ckd_run", False)]:
        root.removeHandler(handler)
        handler.close()
    before = set(root.handlers)
    file_handler, logging.FileHandler = logging.FileHandler, _RunLogFile
    try:
        recbole_init_logger(config)
    finally:
        logging.FileHandler = file_handler
    for handler in set(root.handlers) - before:
        handler._recbole_ckd_run = True
