"""The applied set on a real redis-server: apply.lua files ids exactly where the batcher's layout
(DedupeLayout, mirrored in Python) says, keeps hashes compact, and spills only full ones."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from projector_harness import (
    REGISTRY,
    T0,
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
from workers.projector.fold import fold
from workers.projector.plan import GateConfig, Message, Planner
from workers.projector.store import listpack_cap

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("per_second", [50, 5000])
def test_ids_live_on_their_layout_path_in_compact_hashes(
    settings: Settings, unique_name: str, per_second: int
) -> None:
    env: Env = make_env(settings, unique_name)
    step = timedelta(seconds=1) / per_second
    ticks = iter(range(10**9))
    items = list(
        generate(
            SyntheticConfig(seed=3, customers=2, duplicate_ratio=0.0, invalid_ratio=0.0),
            6000,
            now=lambda: T0 + next(ticks) * step,
        )
    )
    records: list[Record] = records_of(items)
    deliver(env.processor(), chunks(records, [1000]), Checkpoints())

    gen = env.store.status().current
    layout = GateConfig().layout(prefix=f"{env.namespace.generation(gen)}ap:")  # type: ignore[arg-type]
    r = env.clients.redis()
    for record in records[::37]:
        ev = REGISTRY.decode(record.binary_data)
        blob = layout.pack(ev.customer_id, ev.event_id, ev.occurred_at)
        homes = [key for key in layout.path(blob) if r.hexists(key, blob[8:])]
        assert len(homes) == 1, (ev.event_id, homes)

    gate_keys = env.keys(f"{gen}:ap:*")
    levels = Counter(key.split(":")[-2] for key in gate_keys)
    seconds = len({int(REGISTRY.decode(rec.binary_data).occurred_at.timestamp()) for rec in records})
    assert levels["0"] == pytest.approx(16 * seconds, rel=0.1)  # every slot of every second in use
    for key in gate_keys:
        held = int(r.hget(key, "#"))  # type: ignore[arg-type]
        assert held == r.hlen(key) - 1 <= 126
        assert r.object("encoding", key) == b"listpack"
        if key.split(":")[-2] != "0":  # a deeper hash exists only below a full one
            assert per_second > 2016
    assert sum(int(r.hget(k, "#")) for k in gate_keys) == 6000  # type: ignore[arg-type]


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
        elif family == "ap":
            assert window - 60 <= ttl <= window, key
        elif family in ("ch", "cd"):
            assert ttl > 30 * day, key
        else:
            assert (family, ttl) == ("t", -1), key
    assert {"e", "x", "ap", "ch", "cd", "t"} <= set(families)


def test_listpack_cap_reads_the_server(settings: Settings, unique_name: str) -> None:
    env: Env = make_env(settings, unique_name)
    assert listpack_cap(env.clients.redis()) == 127  # redis-server's default allows 512 entries


def test_an_upgrade_honours_events_applied_under_the_old_format(settings: Settings, unique_name: str) -> None:
    """Events the previous version applied (raw UUID fields at their CRC-32 path) are not new to
    this one for two windows after it first met the namespace, and nothing is counted twice."""
    env: Env = make_env(settings, unique_name)
    events = events_of(synthetic(400, duplicate_ratio=0.0, invalid_ratio=0.0))
    now = int(time.time())
    # The previous version: its gate records are what legacy_pack builds (the script is the same walk).
    c = env.context()
    old = Planner(c.registry, c.namespace, c.gate, entity_ttl=c.entity_ttl, legacy_until=now + 1)
    plan = old.plan_events(events, now=now, target="")
    results = env.store.apply([Message(m.body, m.legacy) for m in plan.messages])
    assert sum(r.new for r in results) == len(events)
    before = env.snapshot()
    assert before.diff(fold(events)) == []

    ctx = env.context()  # the upgraded process: the namespace has read models, so the check is on
    planner = ctx.planner()
    since = int(env.clients.redis().get(env.namespace.identities) or 0)
    assert abs(since - now) < 60 and planner.legacy_until == since + 2 * ctx.gate.window_seconds
    again = env.store.apply(planner.plan_events(events, now=now, target="").messages)
    assert sum(r.new for r in again) == 0
    assert env.snapshot().diff(before) == []
    # Past the two windows the old records are no longer sent: the same events would be new.
    planner.legacy_until = 0
    later = planner.plan_events(events, now=now, target="")
    assert all(m.legacy == b"" for m in later.messages)
