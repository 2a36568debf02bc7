"""Every patch that RecBole 1.2.1 needs against today's packages, in one place.

Each patch is guarded: it only acts where the installed package lacks what RecBole expects,
so on the pinned stack (numpy 1.26, scipy < 1.13, torch < 2.6) it is a no-op.

| trigger | what breaks in RecBole 1.2.1 | what this module does |
| --- | --- | --- |
| numpy >= 2 | ``Config`` runs ``np.float = np.float_`` (and ``complex_``, ``unicode_``); ray 2.6 uses ``np.bool8`` | restore the removed aliases |
| scipy >= 1.13 | LightGCN calls ``dok_matrix._update`` | give ``dok_matrix`` an ``_update`` |
| torch >= 2.6 | ``torch.load`` of RecBole's pickled checkpoints (``weights_only``) | :func:`save_checkpoint` / :func:`load_checkpoint`: tensors and plain metadata, loaded with ``weights_only=True``; the plugin's trainers use them for every model, RecBole's included |
| ``Config`` reads ``sys.argv`` | breaks inside Ray workers and in library use | :class:`recbole_ckd.config.Config` takes the command line as an argument (``cmd_args``); ``None`` means no command line |
| pandas 3 | RecBole's NaN filling silently does nothing | the multimodal dataset validates its inputs instead of relying on it |
| ``init_logger`` (any version) | a second run in one process (a leaderboard, the tests) opens a log file that ``logging.basicConfig`` never attaches (a leaked file, a ``ResourceWarning``), and logs into the first run's file | :func:`init_logger`: the previous run's handlers are closed first, and an unattached log file is never opened |
| pandas >= 2.2, torch >= 2.4 | every run prints FutureWarnings from RecBole's own code (chained ``fillna(inplace=True)``, ``torch.cuda.amp.GradScaler``) that its users cannot act on | those FutureWarnings, raised in RecBole's modules only, are not shown |
"""

import logging
import os
import tempfile
import warnings

import numpy as np
import scipy.sparse as sp
import torch

from recbole_ckd.errors import UserError

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


def _quiet_recbole_future_warnings():
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")


def apply():
    """Apply every guarded patch; safe to call any number of times."""
    _patch_numpy()
    _patch_scipy()
    _quiet_recbole_future_warnings()


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
    os.close(fd)
    try:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
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
