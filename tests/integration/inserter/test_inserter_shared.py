"""A shared object (many small customers in one Parquet object, issue 13) on real servers: each
customer's rows land in that customer's table only, readable by that customer's role only,
exactly once through a duplicate SQS delivery and a replay; a row of a customer the manifest
entry does not list is refused."""

from __future__ import annotations

from collections import Counter

import psycopg
import pytest
from inserter_harness import Env, make_events, wait_for

from inserter.replay import Replayer
from inserter.source import ObjectSource

pytestmark = pytest.mark.integration


def _customers(name: str, n: int) -> list[str]:
    return [f"{name}_{i:02d}" for i in range(n)]


def test_a_shared_object_loads_each_customer_once_into_its_own_table(env: Env, unique_name: str) -> None:
    customers = _customers(unique_name, 12)
    events = [e for i, c in enumerate(customers) for e in make_events(c, n=1 + i % 3, start=100 * i)]
    obj = env.put_shared(events)
    manifest = env.manifest([obj], last=1000 + len(events) - 1)
    env.send(manifest)
    env.send(manifest)  # a duplicate delivery
    env.drain()
    expected = Counter(e.customer_id for e in events)
    for c in customers:
        ids = env.event_ids(c)
        assert len(ids) == len(set(ids)) == expected[c]
        assert set(ids) == {str(e.event_id) for e in events if e.customer_id == c}
    ledger = env.ledger()
    assert sorted(r["object_key"] for r in ledger) == sorted(f"{obj.key}#{c}" for c in customers)
    assert {r["customer_id"]: r["rows_loaded"] for r in ledger} == dict(expected)

    # A replay rebuilds the manifest from the S3 listing (customers counted from the rows).
    seen = []
    s3 = env.clients.s3()
    Replayer(s3, ObjectSource(s3), env.queue(), stream=env.settings.resources.stream).run(
        env.bucket, "events/shared/", on_manifest=seen.append
    )
    assert [o.customers for m in seen for o in m.objects] == [obj.customers]
    env.drain()
    assert all(len(env.event_ids(c)) == expected[c] for c in customers)

    # Each customer's reader role sees its own table and cannot read a neighbour's.
    mine, other = customers[0], customers[1]
    with env.connect() as conn:
        conn.execute(f'SET ROLE "c_{mine}_reader"')
        assert conn.execute(f'SELECT count(*) FROM "c_{mine}".page_view').fetchone() == (expected[mine],)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f'SELECT count(*) FROM "c_{other}".page_view')


def test_rows_of_a_customer_the_entry_does_not_list_are_refused(env: Env, unique_name: str) -> None:
    a, b = _customers(unique_name, 2)
    obj = env.put_shared(make_events(a, n=3) + make_events(b, n=2, start=50), listed=[a])
    env.send(env.manifest([obj], last=1004))
    assert env.inserter().poll_once() == 1
    assert env.ledger() == []
    wait_for(lambda: env.queue_depth() == 1, "the message back on the queue")
