"""Read a load's objects from S3 ahead of the COPY that needs them.

A busy pipeline announces many small objects (one per customer, type and shard per flush);
read one after another, their round trips — not the COPY — set the load's duration. A few
reads in flight, in the order staging consumes them, hide that latency. The window is bounded
in objects and in bytes (manifest sizes), so a load of large objects never holds more than
``max_bytes`` of them in memory beyond the one being copied.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from inserter.plan import ObjectLoad


class Prefetcher:
    def __init__(
        self,
        read: Callable[[str], bytes],
        pool: ThreadPoolExecutor,
        objects: Sequence[ObjectLoad],
        *,
        max_objects: int = 16,
        max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._read = read
        self._pool = pool
        self._queue = deque(objects)
        self._inflight: dict[str, tuple[Future[bytes], int]] = {}
        self._max_objects = max(1, max_objects)
        self._max_bytes = max_bytes
        self._fill()

    def _fill(self) -> None:
        while self._queue and len(self._inflight) < self._max_objects:
            ahead = sum(size for _, size in self._inflight.values())
            nxt = self._queue[0]
            if self._inflight and ahead + nxt.bytes > self._max_bytes:
                return
            self._queue.popleft()
            if nxt.key not in self._inflight:
                self._inflight[nxt.key] = (self._pool.submit(self._read, nxt.key), nxt.bytes)

    def get(self, key: str) -> bytes:
        """The object's bytes (read now if it was not ahead); errors surface here, in order."""
        entry = self._inflight.pop(key, None)
        try:
            return entry[0].result() if entry is not None else self._read(key)
        finally:
            self._fill()

    def close(self) -> None:
        """Drop what is still ahead (the load failed or ended early)."""
        self._queue.clear()
        for future, _ in self._inflight.values():
            future.cancel()
        self._inflight.clear()
