"""What one event contributes to the read models (schemas/read_models.py), and the orders the
models rely on: versions sort like (occurred_at, event_id), buckets and their lifetimes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.projector_fakes import AT, appointment, event, order

from schemas.read_models import (
    DAILY_RETENTION,
    HOURLY_RETENTION,
    MEASURE_PATTERN,
    epoch_seconds,
    hour_bucket,
    hour_of,
    micros_of,
    parse_version,
    project,
    version_of,
)


def test_page_view_counts_its_path_and_becomes_the_users_state() -> None:
    ev = event("page_view", 1, {"user_id": "u1", "url": "https://x.example/p/a?q=1#frag", "title": "T"})
    p = project(ev)
    assert p is not None
    assert (p.kind, p.entity_id, p.type_tag) == ("user", "u1", "page_view/1")
    assert p.top == ("page_views", "/p/a", 1)
    assert p.indexed is None
    assert orjson.loads(p.state) == {
        "user_id": "u1",
        "url": "https://x.example/p/a?q=1#frag",
        "title": "T",
        "duration_ms": None,
        "scroll_depth": None,
    }
    bare = project(event("page_view", 1, {"user_id": "u1", "url": "https://x.example"}))
    assert bare is not None and bare.top == ("page_views", "/", 1)


def test_revenue_counts_paid_orders_net_of_discount_per_currency() -> None:
    assert project(order("placed")).top is None  # type: ignore[union-attr]
    assert project(order("shipped")).top is None  # type: ignore[union-attr]
    assert project(order("paid")).top == ("revenue.EUR", "user_7", 5000)  # type: ignore[union-attr]
    discounted = project(order("paid", coupon_code="X", discount_cents=500))
    assert discounted is not None and discounted.top == ("revenue.EUR", "user_7", 4500)
    odd = project(order("paid", currency="eu"))
    assert odd is not None and odd.top == ("revenue.XXX", "user_7", 5000)
    assert all(MEASURE_PATTERN.fullmatch(m) for m in ("revenue.EUR", "revenue.XXX", "page_views", "bookings"))


def test_appointment_is_filed_in_its_providers_calendar_until_cancelled() -> None:
    start = datetime(2024, 6, 3, 9, 30, tzinfo=UTC)
    booked = project(appointment("booked", start))
    assert booked is not None
    assert (booked.kind, booked.entity_id) == ("appointment", "appt_1")
    assert booked.indexed == ("calendar", "prov:9", epoch_seconds(start))
    assert booked.top == ("bookings", "prov:9", 1)
    moved = project(appointment("rescheduled", start + timedelta(days=1)))
    assert moved is not None and moved.indexed == ("calendar", "prov:9", epoch_seconds(start) + 86400)
    assert moved.top is None  # only new bookings count
    cancelled = project(appointment("cancelled", start))
    assert cancelled is not None and cancelled.indexed is None
    assert orjson.loads(cancelled.state)["fee"] == "60.50"  # decimals as strings, at their scale


_times = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC))


@given(_times, st.uuids(), _times, st.uuids())
def test_version_order_is_occurred_at_then_event_id(
    a: datetime, ida: uuid.UUID, b: datetime, idb: uuid.UUID
) -> None:
    va, vb = version_of(micros_of(a), str(ida)), version_of(micros_of(b), str(idb))
    assert len(va) == len(vb) == 50
    assert (va < vb) == ((a, str(ida)) < (b, str(idb)))
    assert set(va) <= set("0123456789abcdef")  # nothing a locale could collate differently
    assert parse_version(va) == (a, str(ida))


def test_micros_are_exact_where_timestamps_round() -> None:
    t = datetime(2262, 1, 1, 0, 0, 0, 999999, tzinfo=UTC)
    assert micros_of(t + timedelta(microseconds=1)) - micros_of(t) == 1
    assert hour_of(t) == micros_of(t) // 3_600_000_000


def test_hour_bucket_names_and_lifetimes() -> None:
    b = hour_bucket(hour_of(AT))
    assert (b.hour_label, b.day_label, b.day, b.hh, b.month, b.dd) == (
        "2024-05-31T23",
        "2024-05-31",
        "20240531",
        "23",
        "202405",
        "31",
    )
    next_day = datetime(2024, 6, 1, tzinfo=UTC)
    assert b.hourly_expires == epoch_seconds(next_day + HOURLY_RETENTION)
    assert b.daily_expires == epoch_seconds(next_day + DAILY_RETENTION)
    december = hour_bucket(hour_of(datetime(2024, 12, 15, 5, tzinfo=UTC)))
    assert december.daily_expires == epoch_seconds(datetime(2025, 1, 1, tzinfo=UTC) + DAILY_RETENTION)


@pytest.mark.parametrize("bad", ["", "1" * 49, "x" * 50])
def test_parse_version_refuses_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_version(bad)
