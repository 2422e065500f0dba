"""Bounded retries with exponential backoff and full jitter.

The policy is a small pure object (clock and randomness passed in) so its schedule is
unit-testable; :func:`call_with_retry` is the one driver every adapter uses.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from pipeline.core.errors import RetriesExhausted, TransientError

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Full-jitter exponential backoff: delay_n = uniform(0, min(cap, base * 2**n))."""

    base: float = 0.05
    cap: float = 5.0
    max_attempts: int = 6
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delays(self) -> Iterator[float]:
        """Yield the sleep before attempt 2, 3, … max_attempts."""
        for n in range(self.max_attempts - 1):
            yield self.rng.uniform(0.0, min(self.cap, self.base * (2**n)))

    def endless(self) -> Iterator[float]:
        """:meth:`delays`, then full-jitter waits at the cap, without end: for waiting out an
        outage, which no attempt count may end (max_attempts only sizes the growing part)."""
        yield from self.delays()
        while True:
            yield self.rng.uniform(0.0, self.cap)


def is_transient(exc: BaseException) -> bool:
    """The default retry question; adapters classify into TransientError at the boundary."""
    return isinstance(exc, TransientError)


def call_with_retry(
    fn: Callable[[], T],
    *,
    what: str,
    backoff: Backoff | None = None,
    retry_if: Callable[[BaseException], bool] = is_transient,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """Run ``fn`` until it succeeds, a non-retryable error escapes, or attempts run out."""
    policy = backoff or Backoff()
    delays = policy.delays()
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as exc:
            if not retry_if(exc):
                raise
            delay = next(delays, None)
            if delay is None:
                raise RetriesExhausted(what, attempt, exc) from exc
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            sleep(delay)
            attempt += 1
