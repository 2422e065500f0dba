"""A lease this worker holds: the shared state between the renewer and a shard consumer."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from pipeline.consumer.checkpointing import KclError
from pipeline.consumer.lease_store import LeaseStore
from pipeline.consumer.leases import Lease
from pipeline.consumer.processor import CheckpointError
from pipeline.consumer.sequence import SHARD_END, ExtendedSequenceNumber, validate_checkpoint
from pipeline.core.errors import TransientError


@dataclass
class LeaseHandle:
    """Counter updates (renewals, checkpoints) happen under one lock so each write is
    conditional on the counter this worker last wrote; ``token`` changes at every acquisition,
    so a consumer from an earlier tenure can never checkpoint.

    ``renewed_at`` is when this worker last moved the counter (renewal or checkpoint), on
    ``clock``; past ``failover_s`` the lease is expired *locally*: whoever notices first (the
    renewer, the consumer before delivering a batch, the checkpointer) treats it as lost, so a
    worker that was paused past failover delivers nothing more before it learns the outcome."""

    lease: Lease
    renewed_at: float = field(default_factory=time.monotonic)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    lost: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    failover_s: float = math.inf
    clock: Callable[[], float] = time.monotonic

    def mark_lost(self) -> None:
        self.lost.set()

    def expired_locally(self) -> bool:
        return self.clock() - self.renewed_at > self.failover_s

    def usable(self) -> bool:
        """Held and not expired locally; marks the lease lost when it has expired."""
        if not self.lost.is_set() and self.expired_locally():
            self.mark_lost()
        return not self.lost.is_set()


class ShardCheckpointer:
    """The processor's checkpointer for one shard consumer (kclpy's ``checkpoint`` contract)."""

    def __init__(self, store: LeaseStore, handle: LeaseHandle, token: str) -> None:
        self.store = store
        self.handle = handle
        self.token = token
        self.largest_delivered: ExtendedSequenceNumber | None = None
        self.shard_ended = False
        self.accepting = False

    def checkpoint(self, sequence_number: str | None = None, sub_sequence_number: int | None = None) -> None:
        if not self.accepting:
            raise CheckpointError(
                KclError.INVALID_STATE,
                "checkpoints are accepted only in process_records, shard_ended and shutdown_requested",
            )
        if sequence_number is None:
            target = ExtendedSequenceNumber(SHARD_END) if self.shard_ended else self.largest_delivered
            if target is None:
                return
        else:
            target = ExtendedSequenceNumber(sequence_number, sub_sequence_number or 0)
        handle = self.handle
        with handle.lock:
            if not handle.usable() or handle.token != self.token:
                raise CheckpointError(KclError.SHUTDOWN, f"lease {handle.lease.lease_key} is no longer held")
            if not validate_checkpoint(
                target,
                last_checkpoint=handle.lease.checkpoint,
                largest_delivered=self.largest_delivered,
                shard_ended=self.shard_ended,
            ):
                return
            started = handle.clock()  # the write proves the lease was ours no later than this
            try:
                ok = self.store.checkpoint(handle.lease, target)
            except TransientError as exc:
                raise CheckpointError(KclError.THROTTLING, str(exc)) from exc
            if not ok:
                handle.mark_lost()
                raise CheckpointError(
                    KclError.SHUTDOWN, f"lease {handle.lease.lease_key} was taken by another worker"
                )
            handle.lease = replace(
                handle.lease,
                lease_counter=handle.lease.lease_counter + 1,
                checkpoint=target,
                owner_switches=0,
            )
            handle.renewed_at = started
