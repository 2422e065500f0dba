from __future__ import annotations

import random

import pytest

from pipeline.core.errors import RetriesExhausted, TerminalError, TransientError
from pipeline.core.retry import Backoff, call_with_retry


def test_backoff_delays_are_bounded_by_exponential_cap() -> None:
    policy = Backoff(base=0.1, cap=1.0, max_attempts=8, rng=random.Random(7))
    delays = list(policy.delays())
    assert len(delays) == 7
    for n, delay in enumerate(delays):
        assert 0.0 <= delay <= min(1.0, 0.1 * 2**n)


def test_retries_transient_then_succeeds() -> None:
    calls: list[int] = []
    slept: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("throttled")
        return "ok"

    assert call_with_retry(flaky, what="op", sleep=slept.append) == "ok"
    assert len(calls) == 3 and len(slept) == 2


def test_terminal_error_is_not_retried() -> None:
    calls: list[int] = []

    def bad() -> None:
        calls.append(1)
        raise TerminalError("access denied")

    with pytest.raises(TerminalError):
        call_with_retry(bad, what="op", sleep=lambda _s: None)
    assert len(calls) == 1


def test_gives_up_after_max_attempts_with_cause() -> None:
    def always() -> None:
        raise TransientError("still throttled")

    with pytest.raises(RetriesExhausted) as info:
        call_with_retry(always, what="put records", backoff=Backoff(max_attempts=4), sleep=lambda _s: None)
    assert info.value.attempts == 4
    assert "put records: gave up after 4 attempts: still throttled" in str(info.value)
