"""The error the scripts print as one line (``error: ...``) instead of a traceback."""


class UsageError(Exception):
    """A command-line or configuration mistake; the message says how to fix it."""
