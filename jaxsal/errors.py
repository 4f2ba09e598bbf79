"""User-facing errors.

A `UsageError` is a mistake the user can fix (bad flag, bad file, unknown layer): the CLI prints
its message on one line (or a short list) and exits with status 2, never a traceback.
"""


class UsageError(Exception):
    """A problem with the user's input; the message says what is wrong and how to fix it."""


class OutputError(UsageError):
    """The run cannot write its output (disk full, folder removed, permission lost): reported
    like a usage error -- one line naming the file and the reason, exit status 2 -- and nothing
    half-written is left behind."""
