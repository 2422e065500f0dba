"""Synthetic load: reproducible, realistic, and every record means what it says."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.core.errors import ConfigError
from pipeline.producer.synthetic import UNSAFE_CUSTOMER_IDS, SyntheticConfig, SyntheticRecord, generate
from schemas import InvalidEvent, is_safe_customer_id, load_registry
from schemas.errors import DECODE_REASONS

REGISTRY = load_registry()
START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def clock() -> Callable[[], datetime]:
    """A fake clock that advances a millisecond per call."""
    ticks = iter(range(10**9))
    return lambda: START + timedelta(milliseconds=next(ticks))


def records(count: int, **config: object) -> list[SyntheticRecord]:
    return list(generate(SyntheticConfig(**config), count, now=clock()))  # type: ignore[arg-type]


def test_same_seed_same_bytes() -> None:
    a, b = records(3000), records(3000)
    assert a == b
    assert [r.data for r in records(3000, seed=43)] != [r.data for r in a]


def test_count_includes_duplicates_and_invalid() -> None:
    assert len(records(0)) == 0
    assert len(records(1)) == 1
    assert len(records(1234, duplicate_ratio=0.3, invalid_ratio=0.3)) == 1234


@pytest.mark.parametrize(("dup", "bad"), [(0.02, 0.005), (0.1, 0.05), (0.0, 0.0), (0.5, 0.0), (0.0, 0.4)])
def test_duplicate_and_invalid_counts_follow_the_ratios(dup: float, bad: float) -> None:
    n = 20_000
    got = records(n, duplicate_ratio=dup, invalid_ratio=bad)
    dups = sum(r.is_duplicate for r in got)
    invalid = sum(not r.valid for r in got)
    # binomial: within 5 standard deviations (and exactly zero when the ratio is zero)
    for observed, ratio in ((dups, dup), (invalid, bad)):
        sigma = (n * ratio * (1 - ratio)) ** 0.5
        assert abs(observed - n * ratio) <= 5 * sigma + 1, (observed, ratio)


def test_every_record_decodes_as_labelled() -> None:
    got = records(20_000, invalid_ratio=0.05, duplicate_ratio=0.05)
    reasons: Counter[str] = Counter()
    seen_ids: dict[str, bytes] = {}
    for r in got:
        if r.valid:
            ev = REGISTRY.decode(r.data)
            assert (ev.event_id, ev.customer_id) == (r.event_id, r.customer_id)
            assert r.invalid_reason is None
            entity = REGISTRY.get(ev.type, ev.version).entity_id(ev.payload)
            assert r.partition_key == f"{ev.customer_id}:{entity}"
            if r.is_duplicate:
                assert seen_ids[ev.event_id] == r.data  # a retry re-sends the exact bytes
            else:
                assert ev.event_id not in seen_ids  # fresh events have fresh ids
                seen_ids[ev.event_id] = r.data
        else:
            assert not r.is_duplicate
            with pytest.raises(InvalidEvent) as info:
                REGISTRY.decode(r.data)
            assert info.value.reason == r.invalid_reason, info.value.detail
            reasons[info.value.reason] += 1
            assert 1 <= len(r.partition_key) <= 256
            assert r.customer_id is None or is_safe_customer_id(r.customer_id)
    assert set(reasons) == set(DECODE_REASONS) - {"undecodable"}


def test_unsafe_customer_ids_cover_the_nasty_cases() -> None:
    assert {"../../etc", "a/b", "x'; drop table t;--", ""} <= set(UNSAFE_CUSTOMER_IDS)
    assert any(len(c) == 300 for c in UNSAFE_CUSTOMER_IDS)
    assert any(not c.isascii() for c in UNSAFE_CUSTOMER_IDS)
    assert not any(is_safe_customer_id(c) for c in UNSAFE_CUSTOMER_IDS)
    unsafe = [r for r in records(20_000, invalid_ratio=0.2) if r.invalid_reason == "unsafe_customer_id"]
    assert unsafe and all(r.customer_id is None and r.partition_key.startswith("invalid:") for r in unsafe)


def test_oversize_records_exceed_the_configured_limit() -> None:
    got = [
        r for r in records(3000, invalid_ratio=0.2, max_event_bytes=4096) if r.invalid_reason == "oversize"
    ]
    assert got and all(4096 < len(r.data) < 4096 + 1024 for r in got)
    small = load_registry(max_event_bytes=4096)
    assert all(small.decode(r.data) for r in records(2000, max_event_bytes=4096) if r.valid)


def test_occurred_at_comes_from_the_clock() -> None:
    got = [REGISTRY.decode(r.data) for r in records(50, duplicate_ratio=0.0, invalid_ratio=0.0)]
    assert [ev.occurred_at for ev in got] == [START + timedelta(milliseconds=n) for n in range(50)]


def test_default_clock_is_now() -> None:
    before = datetime.now(UTC)
    ev = REGISTRY.decode(next(generate(SyntheticConfig(duplicate_ratio=0, invalid_ratio=0), 1)).data)
    assert before <= ev.occurred_at <= datetime.now(UTC)


def test_traffic_looks_real() -> None:
    events = [REGISTRY.decode(r.data) for r in records(20_000, duplicate_ratio=0.0, invalid_ratio=0.0)]
    kinds = Counter((ev.type, ev.version) for ev in events)
    assert set(kinds) == {(et.name, et.version) for et in REGISTRY.types()}
    customers = Counter(ev.customer_id for ev in events)
    assert len(customers) == 20 and all(c.startswith("cust_") for c in customers)
    assert customers.most_common()[0][1] > 3 * customers.most_common()[-1][1]  # tenants differ in size
    # orders move through statuses in order; appointments get rescheduled/cancelled
    history: dict[tuple[str, str], list[str]] = {}
    for ev in events:
        if ev.type == "order_placed":
            history.setdefault((ev.customer_id, ev.payload.order_id), []).append(  # type: ignore[attr-defined]
                ev.payload.status  # type: ignore[attr-defined]
            )
    allowed = {("placed",), ("placed", "paid"), ("placed", "cancelled"), ("placed", "paid", "shipped")}
    assert all(tuple(h) in allowed for h in history.values())
    assert Counter(len(h) for h in history.values())[3] > 50
    statuses = Counter(ev.payload.status for ev in events if ev.type == "appointment_booked")  # type: ignore[attr-defined]
    assert set(statuses) == {"booked", "rescheduled", "cancelled"}
    users = Counter(ev.payload.user_id for ev in events if ev.type == "page_view")  # type: ignore[attr-defined]
    assert users.most_common(1)[0][1] > 5  # users come back


@pytest.mark.parametrize(
    "config",
    [
        {"customers": 0},
        {"duplicate_ratio": -0.1},
        {"invalid_ratio": 1.5},
        {"duplicate_ratio": 0.5, "invalid_ratio": 0.5},
        {"max_event_bytes": 10},
    ],
)
def test_bad_config_is_a_config_error(config: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        SyntheticConfig(**config)  # type: ignore[arg-type]


def test_negative_count_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        generate(SyntheticConfig(), -1)
