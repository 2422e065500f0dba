"""The process-wide buffer budget (settings.worker.max_buffer_bytes) shared by every shard this
process owns. Each processor reports what its buffer holds; when the total passes the limit, the
largest buffer is asked to flush early (a PRESSURE cut), so many open customer partitions across
many shards end in smaller objects, never in an out-of-memory kill.

Thread-safe: the runtime may drive shards on several threads. The decision itself is the pure
:func:`workers.batcher.policy.pressure_decision`.
"""

from __future__ import annotations

import threading

from workers.batcher.policy import PressureDecision, pressure_decision


class BudgetHandle:
    """One processor's account. ``flush_requested`` is set by others, read by its owner."""

    __slots__ = ("_budget", "flush_requested", "held", "name")

    def __init__(self, budget: MemoryBudget, name: str) -> None:
        self._budget = budget
        self.name = name
        self.held = 0
        self.flush_requested = False

    def add(self, nbytes: int) -> PressureDecision | None:
        """Account for ``nbytes`` more; a decision only when the process is over its limit."""
        return self._budget._add(self, nbytes)

    def seal(self) -> int:
        """The buffer was cut: its bytes stay accounted until ``release(bytes)`` (its commit let
        the rows go); returns them."""
        self.flush_requested = False
        return self.held

    def release(self, nbytes: int | None = None) -> None:
        """``nbytes`` of a sealed buffer are gone; everything when None (the buffer was dropped)."""
        self._budget._release(self, nbytes)

    def close(self) -> None:
        self._budget._close(self)


class MemoryBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._handles: set[BudgetHandle] = set()
        self._total = 0

    @property
    def total(self) -> int:
        return self._total

    def open(self, name: str) -> BudgetHandle:
        handle = BudgetHandle(self, name)
        with self._lock:
            self._handles.add(handle)
        return handle

    def _add(self, handle: BudgetHandle, nbytes: int) -> PressureDecision | None:
        with self._lock:
            handle.held += nbytes
            self._total += nbytes
            if self.limit <= 0 or self._total <= self.limit:
                return None
            largest = max(self._handles, key=lambda h: h.held)
            decision = pressure_decision(
                total=self._total, limit=self.limit, mine=handle.held, largest=largest.held
            )
            if decision.ask_largest and largest is not handle:
                largest.flush_requested = True
            return decision

    def _release(self, handle: BudgetHandle, nbytes: int | None = None) -> None:
        with self._lock:
            gone = handle.held if nbytes is None else min(nbytes, handle.held)
            self._total -= gone
            handle.held -= gone
            if nbytes is None:
                handle.flush_requested = False

    def _close(self, handle: BudgetHandle) -> None:
        self._release(handle)
        with self._lock:
            self._handles.discard(handle)
