"""The applied set on a real redis-server: apply.lua files ids exactly where the batcher's layout
(DedupeLayout, mirrored in Python) says, keeps hashes compact, and spills only full ones."""

from __future__ import annotations

import math
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from projector_harness import (
    REGISTRY,
    Checkpoints,
    Env,
    chunks,
    deliver,
    events_of,
    make_env,
    records_of,
    synthetic,
)

from pipeline.consumer.processor import Record
from pipeline.core.settings import Settings
from pipeline.producer.synthetic import SyntheticConfig, generate
from workers.idset.identity import IDENTITIES
from workers.idset.layout import record, uuid_bytes
from workers.projector.fold import fold
from workers.projector.plan import GateConfig, Planner
from workers.projector.store import listpack_cap

pytestmark = pytest.mark.integration


def window_of(r: Any, gate: GateConfig) -> int:
    """The processing window the server's clock is in (what apply.lua files ids under)."""
    return int(r.time()[0]) // gate.window_seconds


def restamped(record: Record, shift: timedelta, sequence: int, **payload: Any) -> Record:
    """The same (customer_id, event_id) sent again with ``occurred_at`` moved by ``shift`` (a
    producer that stamps the time on every attempt) and, optionally, payload fields changed."""
    body = orjson.loads(record.binary_data)
    at = datetime.fromisoformat(body["occurred_at"].replace("Z", "+00:00")) + shift
    body["occurred_at"] = at.isoformat().replace("+00:00", "Z")
    body["payload"].update(payload)
    return Record(orjson.dumps(body), record.partition_key, str(sequence), 0, 0)


def holds(value: bytes | None, ident: bytes) -> bool:
    """Is the identity one of the value's 16-byte ids (at a 16-byte boundary)?"""
    return value is not None and any(value[i : i + 16] == ident for i in range(0, len(value), 16))


def test_ids_live_on_their_window_path_in_compact_strings(settings: Settings, unique_name: str) -> None:
    env: Env = make_env(settings, unique_name)
    records: list[Record] = records_of(synthetic(6000, duplicate_ratio=0.0, invalid_ratio=0.0))
    deliver(env.processor(), chunks(records, [1000]), Checkpoints())

    gen = env.store.status().current
    gate = env.context().gate
    r = env.clients.redis()
    win = window_of(r, gate)
    layout = gate.layout(prefix=f"{env.namespace.generation(gen)}ap:w")  # type: ignore[arg-type]
    for rec in records[::37]:
        ev = REGISTRY.decode(rec.binary_data)
        ident = IDENTITIES(ev.customer_id, uuid_bytes(ev.event_id))
        homes = [key for key in layout.path(record(win, ident)) if holds(r.get(key), ident)]
        assert len(homes) == 1, (ev.event_id, homes)

    gate_keys = [k for k in env.keys(f"{gen}:ap:w{win}:*")]
    assert r.exists(f"{env.namespace.generation(gen)}ap:w{win}")  # the window's marker
    assert {key.split(":")[-2] for key in gate_keys} == {"0"}  # 6,000 ids fit level 0
    assert len(gate_keys) == pytest.approx(4096 * (1 - math.exp(-6000 / 4096)), rel=0.05)
    sizes = [r.strlen(key) for key in gate_keys]
    assert all(size % 16 == 0 and size <= 126 * 16 for size in sizes)
    assert sum(sizes) == 6000 * 16
    assert env.keys(f"{gen}:ap:[0-9]*") == []  # nothing in the old layout


def test_only_a_full_key_spills_one_level_down(settings: Settings, unique_name: str) -> None:
    env: Env = make_env(settings, unique_name)
    c = env.context()
    gate = GateConfig(ids_per_key=126, base_bits=0, level_bits=2, max_level=3)  # one key at level 0
    planner = Planner(c.registry, c.namespace, gate, entity_ttl=c.entity_ttl)
    events = events_of(synthetic(1000, duplicate_ratio=0.0, invalid_ratio=0.0))
    now = int(time.time())
    assert (
        sum(r.new for r in env.store.apply(planner.plan_events(events, now=now, target="").messages)) == 1000
    )
    r = env.clients.redis()
    gen = env.store.status().current
    held = {k: r.strlen(k) // 16 for k in env.keys(f"{gen}:ap:w*:*")}
    by_level = Counter[str]()
    for key, n in held.items():
        by_level[key.split(":")[-2]] += n
    assert by_level["0"] == 126 and sum(by_level.values()) == 1000
    assert all(n <= 126 for n in held.values())
    assert len([k for k in held if k.split(":")[-2] == "1"]) == 4  # the full key's 4 children
    full = next(k for k in held if k.split(":")[-2] == "0")
    assert r.memory_usage(full) < 2200  # rewritten at its exact size: no APPEND slack
    # every id is found again, wherever it went
    again = env.store.apply(planner.plan_events(events, now=now, target="").messages)
    assert sum(x.new for x in again) == 0


def test_a_copy_with_a_restamped_occurred_at_is_applied_once(settings: Settings, unique_name: str) -> None:
    """A producer that stamps occurred_at on every attempt sends the same (customer_id, event_id)
    with another time (seconds, hours or days later) and maybe another state: the warehouse's
    merge keeps one row, and so do the read models — counts once, the state of the copy applied
    first."""
    env: Env = make_env(settings, unique_name)
    records: list[Record] = records_of(synthetic(600, duplicate_ratio=0.0, invalid_ratio=0.0))
    shifts = [timedelta(seconds=3), timedelta(minutes=7), timedelta(hours=2), timedelta(days=-3)]
    copies = [restamped(rec, shifts[i % 4], 2 * 10**20 + i) for i, rec in enumerate(records[::3])]
    proc = env.processor()
    deliver(proc, chunks(records, [250]), Checkpoints())
    deliver(proc, chunks(copies, [70]), Checkpoints())
    diff = env.snapshot().diff(fold(events_of(records)))
    assert diff == [], "\n".join(diff)
    # in one batch, the copy first: it is the one that counts
    other: Env = make_env(settings, f"{unique_name}b")
    mixed = [x for pair in zip(copies, records[::3], strict=True) for x in pair]
    deliver(other.processor(), chunks(mixed, [len(mixed)]), Checkpoints())
    assert other.snapshot().diff(fold(events_of(copies))) == []


def test_an_id_applied_in_the_previous_window_is_not_new(settings: Settings, unique_name: str) -> None:
    """The set is looked up in the current and the previous processing window: an event applied
    just before the window turned is still a duplicate after it."""
    env: Env = make_env(settings, unique_name)
    c = env.context()
    planner = c.planner()
    events = events_of(synthetic(300, duplicate_ratio=0.0, invalid_ratio=0.0))
    now = int(time.time())
    assert (
        sum(x.new for x in env.store.apply(planner.plan_events(events[:200], now=now, target="").messages))
        == 200
    )
    r = env.clients.redis()
    gen = env.store.status().current
    base = env.namespace.generation(gen)  # type: ignore[arg-type]
    win = window_of(r, c.gate)

    def move(src: int, dst: int) -> None:  # what the clock turning a window (or two) does
        for key in [*env.keys(f"{gen}:ap:w{src}:*"), f"{base}ap:w{src}"]:
            r.rename(key, key.replace(f"ap:w{src}", f"ap:w{dst}", 1))

    move(win, win - 1)
    again = env.store.apply(planner.plan_events(events, now=now, target="").messages)
    assert sum(x.new for x in again) == 100  # the 200 from the previous window are not new
    assert env.snapshot().diff(fold(events)) == []
    # ids older than the previous window are forgotten (they expire with it): new again
    move(win - 1, win - 2)
    move(win, win - 1)
    r.delete(f"{base}ap:w{win - 1}")  # the previous window held nothing: its marker is gone
    assert (
        sum(x.new for x in env.store.apply(planner.plan_events(events[:10], now=now, target="").messages))
        == 10
    )


def test_every_written_key_gets_its_lifetime(settings: Settings, unique_name: str) -> None:
    """The script sets absolute expiry times (PXAT / PEXPIREAT / EXPIREAT): entities and calendars
    30 days, the applied set the dedupe window, counts their retention; rankings are kept."""
    env: Env = make_env(settings, unique_name)
    ticks = iter(range(10**9))
    items = list(
        generate(
            SyntheticConfig(seed=5, customers=2, duplicate_ratio=0.0, invalid_ratio=0.0),
            3000,
            now=lambda: datetime.now(UTC) - timedelta(hours=1) + next(ticks) * timedelta(milliseconds=1),
        )
    )
    deliver(env.processor(), chunks(records_of(items), [1000]), Checkpoints())
    gen = env.store.status().current
    r = env.clients.redis()
    day, window = 86400, settings.redis.dedupe_window_seconds
    families: Counter[str] = Counter()
    for key in env.keys(f"{gen}:*"):
        family = key.split(":")[3]
        families[family] += 1
        ttl = r.ttl(key)
        if family in ("e", "x"):
            assert 30 * day - 60 <= ttl <= 30 * day, key
        elif family == "ap":  # until the window after the current one ends
            assert window <= ttl <= 2 * window, key
        elif family in ("ch", "cd"):
            assert ttl > 30 * day, key
        else:
            assert (family, ttl) == ("t", -1), key
    assert {"e", "x", "ap", "ch", "cd", "t"} <= set(families)


def test_listpack_cap_reads_the_server(settings: Settings, unique_name: str) -> None:
    env: Env = make_env(settings, unique_name)
    assert listpack_cap(env.clients.redis()) == 127  # redis-server's default allows 512 entries


def test_an_upgrade_honours_events_applied_under_the_old_layout(settings: Settings, unique_name: str) -> None:
    """Events the previous version applied (filed by second of occurred_at, 16 slots, fanout 4)
    are not new to this one for two windows after it first met the namespace, and nothing is
    counted twice."""
    env: Env = make_env(settings, unique_name)
    events = events_of(synthetic(400, duplicate_ratio=0.0, invalid_ratio=0.0))
    now = int(time.time())
    c = env.context()
    assert (
        sum(r.new for r in env.store.apply(c.planner().plan_events(events, now=now, target="").messages))
        == 400
    )
    before = env.snapshot()
    assert before.diff(fold(events)) == []
    # What the previous version left: the same models, its ids at their old paths.
    r = env.clients.redis()
    gen = env.store.status().current
    base = env.namespace.generation(gen)  # type: ignore[arg-type]
    r.delete(*env.keys(f"{gen}:ap:w*"), env.namespace.gate_marker)
    old = c.gate.old_layout(prefix=f"{base}ap:")
    for ev in events:
        blob = old.pack(ev.customer_id, ev.event_id, ev.occurred_at)
        key = old.path(blob)[0]
        r.hset(key, blob[8:], "")
        r.hincrby(key, "#", 1)

    ctx = env.context()  # the upgraded process: the namespace has read models, so the check is on
    planner = ctx.planner()
    since = int(r.get(env.namespace.gate_marker) or 0)
    assert abs(since - now) < 60 and planner.legacy_until == since + 2 * ctx.gate.window_seconds
    again = env.store.apply(planner.plan_events(events, now=now, target="").messages)
    assert sum(x.new for x in again) == 0
    assert env.snapshot().diff(before) == []
    # Past the two windows the old layout is no longer consulted: the same events would be new.
    planner.legacy_until = 0
    later = env.store.apply(planner.plan_events(events[:5], now=now, target="").messages)
    assert sum(x.new for x in later) == 5


def test_a_fresh_namespace_never_consults_the_old_layout(settings: Settings, unique_name: str) -> None:
    env: Env = make_env(settings, unique_name)
    assert env.context().planner().legacy_until == 0
    assert env.clients.redis().get(env.namespace.gate_marker) == b"0"
