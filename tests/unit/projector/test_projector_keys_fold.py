"""Key layout (parse ∘ build = id) and the reference fold's own laws: the oracle must itself be
indifferent to duplicates and order, or comparing the Lua path with it proves nothing."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.projector_fakes import appointment, decoded, synthetic

from schemas.read_models import epoch_seconds, project
from workers.projector import keys
from workers.projector.fold import fold

_customer = st.from_regex(r"[a-z0-9][a-z0-9_]{0,47}", fullmatch=True)
_free = st.text(min_size=1, max_size=64)


@given(_customer, st.sampled_from(["user", "order", "appointment"]), _free)
def test_entity_keys_parse_back(customer: str, kind: str, entity_id: str) -> None:
    parsed = keys.parse_key(keys.entity_key(customer, kind, entity_id))
    assert parsed == keys.ParsedKey("e", customer, (kind, entity_id))


@given(_customer, _free, _free)
def test_index_and_top_keys_parse_back(customer: str, owner: str, measure: str) -> None:
    assert keys.parse_key(keys.index_key(customer, "calendar", owner)) == keys.ParsedKey(
        "x", customer, ("calendar", owner)
    )
    assert keys.parse_key(keys.top_key(customer, measure)) == keys.ParsedKey("t", customer, (measure,))
    assert keys.parse_key(keys.hourly_key(customer, "20240501")) == keys.ParsedKey(
        "ch", customer, ("20240501",)
    )
    assert keys.parse_key(keys.daily_key(customer, "202405")) == keys.ParsedKey("cd", customer, ("202405",))


def test_unknown_keys_do_not_parse() -> None:
    assert keys.parse_key("zz:cust:1") is None
    assert keys.parse_key("e:cust") is None
    assert keys.parse_key("nocolon") is None


@given(st.text(min_size=1, max_size=40))
def test_glob_escape_leaves_no_live_wildcards(text: str) -> None:
    escaped = keys.glob_escape(text)
    unescaped = re.sub(r"\\(.)", "", escaped)
    assert not set(unescaped) & set("*?[]\\")


def test_namespace_layout() -> None:
    ns = keys.Namespace.for_stream("my-stream.v2")
    assert (ns.current, ns.building, ns.positions) == (
        "rm:my-stream.v2:current",
        "rm:my-stream.v2:building",
        "rm:my-stream.v2:pos",
    )
    assert ns.generation(3) == "rm:my-stream.v2:3:"
    assert ns.generation_pattern(3) == "rm:my-stream.v2:3:*"


EVENTS = decoded(synthetic(600, duplicate_ratio=0.0, invalid_ratio=0.0))
EXPECTED = fold(EVENTS)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.floats(0.0, 1.0))
def test_fold_ignores_duplicates_and_order(rng: random.Random, dup_share: float) -> None:
    events = EVENTS + rng.sample(EVENTS, int(len(EVENTS) * dup_share))
    rng.shuffle(events)
    assert fold(events) == EXPECTED


def test_fold_keeps_latest_state_first_seen_and_distinct_count() -> None:
    assert EXPECTED.summary()["events_counted"] == len(EVENTS)
    for (customer, kind, entity_id), state in EXPECTED.entities.items():
        mine = [
            p
            for ev in EVENTS
            if (p := project(ev)) and (p.customer_id, p.kind, p.entity_id) == (customer, kind, entity_id)
        ]
        assert state.events == len(mine)
        assert state.version == max(p.version for p in mine)
        assert state.first_seen == min(p.version[:18] for p in mine)
        assert state.state == max(mine, key=lambda p: p.version).state


def test_calendar_follows_the_latest_state_of_each_appointment() -> None:
    start = datetime(2024, 6, 3, 9, tzinfo=UTC)
    booked, moved, cancelled = (
        appointment("booked", start),
        appointment("rescheduled", start + timedelta(days=2)),
        appointment("cancelled", start),
    )
    # occurred_at is the same for all three: the event id breaks the tie, as the version says.
    ordered = sorted([booked, moved, cancelled], key=lambda e: e.event_id)
    last = ordered[-1]
    models = fold(reversed(ordered))
    calendar = models.indexes.get(("cust_0001", "calendar", "prov:9"))
    if last.payload.status == "cancelled":  # type: ignore[attr-defined]
        assert calendar is None
    else:
        assert calendar == {"appt_1": epoch_seconds(last.payload.starts_at)}  # type: ignore[attr-defined]
    assert models.top[("cust_0001", "bookings")] == {"prov:9": 1}


def test_fold_leaves_out_expired_count_buckets() -> None:
    later = EVENTS[0].occurred_at + timedelta(days=60)
    models = fold(EVENTS, now=later)
    assert models.hourly == {}
    assert models.daily == EXPECTED.daily
    assert models.entities == EXPECTED.entities
