"""The order of a flush, written down once.

    1. check    Redis: was this batch committed by an earlier owner? which ids were seen?
    2. write    S3: per (type, version) one shared zstd Parquet object for the batch's small
                customers and one per large customer (plan.OWN_OBJECT_ROWS), plus the dead letters
    3. announce SQS: the manifest (only when objects were written)
    4. mark     Redis: the batch's ids and the batch marker
    5. checkpoint at the batch's last record (or SHARD_END)

:func:`check` runs step 1 on the processor's thread (it builds the Arrow tables: Python work
that would only fight the decoder for the GIL elsewhere) and starts the encoding; :func:`commit`
runs steps 2-4 — waiting on the encoding pool, S3, SQS and Redis — on the processor's commit
thread; :func:`finish` waits for them and does 5 on the processor's thread (the checkpointer
belongs to it). The processor calls ``finish`` before its next flush (or at once when caught up,
at shutdown and at shard end), so batch N is written, announced and marked while batch N+1 is
being decoded, and batch N+1 is only checked once N is marked. Each batch goes 1 → 5 in order.

Why this order (docs/batcher.md): nothing is checkpointed before it is durable in S3 and
announced; ids are marked seen only once their batch is announced, because a false "seen" would
drop an event for good. A crash between any two steps leaves the checkpoint where it was, and the
new owner replays the same records: same batch id, same keys (If-None-Match finds the objects),
and after step 4 the batch marker lets it skip to step 5. docs/batcher.md has the analysis.

Each step retries transient errors with full-jitter backoff; a terminal error (or retries
exhausted) escapes *without* checkpointing. A refused checkpoint with ShutdownException means the
lease moved: :class:`LeaseLost`, and the processor stops.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.consumer.checkpointing import checkpoint
from pipeline.consumer.processor import Checkpointer
from pipeline.core.dead_letters import dead_letter_document
from pipeline.core.errors import ShardhouseError, TerminalError
from pipeline.core.manifest import BatchObject
from pipeline.core.retry import Backoff, call_with_retry
from workers.batcher import parquet, plan
from workers.batcher.buffer import Batch
from workers.batcher.dedupe import DedupeCheck, pack_batch
from workers.batcher.sinks import Announcer, DedupeStore, ObjectStore, StoredObject
from workers.idset.layout import DedupeLayout

if TYPE_CHECKING:
    from schemas import Registry

T = TypeVar("T")

PARQUET = "application/vnd.apache.parquet"
JSONL = "application/x-ndjson"

# Step names passed to the crash hook, after the step completed.
WRITTEN = "written"
ANNOUNCED = "announced"
MARKED = "marked"
CHECKPOINTED = "checkpointed"


def _no_crash(_step: str) -> None:
    return None


@dataclass(frozen=True)
class FlushDeps:
    """Everything a flush talks to, injected (tests pass the same real servers, other names)."""

    stream: str
    bucket: str
    registry: Registry
    layout: DedupeLayout
    dedupe: DedupeStore
    store: ObjectStore
    announcer: Announcer
    executor: Executor
    backoff: Backoff = field(default_factory=Backoff)
    sleep: Callable[[float], None] = time.sleep
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    # Test hook standing in for kill -9: called after each step; an exception it raises ends the
    # flush on the spot (nothing after it runs).
    crash: Callable[[str], None] = _no_crash


class FlushOutcome(StrEnum):
    WRITTEN = "written"
    SKIPPED = "skipped"  # committed by an earlier owner of the shard: nothing written again
    EMPTY = "empty"  # nothing valid left after dedupe: no objects, no announcement


@dataclass
class FlushResult:
    batch_id: str
    outcome: FlushOutcome
    objects: list[BatchObject] = field(default_factory=list)
    manifests: int = 0
    rows_written: int = 0
    duplicates_redis: int = 0
    dead_letters: int = 0
    bytes_written: int = 0
    reused_objects: int = 0  # found in S3 from an earlier attempt
    invalid_by_reason: dict[str, int] = field(default_factory=dict)
    step_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0  # steps 1-5, not counting the wait between commit and checkpoint


Encoded = tuple[plan.GroupKey, str, bytes, plan.ObjectMeta]  # group, key, Parquet bytes, metadata
Stored = tuple[BatchObject, StoredObject]  # the manifest's entry, and what S3 holds
# A group's rows: (indexes of its rows among the batch's dedupe ids, its Arrow table).
Tables = dict[plan.GroupKey, tuple[Any, Any]]


class Abandoned(ShardhouseError):
    """The processor gave the shard up (lease lost) while this batch was being committed."""


@dataclass
class Checked:
    """A batch after step 1: Redis' answer is in, its objects are being encoded on the pool."""

    batch: Batch
    batch_id: str
    ids: list[bytes]
    answer: DedupeCheck
    stores: list[Future[Stored | None]]  # one per object: encoded, then written once (step 2)
    seconds: float


@dataclass
class PendingCommit:
    """A batch whose steps 2-4 run on the commit thread; its checkpoint (5) is still due."""

    batch: Batch  # slim: the position only, the rows stay with the commit
    work: Future[FlushResult]
    shard_end: bool


def check(batch: Batch, deps: FlushDeps) -> Checked:
    """Step 1 on the caller's thread: Redis answers while this thread builds the Arrow tables the
    answer filters (the GIL-bound part of a flush); then step 2 starts on the pool."""
    started = time.perf_counter()
    bid = plan.batch_id_of(deps.stream, batch)
    ids = pack_batch(deps.layout, batch.types)
    answer, stores = _check_and_store(batch, deps, bid, ids)
    return Checked(batch, bid, ids, answer, stores, time.perf_counter() - started)


def commit(
    checked: Checked, deps: FlushDeps, *, abandoned: Callable[[], bool] = lambda: False
) -> FlushResult:
    """Steps 2-4 (waits on the pool, S3, SQS and Redis; little Python); :func:`finish` does 5.
    ``abandoned`` is asked before each step that writes: once the shard is given up, nothing more
    is announced or marked (object writes already under way finish: write-once keys, harmless)."""
    timer = _Timer()
    batch, bid, ids, answer = checked.batch, checked.batch_id, checked.ids, checked.answer
    invalid_by_reason: dict[str, int] = {}
    for rejected in batch.rejected:
        invalid_by_reason[rejected.reason] = invalid_by_reason.get(rejected.reason, 0) + 1
    result = FlushResult(batch_id=bid, outcome=FlushOutcome.WRITTEN, invalid_by_reason=invalid_by_reason)
    result.dead_letters = len(batch.rejected)

    if answer.batch_committed:
        result.outcome = FlushOutcome.SKIPPED
        result.duplicates_redis = len(ids)
    else:
        result.duplicates_redis = sum(answer.seen)
        kept_ids = [i for i, dup in zip(ids, answer.seen, strict=True) if not dup]
        # 2. write — the objects (under way since the check answered), the dead letters; write-once.
        stored = [obj for obj in (f.result() for f in checked.stores) if obj is not None]
        _stop_if(abandoned, bid)
        dead = dead_letter_document(deps.stream, batch.shard_id, batch.rejected)
        if dead:
            dl_key = plan.dead_letter_key_of(deps.stream, batch)
            _put(deps, dl_key, dead, {"batch-id": bid, "rows": "0"}, JSONL)
        result.objects = [obj for obj, _ in stored]
        result.reused_objects = sum(1 for _, s in stored if not s.created)
        result.rows_written = sum(o.rows for o in result.objects)
        result.bytes_written = sum(o.bytes for o in result.objects) + len(dead)
        timer.lap("write")
        deps.crash(WRITTEN)

        # 3. announce
        if result.objects:
            _stop_if(abandoned, bid)
            manifests = plan.build_manifests(
                stream=deps.stream,
                bucket=deps.bucket,
                batch=batch,
                objects=result.objects,
                created_at=deps.now(),
            )
            for manifest in manifests:
                announce = functools.partial(deps.announcer.announce, manifest)
                _retry(deps, announce, f"announce {manifest.batch_id}")
            result.manifests = len(manifests)
        else:
            result.outcome = FlushOutcome.EMPTY
        timer.lap("announce")
        deps.crash(ANNOUNCED)

        # 4. mark — only what was announced becomes "seen".
        if result.objects:
            _stop_if(abandoned, bid)
            _retry(deps, lambda: deps.dedupe.mark(bid, kept_ids), f"dedupe mark {bid}")
        timer.lap("mark")
    result.step_seconds = {"check+arrow": checked.seconds, **timer.laps}
    result.seconds = checked.seconds + timer.total
    return result


def _stop_if(abandoned: Callable[[], bool], bid: str) -> None:
    if abandoned():
        raise Abandoned(f"batch {bid}: shard given up, not writing")


def finish(pending: PendingCommit, checkpointer: Checkpointer, deps: FlushDeps) -> FlushResult:
    """Steps 1-4 completed, then step 5: the checkpoint at the batch's last record (or SHARD_END)."""
    timer = _Timer()
    result = pending.work.result()  # re-raises the commit's error: no checkpoint then
    batch = pending.batch
    timer.lap("wait")
    if result.outcome is not FlushOutcome.SKIPPED:
        deps.crash(MARKED)
    if pending.shard_end:
        checkpoint(checkpointer, backoff=deps.backoff, sleep=deps.sleep)
    else:
        last = batch.last
        seq, sub = last.sequence_number, last.sub_sequence_number
        checkpoint(checkpointer, seq, sub, backoff=deps.backoff, sleep=deps.sleep)
    timer.lap("checkpoint")
    deps.crash(CHECKPOINTED)
    result.step_seconds.update(timer.laps)
    result.seconds += timer.laps["checkpoint"]
    return result


def _retry(deps: FlushDeps, fn: Callable[[], T], what: str) -> T:
    return call_with_retry(fn, what=what, backoff=deps.backoff, sleep=deps.sleep)


def encode_group(batch: Batch, group: plan.GroupKey, where: Any, table: Any, seen: Any) -> Encoded | None:
    """The group's table without the rows Redis has seen, as Parquet (None if nothing is left).
    ``seen``: one bool per dedupe id of the batch (an Arrow array); ``where``: the group's ids."""
    dup = seen.take(where)
    if dup.true_count:
        if dup.true_count == len(dup):
            return None
        table = table.filter(pc.invert(dup))
    body, meta = parquet.encode(table, shared=group[0] is None)
    return group, plan.object_key(batch, group), body, meta


def encode_and_store(
    deps: FlushDeps, batch: Batch, bid: str, group: plan.GroupKey, where: Any, table: Any, seen: Any
) -> Stored | None:
    """Step 2 for one object, on the pool: encode it, then write it once. One task per object
    rather than one to encode and one to write: every task costs GIL handoffs with the thread
    decoding the next batch."""
    encoded = encode_group(batch, group, where, table, seen)
    if encoded is None:
        return None
    _, key, body, meta = encoded
    obj = _put(deps, key, body, meta.to_s3(bid), PARQUET)
    try:
        if obj.created:
            stored_meta = meta
        elif group[0] is None:  # an earlier attempt's shared object: its customers from its rows
            body = _retry(deps, lambda: deps.store.read(key), f"get {key}")
            stored_meta = parquet.describe(body, dict(obj.metadata))
        else:
            stored_meta = plan.ObjectMeta.from_s3(dict(obj.metadata))  # an earlier attempt's
    except (KeyError, ValueError, pa.ArrowInvalid) as exc:
        raise TerminalError(f"s3 object {obj.key} exists but was not written by a batcher") from exc
    return plan.batch_object(obj.key, group, stored_meta, obj.size), obj


def _check_and_store(
    batch: Batch, deps: FlushDeps, bid: str, ids: Sequence[bytes]
) -> tuple[DedupeCheck, list[Future[Stored | None]]]:
    """Redis answers while this thread builds the Arrow tables, one event type at a time; once the
    answer is in, each type's objects go to the pool to be encoded (pyarrow's Parquet writer
    releases the GIL) and written while the next type is built."""
    if not ids:  # only dead letters: their write-once key is all the idempotence they need
        return DedupeCheck(batch_committed=False, seen=[]), []
    pool = deps.executor
    pending = pool.submit(_retry, deps, lambda: deps.dedupe.check(bid, ids), f"dedupe check {bid}")
    built: list[tuple[plan.GroupKey, Any, Any]] = []
    stores: list[Future[Stored | None]] = []
    seen: Any = None

    def store_built() -> None:
        stores.extend(pool.submit(encode_and_store, deps, batch, bid, g, w, t, seen) for g, w, t in built)
        built.clear()

    for type_tables in iter_tables(deps.registry, batch):
        built += type_tables
        if seen is None and pending.done():
            checked = pending.result()
            if checked.batch_committed:
                return checked, []
            seen = seen_array(checked.seen, len(ids))
        if seen is not None:
            store_built()
    checked = pending.result()
    if checked.batch_committed:
        return checked, []
    if seen is None:
        seen = seen_array(checked.seen, len(ids))
    store_built()
    return checked, stores


def seen_array(seen: Sequence[bool], count: int) -> Any:
    if len(seen) != count:
        raise TerminalError(f"dedupe check: {len(seen)} answers for {count} ids")
    return pa.array(seen, type=pa.bool_())


def iter_tables(
    registry: Registry, batch: Batch, own_rows: int = plan.OWN_OBJECT_ROWS
) -> Iterator[list[tuple[plan.GroupKey, Any, Any]]]:
    """Per event type of the batch: one Arrow table per object (parquet.split_objects) over *all*
    its rows, with the indexes of those rows among the batch's dedupe ids (``Batch.rows()``
    order; the dedupe answer filters them afterwards)."""
    offset = 0
    for group in batch.types:
        et = registry.get(group.type, group.version)
        whole = parquet.type_table(et, group, batch.shard_id)
        yield [
            ((customer, group.type, group.version), pc.add(where, offset) if offset else where, table)
            for customer, where, table in parquet.split_objects(whole, own_rows)
        ]
        offset += len(group)


def build_tables(registry: Registry, batch: Batch, own_rows: int = plan.OWN_OBJECT_ROWS) -> Tables:
    """:func:`iter_tables` as one dict: group → (dedupe id indexes, table)."""
    return {g: (where, table) for part in iter_tables(registry, batch, own_rows) for g, where, table in part}


def encode_objects(batch: Batch, tables: Tables, seen: Sequence[bool]) -> list[Encoded]:
    """Sequential form of the encode step."""
    answers = seen_array(seen, batch.valid)
    encoded = (encode_group(batch, group, where, table, answers) for group, (where, table) in tables.items())
    return [enc for enc in encoded if enc is not None]


def _put(deps: FlushDeps, key: str, body: bytes, metadata: dict[str, str], content_type: str) -> StoredObject:
    return _retry(
        deps,
        lambda: deps.store.put_once(key, body, metadata=metadata, content_type=content_type),
        f"put {key}",
    )


class _Timer:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._start = self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now

    @property
    def total(self) -> float:
        return self._last - self._start
