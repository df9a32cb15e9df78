"""The user-error base class: what the commands print as one line instead of a traceback.

A user error is a problem with what the user gave (an options file, a command-line value, a checkpoint, a
dataset, a launch environment) or a run stopped on purpose, whose message already names the file, key or value
and what to do. Every such error class derives from :class:`UserError` (and keeps its builtin base, so
``except ValueError`` still catches a bad value), and the commands catch :class:`UserError` alone: anything else
is a programming error and keeps its traceback, which is what a bug report needs.
"""


class UserError(Exception):
    """A problem the user can fix from the message alone; the commands print it as one line."""


class InputError(UserError, ValueError):
    """A value the user gave (a command-line argument, an image, a folder's contents) that cannot be used."""


class InputNotFoundError(UserError, FileNotFoundError):
    """An input file or folder the user named that does not exist or holds nothing usable."""


class OutputExistsError(UserError, FileExistsError):
    """An output that exists already and is left untouched (``--overwrite`` replaces it)."""

