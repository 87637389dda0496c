"""One exception type for every problem a user can fix.

The CLI prints these as a single line and exits non-zero; the widgets show them in place.
Anything else escaping is a bug.
"""


class MedDiftError(Exception):
    """A problem with the user's input, files or settings; the message says what and how to fix it."""


class CancelledError(MedDiftError):
    """The user cancelled a long run; nothing half-done was kept."""
