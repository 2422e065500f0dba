"""Why an event was refused, and why a set of definitions was refused.

Both are terminal: retrying the same bytes or the same definitions gives the same answer.
"""

from __future__ import annotations

from typing import Final

#: Reasons :meth:`schemas.registry.Registry.decode` gives. Short snake_case codes: they are
#: metric labels and dead-letter fields, so the set is closed and stable.
DECODE_REASONS: Final = (
    "not_utf8",
    "oversize",
    "bad_json",
    "missing_field",
    "wrong_type",
    "bad_event_id",
    "bad_timestamp",
    "unsafe_customer_id",
    "unknown_type",
    "unknown_version",
    "too_deep",
    "undecodable",
)
#: Reasons the intake gives before decoding: a KPL aggregate over the consumer's limits (passed
#: on whole), a customer outside the allow-list, a new customer over the new-tenant rate.
INTAKE_REASONS: Final = ("aggregate_too_large", "customer_not_allowed", "tenant_rate_limited")
#: Every reason :class:`InvalidEvent` can carry (and a dead letter records).
REASONS: Final = DECODE_REASONS + INTAKE_REASONS
_REASON_SET: Final = frozenset(REASONS)


class SchemaError(Exception):
    """Root of what :mod:`schemas` raises. Terminal by nature (the same input gives the same
    answer); schemas imports nothing of ours, so callers treat it as terminal themselves."""


class InvalidEvent(SchemaError):
    """A record that is not a valid event. ``reason`` is one of :data:`REASONS`; ``detail`` is
    human text for the dead letter (it may quote the input, so never splice it into SQL or paths)."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in _REASON_SET:
            raise ValueError(f"unknown InvalidEvent reason {reason!r}")
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class SchemaEvolutionError(SchemaError):
    """The built-in (or given) definitions break a rule: a new version may only add optional
    fields. Raised at registry load, so a bad definition never reaches the stream."""
