"""The planner: what a batch becomes on the wire to apply.lua (decoded back and checked)."""

from __future__ import annotations

from datetime import timedelta

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from support.projector_fakes import NOW as FAKE_NOW
from support.projector_fakes import REGISTRY, SHARD, decode_message, decoded, event, records_of, synthetic

from schemas.read_models import ENTITY_RETENTION, project
from workers.idset.layout import DedupeLayout
from workers.projector import keys
from workers.projector.plan import HINCRBY, ZINCRBY, GateConfig, Planner, _tail
from workers.projector.store import parse_entity

NS = keys.Namespace("rm:plan:")
NOW = int(FAKE_NOW)


def planner(chunk_events: int = 4096) -> Planner:
    return Planner(
        REGISTRY,
        NS,
        GateConfig(),
        entity_ttl=int(ENTITY_RETENTION.total_seconds()),
        chunk_events=chunk_events,
    )


def test_header_carries_namespace_gate_and_position() -> None:
    items = synthetic(5, duplicate_ratio=0.0, invalid_ratio=0.0)
    plan = planner().plan_records(records_of(items), SHARD, NOW)
    msg = decode_message(plan.messages[0])
    g = GateConfig()
    assert msg["header"] == [
        "rm:plan:",
        "",
        SHARD,
        str(10**20 + 4),
        g.window_seconds,
        g.ids_per_key,
        4096,
        16,
        g.max_level,
        int(ENTITY_RETENTION.total_seconds()),
        0,  # no upgrade window: the old layout is not consulted
        g.old_ids_per_hash,
        16,
        4,
        6,
    ]
    assert (plan.last_sequence, plan.last_sub_sequence, plan.records, plan.events) == (
        str(10**20 + 4),
        0,
        5,
        5,
    )


def test_the_old_layout_is_consulted_until_the_upgrade_window_ends() -> None:
    p = planner()
    p.legacy_until = NOW + 1
    events = decoded(synthetic(3, duplicate_ratio=0.0, invalid_ratio=0.0))
    assert decode_message(p.plan_events(events, now=NOW, target="").messages[0])["header"][10] == 1
    assert decode_message(p.plan_events(events, now=NOW + 1, target="").messages[0])["header"][10] == 0


def test_invalid_records_are_counted_by_reason_and_left_out() -> None:
    items = synthetic(400, invalid_ratio=0.2, duplicate_ratio=0.0)
    plan = planner().plan_records(records_of(items), SHARD, NOW)
    bad = [s for s in items if not s.valid]
    assert sum(plan.invalid.values()) == len(bad) > 0
    assert set(plan.invalid) == {s.invalid_reason for s in bad}
    assert plan.events == len(items) - len(bad)


def test_gate_records_are_the_batchers_layout_with_one_second_buckets() -> None:
    events = decoded(synthetic(50, duplicate_ratio=0.0, invalid_ratio=0.0))
    plan = planner().plan_events(events, now=NOW, target="7")
    msg = decode_message(plan.messages[0])
    layout = DedupeLayout(prefix="ap:", bucket_seconds=1, base_bits=4, level_bits=2, max_level=6)
    assert msg["gate"] == [layout.pack(ev.customer_id, ev.event_id, ev.occurred_at) for ev in events]
    assert msg["header"][1] == "7"


def test_duplicates_in_a_batch_are_sent_once() -> None:
    events = decoded(synthetic(100, duplicate_ratio=0.0, invalid_ratio=0.0))
    plan = planner().plan_events(events + events[:30], now=NOW, target="")
    assert (plan.events, plan.in_batch_duplicates) == (100, 30)
    assert sum(len(decode_message(m)["gate"]) for m in plan.messages) == 100


def test_an_entity_is_sent_once_per_chunk_with_its_highest_version() -> None:
    base = {"user_id": "u1", "url": "https://x.example/a"}
    early = event("page_view", 1, {**base, "title": "early"})
    late = event("page_view", 1, {**base, "title": "late"}, at=early.occurred_at + timedelta(seconds=5))
    plan = planner().plan_events([late, early], now=NOW, target="")
    msg = decode_message(plan.messages[0])
    assert len(msg["entities"]) == 1
    key, version, first, tail, ix, score, entity_id = msg["entities"][0]
    p_late, p_early = project(late), project(early)
    assert p_late is not None and p_early is not None
    assert (key, version, first, ix, score, entity_id) == (
        keys.entity_key("cust_0001", "user", "u1"),
        p_late.version,
        p_early.version[:18],
        "",
        0,
        "u1",
    )
    assert tail.startswith("01100000page_view/1{")
    assert msgspec.json.decode(tail[len("01100000page_view/1") :])["title"] == "late"
    assert [row[4] for row in msg["events"]] == [1, 1]  # both events point at it


def test_effects_are_distinct_and_events_point_at_them() -> None:
    events = decoded(synthetic(300, duplicate_ratio=0.0, invalid_ratio=0.0))
    msg = decode_message(planner().plan_events(events, now=NOW, target="").messages[0])
    effects = [tuple(e[:3]) for e in msg["effects"]]
    assert len(effects) == len(set(effects))
    for ev, (h, d, t, amount, _e) in zip(events, msg["events"], strict=True):
        p = project(ev)
        assert p is not None
        op, key, field, _at = msg["effects"][h - 1]
        assert (op, field) == (HINCRBY, f"{ev.type}:{ev.occurred_at:%H}")
        assert key == keys.hourly_key(ev.customer_id, f"{ev.occurred_at:%Y%m%d}")
        assert msg["effects"][d - 1][:3] == [
            HINCRBY,
            keys.daily_key(ev.customer_id, f"{ev.occurred_at:%Y%m}"),
            f"{ev.type}:{ev.occurred_at:%d}",
        ]
        if p.top is None:
            assert (t, amount) == (0, 0)
        else:
            assert msg["effects"][t - 1][:3] == [ZINCRBY, keys.top_key(ev.customer_id, p.top[0]), p.top[1]]
            assert amount == p.top[2]


def test_counts_past_their_retention_are_not_sent() -> None:
    events = decoded(synthetic(20, duplicate_ratio=0.0, invalid_ratio=0.0))
    later = NOW + 60 * 86400
    msg = decode_message(planner().plan_events(events, now=later, target="").messages[0])
    assert all(row[0] == 0 and row[1] > 0 for row in msg["events"])  # hourly gone, daily kept


def test_big_batches_are_cut_into_chunks() -> None:
    events = decoded(synthetic(250, duplicate_ratio=0.0, invalid_ratio=0.0))
    sent = []
    plan = planner(chunk_events=100).plan_events(events, now=NOW, target="", emit=sent.append)
    assert [len(decode_message(m)["gate"]) for m in plan.messages] == [100, 100, 50]
    assert sent == plan.messages


@settings(max_examples=200, deadline=None)
@given(
    tag=st.text(min_size=1, max_size=40),
    index=st.text(max_size=300),
    # JSON states are UTF-8; sizes around the msgpack str8/str16/str32 limits
    state=st.one_of(
        st.text(max_size=300), st.integers(0, 70_000).map(lambda n: "é" * (n // 2) + "x" * (n % 2))
    ),
)
def test_a_tail_is_a_msgpack_string_of_the_value_after_the_counters(tag: str, index: str, state: str) -> None:
    """The script stores the tail as it is: parse_entity must read tag, index key and state back."""
    raw = _tail(tag, index, state.encode())
    [tail] = msgspec.msgpack.decode(msgspec.msgpack.encode([raw]), type=list[str])
    value = b"9" * 50 + b"1" * 18 + b"%010d" % 3 + tail.encode()
    state_back, index_back = parse_entity(value)
    assert (state_back.type_tag, index_back, state_back.state, state_back.events) == (
        tag,
        index,
        state.encode(),
        3,
    )


def test_an_indexed_entity_carries_its_index_key_in_the_tail() -> None:
    booked = event(
        "appointment_booked",
        1,
        {
            "appointment_id": "a1",
            "provider_id": "dr_ünal",
            "patient_id": "pat_1",
            "starts_at": "2024-06-01T09:00:00Z",
            "duration_minutes": 30,
            "status": "booked",
        },
    )
    msg = decode_message(planner().plan_events([booked], now=NOW, target="").messages[0])
    _key, _version, _first, tail, ix, score, entity_id = msg["entities"][0]
    assert ix == keys.index_key("cust_0001", "calendar", "dr_ünal") and entity_id == "a1"
    assert score == 1717232400
    state, index = parse_entity(b"0" * 78 + tail.encode())
    assert (state.type_tag, index) == ("appointment_booked/1", ix)
