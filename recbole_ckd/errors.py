"""The one base class of the user's mistakes (bad data, bad config, bad flags).

The entry point prints such an error as one ``error:`` line and exits with status 2 (a
traceback only with ``--debug``); anything else is a bug and keeps its traceback.
"""

import contextlib
import errno


class UserError(Exception):
    """A problem in what the user gave; the message names the file, key or flag and the fix."""


class ConfigError(UserError, ValueError):
    """A bad config key or value, config file or command-line flag."""


class DiskFull(UserError):
    """A write failed on a full disk: nothing is wrong with the run's settings, and it resumes once there is space."""


class Interrupted(Exception):
    """The run was stopped (Ctrl-C, SIGTERM) after saving its state; the message says how to resume."""


@contextlib.contextmanager
def saving(path):
    """Writing ``path``: a full disk is one error line naming it, not a traceback from deep inside the writer."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        if _in_chain(err, lambda e: isinstance(e, KeyboardInterrupt)):
            # a Ctrl-C inside torch.save surfaces as the error of the writer it interrupted
            raise KeyboardInterrupt from None
        if not _in_chain(err, _disk_full):
            raise
        raise DiskFull(f"{path}: no space left on device; free some space and run the same command again to "
                        "resume.") from None


def _in_chain(err, test):
    """Whether ``err`` or an exception it was raised from or during passes ``test``."""
    while err is not None:
        if test(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _disk_full(err):
    # torch.save given a path wraps the failed write in a RuntimeError of its own; given a file, as the
    # plugin's saves do, it lets the file's OSError through
    return (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in str(err)
