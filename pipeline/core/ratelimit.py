"""A token bucket for a steady produce rate, with the clock passed in so it is unit-testable."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up.

    :meth:`reserve` takes tokens even when there are not enough (the balance goes negative) and
    returns how long the caller must wait; so waits never overlap and the long-run rate is
    exact even when ``sleep`` oversleeps.
    """

    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def start(cls, rate: float, now: float, *, burst: float | None = None) -> TokenBucket:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        size = burst if burst is not None else max(1.0, rate / 10)
        return cls(rate=rate, burst=size, tokens=size, updated=now)

    def reserve(self, n: float, now: float) -> float:
        """Take ``n`` tokens; return the seconds to wait before using them (0 if available)."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = max(self.updated, now)
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


def throttle(
    items: Iterable[T],
    rate: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[T]:
    """Yield ``items`` at no more than ``rate`` per second (``rate <= 0``: unthrottled)."""
    if rate <= 0:
        yield from items
        return
    bucket = TokenBucket.start(rate, clock())
    for item in items:
        wait = bucket.reserve(1, clock())
        if wait > 0:
            sleep(wait)
        yield item
