"""The reference fold: read models from a set of events, in plain Python.

This is the oracle the Lua fast path is tested against, written the obvious way: take each
distinct event once, add its counts and measures, and keep per entity the state of the event with
the highest version. Indexes (a provider's calendar) are derived from the final entity states,
not maintained incrementally, so they check the Lua script's incremental ZADD/ZREM logic rather
than repeat it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from schemas import Event
from schemas.read_models import Projection, epoch_seconds, hour_bucket, project


@dataclass(frozen=True, slots=True)
class EntityState:
    version: str
    type_tag: str
    state: bytes
    first_seen: str  # the 18-digit µs prefix of the oldest version seen
    events: int


@dataclass
class ReadModels:
    """All read models of a namespace generation, keyed by their query coordinates."""

    hourly: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (customer, type, hour) → n
    daily: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (customer, type, day) → n
    entities: dict[tuple[str, str, str], EntityState] = field(default_factory=dict)  # (customer, kind, id)
    top: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)  # (customer, measure)
    indexes: dict[tuple[str, str, str], dict[str, int]] = field(default_factory=dict)  # (cust, index, owner)

    def summary(self) -> dict[str, int]:
        return {
            "hourly_buckets": len(self.hourly),
            "events_counted": sum(self.hourly.values()),
            "entities": len(self.entities),
            "rankings": len(self.top),
            "index_entries": sum(len(v) for v in self.indexes.values()),
        }

    def diff(self, other: ReadModels, limit: int = 10) -> list[str]:
        """Human-readable differences (for test failure messages)."""
        out: list[str] = []
        for name in ("hourly", "daily", "entities", "top", "indexes"):
            mine, theirs = getattr(self, name), getattr(other, name)
            for key in sorted(set(mine) | set(theirs), key=repr):
                if mine.get(key) != theirs.get(key):
                    out.append(f"{name}[{key}]: {mine.get(key)!r} != {theirs.get(key)!r}")
                    if len(out) >= limit:
                        return out
        return out


def fold(events: Iterable[Event], *, now: datetime | None = None) -> ReadModels:
    """Read models of the distinct events (by (customer_id, event_id)) in ``events``, in any order.

    ``now``: leave out count buckets whose retention ended before it, as the projector does."""
    unique: dict[tuple[str, str], Event] = {}
    for ev in events:
        unique.setdefault((ev.customer_id, ev.event_id), ev)
    cutoff = None if now is None else epoch_seconds(now)
    return fold_projections((p for ev in unique.values() if (p := project(ev)) is not None), cutoff=cutoff)


def fold_projections(projections: Iterable[Projection], *, cutoff: int | None = None) -> ReadModels:
    """The fold over projections of distinct events."""
    hourly: defaultdict[tuple[str, str, str], int] = defaultdict(int)
    daily: defaultdict[tuple[str, str, str], int] = defaultdict(int)
    top: defaultdict[tuple[str, str], defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
    latest: dict[tuple[str, str, str], Projection] = {}
    first: dict[tuple[str, str, str], str] = {}
    counts: defaultdict[tuple[str, str, str], int] = defaultdict(int)
    for p in projections:
        bucket = hour_bucket(p.hour)
        if cutoff is None or bucket.hourly_expires > cutoff:
            hourly[(p.customer_id, p.event_type, bucket.hour_label)] += 1
        if cutoff is None or bucket.daily_expires > cutoff:
            daily[(p.customer_id, p.event_type, bucket.day_label)] += 1
        if p.top is not None:
            measure, member, amount = p.top
            top[(p.customer_id, measure)][member] += amount
        key = (p.customer_id, p.kind, p.entity_id)
        counts[key] += 1
        seen = p.version[:18]
        if key not in first or seen < first[key]:
            first[key] = seen
        current = latest.get(key)
        if current is None or p.version > current.version:
            latest[key] = p
    entities: dict[tuple[str, str, str], EntityState] = {}
    indexes: defaultdict[tuple[str, str, str], dict[str, int]] = defaultdict(dict)
    for key, p in latest.items():
        entities[key] = EntityState(p.version, p.type_tag, p.state, first[key], counts[key])
        if p.indexed is not None:
            name, owner, score = p.indexed
            indexes[(p.customer_id, name, owner)][p.entity_id] = score
    return ReadModels(
        hourly=dict(hourly),
        daily=dict(daily),
        entities=entities,
        top={k: dict(v) for k, v in top.items()},
        indexes=dict(indexes),
    )
