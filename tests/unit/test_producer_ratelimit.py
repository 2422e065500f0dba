"""Token bucket and throttle with a simulated clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.ratelimit import TokenBucket, throttle


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_burst_is_free_then_tokens_arrive_at_the_rate() -> None:
    bucket = TokenBucket.start(10.0, now=0.0, burst=3)
    assert [bucket.reserve(1, 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve(1, 0.0) == pytest.approx(0.1)
    assert bucket.reserve(1, 0.0) == pytest.approx(0.2)  # reservations queue up, never overlap
    assert bucket.reserve(1, 1.0) == 0.0  # after a pause, the bucket refilled (up to the burst)


def test_idle_time_does_not_save_more_than_the_burst() -> None:
    bucket = TokenBucket.start(100.0, now=0.0, burst=5)
    waits = [bucket.reserve(1, 3600.0) for _ in range(7)]
    assert waits[:5] == [0.0] * 5 and waits[5] > 0


@given(rate=st.floats(1, 5_000), n=st.integers(1, 3_000))
def test_throttle_keeps_the_long_run_rate(rate: float, n: int) -> None:
    clock = FakeClock()
    start = clock.now
    out = list(throttle(range(n), rate, clock=clock, sleep=clock.sleep))
    assert out == list(range(n))
    burst = max(1.0, rate / 10)
    expected = max(0.0, (n - burst) / rate)
    assert clock.now - start == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_a_slow_consumer_is_not_throttled_further() -> None:
    clock = FakeClock()
    for _ in throttle(range(50), 10.0, clock=clock, sleep=clock.sleep):
        clock.now += 0.5  # the consumer itself takes longer than 1/rate
    assert clock.sleeps == []


def test_zero_rate_means_unthrottled() -> None:
    clock = FakeClock()
    assert list(throttle(range(5), 0, clock=clock, sleep=clock.sleep)) == [0, 1, 2, 3, 4]
    assert clock.sleeps == []
    with pytest.raises(ValueError):
        TokenBucket.start(0, now=0.0)
