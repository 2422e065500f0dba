"""Read the operator's view from the stores themselves: lease tables, the stream, the queues, the
warehouse's load ledger and Redis. Every part is read on its own; a part that fails becomes one
line in ``Snapshot.problems`` instead of hiding the others. Each call is bounded by the client's
timeouts and botocore's retries (the factory configures both).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg

from pipeline.app.status.model import (
    CustomerLoad,
    QueueView,
    ReadModelView,
    ShardView,
    Snapshot,
    staleness_ms,
    worker_views,
)
from pipeline.consumer.lease_store import LeaseStore
from pipeline.consumer.leases import FAILING, Lease
from pipeline.consumer.sequence import LATEST, SENTINELS, SHARD_END, ExtendedSequenceNumber
from pipeline.core.aws_errors import error_code
from pipeline.core.clients import ClientFactory
from pipeline.core.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient


@dataclass(frozen=True)
class StatusScope:
    stream: str
    apps: tuple[str, ...]
    projector_app: str | None
    queues: tuple[str, ...]
    sample_s: float

    @classmethod
    def from_settings(cls, settings: Settings, sample_s: float) -> StatusScope:
        w, r = settings.worker, settings.resources
        return cls(
            stream=r.stream,
            apps=(w.batcher_app, w.projector_app),
            projector_app=w.projector_app,
            queues=(r.queue, r.dead_letter_queue),
            sample_s=sample_s,
        )


def collect(
    scope: StatusScope,
    clients: ClientFactory,
    *,
    ledger_query: Callable[[], Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Snapshot:
    """One snapshot. ``ledger_query`` is the warehouse dialect's freshness statement (None: skip)."""
    snap = Snapshot(stream=scope.stream, taken_at=datetime.now(UTC), sample_s=scope.sample_s)
    kinesis = clients.kinesis()
    _guard(snap, "stream", lambda: _open_shards(snap, kinesis, scope.stream))
    first: dict[str, list[Lease]] = {}
    for app in scope.apps:
        _guard(snap, f"lease table {app}", functools.partial(_read_into, first, clients, app))
    if first:
        sleep(scope.sample_s)
    now = datetime.now(UTC)
    for app, before in first.items():

        def second(app: str = app, before: list[Lease] = before) -> None:
            after = _leases(clients, app)
            snap.workers.extend(worker_views(app, before, after))
            for lease in sorted(after, key=lambda lease: lease.lease_key):
                snap.shards.append(_shard_view(kinesis, scope.stream, app, lease, now))

        _guard(snap, f"lease table {app}", second)
    for name in scope.queues:
        _guard(snap, f"queue {name}", functools.partial(_queue_into, snap.queues, clients, name))
    if ledger_query is not None:
        _guard(snap, "warehouse", lambda: snap.customers.extend(_customers(clients, ledger_query)))
    _guard(snap, "read models", lambda: _read_models(snap, clients, scope))
    return snap


def _read_into(into: dict[str, list[Lease]], clients: ClientFactory, app: str) -> None:
    into[app] = _leases(clients, app)


def _queue_into(into: list[QueueView], clients: ClientFactory, name: str) -> None:
    into.append(_queue(clients, name))


def _guard(snap: Snapshot, part: str, fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception as exc:
        snap.problems.append(f"{part}: {problem_text(exc)}")


_MISSING = frozenset(
    {"ResourceNotFoundException", "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
)


def problem_text(exc: BaseException) -> str:
    """One short line: what an operator can act on, not a traceback."""
    cause = exc.__cause__ or exc
    if error_code(cause) in _MISSING:
        return "does not exist (not provisioned or never used, or other SHARDHOUSE_* names)"
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return detail[:200]


def _open_shards(snap: Snapshot, kinesis: KinesisClient, stream: str) -> None:
    summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
    snap.open_shards = int(summary.get("OpenShardCount", 0))


def _leases(clients: ClientFactory, app: str) -> list[Lease]:
    store = LeaseStore(clients.dynamodb(), app)
    return store.list_leases()


def _shard_view(kinesis: KinesisClient, stream: str, app: str, lease: Lease, now: datetime) -> ShardView:
    cp = lease.checkpoint
    failing = lease.extra.get(FAILING, {}).get("S")
    view = ShardView(app, lease.lease_key, lease.lease_owner, _checkpoint_text(cp), failing=failing)
    if cp.sequence_number in (SHARD_END, LATEST):
        return replace(view, millis_behind=0)
    try:
        behind, age = shard_position(kinesis, stream, lease.lease_key, cp, now)
    except Exception:
        return view  # unknown (trimmed, resharded away, or the stream is unreachable)
    return replace(view, millis_behind=behind, checkpoint_age_s=age)


def _checkpoint_text(cp: ExtendedSequenceNumber) -> str:
    if cp.sequence_number in (*SENTINELS, SHARD_END):
        return cp.sequence_number
    sub = cp.sub_sequence_number
    return f"{cp.sequence_number}/{sub}" if sub else cp.sequence_number


def shard_position(
    kinesis: KinesisClient, stream: str, shard_id: str, cp: ExtendedSequenceNumber, now: datetime
) -> tuple[int, float | None]:
    """(MillisBehindLatest after the checkpoint, age of the checkpointed record).

    One iterator and one GetRecords: reading *at* the checkpoint with Limit=2 returns the
    checkpointed record (its arrival time is the checkpoint's age) and the first one not yet
    processed, so MillisBehindLatest is the lag of what the consumer still has to do."""
    if cp.sequence_number in SENTINELS:
        it = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON")
        page = kinesis.get_records(ShardIterator=it["ShardIterator"], Limit=1)
        return int(page.get("MillisBehindLatest", 0) or 0), None
    it = kinesis.get_shard_iterator(
        StreamName=stream,
        ShardId=shard_id,
        ShardIteratorType="AT_SEQUENCE_NUMBER",
        StartingSequenceNumber=cp.sequence_number,
    )
    page = kinesis.get_records(ShardIterator=it["ShardIterator"], Limit=2)
    records = page.get("Records", [])
    age = None
    if records and records[0]["SequenceNumber"] == cp.sequence_number:
        age = max(0.0, (now - records[0]["ApproximateArrivalTimestamp"]).total_seconds())
    return int(page.get("MillisBehindLatest", 0) or 0), age


def _queue(clients: ClientFactory, name: str) -> QueueView:
    sqs = clients.sqs()
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return QueueView(
        name,
        waiting=int(attrs.get("ApproximateNumberOfMessages", 0)),
        in_flight=int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
        delayed=int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)),
    )


def _customers(clients: ClientFactory, ledger_query: Callable[[], Any]) -> list[CustomerLoad]:
    with clients.warehouse() as conn:
        try:
            rows: Sequence[Sequence[Any]] = conn.execute(ledger_query()).fetchall()
        except psycopg.errors.UndefinedTable:
            return []  # no inserter has run against this warehouse yet
    return [
        CustomerLoad(str(c), last, newest, int(n or 0), int(loads or 0)) for c, last, newest, n, loads in rows
    ]


def _read_models(snap: Snapshot, clients: ClientFactory, scope: StatusScope) -> None:
    if scope.projector_app is None:
        return
    from workers.projector.keys import Namespace
    from workers.projector.store import ProjectionStore

    status = ProjectionStore(clients.redis(), Namespace.for_stream(scope.stream)).status()
    snap.read_models = ReadModelView(
        generation=status.current,
        origin=status.origin,
        staleness_ms=staleness_ms(snap.shards, scope.projector_app),
    )
