"""rebuild-projections on real Redis and S3 (moto): the recovery after Redis lost the models,
live writes during the rebuild, the atomic switch, and a rebuild that fails halfway."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path

import msgspec
import orjson
import pytest
from projector_harness import (
    REGISTRY,
    SHARD,
    Checkpoints,
    Env,
    chunks,
    deliver,
    events_of,
    make_env,
    records_of,
    synthetic,
)

from pipeline.app.servers.stack import StackState
from pipeline.core.errors import TerminalError
from pipeline.core.settings import Settings
from workers.projector import fold
from workers.projector.rebuild import Archive, Rebuild

pytestmark = pytest.mark.integration
SHARDHOUSE = Path(sys.executable).parent / "shardhouse"


@pytest.fixture
def env(settings: Settings, unique_name: str) -> Env:
    return make_env(settings, unique_name)


def rebuild(env: Env, catch_up: object | None = None, archive: Archive | None = None) -> Rebuild:
    ctx = env.context()
    return Rebuild(
        ctx.store,
        ctx.planner(),
        archive or Archive(env.clients.s3(), env.settings.resources.bucket, REGISTRY),
        catch_up=catch_up,  # type: ignore[arg-type]
    )


def test_rebuild_restores_what_redis_forgot_and_keeps_live_writes(env: Env) -> None:
    items = synthetic(4500, duplicate_ratio=0.02, invalid_ratio=0.01)
    records = records_of(items)
    a, b, c = records[:2000], records[2000:3500], records[3500:]
    proc = env.processor()
    ckpt = Checkpoints()
    deliver(proc, chunks(a, [500]), ckpt)
    env.archive(events_of(a))
    env.archive(events_of(a[:300]), first_sequence=5 * 10**20)  # a batch archived twice

    env.forget_everything()  # redis-server restarted without persistence
    deliver(proc, chunks(b, [500]), ckpt)
    env.archive(events_of(b))
    assert env.snapshot() == fold(events_of(b))  # only what was applied since
    assert env.store.status().origin.startswith("live:")  # type: ignore[union-attr]

    class CatchUpDuringWhichCArrives:
        seen: Mapping[str, str] = {}

        def wait(self, positions: Mapping[str, str], heartbeat: Callable[[], None]) -> float:
            self.seen = positions
            status = env.store.status()
            assert status.building is not None and status.current != status.building
            deliver(proc, chunks(c, [400]), ckpt)  # live writes go to both generations now
            assert env.store.read("get", "nothing")[0] == status.current  # readers: old generation
            heartbeat()
            return 0.0

    waiter = CatchUpDuringWhichCArrives()
    report = rebuild(env, waiter).run()

    assert waiter.seen == {SHARD: b[-1].sequence_number}
    want = fold(events_of(records))
    got = env.snapshot()
    assert got == want, "\n".join(got.diff(want))
    status = env.store.status()
    assert (status.current, status.building) == (report.generation, None)
    assert status.origin is not None and status.origin.startswith("rebuild:")
    assert report.previous is not None and not env.keys(f"{report.previous}:*")  # old generation gone
    assert report.objects >= 2 and report.deleted_keys > 0
    assert report.applied == len({e.event_id for e in events_of(a + b)})

    deliver(proc, chunks(c, [400]), ckpt)  # and the projector carries on in the new generation
    assert env.snapshot() == want


def test_a_rebuild_counts_a_restamped_copy_once(env: Env) -> None:
    """The archive holds both copies of an event whose occurred_at the producer re-stamped (the
    warehouse's merge keeps one): the rebuilt models count it once, like the live ones."""
    events = events_of(synthetic(400, duplicate_ratio=0.0, invalid_ratio=0.0))
    copies = [
        msgspec.structs.replace(ev, occurred_at=ev.occurred_at + timedelta(hours=h))
        for ev, h in zip(events[::4], itertools.cycle([1, 30, -2]), strict=False)
    ]
    env.archive(events)
    env.archive(copies, first_sequence=5 * 10**20)
    report = rebuild(env).run()
    assert report.applied == len(events)
    got, want = env.snapshot().summary(), fold(events).summary()
    assert got == want
    assert sum(e.events for e in env.snapshot().entities.values()) == sum(
        e.events for e in fold(events).entities.values()
    )


class BrokenArchive(Archive):
    def download(self, key: str) -> bytes:
        raise TerminalError(f"get s3://…/{key}: AccessDenied")


def test_a_failed_rebuild_leaves_the_current_models_alone(env: Env) -> None:
    records = records_of(synthetic(800, duplicate_ratio=0.0, invalid_ratio=0.0))
    deliver(env.processor(), chunks(records, [400]), Checkpoints())
    env.archive(events_of(records))
    before = env.snapshot()
    current = env.store.status().current
    with pytest.raises(TerminalError, match="AccessDenied"):
        rebuild(env, archive=BrokenArchive(env.clients.s3(), env.settings.resources.bucket, REGISTRY)).run()
    status = env.store.status()
    assert (status.current, status.building) == (current, None)
    assert env.snapshot() == before
    assert {k.split(":")[2] for k in env.keys("[0-9]*")} == {current}


def test_one_rebuild_at_a_time(env: Env) -> None:
    gen, _, _ = env.store.begin_build(60)
    with pytest.raises(TerminalError, match=f"already filling generation {gen}"):
        env.store.begin_build(60)
    newer, _, _ = env.store.begin_build(60, force=True)
    assert int(newer) > int(gen)
    assert not env.store.heartbeat(gen, 60) and env.store.heartbeat(newer, 60)


def test_rebuild_and_query_from_the_command_line(env: Env, stack: StackState, tmp_path: Path) -> None:
    items = synthetic(600, duplicate_ratio=0.0, invalid_ratio=0.0)
    events = events_of(items)
    env.archive(events)
    run_env = {
        **os.environ,
        **stack.env,
        "SHARDHOUSE_STATE_DIR": str(tmp_path / "state"),
        "SHARDHOUSE_STREAM": env.settings.resources.stream,
        "SHARDHOUSE_BUCKET": env.settings.resources.bucket,
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SHARDHOUSE), *args], capture_output=True, text=True, timeout=300, env=run_env, check=False
        )

    done = cli("rebuild-projections", "--no-catch-up")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["applied"] == len(events)
    order = next(e for e in events if e.type == "order_placed")
    want = fold(events).entities[(order.customer_id, "order", order.payload.order_id)]  # type: ignore[attr-defined]
    found = cli("query", "entity", "-c", order.customer_id, "--kind", "order", "--id", order.payload.order_id)  # type: ignore[attr-defined]
    assert found.returncode == 0, found.stderr
    body = orjson.loads(found.stdout)
    assert (body["events"], body["state"]) == (want.events, orjson.loads(want.state))
    missing = cli("query", "entity", "-c", order.customer_id, "--kind", "order", "--id", "no-such-order")
    assert (missing.returncode, missing.stderr.strip()) == (1, "shardhouse: not found")
    bad = cli("query", "top", "-c", order.customer_id, "--measure", "revenue")
    assert bad.returncode == 2 and "--currency" in bad.stderr
