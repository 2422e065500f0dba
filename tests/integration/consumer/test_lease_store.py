"""Conditional writes on a real DynamoDB API (moto server): the lease protocol's safety net."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from pipeline.app.status.model import ShardView, Snapshot
from pipeline.app.status.render import render
from pipeline.consumer.handle import LeaseHandle, ShardCheckpointer
from pipeline.consumer.lease_store import LeaseStore
from pipeline.consumer.leases import FAILING, Lease
from pipeline.consumer.processor import CheckpointError
from pipeline.consumer.sequence import ExtendedSequenceNumber as E
from pipeline.core.clients import ClientFactory


@pytest.fixture
def store(clients: ClientFactory, unique_name: str) -> LeaseStore:
    s = LeaseStore(clients.dynamodb(), unique_name)
    assert s.ensure_table() is True
    assert s.ensure_table() is False
    return s


def held(store: LeaseStore, key: str, me: str) -> LeaseHandle:
    lease = store.get(key)
    assert lease is not None and store.take(lease, me)
    taken = store.get(key)
    assert taken is not None
    return LeaseHandle(taken)


def test_concurrent_creates_make_one_lease(store: LeaseStore) -> None:
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.create_if_absent(Lease("s0")))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert [lease.lease_key for lease in store.list_leases()] == ["s0"]


def test_two_takers_of_one_lease_only_one_wins(store: LeaseStore) -> None:
    store.create_if_absent(Lease("s0"))
    seen = store.get("s0")
    assert seen is not None
    assert store.take(seen, "a") is True
    assert store.take(seen, "b") is False  # same counter read: the optimistic lock holds
    after = store.get("s0")
    assert after is not None and after.lease_owner == "a" and after.owner_switches == 1


def test_outside_bump_loses_the_lease_and_checkpoint_raises_shutdown(store: LeaseStore) -> None:
    store.create_if_absent(Lease("s0"))
    handle = held(store, "s0", "me")
    assert store.renew(handle.lease, "me")
    current = store.get("s0")
    assert current is not None
    assert store.take(current, "thief")  # a steal bumps the counter
    stale = handle.lease  # our copy is now behind
    assert store.renew(stale, "me") is False
    cp = ShardCheckpointer(store, handle, handle.token)
    cp.accepting = True
    cp.largest_delivered = E("100")
    with pytest.raises(CheckpointError) as info:
        cp.checkpoint("50", 0)
    assert info.value.value == "ShutdownException"
    final = store.get("s0")
    assert final is not None and final.checkpoint == E("TRIM_HORIZON") and final.lease_owner == "thief"


def test_zombie_checkpoint_after_takeover_is_rejected(store: LeaseStore) -> None:
    """A paused worker wakes up after another took its lease: its checkpoint must not land."""
    store.create_if_absent(Lease("s0"))
    zombie = held(store, "s0", "zombie")
    other = store.get("s0")
    assert other is not None and store.take(other, "b")  # lease expired while the zombie slept
    b_handle = LeaseHandle(store.get("s0"))  # type: ignore[arg-type]
    b_cp = ShardCheckpointer(store, b_handle, b_handle.token)
    b_cp.accepting, b_cp.largest_delivered = True, E("30")
    b_cp.checkpoint("30", 0)
    z_cp = ShardCheckpointer(store, zombie, zombie.token)
    z_cp.accepting, z_cp.largest_delivered = True, E("99")
    with pytest.raises(CheckpointError, match="ShutdownException"):
        z_cp.checkpoint("99", 0)
    final = store.get("s0")
    assert final is not None and final.checkpoint == E("30") and final.owner_switches == 0


def test_stale_token_from_an_earlier_tenure_is_rejected(store: LeaseStore) -> None:
    store.create_if_absent(Lease("s0"))
    first = held(store, "s0", "me")
    old_cp = ShardCheckpointer(store, first, first.token)
    first.token = "re-acquired"  # the same worker lost and re-took the lease
    old_cp.accepting, old_cp.largest_delivered = True, E("10")
    with pytest.raises(CheckpointError, match="ShutdownException"):
        old_cp.checkpoint("10", 0)


def test_checkpoint_validation_and_no_write_for_same_value(store: LeaseStore) -> None:
    store.create_if_absent(Lease("s0"))
    handle = held(store, "s0", "me")
    cp = ShardCheckpointer(store, handle, handle.token)
    cp.accepting, cp.largest_delivered = True, E("20", 1)
    cp.checkpoint("20", 1)
    counter = store.get("s0").lease_counter  # type: ignore[union-attr]
    cp.checkpoint("20", 1)  # same value: nothing written
    assert store.get("s0").lease_counter == counter  # type: ignore[union-attr]
    with pytest.raises(CheckpointError, match="IllegalArgumentException"):
        cp.checkpoint("25", 0)
    with pytest.raises(CheckpointError, match="IllegalArgumentException"):
        cp.checkpoint("5", 0)
    cp.accepting = False
    with pytest.raises(CheckpointError, match="InvalidStateException"):
        cp.checkpoint("20", 1)


def test_release_makes_lease_ownerless_at_once(store: LeaseStore) -> None:
    store.create_if_absent(Lease("s0"))
    handle = held(store, "s0", "me")
    assert store.release(handle.lease)
    after = store.get("s0")
    assert (
        after is not None
        and after.lease_owner is None
        and after.lease_counter == handle.lease.lease_counter + 1
    )


def test_a_failing_shard_is_published_on_its_lease_for_status_and_cleared_by_a_new_owner(
    store: LeaseStore,
) -> None:
    def failing() -> str | None:
        lease = store.get("s0")
        assert lease is not None
        return lease.extra.get(FAILING, {}).get("S")

    store.create_if_absent(Lease("s0"))
    held(store, "s0", "w1")
    store.set_failing("s0", "w2", "ConnectionError: not its lease")  # refused: w2 does not own it
    assert failing() is None
    reason = "ShardFailed: flush failed: redis: connection refused"
    store.set_failing("s0", "w1", reason)
    assert failing() == reason
    snap = Snapshot(
        "s", datetime.now(UTC), 1.0, shards=[ShardView("app", "s0", "w1", "TRIM_HORIZON", failing=reason)]
    )
    assert f"FAILING (records kept, retried with backoff): {reason}" in render(snap)
    lease = store.get("s0")
    assert lease is not None and store.take(lease, "w2")  # a new owner starts clean
    assert failing() is None
    store.set_failing("s0", "w2", "boom")
    store.set_failing("s0", "w2", None)  # healed
    assert failing() is None
