"""One exception type for every problem a user can cause.

Why: the CLI and the app turn a `DietError` into one clear line (no traceback); anything else is a bug
and is allowed to surface as one.
"""


class DietError(Exception):
    """A user-facing error: bad input, missing network, corrupt file... The message is shown as is."""


class Cancelled(DietError):
    """Raised when the caller asked to stop (a cancel button, Ctrl-C in a job); nothing is written."""
