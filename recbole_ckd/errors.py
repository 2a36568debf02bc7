"""The one base class of the user's mistakes (bad data, bad config, bad flags).

The entry point prints such an error as one ``error:`` line and exits with status 2 (a
traceback only with ``--debug``); anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem in what the user gave; the message names the file, key or flag and the fix."""


class ConfigError(UserError, ValueError):
    """A bad config key or value, config file or command-line flag."""


class Interrupted(Exception):
    """The run was stopped (Ctrl-C, SIGTERM) after saving its state; the message says how to resume."""
