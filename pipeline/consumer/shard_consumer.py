"""One shard's consumer thread, through the states of :class:`ConsumerState`
(docs/consumer-runtime.md, "Shard consumers")."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from pipeline.consumer.checkpointing import ShardFailed
from pipeline.consumer.handle import LeaseHandle, ShardCheckpointer
from pipeline.consumer.kpl import AggregateLimits, AggregateRefused, deaggregate
from pipeline.consumer.lease_store import LeaseStore
from pipeline.consumer.leases import Lease, may_create_child, parents_done
from pipeline.consumer.processor import (
    InitializeInput,
    LeaseLostInput,
    ProcessRecordsInput,
    Record,
    RecordProcessor,
    ShardEndedInput,
    ShutdownRequestedInput,
)
from pipeline.consumer.sequence import SHARD_END, ExtendedSequenceNumber
from pipeline.consumer.shard_sync import parents_of
from pipeline.core.aws_errors import error_code, is_transient_aws

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient

log = logging.getLogger(__name__)


class ConsumerState(Enum):
    """Where a shard consumer is in its life (KCL's ``ConsumerStates``, without the states the
    thread-per-shard design does not need)."""

    WAITING_ON_PARENTS = "waiting_on_parents"  # a child shard waits for its parents' SHARD_END
    INITIALIZING = "initializing"  # processor.initialize, then the first iterator
    PROCESSING = "processing"  # the read-deliver loop
    SHARD_ENDING = "shard_ending"  # children's leases created; processor.shard_ended checkpoints
    SHUTTING_DOWN = "shutting_down"  # shutdown_requested (graceful) or lease_lost
    SHUTDOWN_COMPLETE = "shutdown_complete"


class _Stopped(Exception):
    """A retried call was abandoned because the consumer is shutting down or lost its lease."""


@dataclass(frozen=True)
class ConsumerConfig:
    stream: str
    max_records: int = 10_000
    idle_between_reads_s: float = 1.5
    # While records flow, reads are spaced this much (start to start): 5 reads/s is Kinesis's
    # per-shard GetRecords limit, so a shard that keeps up never throttles itself.
    busy_interval_s: float = 0.2
    parent_poll_s: float = 10.0
    aggregate_limits: AggregateLimits = field(default_factory=AggregateLimits)
    #: Sub-records per process_records call: a page of aggregates is delivered in pieces.
    max_delivery_records: int = 10_000


@dataclass(frozen=True)
class Refusal:
    """A record the runtime dead-letters instead of delivering (pipeline.consumer.kpl limits)."""

    record: Record
    reason: str
    detail: str


def refuse_without_sink(record: Record, reason: str, detail: str) -> None:
    raise ShardFailed(f"no dead-letter sink for a {reason} record at {record.sequence_number}")


@dataclass
class ShardStats:
    records: int = 0
    bytes: int = 0  # payload bytes delivered (the 3.x renewal reports throughput from it)
    millis_behind_latest: int = 0
    last_fetch_at: float = 0.0


class ShardConsumer(threading.Thread):
    def __init__(
        self,
        *,
        kinesis: KinesisClient,
        store: LeaseStore,
        handle: LeaseHandle,
        processor: RecordProcessor,
        config: ConsumerConfig,
        on_records: Callable[[str, int, int], None] = lambda _s, _n, _lag: None,
        shutdown_requested: threading.Event | None = None,
        refuse: Callable[[Record, str, str], None] = refuse_without_sink,
    ) -> None:
        super().__init__(name=f"shard-{handle.lease.lease_key}", daemon=True)
        self.kinesis = kinesis
        self.store = store
        self.handle = handle
        self.token = handle.token
        self.processor = processor
        self.config = config
        self.on_records = on_records
        self.refuse = refuse
        self.shutdown_requested = shutdown_requested or threading.Event()
        self.finished = threading.Event()
        self.stats = ShardStats()
        self.shard_id = handle.lease.lease_key
        self.checkpointer = ShardCheckpointer(store, handle, self.token)
        self.reached_shard_end = False
        self.state = ConsumerState.WAITING_ON_PARENTS

    # -- lifecycle -------------------------------------------------------------------------
    def run(self) -> None:
        try:
            if not self._wait_for_parents():
                return
            self.state = ConsumerState.INITIALIZING
            try:
                iterator = self._initialize()
            except _Stopped:
                self._shutdown()  # initialized, then stopped before the first read
                return
            if iterator is not None or self.handle.lease.at_shard_end:
                self.state = ConsumerState.PROCESSING
                self._process(iterator)
        except Exception:
            log.exception("shard consumer failed", extra={"shard_id": self.shard_id})
        finally:
            self.state = ConsumerState.SHUTDOWN_COMPLETE
            self.finished.set()

    def _stopping(self) -> bool:
        """Shut down requested, or the lease is lost or expired locally (checked before every
        delivery, so a worker paused past failover delivers nothing more on waking)."""
        return self.shutdown_requested.is_set() or not self.handle.usable()

    def _wait_for_parents(self) -> bool:
        while not self._stopping():
            lease = self.handle.lease
            if not lease.parent_shard_ids:
                return True
            by_key = {key: parent for key in lease.parent_shard_ids if (parent := self.store.get(key))}
            if parents_done(lease, by_key):
                return True
            self.shutdown_requested.wait(self.config.parent_poll_s)
        return False  # shut down while waiting on parents: no callbacks

    def _initialize(self) -> str | None:
        cp = self.handle.lease.checkpoint
        self.processor.initialize(InitializeInput(self.shard_id, cp.sequence_number, cp.sub_sequence_number))
        if cp.is_shard_end:
            return None
        return self._iterator(cp)

    def _iterator(self, after: ExtendedSequenceNumber) -> str:
        kwargs: dict[str, Any] = {"StreamName": self.config.stream, "ShardId": self.shard_id}
        if after.is_sentinel:
            kwargs["ShardIteratorType"] = after.sequence_number
        else:
            # AT, not AFTER: sub-records of a partly checkpointed aggregate must come back.
            kwargs["ShardIteratorType"] = "AT_SEQUENCE_NUMBER"
            kwargs["StartingSequenceNumber"] = after.sequence_number
        return str(
            self._aws("get shard iterator", lambda: self.kinesis.get_shard_iterator(**kwargs))[
                "ShardIterator"
            ]
        )

    def _aws(self, what: str, call: Callable[[], Any]) -> Any:
        """Retry throttling and outages with capped, jittered backoff for as long as the lease is
        held; raise :class:`_Stopped` once shutdown or lease loss makes the answer moot."""
        attempt = 0
        while True:
            try:
                return call()
            except Exception as exc:
                if not is_transient_aws(exc):
                    raise
                attempt += 1
                if attempt in (1, 10) or attempt % 100 == 0:
                    log.warning(
                        "kinesis call failing; backing off",
                        extra={"shard_id": self.shard_id, "what": what, "attempt": attempt, "err": f"{exc}"},
                    )
                delay = random.uniform(0.0, min(5.0, 0.2 * 2 ** min(attempt, 8)))
                if self.shutdown_requested.wait(delay) or self._stopping():
                    raise _Stopped(what) from exc

    def _get_records(self, iterator: str) -> dict[str, Any]:
        return dict(
            self._aws(
                "get records",
                lambda: self.kinesis.get_records(ShardIterator=iterator, Limit=self.config.max_records),
            )
        )

    # -- the loop -----------------------------------------------------------------------------
    def _process(self, iterator: str | None) -> None:
        # Everything at or before this was delivered (or checkpointed by an earlier owner): an
        # iterator refreshed AT it, or a restart inside an aggregate, must not deliver it again.
        last_delivered = self.handle.lease.checkpoint
        while iterator is not None and not self._stopping():
            read_at = time.monotonic()
            try:
                page = self._get_records(iterator)
            except _Stopped:
                break
            except ClientError as exc:
                if error_code(exc) == "ExpiredIteratorException":
                    try:
                        iterator = self._iterator(last_delivered)
                    except _Stopped:
                        break
                    continue
                raise
            items = self._page(page.get("Records", []), last_delivered)
            lag = int(page.get("MillisBehindLatest", 0) or 0)
            self.stats.millis_behind_latest = lag
            self.stats.last_fetch_at = time.time()
            delivered = 0
            for item in items:
                if self._stopping():
                    # Fetched but never delivered: the largest-delivered bound (what checkpoint()
                    # with no argument writes in shutdown_requested) must not pass these records.
                    break
                if isinstance(item, Refusal):
                    ok = self._refuse(item)
                    if ok:  # handled: a checkpoint may pass it, a refreshed iterator skips it
                        last_delivered = ExtendedSequenceNumber(item.record.sequence_number, 0)
                        self.checkpointer.largest_delivered = last_delivered
                else:
                    if item:
                        last = item[-1]
                        last_delivered = ExtendedSequenceNumber(
                            last.sequence_number, last.sub_sequence_number
                        )
                        self.checkpointer.largest_delivered = last_delivered
                        self.stats.records += len(item)
                        self.stats.bytes += sum(len(r.binary_data) for r in item)
                        delivered += len(item)
                    # Empty batches are delivered too, so processors can flush on age while idle.
                    ok = self._deliver(item, lag)
                if not ok:
                    self.state = ConsumerState.SHUTTING_DOWN
                    self.processor.lease_lost(LeaseLostInput())  # drop what it holds; write nothing more
                    return
            if self._stopping():
                break
            self.on_records(self.shard_id, delivered, lag)
            iterator = page.get("NextShardIterator")
            if iterator is None:
                self._shard_end(page.get("ChildShards", []))
                return
            pause = self.config.idle_between_reads_s if not delivered else self.config.busy_interval_s
            self.shutdown_requested.wait(max(0.0, read_at + pause - time.monotonic()))
        if iterator is None and self.handle.lease.at_shard_end and not self._stopping():
            self._shard_end([])
            return
        self._shutdown()

    def _page(self, raw: list[dict[str, Any]], after: ExtendedSequenceNumber) -> list[list[Record] | Refusal]:
        """The page as deliveries of at most ``max_delivery_records`` sub-records, in stream
        order, with a :class:`Refusal` where an aggregate broke the limits (always at least one
        delivery, maybe empty)."""
        items: list[list[Record] | Refusal] = []
        chunk: list[Record] = []
        for item in raw:
            arrival = item.get("ApproximateArrivalTimestamp")
            arrival_ms = int(arrival.timestamp() * 1000) if arrival is not None else 0
            data, key, seq = item["Data"], item["PartitionKey"], item["SequenceNumber"]
            try:
                records = deaggregate(data, key, seq, arrival_ms, self.config.aggregate_limits)
            except AggregateRefused as refused:
                if ExtendedSequenceNumber(seq, 0) > after:
                    if chunk:
                        items.append(chunk)
                        chunk = []
                    whole = Record(data, key, seq, 0, arrival_ms)
                    items.append(Refusal(whole, refused.reason, refused.detail))
                continue
            for record in records:
                if ExtendedSequenceNumber(record.sequence_number, record.sub_sequence_number) <= after:
                    continue  # already delivered or checkpointed (resume mid-aggregate)
                chunk.append(record)
                if len(chunk) >= self.config.max_delivery_records:
                    items.append(chunk)
                    chunk = []
        if chunk or not any(isinstance(i, list) for i in items):
            items.append(chunk)
        return items

    def _refuse(self, refusal: Refusal) -> bool:
        """Dead-letter a record the runtime will not deliver; False if that failed (the consumer
        then stops, and the record is read and refused again later)."""
        try:
            self.refuse(refusal.record, refusal.reason, refusal.detail)
        except Exception:
            log.exception("dead letter of a refused record failed; stopping, no checkpoint",
                          extra={"shard_id": self.shard_id, "reason": refusal.reason})  # fmt: skip
            return False
        log.warning(
            "record refused and dead-lettered",
            extra={"shard_id": self.shard_id, "sequence_number": refusal.record.sequence_number,
                   "reason": refusal.reason, "detail": refusal.detail},
        )  # fmt: skip
        return True

    def _deliver(self, records: list[Record], lag: int) -> bool:
        """Deliver; False if the processor raised. KCL skips such a batch and moves on; here the
        consumer stops instead, checkpointing nothing more, so the records are read again (the
        worker wraps processors in pipeline.consumer.resilient, which only raises once stopping)."""
        self.checkpointer.accepting = True
        try:
            self.processor.process_records(ProcessRecordsInput(records, lag, self.checkpointer))
        except Exception:
            log.exception("processor raised; stopping, no checkpoint", extra={"shard_id": self.shard_id})
            return False
        finally:
            self.checkpointer.accepting = False
        return True

    def _shard_end(self, children: list[dict[str, Any]]) -> None:
        """Create child leases, record them on the parent, then the processor must checkpoint."""
        self.state = ConsumerState.SHARD_ENDING
        from pipeline.consumer.sequence import TRIM_HORIZON

        child_ids = []
        for child in children:
            hash_range = child.get("HashKeyRange", {})
            parents = frozenset(child.get("ParentShards", [])) or parents_of(child)
            lease = Lease(
                lease_key=child["ShardId"],
                checkpoint=ExtendedSequenceNumber(TRIM_HORIZON),
                parent_shard_ids=parents,
                starting_hash_key=hash_range.get("StartingHashKey"),
                ending_hash_key=hash_range.get("EndingHashKey"),
            )
            child_ids.append(child["ShardId"])
            existing = {key for key in parents if key == self.shard_id or self.store.get(key) is not None}
            if not may_create_child(parents, existing):
                log.warning(
                    "merge child not created yet: a parent lease is missing",
                    extra={"shard_id": self.shard_id, "child": child["ShardId"], "parents": sorted(parents)},
                )
                continue
            self.store.create_if_absent(lease)
        if child_ids:
            self.store.set_children(self.shard_id, child_ids)
        self.checkpointer.shard_ended = True
        self.checkpointer.accepting = True
        try:
            self.processor.shard_ended(ShardEndedInput(self.checkpointer))
        finally:
            self.checkpointer.accepting = False
        if self.handle.lease.checkpoint.sequence_number != SHARD_END:
            log.error(
                "processor did not checkpoint at shard end; parent stays open",
                extra={"shard_id": self.shard_id},
            )
            return
        self.reached_shard_end = True

    def _shutdown(self) -> None:
        self.state = ConsumerState.SHUTTING_DOWN
        if self.handle.lost.is_set():
            self.processor.lease_lost(LeaseLostInput())
            return
        self.checkpointer.accepting = True
        try:
            self.processor.shutdown_requested(ShutdownRequestedInput(self.checkpointer))
        finally:
            self.checkpointer.accepting = False
