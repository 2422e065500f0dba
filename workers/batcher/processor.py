"""The batcher record processor (kclpy v3 shape), one instance per shard.

It decodes and buffers records, decides cuts (policy.py), and hands sealed batches to
:func:`workers.batcher.commit.commit`, which owns the order of a flush. State machine:

* running → a flush fails (terminal, or retries exhausted): **failed**. The error is raised to
  the runtime and every later call raises again; nothing is ever checkpointed past the failure,
  so a restart replays from the last checkpoint. (Continuing would risk checkpointing past
  records that were dropped with the failed buffer.)
* running → lease lost (``lease_lost``, or a checkpoint refused with ShutdownException):
  **stopped**. The buffer is dropped without writing anything; later
  deliveries are ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pipeline.consumer.checkpointing import LeaseLost, ShardFailed, checkpoint
from pipeline.consumer.processor import (
    Checkpointer,
    InitializeInput,
    LeaseLostInput,
    ProcessRecordsInput,
    Record,
    ShardEndedInput,
    ShutdownRequestedInput,
)
from schemas import InvalidEvent
from workers.batcher.budget import BudgetHandle
from workers.batcher.buffer import ShardBuffer
from workers.batcher.commit import (
    Checked,
    FlushResult,
    PendingCommit,
    check,
    commit,
    finish,
)
from workers.batcher.context import BatcherContext
from workers.batcher.metrics import ShardMetrics, record_flush
from workers.batcher.policy import FlushReason, may_cut_between

log = logging.getLogger("shardhouse.batcher")
T = TypeVar("T")

# Buffer growth is reported to the process-wide budget in steps of this many bytes.
BUDGET_STEP_BYTES = 256 * 1024


class BatcherProcessor:
    def __init__(
        self,
        context: BatcherContext,
        *,
        crash: Callable[[str], None] | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.ctx = context
        self.deps = context.deps if crash is None else dataclasses.replace(context.deps, crash=crash)
        self.policy = context.policy
        self.clock_ms = clock_ms
        self.shard_id = ""
        self.buffer = ShardBuffer()
        self.metrics = ShardMetrics(shard_id="")
        self._budget: BudgetHandle | None = None
        self._cut_due: FlushReason | None = None
        self._age_deadline = 0  # arrival time (ms) at which the open batch is flush_age old
        self._unreported = 0  # buffered bytes not yet reported to the budget
        self._tail: PendingCommit | None = None  # sealed batch being committed; its checkpoint is due
        # One commit thread per shard: batch N is committed while N+1 is decoded, in order.
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher-commit")
        self._abandoned = threading.Event()  # set when the shard is given up: in-flight commit stops
        self._failed: BaseException | None = None
        self._stopped = False

    # -- lifecycle ----------------------------------------------------------------------------

    def initialize(self, initialize_input: InitializeInput) -> None:
        self.shard_id = initialize_input.shard_id
        self.buffer = ShardBuffer(self.shard_id)
        self.metrics = self.ctx.shard_metrics(self.shard_id)
        self._budget = self.ctx.budget.open(self.shard_id)
        log.info(
            "batcher shard start",
            extra={"shard_id": self.shard_id, "from_sequence": initialize_input.sequence_number},
        )

    def process_records(self, process_records_input: ProcessRecordsInput) -> None:
        if self._stopped:
            return
        self._raise_if_failed()
        records = process_records_input.records
        ckpt = process_records_input.checkpointer
        self.metrics.records_in += len(records)
        if self.ctx.prom is not None and records:
            self.ctx.prom.records.labels(self.shard_id).inc(len(records))
        decode = self.ctx.registry.decode
        admission = self.ctx.admission
        admit = None if admission.admits_everyone else admission.check
        policy = self.policy
        max_records, max_bytes = policy.max_records, policy.max_bytes
        buf = self.buffer
        for record in records:
            if buf.records and (
                self._cut_due is not None or record.approximate_arrival_timestamp >= self._age_deadline
            ):
                self._before(record, ckpt)
                if self._stopped:
                    return
                buf = self.buffer
            try:
                event = decode(record.binary_data)
            except InvalidEvent as exc:
                added = buf.add_invalid(record, exc.reason, exc.detail)
            else:
                refused = (
                    None if admit is None else admit(event.customer_id, record.approximate_arrival_timestamp)
                )
                added = buf.add_valid(record, event) if refused is None else buf.add_invalid(record, *refused)
            if buf.records == 1:
                self._age_deadline = buf.first_arrival_ms + policy.max_age_ms
            if self._cut_due is None and (buf.records >= max_records or buf.raw_bytes >= max_bytes):
                self._cut_due = policy.full(buf.records, buf.raw_bytes)
            if added:
                unreported = self._unreported + added
                if unreported >= BUDGET_STEP_BYTES:
                    self._account(added)
                else:
                    self._unreported = unreported  # (_account's first step, without the call)
        self._account(0, force=True)
        if self.buffer.records:
            if self._cut_due is not None:
                self._flush(self._cut_due, ckpt)
            elif self.policy.idle_due(
                self.buffer.first_arrival_ms, self.clock_ms(), process_records_input.millis_behind_latest
            ):
                self._flush(FlushReason.IDLE, ckpt)
        if self._tail is not None and (process_records_input.millis_behind_latest <= 0 or not records):
            self._finish_tail(ckpt)  # caught up (or idle): checkpoint now rather than next batch

    def lease_lost(self, lease_lost_input: LeaseLostInput) -> None:
        """Another worker owns the shard: drop the buffer, write nothing, checkpoint nothing."""
        dropped = self.buffer.records
        self._drop()
        self._close()
        self._stopped = True
        log.warning("batcher lease lost", extra={"shard_id": self.shard_id, "dropped_records": dropped})

    def shard_ended(self, shard_ended_input: ShardEndedInput) -> None:
        """Flush what is left, then checkpoint SHARD_END (so the children may start)."""
        if self._stopped:
            return
        self._raise_if_failed()
        ckpt = shard_ended_input.checkpointer
        self._finish_tail(ckpt)
        if self._stopped:
            return
        if self.buffer.records:
            self._flush(FlushReason.SHARD_END, ckpt, shard_end=True)
        else:
            self._guard(lambda: checkpoint(ckpt, backoff=self.deps.backoff, sleep=self.deps.sleep))
        self._close()

    def shutdown_requested(self, shutdown_requested_input: ShutdownRequestedInput) -> None:
        """Graceful handoff: flush and checkpoint, so the next owner starts after our work."""
        if self._stopped or self._failed is not None:
            self._close()
            return
        self._finish_tail(shutdown_requested_input.checkpointer)
        if self.buffer.records and not self._stopped:
            self._flush(FlushReason.SHUTDOWN, shutdown_requested_input.checkpointer)
            self._finish_tail(shutdown_requested_input.checkpointer)
        self._close()

    # -- buffering ----------------------------------------------------------------------------

    def _before(self, record: Record, ckpt: Checkpointer) -> None:
        """Cut before ``record`` if a cut is due (never inside one aggregated record)."""
        buf = self.buffer
        if not buf.records or not may_cut_between(buf.last_sequence, record.sequence_number):
            return
        if self._cut_due is not None:
            self._flush(self._cut_due, ckpt)
        elif self.policy.too_old_for(buf.first_arrival_ms, record.approximate_arrival_timestamp):
            self._flush(FlushReason.AGE, ckpt)

    def _account(self, added: int, *, force: bool = False) -> None:
        """Report buffered bytes to the process-wide budget, in steps of BUDGET_STEP_BYTES (a lock
        per record would cost more than the bookkeeping is worth); a flush the budget asks for
        becomes this shard's next cut."""
        self._unreported += added
        if self._budget is None or (self._unreported < BUDGET_STEP_BYTES and not force):
            return
        decision = self._budget.add(self._unreported) if self._unreported else None
        self._unreported = 0
        wants = (decision is not None and decision.flush_self) or self._budget.flush_requested
        if wants and self._cut_due is None and self.buffer.records:
            self._cut_due = FlushReason.PRESSURE

    # -- flushing -----------------------------------------------------------------------------

    def _flush(self, reason: FlushReason, ckpt: Checkpointer, *, shard_end: bool = False) -> None:
        """Seal the buffer and start its commit; the previous batch's checkpoint comes first, so
        a batch is only checked against Redis once the one before it is marked."""
        self._finish_tail(ckpt)
        if self._stopped:
            return
        batch = self.buffer.seal(reason)
        self._cut_due = None
        self._unreported = 0
        sealed = self._budget.seal() if self._budget is not None else 0
        checked = self._guard(lambda: check(batch, self.deps))
        if checked is None:
            return
        work = self._committer.submit(self._commit, checked, self._budget, sealed)
        position = dataclasses.replace(batch, types=[], rejected=[])
        self._tail = PendingCommit(position, work, shard_end)
        if shard_end:
            self._finish_tail(ckpt)

    def _commit(self, checked: Checked, budget: BudgetHandle | None, sealed: int) -> FlushResult:
        """On the commit thread; the batch's bytes leave the budget when its rows are let go."""
        try:
            return commit(checked, self.deps, abandoned=self._abandoned.is_set)
        finally:
            if budget is not None:
                budget.release(sealed)

    def _finish_tail(self, ckpt: Checkpointer) -> None:
        """Wait for the last flush's commit (through its Redis mark), then checkpoint it."""
        pending, self._tail = self._tail, None
        if pending is None:
            return
        result = self._guard(lambda: finish(pending, ckpt, self.deps))
        if result is not None:
            record_flush(self.metrics, self.ctx.prom, pending.batch, result)

    def _guard(self, step: Callable[[], T]) -> T | None:
        """Run a flush or checkpoint; turn lease loss into *stopped* and errors into *failed*."""
        try:
            return step()
        except LeaseLost as exc:
            log.warning(
                "batcher lease lost at checkpoint", extra={"shard_id": self.shard_id, "error": str(exc)}
            )
            self._drop()
            self._close()
            self._stopped = True
            return None
        except Exception as exc:
            self._failed = exc
            self._drop()
            self._close()
            log.error(
                "batcher flush failed; not checkpointing, shard needs a restart",
                extra={"shard_id": self.shard_id, "error": f"{type(exc).__name__}: {exc}"},
            )
            raise ShardFailed(f"{self.shard_id}: flush failed: {exc}") from exc

    def _raise_if_failed(self) -> None:
        if self._failed is not None:
            raise ShardFailed(f"{self.shard_id}: an earlier flush failed ({self._failed}); restart the shard")

    def _drop(self) -> None:
        self._abandoned.set()  # an in-flight commit writes nothing more (what it wrote is harmless)
        self._tail = None
        self.buffer.clear()
        self._cut_due = None
        self._unreported = 0
        if self._budget is not None:
            self._budget.release()

    def _close(self) -> None:
        self._committer.shutdown(wait=False)
        if self._budget is not None:
            self._budget.close()
            self._budget = None
