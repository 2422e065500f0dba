"""Messages that cannot be loaded: a malformed one is dead-lettered at once with its reason; one
that keeps failing reaches the dead-letter queue through the redrive policy after
``maxReceiveCount`` receives, its reason logged on every failure."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import replace
from urllib.parse import urlsplit

import psycopg
import pytest
from inserter_harness import Env, make_env, make_events, wait_for
from support.tcp_proxy import TcpProxy

from inserter.service import Inserter
from inserter.wiring import dependency_probes
from pipeline.core.clients import ClientFactory
from pipeline.core.manifest import BatchObject, encode_manifest
from pipeline.core.retry import Backoff
from pipeline.core.settings import Settings

pytestmark = pytest.mark.integration


def test_malformed_messages_are_dead_lettered_at_once_with_the_reason(env: Env, unique_name: str) -> None:
    good = env.manifest([env.put_object(make_events(unique_name, n=3))])
    lying = env.manifest(
        [BatchObject(good.objects[0].key, f"{unique_name}_other", "page_view", 1, 3, 10, "", "")]
    )
    traversal = env.manifest(
        [BatchObject("events/../../etc/passwd", unique_name, "page_view", 1, 1, 1, "", "")]
    )
    other_bucket = encode_manifest(good).replace(env.bucket, "someone-elses-bucket")
    bodies = [
        "not json at all",
        '{"format": 2}',
        encode_manifest(lying),
        encode_manifest(traversal),
        other_bucket,
    ]
    for body in bodies:
        env.send(body)

    ins = env.inserter()
    ins.run()

    letters = env.dead_letters()
    assert sorted(d["body"] for d in letters) == sorted(bodies)
    reasons = {d["body"]: d["attributes"]["reason"] for d in letters}
    assert reasons["not json at all"].startswith("malformed batch manifest")
    assert "claims customer/type/version" in reasons[encode_manifest(lying)]
    assert "not an event object key" in reasons[encode_manifest(traversal)]
    assert "someone-elses-bucket" in reasons[other_bucket]
    assert all(d["attributes"]["source_queue"] == env.settings.resources.queue for d in letters)
    assert env.queue_depth() == 0
    assert env.ledger() == []


def test_a_failing_message_reaches_the_dlq_after_max_receives(
    clients: ClientFactory,
    settings: Settings,
    unique_name: str,
    db_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = make_env(clients, settings, unique_name, db_url, max_receive_count=2)
    obj = env.put_object(make_events(unique_name, n=3))
    env.clients.s3().delete_object(Bucket=env.bucket, Key=obj.key)  # announced, then lost
    body = encode_manifest(env.manifest([obj]))
    env.send(body)
    ins = env.inserter(wait_seconds=1, retry_base_seconds=1)

    caplog.set_level(logging.INFO, logger="inserter")
    deadline = time.monotonic() + 30
    while env.queue_depth(env.settings.resources.dead_letter_queue) == 0:
        assert time.monotonic() < deadline, "the message never reached the dead-letter queue"
        ins.poll_once()

    (letter,) = env.dead_letters()
    assert letter["body"] == body
    assert env.queue_depth() == 0
    failures = [r for r in caplog.records if r.getMessage().startswith("load failed")]
    assert [getattr(r, "receives", None) for r in failures] == [1, 2]
    assert all("object not found" in getattr(r, "reason", "") for r in failures)
    assert failures[-1].getMessage() == "load failed; the redrive policy dead-letters the message"


def test_an_unknown_version_waits_for_newer_definitions(env: Env, unique_name: str) -> None:
    """Not malformed: the message goes back to the queue (and, if no newer inserter comes,
    through the redrive policy to the DLQ) instead of straight to the DLQ."""
    obj = env.put_object(make_events(unique_name, n=3))
    future = BatchObject(obj.key.replace("/v=1/", "/v=9/"), unique_name, "page_view", 9, 3, obj.bytes, "", "")
    env.send(env.manifest([future]))
    ins = env.inserter(retry_base_seconds=1)
    assert ins.poll_once() == 1
    assert env.queue_depth(env.settings.resources.dead_letter_queue) == 0
    assert env.queue_depth() == 1


def test_a_lock_held_by_another_session_gives_the_message_back_within_the_bound(
    env: Env, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = make_events(unique_name, n=3)
    env.send(encode_manifest(env.manifest([env.put_object(first)])))
    env.drain()
    second = make_events(unique_name, n=4, start=3)
    env.send(encode_manifest(env.manifest([env.put_object(second, first=2000)])))
    ins = env.inserter(wait_seconds=1, retry_base_seconds=1, lock_timeout_s=1)
    caplog.set_level(logging.INFO, logger="inserter")
    with env.connect() as blocker:
        blocker.autocommit = False
        blocker.execute(f'LOCK TABLE "c_{unique_name}".page_view IN ACCESS EXCLUSIVE MODE')
        started = time.monotonic()
        ins.poll_once()  # the load waits 1 s per attempt for the lock, then gives the message back
        held = time.monotonic() - started
        blocker.rollback()
    assert held < 15, f"the message was held {held:.1f}s behind a lock"
    failures = [r for r in caplog.records if r.getMessage().startswith("load failed")]
    assert failures and "lock" in getattr(failures[0], "reason", "").lower()
    assert sorted(env.event_ids(unique_name)) == sorted(str(e.event_id) for e in first)
    deadline = time.monotonic() + 30
    while len(env.event_ids(unique_name)) < 7:  # the message came back; the lock is gone
        assert time.monotonic() < deadline, "the message never came back"
        ins.poll_once()


def test_an_oversize_forged_message_and_a_dlq_refusing_sends_do_not_stop_the_inserter(
    env: Env, unique_name: str
) -> None:
    forged = "x" * 262_000  # near SQS's 256 KiB: with the reason attributes it would not fit
    env.send(forged)
    events = make_events(unique_name, n=5)
    env.send(encode_manifest(env.manifest([env.put_object(events)])))
    sqs = env.clients.sqs()
    sqs.delete_queue(
        QueueUrl=sqs.get_queue_url(QueueName=env.settings.resources.dead_letter_queue)["QueueUrl"]
    )
    ins = env.inserter(wait_seconds=0, max_messages=1)
    deadline = time.monotonic() + 30
    loads = 0
    while loads < 1:  # each poll either loads the good one or gives the forged one back
        assert time.monotonic() < deadline, "the good message was never loaded"
        loads += ins.metrics.rows_loaded._value.get() > 0
        ins.poll_once()
    assert sorted(env.event_ids(unique_name)) == sorted(str(e.event_id) for e in events)
    # The forged one was given back each time its dead letter was refused (what the queue's own
    # redrive does with it then is SQS's: with its DLQ deleted, moto drops it).
    assert ins.metrics.messages.labels("failed")._value.get() >= 1


def waits_out_the_outage(env: Env, ins: Inserter, proxy: TcpProxy, *, loads: int) -> None:
    """Once ``ins`` sees the cut dependency out: for longer than receives 2 and 3 would take (the
    second would dead-letter), nothing is dead-lettered or loaded and every message waits in the
    queue; after ``proxy`` is restored, ``loads`` loads commit and the messages are deleted."""
    wait_for(lambda: ins.metrics.dependency_out._value.get() == 1, "the inserter to see the outage")
    time.sleep(6)
    assert env.queue_depth(env.settings.resources.dead_letter_queue) == 0
    assert env.queue_depth() == loads and env.ledger() == [] and proxy.refused > 0
    proxy.restore()
    wait_for(lambda: len(env.ledger()) == loads, "the loads once the dependency is back", timeout=60)
    wait_for(lambda: env.queue_depth() == 0, "the messages to be deleted")


def test_a_warehouse_outage_longer_than_the_redrive_schedule_dead_letters_nothing(
    clients: ClientFactory,
    settings: Settings,
    unique_name: str,
    db_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The warehouse goes away (every connection reset, new ones refused) while a batch waits.
    With 2 receives allowed, two failed loads would send it to the dead-letter queue; instead
    the inserter gives it back once and receives nothing until the warehouse answers, then
    loads it exactly once."""
    env = make_env(clients, settings, unique_name, db_url, max_receive_count=2)
    events = make_events(unique_name, n=200)
    info = psycopg.conninfo.conninfo_to_dict(env.db_url)
    caplog.set_level(logging.INFO, logger="inserter")
    with TcpProxy(str(info.get("host", "127.0.0.1")), int(info.get("port", 5432))) as proxy:
        url = psycopg.conninfo.make_conninfo(env.db_url, host="127.0.0.1", port=proxy.port)
        ins = env.inserter(wait_seconds=1, retry_base_seconds=1, exit_when_idle=False)
        ins.connect = lambda: psycopg.connect(url, autocommit=True, connect_timeout=2)  # type: ignore[method-assign]
        ins.outage_backoff = Backoff(base=0.2, cap=0.5, max_attempts=3)
        runner = threading.Thread(target=ins.run, name="inserter")
        runner.start()
        try:
            wait_for(lambda: ins._conn is not None, "the inserter to connect")
            proxy.cut()
            env.send(env.manifest([env.put_object(events)]))
            waits_out_the_outage(env, ins, proxy, loads=1)
        finally:
            ins.request_stop()
            runner.join(timeout=30)
    assert not runner.is_alive()
    assert Counter(env.event_ids(unique_name)) == Counter({e.event_id: 1 for e in events})
    assert env.dead_letters() == []
    (loaded,) = [r for r in caplog.records if r.getMessage() == "batch loaded"]
    assert getattr(loaded, "receives", None) == 2  # one receive spent on the outage, whatever its length
    assert any(r.getMessage() == "dependencies answer again; receiving" for r in caplog.records)


def test_an_s3_outage_mid_load_dead_letters_nothing_and_loads_once(
    clients: ClientFactory,
    settings: Settings,
    unique_name: str,
    db_url: str,
) -> None:
    """S3 goes away (connections reset, new ones refused) while batches wait: with 2 receives
    allowed, two failed downloads would dead-letter a batch; instead the inserter finds S3 out
    (its probe), gives the messages back and receives nothing until S3 answers, then loads every
    batch exactly once."""
    env = make_env(clients, settings, unique_name, db_url, max_receive_count=2)
    batches = [make_events(unique_name, n=100, start=100 * i) for i in range(3)]
    target = urlsplit(settings.aws.endpoint_for("s3"))
    with TcpProxy(target.hostname or "127.0.0.1", target.port or 80) as proxy:
        via = replace(
            settings, aws=replace(settings.aws, service_endpoints={"s3": f"http://127.0.0.1:{proxy.port}"})
        )
        proxied = Env(env.settings, ClientFactory(via), env.db_url)
        ins = proxied.inserter(wait_seconds=1, retry_base_seconds=1, exit_when_idle=False)
        ins.probes = dependency_probes(env.settings, ClientFactory(via))
        ins.outage_backoff = Backoff(base=0.2, cap=0.5, max_attempts=3)
        for i, events in enumerate(batches):
            env.send(env.manifest([env.put_object(events, first=1000 + 1000 * i)]))
        proxy.cut()
        runner = threading.Thread(target=ins.run, name="inserter")
        runner.start()
        try:
            waits_out_the_outage(env, ins, proxy, loads=3)
        finally:
            ins.request_stop()
            runner.join(timeout=30)
    assert not runner.is_alive()
    assert Counter(env.event_ids(unique_name)) == Counter({e.event_id: 1 for b in batches for e in b})
    assert env.dead_letters() == []
