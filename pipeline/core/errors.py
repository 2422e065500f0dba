"""One exception hierarchy for the whole product.

Errors are classified where they enter (an AWS call, a Redis call, a SQL statement), so retry
logic asks a single question: ``isinstance(exc, TransientError)``.
"""

from __future__ import annotations


class ShardhouseError(Exception):
    """Root of every error the product raises on purpose."""


class TransientError(ShardhouseError):
    """Worth retrying with backoff: throttling, timeouts, connection resets, 5xx."""


class TerminalError(ShardhouseError):
    """Retrying cannot help: bad configuration, access denied, malformed input."""


class ConfigError(TerminalError):
    """A setting or CLI flag is missing or malformed; the message says which and why."""


class RetriesExhausted(TransientError):
    """A transient error persisted through every allowed attempt."""

    def __init__(self, what: str, attempts: int, last: BaseException) -> None:
        super().__init__(f"{what}: gave up after {attempts} attempts: {last}")
        self.attempts = attempts
        self.last = last
