"""What ``shardhouse status`` shows, and the pure decisions behind it.

Liveness follows the KCL's own rule: a worker is alive while the counters of the leases it owns
keep moving (it renews every failover/3). One snapshot cannot say that, so the collector reads
each lease table twice, a renewal interval apart, and :func:`worker_views` compares the two.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pipeline.consumer.leases import Lease
from pipeline.consumer.sequence import SHARD_END


@dataclass(frozen=True)
class WorkerView:
    app: str
    worker: str
    leases: int
    #: Some lease it owns had its counter renewed during the sample.
    renewing: bool


@dataclass(frozen=True)
class ShardView:
    app: str
    shard_id: str
    owner: str | None
    checkpoint: str
    #: Kinesis' MillisBehindLatest for the first record after the checkpoint (None: unknown).
    millis_behind: int | None = None
    #: Seconds since the checkpointed record arrived on the stream (None: no record yet).
    checkpoint_age_s: float | None = None
    #: Why the owner's processor keeps failing on it (None: it is not); records are kept meanwhile.
    failing: str | None = None

    @property
    def ended(self) -> bool:
        return self.checkpoint == SHARD_END


@dataclass(frozen=True)
class QueueView:
    name: str
    waiting: int
    in_flight: int
    delayed: int


@dataclass(frozen=True)
class CustomerLoad:
    customer: str
    last_load: datetime
    newest_event: datetime | None
    rows: int
    loads: int


@dataclass(frozen=True)
class ReadModelView:
    generation: str | None
    origin: str | None
    #: The projector checkpoints after each apply, so its lag is how far the models trail the stream.
    staleness_ms: int | None


@dataclass
class Snapshot:
    stream: str
    taken_at: datetime
    sample_s: float
    open_shards: int | None = None
    workers: list[WorkerView] = field(default_factory=list)
    shards: list[ShardView] = field(default_factory=list)
    queues: list[QueueView] = field(default_factory=list)
    customers: list[CustomerLoad] = field(default_factory=list)
    read_models: ReadModelView | None = None
    #: One line per part that could not be read (status never fails because one store is down).
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """A plain-JSON form for scripts and tests (datetimes as ISO strings)."""

        def iso(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "stream": self.stream,
            "taken_at": iso(self.taken_at),
            "sample_s": self.sample_s,
            "open_shards": self.open_shards,
            "workers": [vars(w) for w in self.workers],
            "shards": [vars(s) for s in self.shards],
            "queues": [vars(q) for q in self.queues],
            "customers": [
                {**vars(c), "last_load": iso(c.last_load), "newest_event": iso(c.newest_event)}
                for c in self.customers
            ],
            "read_models": None if self.read_models is None else vars(self.read_models),
            "problems": list(self.problems),
        }


def worker_views(app: str, before: Sequence[Lease], after: Sequence[Lease]) -> list[WorkerView]:
    """Leases per owner and whether the owner renewed any of them between the two reads.

    Leases at SHARD_END are finished work and do not count. A lease whose owner changed
    between the reads counts as renewed by its new owner (taking it bumped the counter)."""
    counters = {lease.lease_key: lease.lease_counter for lease in before}
    owned: dict[str, int] = defaultdict(int)
    renewing: dict[str, bool] = defaultdict(bool)
    for lease in after:
        if lease.lease_owner is None or lease.checkpoint.sequence_number == SHARD_END:
            continue
        owned[lease.lease_owner] += 1
        moved = lease.lease_counter != counters.get(lease.lease_key, lease.lease_counter)
        renewing[lease.lease_owner] |= moved
    return [WorkerView(app, owner, owned[owner], renewing[owner]) for owner in sorted(owned)]


def default_sample_seconds(failover_ms: int) -> float:
    """Long enough to see one renewal (KCL renews every failover/3 - 25 ms), plus slack."""
    return round(failover_ms / 3000 + 0.7, 1)


def staleness_ms(shards: Sequence[ShardView], app: str) -> int | None:
    """The largest known lag among the app's unfinished shards (None when none is known)."""
    lags = [s.millis_behind for s in shards if s.app == app and not s.ended and s.millis_behind is not None]
    return max(lags) if lags else None
