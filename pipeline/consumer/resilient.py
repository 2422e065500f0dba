"""Nothing is skipped: a processor that raises gets its records again, and a record that fails on
its own is dead-lettered with reason ``processor_error`` — never dropped, never checkpointed past.

KCL skips a batch whose processor threw and moves on; that loses every record of the batch. Here
the wrapper keeps every record delivered since the last checkpoint that landed. When the inner
processor raises (any exception: a bug, RecursionError on a hostile record, a dependency outage
that outlived the processor's own retries), the wrapper:

1. drops the inner processor (``lease_lost``: it writes and checkpoints nothing more) and makes a
   fresh one from the factory, initialized at the last checkpoint;
2. after ``isolate_after`` failures of the same records that are not a dependency outage
   (:func:`is_outage`), probes them by bisection, each probe a
   fresh processor whose checkpoints are discarded: a record that raises alone is dead-lettered
   (the dead letter must land first) and left out from then on;
3. waits a jittered, capped backoff and delivers the kept records again, until they go through.

A dependency outage therefore heals by itself once the dependency is back, and the checkpoint
never passes a record that was neither processed nor dead-lettered. Policy and trade-offs:
docs/consumer-runtime.md ("Processor failures").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from pipeline.consumer.checkpointing import ShardFailed
from pipeline.consumer.processor import (
    Checkpointer,
    InitializeInput,
    LeaseLostInput,
    ProcessRecordsInput,
    Record,
    RecordProcessor,
    ShardEndedInput,
    ShutdownRequestedInput,
)
from pipeline.core.errors import TransientError
from pipeline.core.retry import Backoff

log = logging.getLogger(__name__)

#: Dead-letter one record ``(shard_id, record, reason, detail)``; raises if it did not land.
DeadLetterSink = Callable[[str, Record, str, str], None]
PROCESSOR_ERROR = "processor_error"
#: Told ``(shard_id, reason)`` when a shard starts failing and ``(shard_id, None)`` when it heals.
FailureListener = Callable[[str, str | None], None]


def refuse_dead_letter(shard_id: str, record: Record, reason: str, detail: str) -> None:
    """The sink of a runtime given none: the record stays kept (and the shard stalls, visibly)."""
    raise ShardFailed(f"{shard_id}: no dead-letter sink configured for a {reason} record")


@dataclass(frozen=True)
class RecoveryPolicy:
    #: Delays between redeliveries; ``max_attempts`` only sizes the delay sequence (it repeats).
    backoff: Backoff = field(default_factory=lambda: Backoff(base=0.5, cap=30.0, max_attempts=64))
    #: Failed deliveries of the same kept records before they are probed one at a time.
    isolate_after: int = 3


def is_outage(exc: BaseException) -> bool:
    """Whether a failure is a dependency's (an outage, throttling, a timeout) rather than the
    records': anywhere in its cause chain a :class:`TransientError` (errors are classified where
    they enter: AWS, Redis, SQL) or a builtin connection error or timeout. Records are never
    isolated on such a failure — during an outage every probe fails, and dead-lettering them all
    would take valid events out of the warehouse."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TransientError | ConnectionError | TimeoutError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def position_of(record: Record) -> tuple[int, int]:
    return int(record.sequence_number), record.sub_sequence_number


def kept_after(records: Sequence[Record], sequence: str | None, sub: int | None) -> list[Record]:
    """The kept records still unsaved after a checkpoint at (sequence, sub); ``None``: all saved."""
    if sequence is None:
        return []
    at = (int(sequence), sub or 0)
    return [r for r in records if position_of(r) > at]


class _Discarding:
    """A probe's checkpointer: it accepts and forgets, so a probe never moves the lease's
    checkpoint and a processor's own refusal handling is not mistaken for a failing record."""

    def checkpoint(self, sequence_number: str | None = None, sub_sequence_number: int | None = None) -> None:
        return None


class _Tracking:
    """Forwards checkpoints and lets the wrapper forget what they saved."""

    def __init__(self, owner: ResilientProcessor, inner: Checkpointer) -> None:
        self._owner = owner
        self._inner = inner

    def checkpoint(self, sequence_number: str | None = None, sub_sequence_number: int | None = None) -> None:
        self._inner.checkpoint(sequence_number, sub_sequence_number)
        self._owner._saved(sequence_number, sub_sequence_number)


class ResilientProcessor:
    """A :class:`RecordProcessor` around processors made by ``factory`` (one shard's)."""

    def __init__(
        self,
        factory: Callable[[], RecordProcessor],
        dead_letter: DeadLetterSink,
        *,
        policy: RecoveryPolicy | None = None,
        stopping: Callable[[], bool] = lambda: False,
        wait: Callable[[float], object] | None = None,
        on_failure: FailureListener = lambda _shard, _reason: None,
    ) -> None:
        self._factory = factory
        self._dead_letter = dead_letter
        self.policy = policy or RecoveryPolicy()
        self._stopping = stopping
        self._wait = wait or _sleep
        self._on_failure = on_failure
        self._inner: RecordProcessor | None = None
        self._init: InitializeInput | None = None
        self._kept: list[Record] = []
        self._dead: list[Record] = []  # dead-lettered, not yet passed by a checkpoint
        self.shard_id = "?"
        self.failures = 0  # consecutive failed deliveries of the kept records
        self.dead_lettered = 0
        self._probed: tuple[int, int] | None = None  # (first position, count) last probed

    # -- the contract ---------------------------------------------------------------------------
    def initialize(self, initialize_input: InitializeInput) -> None:
        self.shard_id = initialize_input.shard_id
        self._init = initialize_input
        self._inner = self._factory()
        self._inner.initialize(initialize_input)

    def process_records(self, process_records_input: ProcessRecordsInput) -> None:
        checkpointer = _Tracking(self, process_records_input.checkpointer)
        self._kept.extend(process_records_input.records)
        try:
            self._current().process_records(replace(process_records_input, checkpointer=checkpointer))
            self._pass_dead_letters(checkpointer)
        except Exception as exc:
            self._recover(exc, process_records_input, checkpointer)

    def lease_lost(self, lease_lost_input: LeaseLostInput) -> None:
        self._kept.clear()
        self._dead.clear()
        if self._inner is not None:
            self._inner.lease_lost(lease_lost_input)

    def shard_ended(self, shard_ended_input: ShardEndedInput) -> None:
        tracking = _Tracking(self, shard_ended_input.checkpointer)
        self._current().shard_ended(replace(shard_ended_input, checkpointer=tracking))

    def shutdown_requested(self, shutdown_requested_input: ShutdownRequestedInput) -> None:
        if self.failures:
            # The kept records never went through: a shutdown checkpoint ("everything delivered")
            # would pass them. Drop the processor instead; the next owner replays them.
            self._drop()
            return
        tracking = _Tracking(self, shutdown_requested_input.checkpointer)
        self._current().shutdown_requested(replace(shutdown_requested_input, checkpointer=tracking))

    def refuse(self, record: Record, reason: str, detail: str) -> None:
        """Dead-letter a record the runtime will not deliver (an aggregate over the limits); the
        checkpoint may then pass it once nothing unsaved precedes it. Raises if the dead letter
        did not land: the consumer then stops and reads it again later."""
        self._dead_letter(self.shard_id, record, reason, detail)
        self._dead.append(record)
        self._dead.sort(key=position_of)

    # -- recovery -------------------------------------------------------------------------------
    def _current(self) -> RecordProcessor:
        if self._inner is None:
            raise ShardFailed(f"{self.shard_id}: processor used before initialize")
        return self._inner

    def _saved(self, sequence: str | None, sub: int | None) -> None:
        """A checkpoint landed: forget what it saved; a restart starts there."""
        if sequence is None:  # "everything delivered so far"
            if not self._kept:
                return
            sequence, sub = self._kept[-1].sequence_number, self._kept[-1].sub_sequence_number
        self._kept = kept_after(self._kept, sequence, sub)
        self._dead = kept_after(self._dead, sequence, sub)
        if self._init is not None:
            self._init = replace(self._init, sequence_number=sequence, sub_sequence_number=sub or 0)

    def _recover(self, exc: BaseException, given: ProcessRecordsInput, checkpointer: _Tracking) -> None:
        delays = self.policy.backoff.delays()
        while True:
            self.failures += 1
            reason = f"{type(exc).__name__}: {exc}"[:500]
            log.error(
                "processor failed; records kept for redelivery",
                extra={"shard_id": self.shard_id, "attempt": self.failures, "kept": len(self._kept),
                       "error": reason},
            )  # fmt: skip
            self._on_failure(self.shard_id, reason)
            self._restart()
            if self.failures >= self.policy.isolate_after and not is_outage(exc):
                self._isolate()
            delay = next(delays, None)
            if delay is None:
                delays = self.policy.backoff.delays()
                delay = next(delays, self.policy.backoff.cap)
            self._wait(delay)
            if self._stopping():
                raise ShardFailed(f"{self.shard_id}: stopped while recovering from {reason}") from exc
            try:
                again = replace(given, records=list(self._kept), checkpointer=checkpointer)
                self._current().process_records(again)
            except Exception as retry_exc:
                exc = retry_exc
                continue
            log.info("processor recovered", extra={"shard_id": self.shard_id, "after": self.failures})
            self.failures = 0
            self._pass_dead_letters(checkpointer)
            self._on_failure(self.shard_id, None)
            return

    def _pass_dead_letters(self, checkpointer: _Tracking) -> None:
        """Checkpoint past dead-lettered records that nothing unsaved precedes: the processor
        never saw them, so its own checkpoints would stop short of one at a shard's tail and a
        restart would read (and dead-letter) it again."""
        if not self._dead:
            return
        first_unsaved = position_of(self._kept[0]) if self._kept else None
        passable = [r for r in self._dead if first_unsaved is None or position_of(r) < first_unsaved]
        if passable:
            last = passable[-1]
            checkpointer.checkpoint(last.sequence_number, last.sub_sequence_number)

    def _drop(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            try:
                inner.lease_lost(LeaseLostInput())
            except Exception:
                log.exception("dropping a failed processor raised", extra={"shard_id": self.shard_id})

    def _restart(self) -> None:
        self._drop()
        if self._init is None:
            raise ShardFailed(f"{self.shard_id}: processor failed before initialize")
        fresh = self._factory()
        fresh.initialize(self._init)
        self._inner = fresh

    def _isolate(self) -> None:
        """Find the kept records that fail on their own by bisection (a few probes per poison
        record, not one per record), dead-letter them and leave them out from then on."""
        if not self._kept or self._init is None:
            return
        state = (position_of(self._kept[0])[0], len(self._kept))
        if state == self._probed:
            return  # the same records were probed already: they fail only together (or outside)
        self._probed = state
        poisoned = {position_of(r): exc for r, exc in self._failing_alone(self._kept)}
        keep: list[Record] = []
        for record in self._kept:
            failure = poisoned.get(position_of(record))
            if failure is None:
                keep.append(record)
                continue
            try:
                detail = f"{type(failure).__name__}: {failure}"
                self._dead_letter(self.shard_id, record, PROCESSOR_ERROR, detail)
            except Exception:
                log.exception("dead letter failed; record kept", extra={"shard_id": self.shard_id})
                keep.append(record)
                self._probed = None  # probe again after the next backoff: the sink may heal
                continue
            self.dead_lettered += 1
            self._dead.append(record)
            log.error(
                "record dead-lettered: processor_error",
                extra={"shard_id": self.shard_id, "sequence_number": record.sequence_number,
                       "sub_sequence_number": record.sub_sequence_number, "error": type(failure).__name__},
            )  # fmt: skip
        self._kept = keep

    def _failing_alone(self, records: list[Record]) -> list[tuple[Record, BaseException]]:
        """The records among ``records`` that make a fresh processor raise on their own: a group
        that goes through is cleared whole; a failing group is split in halves."""
        found: list[tuple[Record, BaseException]] = []
        groups = [records]
        while groups:
            group = groups.pop()
            if self._stopping():
                break
            failure = self._probe(group)
            if failure is None:
                continue
            if is_outage(failure):
                self._probed = None  # inconclusive: the dependency failed, not the records
                return []
            if len(group) == 1:
                found.append((group[0], failure))
                continue
            half = len(group) // 2
            groups += [group[half:], group[:half]]
        return found

    def _probe(self, records: list[Record]) -> BaseException | None:
        assert self._init is not None
        probe = self._factory()
        try:
            probe.initialize(self._init)
            probe.process_records(ProcessRecordsInput(records, 0, _Discarding()))
        except Exception as exc:
            return exc
        finally:
            try:
                probe.lease_lost(LeaseLostInput())
            except Exception:
                log.debug("probe lease_lost raised", exc_info=True)
        return None


def _sleep(seconds: float) -> None:
    time.sleep(seconds)
