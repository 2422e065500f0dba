"""Exactly once in the warehouse, on real servers (moto S3/SQS, PostgreSQL): duplicate SQS
deliveries, one object in two messages, overlapping batches, concurrent inserters, several
tables in one load, and the dedupe window's boundary."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
from inserter_harness import ORIGIN, Env, make_events, outcomes, parquet_bytes, wait_for

from inserter.destinations.postgres.dialect import SORTED_PROBE_BYTES

pytestmark = pytest.mark.integration

#: Both shapes of the dedupe probe (PostgresDialect.dedupe): in staging order, as into a small
#: identity table, and over the batch's sorted keys, as into a large one.
PROBES = pytest.mark.parametrize(
    "probe_bytes", [SORTED_PROBE_BYTES, 0], ids=["unsorted_probe", "sorted_probe"]
)


def counts(env: Env, customer: str, event_type: str = "page_view") -> Counter[str]:
    return Counter(env.event_ids(customer, event_type))


@PROBES
def test_duplicate_deliveries_load_once(env: Env, unique_name: str, probe_bytes: int) -> None:
    events = make_events(unique_name, n=300)
    manifest = env.manifest([env.put_object(events)])
    for _ in range(3):  # SQS at-least-once: the same message body delivered three times
        env.send(manifest)

    ins = env.drain(sorted_probe_bytes=probe_bytes)

    assert counts(env, unique_name) == Counter({e.event_id: 1 for e in events})
    ledger = env.ledger()
    assert [(r["rows_loaded"], r["rows_skipped"]) for r in ledger] == [(300, 0)]
    assert ledger[0]["batch_id"] == manifest.batch_id
    assert ledger[0]["target_table"] == f"c_{unique_name}.page_view"
    assert env.queue_depth() == 0  # all three deleted: loaded together, or found in the ledger
    assert sum(outcomes(ins).values()) == 3


def test_duplicate_deliveries_in_separate_receives_find_the_ledger(env: Env, unique_name: str) -> None:
    events = make_events(unique_name, n=300)
    manifest = env.manifest([env.put_object(events)])
    for _ in range(3):
        env.send(manifest)

    ins = env.drain(max_messages=1)

    assert counts(env, unique_name) == Counter({e.event_id: 1 for e in events})
    assert [(r["rows_loaded"], r["rows_skipped"]) for r in env.ledger()] == [(300, 0)]
    assert outcomes(ins) == Counter({"loaded": 1, "duplicate": 2})


def test_same_object_in_two_messages_loads_once(env: Env, unique_name: str) -> None:
    events = make_events(unique_name, n=50)
    obj = env.put_object(events)
    other = env.put_object(make_events(unique_name, n=20, start=50), first=5000)
    env.send(env.manifest([obj], first=1000, last=1049))
    env.send(env.manifest([other, obj], first=5000, last=5019))  # a re-cut batch names it again

    env.drain()

    got = counts(env, unique_name)
    assert len(got) == 70 and set(got.values()) == {1}
    assert sorted(r["object_key"] for r in env.ledger()) == sorted([obj.key, other.key])


@PROBES
def test_overlapping_batches_keep_each_event_once(env: Env, unique_name: str, probe_bytes: int) -> None:
    events = make_events(unique_name, n=200)
    # Redis forgot: a replayed flush wrote the same events again under another stream position,
    # and the second object also repeats some events inside itself.
    a = env.put_object(events[:120], first=1000)
    b_events = events[80:] + events[150:160]
    b = env.put_object(b_events, first=3000)
    env.send(env.manifest([a], first=1000, last=1119))
    env.send(env.manifest([b], first=3000, last=3129))

    env.drain(sorted_probe_bytes=probe_bytes)

    assert counts(env, unique_name) == Counter({e.event_id: 1 for e in events})
    by_key = {r["object_key"]: r for r in env.ledger()}
    assert (by_key[a.key]["rows_loaded"], by_key[a.key]["rows_skipped"]) == (120, 0)
    # b: 130 rows; 40 were in a, 10 repeat inside b; 80 new.
    assert (by_key[b.key]["rows_loaded"], by_key[b.key]["rows_skipped"]) == (80, 50)


@PROBES
def test_a_later_load_skips_what_earlier_loads_landed(env: Env, unique_name: str, probe_bytes: int) -> None:
    """Overlaps across loads are the probe's alone (one load's overlaps are also the windowed
    dedupe's): the rows it finds are skipped, counted per object, and the rest land."""
    events = make_events(unique_name, n=230)
    a = env.put_object(events[:120], first=1000)
    b = env.put_object(events[80:200] + events[150:160], first=3000)  # 40 seen, 10 twice in b
    c = env.put_object(events[190:230], first=5000)  # 10 seen, none twice: the probe alone
    for obj, first, last in ((a, 1000, 1119), (b, 3000, 3129), (c, 5000, 5039)):
        env.send(env.manifest([obj], first=first, last=last))
        env.drain(sorted_probe_bytes=probe_bytes)

    assert counts(env, unique_name) == Counter({e.event_id: 1 for e in events})
    by_key = {r["object_key"]: (r["rows_loaded"], r["rows_skipped"]) for r in env.ledger()}
    assert by_key == {a.key: (120, 0), b.key: (80, 50), c.key: (30, 10)}


@PROBES
def test_overlap_inside_one_load_counts_the_first_object(
    env: Env, unique_name: str, probe_bytes: int
) -> None:
    events = make_events(unique_name, n=30)
    v1 = env.put_object(events[:20])
    # The same customer/type, another version, in the same message, sharing 10 events.
    v2_events = make_events(unique_name, version=2, n=20, ids=[e.event_id for e in events[10:30]], start=10)
    v2 = env.put_object(v2_events)
    env.send(env.manifest([v1, v2]))

    env.drain(sorted_probe_bytes=probe_bytes)

    rows = env.query(f'SELECT event_version, count(*) FROM "c_{unique_name}".page_view GROUP BY 1 ORDER BY 1')
    assert rows == [(1, 20), (2, 10)]  # the overlap's winner is the manifest's first object
    by_key = {r["object_key"]: (r["rows_loaded"], r["rows_skipped"]) for r in env.ledger()}
    assert by_key == {v1.key: (20, 0), v2.key: (10, 10)}


def test_concurrent_inserters_serialize_per_table(env: Env, unique_name: str) -> None:
    """Four inserters, twelve messages over three objects with overlapping event_ids, the same
    customer table: no serialization errors, no duplicates, every message deleted."""
    events = make_events(unique_name, n=3000)
    objects = [
        env.put_object(events[0:1500], first=10_000),
        env.put_object(events[1000:2500], first=20_000),
        env.put_object(events[2000:3000] + events[0:200], first=30_000),
    ]
    other = env.put_object(make_events(f"{unique_name}_b", n=500), first=40_000)
    for k in range(12):
        obj = objects[k % 3]
        first = obj_first(obj.key)
        env.send(env.manifest([obj, other] if k % 2 else [obj], first=first, last=first + k))
    inserters = [env.inserter(wait_seconds=1, max_messages=2) for _ in range(4)]
    threads = [threading.Thread(target=i.run) for i in inserters]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)

    assert counts(env, unique_name) == Counter({e.event_id: 1 for e in events})
    assert set(counts(env, f"{unique_name}_b").values()) == {1}
    assert outcomes(*inserters)["failed"] == 0
    assert env.queue_depth() == 0
    assert len(env.ledger()) == 4


def obj_first(key: str) -> int:
    return int(key.rsplit("/", 1)[1].split("-")[2])


def test_one_load_spans_customers_and_types(env: Env, unique_name: str) -> None:
    a = make_events(f"{unique_name}_a", "page_view", 2, 40)
    b = make_events(f"{unique_name}_b", "order_placed", 2, 30)
    c = make_events(f"{unique_name}_b", "appointment_booked", 1, 20)
    objs = [env.put_object(a), env.put_object(b), env.put_object(c)]
    env.send(env.manifest(objs))

    env.drain()

    assert len(env.event_ids(f"{unique_name}_a")) == 40
    assert len(env.event_ids(f"{unique_name}_b", "order_placed")) == 30
    assert len(env.event_ids(f"{unique_name}_b", "appointment_booked")) == 20
    loads = {r["load_id"] for r in env.ledger()}
    assert len(loads) == 1  # one transaction


def test_values_round_trip_through_binary_copy(env: Env, unique_name: str) -> None:
    orders = make_events(unique_name, "order_placed", 2, 3)
    appts = make_events(unique_name, "appointment_booked", 1, 3)
    env.send(env.manifest([env.put_object(orders), env.put_object(appts)]))
    env.drain()

    row = env.query(
        f"SELECT event_id::text, occurred_at, items, placed_at, coupon_code, discount_cents, total_cents, "
        f'_shard_id, _sequence_number, _sub_sequence_number FROM "c_{unique_name}".order_placed '
        f"WHERE order_id = 'o1'"
    )[0]
    ev = orders[1]
    assert row[0] == ev.event_id and row[1] == ev.occurred_at
    assert row[2] == [{"sku": "sku-1", "qty": 2}]
    assert row[3] == ORIGIN + timedelta(minutes=1)
    assert row[4:7] == ("C1", 1, 1001)
    assert row[7:] == ("shardId-000000000000", "1001", 0)
    appt = env.query(
        f'SELECT fee, telehealth, notes, starts_at, duration_minutes FROM "c_{unique_name}".appointment_booked '
        f"WHERE appointment_id = 'a2'"
    )[0]
    assert str(appt[0]) == "2.50" and appt[1] is False and appt[2] is None
    assert appt[3] == ORIGIN + timedelta(hours=2) and appt[4] == 30
    title_nulls = env.query(f'SELECT count(*) FROM "c_{unique_name}".order_placed WHERE coupon_code IS NULL')
    assert title_nulls == [(2,)]


@PROBES
def test_dedupe_window_bounds_the_search(env: Env, unique_name: str, probe_bytes: int) -> None:
    """An event_id is matched against rows whose occurred_at is within the dedupe window of the
    batch's range; the same id far outside it is a different event to the warehouse."""
    first = make_events(unique_name, n=5)
    env.send(env.manifest([env.put_object(first)]))
    env.drain(window_days=1, sorted_probe_bytes=probe_bytes)
    ids = [e.event_id for e in first]
    near = make_events(unique_name, n=5, ids=ids, at=ORIGIN + timedelta(hours=20))
    far = make_events(unique_name, n=5, ids=ids, at=ORIGIN + timedelta(days=3))
    env.send(env.manifest([env.put_object(near, first=2000)], first=2000, last=2004))
    env.drain(window_days=1, sorted_probe_bytes=probe_bytes)
    assert len(env.event_ids(unique_name)) == 5
    env.send(env.manifest([env.put_object(far, first=3000)], first=3000, last=3004))
    env.drain(window_days=1, sorted_probe_bytes=probe_bytes)
    assert len(env.event_ids(unique_name)) == 10


def test_rows_of_another_customer_are_refused(env: Env, unique_name: str) -> None:
    """An object whose rows name a customer other than its key is never loaded (it would put
    one customer's rows in another's table); the message goes back to the queue."""
    intruder = make_events(f"{unique_name}_x", n=5)
    body = parquet_bytes(intruder)
    obj = env.put_object(make_events(unique_name, n=5), body=body)
    env.send(env.manifest([obj]))
    ins = env.inserter()
    assert ins.poll_once() == 1
    assert env.query(f'SELECT count(*) FROM "c_{unique_name}".page_view') == [(0,)]
    assert env.ledger() == []
    wait_for(lambda: env.queue_depth() == 1, "the message back on the queue")
