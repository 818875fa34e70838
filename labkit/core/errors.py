"""The two exceptions that carry meaning across labkit's boundaries."""

from __future__ import annotations


class BadInput(ValueError):
    """A user asked for something that does not exist or is out of range.

    The message is one line that names what was wrong and what is allowed; the CLI prints it
    as it is and exits with status 2.
    """


class WrongResult(Exception):
    """Raised by a trial that finished but whose answer is wrong (outcome ``"wrong"``).

    ``metrics`` keeps what the trial measured anyway, so a wrong-but-fast run still shows its
    speed.
    """

    def __init__(self, message: str, metrics: dict[str, float] | None = None):
        super().__init__(message)
        self.metrics = dict(metrics or {})
