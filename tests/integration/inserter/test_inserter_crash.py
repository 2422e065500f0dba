"""The inserter as its own process (``shardhouse inserter``), killed with SIGKILL in the middle
of a COPY and restarted, and stopped with SIGTERM in the middle of a load. ``--copy-pause`` (a
hidden test hook) sleeps after each COPY batch so the COPY lasts long enough to be interrupted."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import orjson
import pytest
from inserter_harness import Env, make_events, wait_for

pytestmark = pytest.mark.integration

SLOW = ("--copy-pause", "0.25", "--copy-batch-rows", "200")


def copying(env: Env) -> bool:
    rows = env.query(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'shardhouse-inserter' AND state = 'active' AND query LIKE 'COPY %%'"
    )
    return bool(rows[0][0])


def table_rows(env: Env, customer: str) -> int:
    exists = env.query("SELECT to_regclass(%s) IS NOT NULL", (f'"c_{customer}"."page_view"',))[0][0]
    if not exists:
        return 0
    return int(env.query(f'SELECT count(*) FROM "c_{customer}".page_view')[0][0])


def log_lines(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_bytes().splitlines():
        if line.startswith(b"{"):
            out.append(orjson.loads(line))
    return out


ARGS = ("inserter", "--wait-seconds", "1", "--visibility-timeout", "6")


def kill_9_mid_copy(env: Env, tmp_path: Path) -> None:
    """An inserter killed with SIGKILL in the middle of a COPY, and the server done with it."""
    first = env.spawn(tmp_path, "first.log", *ARGS, *SLOW)
    try:
        wait_for(lambda: copying(env), "the first inserter to be in the middle of a COPY", timeout=60)
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
    wait_for(lambda: not copying(env), "the server to abort the dead client's COPY", timeout=30)


def test_kill_9_mid_copy_then_restart_loads_exactly_once(env: Env, unique_name: str, tmp_path: Path) -> None:
    events = make_events(unique_name, n=3000)
    obj = env.put_object(events)
    env.send(env.manifest([obj]))
    kill_9_mid_copy(env, tmp_path)
    assert table_rows(env, unique_name) == 0  # nothing of the interrupted load is visible
    assert env.ledger() == []

    second = env.spawn(tmp_path, "second.log", *ARGS)
    try:
        # The message comes back once the visibility the dead process last extended runs out.
        wait_for(lambda: len(env.ledger()) == 1, "the restarted inserter to load the batch", timeout=60)
        wait_for(lambda: env.queue_depth() == 0, "the message to be deleted", timeout=30)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    finally:
        if second.poll() is None:
            second.kill()

    assert Counter(env.event_ids(unique_name)) == Counter({e.event_id: 1 for e in events})
    (row,) = env.ledger()
    assert (row["rows_loaded"], row["rows_skipped"]) == (3000, 0)
    loaded = [line for line in log_lines(tmp_path / "second.log") if line.get("msg") == "batch loaded"]
    assert loaded and loaded[0]["receives"] == 2 and loaded[0]["rows_loaded"] == 3000


def test_kill_9_mid_load_of_a_shared_object_then_restart_loads_each_customer_once(
    env: Env, unique_name: str, tmp_path: Path
) -> None:
    """One object holding 40 customers' rows: killed mid-COPY, nothing of any customer lands;
    restarted, each customer's rows land once, in its own table, one ledger unit each."""
    customers = [f"{unique_name}_{i:02d}" for i in range(40)]
    events = [e for i, c in enumerate(customers) for e in make_events(c, n=60 + i, start=1000 * i)]
    obj = env.put_shared(events)
    env.send(env.manifest([obj], last=1000 + len(events) - 1))
    kill_9_mid_copy(env, tmp_path)
    assert sum(table_rows(env, c) for c in customers) == 0 and env.ledger() == []

    second = env.spawn(tmp_path, "second.log", *ARGS)
    try:
        wait_for(lambda: len(env.ledger()) == len(customers), "the restarted inserter to load", timeout=60)
        wait_for(lambda: env.queue_depth() == 0, "the message to be deleted", timeout=30)
    finally:
        second.send_signal(signal.SIGTERM)
        if second.wait(timeout=30) is None:
            second.kill()
    for c in customers:
        assert Counter(env.event_ids(c)) == Counter(
            {str(e.event_id): 1 for e in events if e.customer_id == c}
        )
    assert sorted(r["object_key"] for r in env.ledger()) == sorted(f"{obj.key}#{c}" for c in customers)


def test_sigterm_finishes_the_current_load_and_leaves_the_rest_on_the_queue(
    env: Env, unique_name: str, tmp_path: Path
) -> None:
    a = env.put_object(make_events(unique_name, n=2000), first=1000)
    b = env.put_object(make_events(unique_name, n=2000, start=10_000), first=5000)
    env.send(env.manifest([a], first=1000, last=2999))
    env.send(env.manifest([b], first=5000, last=6999))
    proc = env.spawn(tmp_path, "inserter.log", "inserter", "--wait-seconds", "1", *SLOW)
    try:
        wait_for(lambda: copying(env), "a COPY in progress", timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()

    # The load in progress committed whole: one batch, or both when one receive returned both
    # (they are then loaded together); a batch not in it is visible again right away.
    ledger = env.ledger()
    assert len(ledger) in (1, 2) and all(row["rows_loaded"] == 2000 for row in ledger)
    assert table_rows(env, unique_name) == 2000 * len(ledger)
    sqs = env.clients.sqs()
    url = sqs.get_queue_url(QueueName=env.settings.resources.queue)["QueueUrl"]
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    assert (attrs["ApproximateNumberOfMessages"], attrs["ApproximateNumberOfMessagesNotVisible"]) == (
        str(2 - len(ledger)),
        "0",
    )
    messages = [line.get("msg") for line in log_lines(tmp_path / "inserter.log")]
    assert "stopping: the current load finishes, no new messages" in messages
    assert messages[-1] == "inserter stopped"


def inserter_backends(env: Env) -> list[int]:
    rows = env.query(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'shardhouse-inserter'"
    )
    return [int(r[0]) for r in rows]


def test_the_warehouse_dropping_the_connection_mid_copy_heals_in_process_and_loads_once(
    env: Env, unique_name: str, tmp_path: Path
) -> None:
    """The server ends the inserter's session in the middle of a COPY (a failover, an admin's
    pg_terminate_backend, a restart), twice: each time the load rolls back, the inserter
    reconnects and tries again in the same process, and the batch lands once."""
    events = make_events(unique_name, n=3000)
    env.send(env.manifest([env.put_object(events)]))
    proc = env.spawn(tmp_path, "inserter.log", *ARGS, *SLOW)
    try:
        for drop in range(2):
            wait_for(lambda: copying(env), f"COPY {drop + 1} in progress", timeout=60)
            (pid,) = inserter_backends(env)
            assert env.query("SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]
            wait_for(lambda p=pid: p not in inserter_backends(env), "the session to end", timeout=30)
            assert table_rows(env, unique_name) == 0 and env.ledger() == []
        wait_for(lambda: len(env.ledger()) == 1, "the third attempt to load the batch", timeout=90)
        wait_for(lambda: env.queue_depth() == 0, "the message to be deleted", timeout=30)
        assert proc.poll() is None  # healed in process: never exited
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()

    assert Counter(env.event_ids(unique_name)) == Counter({e.event_id: 1 for e in events})
    (row,) = env.ledger()
    assert (row["rows_loaded"], row["rows_skipped"]) == (3000, 0)
    lines = log_lines(tmp_path / "inserter.log")
    retries = [line for line in lines if line.get("msg") == "load failed, retrying"]
    assert [r["attempt"] for r in retries] == [1, 2]
    loaded = [line for line in lines if line.get("msg") == "batch loaded"]
    assert len(loaded) == 1 and loaded[0]["receives"] == 1 and loaded[0]["rows_loaded"] == 3000
