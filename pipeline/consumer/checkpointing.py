"""The one checkpoint policy every processor uses, under the native runtime and under the KCL
MultiLangDaemon: checkpoint, and read a refusal the same way everywhere.

A refusal means one of three things (:func:`reading_of`): the lease moved (``ShutdownException``:
stop and write nothing more — the new owner replays), the table is busy (``ThrottlingException``,
``KinesisClientLibDependencyException``: retried here with backoff), or the call itself was wrong
(anything else: a bug or a corrupted position, never retried).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum, StrEnum

from pipeline.consumer.processor import Checkpointer, CheckpointError
from pipeline.core.errors import RetriesExhausted, ShardhouseError, TerminalError, TransientError
from pipeline.core.retry import Backoff, call_with_retry


class KclError(StrEnum):
    """The error names a checkpoint refusal carries (kclpy's ``CheckpointError.value``)."""

    SHUTDOWN = "ShutdownException"
    THROTTLING = "ThrottlingException"
    INVALID_STATE = "InvalidStateException"
    DEPENDENCY = "KinesisClientLibDependencyException"
    ILLEGAL_ARGUMENT = "IllegalArgumentException"


class Refusal(Enum):
    LEASE_LOST = "lease_lost"
    RETRY = "retry"
    WRONG = "wrong"


def reading_of(value: str) -> Refusal:
    """How a refusal named ``value`` is read (an unknown name is a wrong call, never retried)."""
    if value == KclError.SHUTDOWN:
        return Refusal.LEASE_LOST
    if value in (KclError.THROTTLING, KclError.DEPENDENCY):
        return Refusal.RETRY
    return Refusal.WRONG


class CheckpointFailed(ShardhouseError):
    """A checkpoint that did not land; ``value`` is the KCL error name of the last refusal."""

    def __init__(self, message: str, value: str) -> None:
        super().__init__(message)
        self.value = value


class LeaseLost(CheckpointFailed):
    """The checkpoint was refused because another worker owns the shard now: stop, write nothing."""


class CheckpointThrottled(CheckpointFailed, TransientError):
    """The lease table stayed busy through every retry; the position is still unsaved."""


class CheckpointRefused(CheckpointFailed, TerminalError):
    """The checkpoint call itself was refused as wrong (InvalidState, IllegalArgument, …)."""


class ShardFailed(ShardhouseError):
    """A processor cannot make progress on its shard right now. The runtime keeps the records
    (nothing is checkpointed past them) and delivers them again after a backoff."""


#: ~6 s of retries in all: long enough for a throttled table, short enough to notice a lost lease.
CHECKPOINT_BACKOFF = Backoff(base=0.1, cap=2.0, max_attempts=5)


def checkpoint(
    checkpointer: Checkpointer,
    sequence_number: str | None = None,
    sub_sequence_number: int | None = None,
    *,
    backoff: Backoff | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Checkpoint at a position (``None``: the largest delivered, or SHARD_END in shard_ended).

    Raises :class:`LeaseLost`, :class:`CheckpointThrottled` (after retries) or
    :class:`CheckpointRefused`; nothing else escapes from a refusal."""
    where = sequence_number or "SHARD_END"

    def attempt() -> None:
        try:
            checkpointer.checkpoint(sequence_number, sub_sequence_number)
        except CheckpointError as exc:
            reading = reading_of(exc.value)
            if reading is Refusal.LEASE_LOST:
                raise LeaseLost(f"checkpoint at {where} refused: lease lost", exc.value) from exc
            if reading is Refusal.RETRY:
                raise CheckpointThrottled(f"checkpoint at {where}: {exc}", exc.value) from exc
            raise CheckpointRefused(f"checkpoint at {where} refused: {exc}", exc.value) from exc

    what = f"checkpoint {where}"
    try:
        call_with_retry(attempt, what=what, backoff=backoff or CHECKPOINT_BACKOFF, sleep=sleep)
    except RetriesExhausted as exc:
        value = exc.last.value if isinstance(exc.last, CheckpointFailed) else KclError.THROTTLING
        raise CheckpointThrottled(str(exc), value) from exc
