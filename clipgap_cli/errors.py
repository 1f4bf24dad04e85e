"""The one exception type a user sees: a clear sentence, no traceback."""


class ClipgapError(Exception):
    """A user-facing failure: bad input, a missing or tampered artifact, a mismatch.

    The CLI prints the message on one line and exits with status 1. Write the message as
    one sentence that names the offending file or value and, where there is one, the fix.
    """
