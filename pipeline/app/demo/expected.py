"""What the demo should end with, computed from the records it produced (pure)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pipeline.producer.synthetic import SyntheticRecord


@dataclass
class Expected:
    """Running tally of the load, so progress can be judged against the truth."""

    sent: int = 0
    unique_valid: int = 0
    duplicates: int = 0
    invalid: int = 0
    invalid_by_reason: Counter[str] = field(default_factory=Counter)
    per_customer: Counter[str] = field(default_factory=Counter)
    event_ids: set[tuple[str, str]] = field(default_factory=set)  # (customer_id, event_id)

    def add(self, record: SyntheticRecord) -> None:
        self.sent += 1
        if not record.valid:
            self.invalid += 1
            self.invalid_by_reason[record.invalid_reason or "unknown"] += 1
            return
        assert record.event_id is not None and record.customer_id is not None
        pair = (record.customer_id, record.event_id)
        if pair in self.event_ids:
            self.duplicates += 1
            return
        self.event_ids.add(pair)
        self.unique_valid += 1
        self.per_customer[record.customer_id] += 1


@dataclass(frozen=True)
class Observed:
    """One progress sample, gathered from the roles' metrics and the stores."""

    produced: int = 0
    consumed: int = 0
    batched_rows: int = 0
    duplicates_dropped: int = 0
    dead_lettered: int = 0
    loaded_rows: int = 0
    projected: int = 0
    max_lag_ms: float = 0.0


def caught_up(expected: Expected, observed: Observed, *, producing_done: bool) -> bool:
    """Done when every unique valid event is in the warehouse and the read models."""
    return (
        producing_done
        and observed.loaded_rows >= expected.unique_valid
        and observed.projected >= expected.unique_valid
    )


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1))))
    return sorted_values[rank]
