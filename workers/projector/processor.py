"""The projector record processor (kclpy v3 shape), one instance per shard.

Per batch: decode (invalid records are counted and skipped — the batcher dead-letters them),
cut the events into apply messages and apply each on a background thread as soon as it is built,
so Python (decoding the next chunk) and Redis (running the script on this one) work in parallel;
**then** checkpoint. Applying is idempotent and order-safe (apply.lua), so the one rule the
checkpoint keeps is "never past a batch that is not applied":

* Batches are settled oldest first; the checkpoint moves to the last record of the longest
  applied prefix. While the stream is behind, the newest batch may still be in flight when
  ``process_records`` returns (it is checkpointed on the next call); when caught up, on an empty
  delivery, at shutdown and at shard end everything is settled first.
* Redis unreachable after the bounded retries: the batch is kept and retried first on the next
  call (the runtime skips a batch whose processor throws, so throwing would lose it); nothing is
  checkpointed past it. Past ``max_pending_batches`` kept batches the shard gives up
  (:class:`ShardFailed` on every call) and a restart replays from the last checkpoint.
* Lease lost (``lease_lost``, or a checkpoint refused with ShutdownException): what is queued is
  dropped, nothing more is sent or checkpointed for the shard. A write racing the loss is
  harmless: the new owner's replay of the same events is a no-op.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from pipeline.consumer.checkpointing import CheckpointFailed, LeaseLost, ShardFailed, checkpoint
from pipeline.consumer.processor import (
    Checkpointer,
    InitializeInput,
    LeaseLostInput,
    ProcessRecordsInput,
    Record,
    ShardEndedInput,
    ShutdownRequestedInput,
)
from pipeline.core.errors import ShardhouseError
from pipeline.core.retry import Backoff
from workers.projector.context import ProjectorContext
from workers.projector.plan import BatchPlan, Message
from workers.projector.store import ApplyResult

log = logging.getLogger("shardhouse.projector")

#: Script calls in flight per shard: one running in Redis, one queued behind it.
DEPTH = 2


@dataclass
class _Batch:
    plan: BatchPlan
    started: float
    #: Middle of the batch's stream arrival times (epoch ms): the age of its events at apply.
    arrived_ms: float = 0.0
    futures: list[Future[list[ApplyResult]]] = field(default_factory=list)
    failed: ShardhouseError | None = None  # a send failed: retry the whole plan (idempotent)


class ProjectorProcessor:
    def __init__(
        self,
        context: ProjectorContext,
        *,
        clock: Callable[[], float] = time.time,
        checkpoint_backoff: Backoff | None = None,
    ) -> None:
        self.ctx = context
        self.planner = context.planner()
        self.clock = clock
        self.checkpoint_backoff = checkpoint_backoff or Backoff(base=0.1, cap=2.0, max_attempts=6)
        self.shard_id = ""
        self.stats = context.shard_stats("")
        self._batches: deque[_Batch] = deque()  # oldest first; none of them checkpointed yet
        self._inflight: deque[Future[list[ApplyResult]]] = deque()
        self._unsaved: tuple[str, int] | None = None  # applied, not yet checkpointed
        self._stopped = threading.Event()
        self._failed: str | None = None
        self._pool: ThreadPoolExecutor | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def initialize(self, initialize_input: InitializeInput) -> None:
        self.shard_id = initialize_input.shard_id
        self.stats = self.ctx.shard_stats(self.shard_id)
        log.info(
            "projector shard start",
            extra={"shard_id": self.shard_id, "from_sequence": initialize_input.sequence_number},
        )

    def process_records(self, process_records_input: ProcessRecordsInput) -> None:
        if self._stopped.is_set():
            return
        if self._failed is not None:
            raise ShardFailed(self._failed)
        records = process_records_input.records
        retrying = any(b.failed is not None for b in self._batches)
        if records:
            self._submit(records, send=not retrying)
        caught_up = not records or process_records_input.millis_behind_latest <= 0
        self._settle(keep_newest=not caught_up)
        self._save(process_records_input.checkpointer)

    def lease_lost(self, lease_lost_input: LeaseLostInput) -> None:
        """Another worker owns the shard: drop what is queued, apply and checkpoint nothing."""
        self._stop("lease lost")

    def shard_ended(self, shard_ended_input: ShardEndedInput) -> None:
        """Everything applied → checkpoint SHARD_END, so the child shards may start."""
        if self._stopped.is_set():
            return
        try:
            if self._failed is None:
                self._settle(keep_newest=False)
            if self._failed is not None or self._batches:
                raise ShardFailed(
                    f"{self.shard_id}: batches not applied at shard end; not checkpointing SHARD_END"
                )
            self._checkpoint(shard_ended_input.checkpointer, None, None)
        finally:
            self._close()

    def shutdown_requested(self, shutdown_requested_input: ShutdownRequestedInput) -> None:
        """Graceful handoff: settle and checkpoint what is applied, so the next owner starts
        after it."""
        try:
            if not self._stopped.is_set() and self._failed is None:
                self._settle(keep_newest=False)
                self._save(shutdown_requested_input.checkpointer)
        except ShardFailed:
            pass  # logged; the next owner replays from the last checkpoint
        finally:
            self._close()

    # -- applying -----------------------------------------------------------------------------

    def _submit(self, records: Sequence[Record], *, send: bool) -> None:
        """Plan ``records``; with ``send``, each message goes to Redis as soon as it is built."""
        started = time.perf_counter()
        futures: list[Future[list[ApplyResult]]] = []

        def emit(message: Message) -> None:
            self._send(futures, message)

        plan = self.planner.plan_records(
            records, self.shard_id, int(self.clock()), emit=emit if send else None
        )
        arrived = (records[0].approximate_arrival_timestamp + records[-1].approximate_arrival_timestamp) / 2
        batch = _Batch(plan, started, arrived, futures)
        if not send:
            batch.failed = ShardhouseError("not sent: an earlier batch is waiting for Redis")
        self._count(plan)
        self._batches.append(batch)
        if self.ctx.prom is not None:
            self.ctx.prom.pending.set(len(self._batches))

    def _send(self, futures: list[Future[list[ApplyResult]]], message: Message) -> None:
        while len(self._inflight) >= DEPTH:
            self._inflight.popleft().exception()  # wait; the batch owning it reads the outcome
        if self._stopped.is_set():
            return
        future = self._executor().submit(self.ctx.store.apply, [message])
        futures.append(future)
        self._inflight.append(future)

    def _settle(self, *, keep_newest: bool) -> None:
        """Resolve batches oldest first and record the applied prefix. A failed batch is
        re-applied in one round trip; if that fails too, settling stops there."""
        while self._batches and not self._stopped.is_set():
            batch = self._batches[0]
            newest = len(self._batches) == 1 and batch.failed is None
            if keep_newest and newest and not all(f.done() for f in batch.futures):
                return
            results: list[ApplyResult] = []
            if batch.failed is None:
                for future in batch.futures:
                    try:
                        results.extend(future.result())
                    except ShardhouseError as exc:
                        batch.failed = exc
                        break
            if batch.failed is not None:
                try:
                    results = self.ctx.store.apply(batch.plan.messages)
                except ShardhouseError as exc:
                    batch.failed = exc
                    self._check_pending(exc)
                    return
                batch.failed = None
            self._batches.popleft()
            self._applied(batch, results)

    def _count(self, plan: BatchPlan) -> None:
        s = self.stats
        s.records += plan.records
        s.events += plan.events
        s.unprojected += plan.unprojected
        s.duplicates += plan.in_batch_duplicates
        s.invalid.update(plan.invalid)
        prom = self.ctx.prom
        if prom is not None:
            prom.records.inc(plan.records)
            if plan.in_batch_duplicates:
                prom.duplicates.inc(plan.in_batch_duplicates)
            for reason, n in plan.invalid.items():
                prom.invalid.labels(reason).inc(n)

    def _applied(self, batch: _Batch, results: list[ApplyResult]) -> None:
        plan = batch.plan
        new = sum(r.new for r in results)
        self.stats.applied += new
        self.stats.duplicates += plan.events - new
        self.stats.batches += 1
        if plan.last_sequence is not None and plan.last_sub_sequence is not None:
            self._unsaved = (plan.last_sequence, plan.last_sub_sequence)
        prom = self.ctx.prom
        if prom is not None:
            prom.apply_seconds.observe(time.perf_counter() - batch.started)
            if new and batch.arrived_ms > 0:
                prom.event_age_seconds.observe(max(0.0, self.clock() - batch.arrived_ms / 1000))
            prom.applied.inc(new)
            prom.duplicates.inc(plan.events - new)
            prom.pending.set(len(self._batches))

    def _check_pending(self, exc: BaseException) -> None:
        """Log a failed apply; give up on the shard when too much is kept."""
        self.stats.failed_applies += 1
        kept = len(self._batches)
        if kept > self.ctx.max_pending_batches:
            self._failed = f"{self.shard_id}: Redis unreachable for {kept} batches ({exc}); restart the shard"
            self._drop()
            log.error("projector gave up on shard", extra={"shard_id": self.shard_id, "error": str(exc)})
            raise ShardFailed(self._failed) from exc
        log.error(
            "projector apply failed; batch kept for retry, not checkpointing past it",
            extra={"shard_id": self.shard_id, "kept_batches": kept, "error": str(exc)},
        )

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"projector-{self.shard_id}")
        return self._pool

    def _drop(self) -> None:
        self._batches.clear()
        self._inflight.clear()
        self._unsaved = None
        if self.ctx.prom is not None:
            self.ctx.prom.pending.set(0)

    def _close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # -- checkpointing --------------------------------------------------------------------------

    def _save(self, checkpointer: Checkpointer) -> None:
        if self._unsaved is not None and not self._stopped.is_set():
            seq, sub = self._unsaved
            if self._checkpoint(checkpointer, seq, sub):
                self._unsaved = None

    def _checkpoint(self, checkpointer: Checkpointer, seq: str | None, sub: int | None) -> bool:
        """Checkpoint (pipeline.consumer.checkpointing); a lost lease stops the shard, any other
        failure leaves the position unsaved for the next batch to carry."""
        try:
            checkpoint(checkpointer, seq, sub, backoff=self.checkpoint_backoff)
        except LeaseLost:
            self._stop("checkpoint refused: lease lost")
            return False
        except CheckpointFailed as exc:
            log.error("projector checkpoint failed", extra={"shard_id": self.shard_id, "error": str(exc)})
            return False
        self.stats.checkpoints += 1
        return True

    def _stop(self, why: str) -> None:
        dropped = len(self._batches)
        self._stopped.set()
        self._drop()
        self._close()
        log.warning(
            "projector stopped", extra={"shard_id": self.shard_id, "why": why, "dropped_batches": dropped}
        )
