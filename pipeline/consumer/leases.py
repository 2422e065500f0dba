"""Leases as KCL stores them, and the pure decisions about them.

The DynamoDB adapter (:mod:`pipeline.consumer.lease_store`) only executes what these functions
decide, so the protocol is unit-testable without a server (docs/consumer-runtime.md, "Protocol").
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.consumer.sequence import SHARD_END, TRIM_HORIZON, ExtendedSequenceNumber

#: Our own lease attribute: why the owner's processor keeps failing on the shard (absent: it is
#: not). KCL reads only the attributes it knows and its updates leave others in place.
FAILING = "shardhouseFailing"
_KEPT_EXTRA = frozenset({"pendingCheckpoint", "throughputKBps", "checkpointOwner", FAILING})


@dataclass(frozen=True)
class Lease:
    lease_key: str
    lease_counter: int = 0
    lease_owner: str | None = None
    checkpoint: ExtendedSequenceNumber = ExtendedSequenceNumber(TRIM_HORIZON)  # noqa: RUF009 - frozen value
    owner_switches: int = 0
    parent_shard_ids: frozenset[str] = frozenset()
    child_shard_ids: frozenset[str] = frozenset()
    starting_hash_key: str | None = None
    ending_hash_key: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def at_shard_end(self) -> bool:
        return self.checkpoint.is_shard_end


def from_item(item: Mapping[str, Any]) -> Lease | None:
    """A DynamoDB item (low-level attribute-value form) → Lease; None for non-lease items."""
    entity = item.get("entityType", {}).get("S")
    if entity is not None and entity != "LEASE":
        return None
    if "leaseKey" not in item:
        return None
    sub = item.get("checkpointSubSequenceNumber", {}).get("N", "0")
    return Lease(
        lease_key=item["leaseKey"]["S"],
        lease_counter=int(item.get("leaseCounter", {}).get("N", "0")),
        lease_owner=item.get("leaseOwner", {}).get("S"),
        checkpoint=ExtendedSequenceNumber(item.get("checkpoint", {}).get("S", TRIM_HORIZON), int(sub)),
        owner_switches=int(item.get("ownerSwitchesSinceCheckpoint", {}).get("N", "0")),
        parent_shard_ids=frozenset(item.get("parentShardId", {}).get("SS", [])),
        child_shard_ids=frozenset(item.get("childShardIds", {}).get("SS", [])),
        starting_hash_key=item.get("startingHashKey", {}).get("S"),
        ending_hash_key=item.get("endingHashKey", {}).get("S"),
        extra={k: v for k, v in item.items() if k in _KEPT_EXTRA},
    )


def to_new_item(lease: Lease) -> dict[str, Any]:
    """The item a lease is created with (no owner, counter 0), in KCL's attribute names."""
    item: dict[str, Any] = {
        "leaseKey": {"S": lease.lease_key},
        "leaseCounter": {"N": str(lease.lease_counter)},
        "checkpoint": {"S": lease.checkpoint.sequence_number},
        "checkpointSubSequenceNumber": {"N": str(lease.checkpoint.sub_sequence_number)},
        "ownerSwitchesSinceCheckpoint": {"N": str(lease.owner_switches)},
    }
    if lease.parent_shard_ids:
        item["parentShardId"] = {"SS": sorted(lease.parent_shard_ids)}
    if lease.starting_hash_key is not None:
        item["startingHashKey"] = {"S": lease.starting_hash_key}
    if lease.ending_hash_key is not None:
        item["endingHashKey"] = {"S": lease.ending_hash_key}
    return item


@dataclass
class ExpiryTracker:
    """Expiry observed locally: when did *this* worker last see each lease's counter change?"""

    failover_s: float
    _seen: dict[str, tuple[int, float | None]] = field(default_factory=dict)

    def observe(self, leases: Iterable[Lease], now: float) -> None:
        current: dict[str, tuple[int, float | None]] = {}
        for lease in leases:
            previous = self._seen.get(lease.lease_key)
            if previous is None:
                # First sighting: owned counts as renewed now; unowned is ancient.
                current[lease.lease_key] = (lease.lease_counter, now if lease.lease_owner else None)
            elif previous[0] != lease.lease_counter:
                current[lease.lease_key] = (lease.lease_counter, now)
            else:
                current[lease.lease_key] = previous
        self._seen = current

    def age(self, lease: Lease, now: float) -> float:
        seen = self._seen.get(lease.lease_key)
        return math.inf if seen is None or seen[1] is None else now - seen[1]

    def expired(self, lease: Lease, now: float) -> bool:
        return lease.lease_owner is None or self.age(lease, now) > self.failover_s


@dataclass(frozen=True)
class TakePlan:
    take: tuple[Lease, ...] = ()
    steal: tuple[Lease, ...] = ()


@dataclass(frozen=True)
class TableView:
    """One taker pass's reading of the table: the live leases (not at SHARD_END), those I hold,
    those available (expired, not held by me), and how many leases each live worker owns. A
    worker is live while it holds an unexpired lease; I count with what I hold, whatever the
    table says."""

    live: tuple[Lease, ...]
    mine: tuple[Lease, ...]
    available: tuple[Lease, ...]
    owners: Mapping[str, int]

    @property
    def worker_count(self) -> int:
        return len(self.owners)


def table_view(
    leases: Sequence[Lease], me: str, tracker: ExpiryTracker, now: float, held: Collection[str] | None
) -> TableView:
    """Classify the leases for one pass; ``held`` defaults to the unexpired leases naming me."""
    live = [lease for lease in leases if not lease.at_shard_end]
    if held is None:
        held = {x.lease_key for x in live if x.lease_owner == me and not tracker.expired(x, now)}
    owners = Counter(
        me if x.lease_key in held else x.lease_owner
        for x in live
        if x.lease_key in held or (x.lease_owner and not tracker.expired(x, now))
    )
    owners[me] += 0  # I am a worker even while I hold nothing
    return TableView(
        live=tuple(live),
        mine=tuple(x for x in live if x.lease_key in held),
        available=tuple(x for x in live if x.lease_key not in held and tracker.expired(x, now)),
        owners={str(owner): n for owner, n in owners.items()},
    )


def target_count(lease_count: int, worker_count: int, cap: float) -> int:
    """KCL's per-worker target: an even share rounded up (1 when workers outnumber leases),
    never above ``maxLeasesForWorker``."""
    target = 1 if worker_count >= lease_count else math.ceil(lease_count / worker_count)
    return int(min(target, cap))


def very_old_leases(available: Iterable[Lease], tracker: ExpiryTracker, now: float) -> list[Lease]:
    """Leases unrenewed for over three failover times (new, never-owned ones included): KCL takes
    all of them at once, ignoring the target, so a fresh stream or a dead fleet fills fast."""
    return [lease for lease in available if tracker.age(lease, now) > 3 * tracker.failover_s]


def take_count(candidates: int, need: float) -> int:
    """How many of ``candidates`` to take when I may take ``need`` more (infinite: no cap)."""
    return max(0, candidates if need == math.inf else int(min(candidates, need)))


def steal_count(load: int, target: int, need: int, max_leases_to_steal: int) -> int:
    """How many to steal from a victim holding ``load``: its excess over the target, at most my
    own need; at least one when I need more than one (KCL's rule, which lets a 1-lease excess
    move), never above ``maxLeasesToStealAtOneTime``."""
    count = min(need, load - target)
    if count <= 0 and need > 1:
        count = 1
    return max(0, min(count, max_leases_to_steal))


def steal_victim(owners: Mapping[str, int], me: str) -> tuple[str, int] | None:
    """The single most loaded other worker (ties: the greatest id) and its lease count."""
    others = {owner: n for owner, n in owners.items() if owner != me}
    if not others:
        return None
    return max(others.items(), key=lambda kv: (kv[1], kv[0]))


def leases_to_steal(
    view: TableView, me: str, target: int, need: int, max_leases_to_steal: int, rng: random.Random
) -> tuple[Lease, ...]:
    """Random leases of the busiest other worker, ``steal_count`` of them."""
    victim = steal_victim(view.owners, me)
    if victim is None:
        return ()
    busiest, load = victim
    count = steal_count(load, target, need, max_leases_to_steal)
    theirs = [lease for lease in view.live if lease.lease_owner == busiest]
    return tuple(rng.sample(theirs, count)) if count else ()


def plan_take(
    leases: Sequence[Lease],
    me: str,
    tracker: ExpiryTracker,
    now: float,
    *,
    max_leases_for_worker: int = 0,
    max_leases_to_steal: int = 1,
    rng: random.Random | None = None,
    held: Collection[str] | None = None,
) -> TakePlan:
    """KCL 2.x ``DynamoDBLeaseTaker``. Leases at SHARD_END are never taken.

    ``held``: the leases this worker runs a consumer for. An expired lease that still names me
    as owner but that I do not hold (its consumer failed, or I was paused past failover) is
    available like any other, as in KCL; without this, a lone worker would never get it back.
    Defaults to the unexpired leases that name me.

    Order of decisions: very old leases first (all of them, up to the cap); else, below target,
    available leases; steal only when nothing is available, from the single most loaded worker.
    """
    rand = rng or random.Random()
    cap = max_leases_for_worker if max_leases_for_worker > 0 else math.inf
    view = table_view(leases, me, tracker, now, held)
    if not view.live:
        return TakePlan()
    very_old = very_old_leases(view.available, tracker, now)
    if very_old:
        return TakePlan(take=tuple(rand.sample(very_old, take_count(len(very_old), cap - len(view.mine)))))
    target = target_count(len(view.live), view.worker_count, cap)
    need = target - len(view.mine)
    if need <= 0:
        return TakePlan()
    if view.available:
        return TakePlan(take=tuple(rand.sample(view.available, take_count(len(view.available), need))))
    return TakePlan(steal=leases_to_steal(view, me, target, need, max_leases_to_steal, rand))


def parents_done(lease: Lease, by_key: Mapping[str, Lease]) -> bool:
    """A child waits while any parent lease exists with a checkpoint other than SHARD_END."""
    return all(
        parent not in by_key or by_key[parent].checkpoint.sequence_number == SHARD_END
        for parent in lease.parent_shard_ids
    )


def deletable_parent(lease: Lease, by_key: Mapping[str, Lease]) -> bool:
    """A SHARD_END lease may go once every child has progressed and its own parents are gone."""
    if not lease.at_shard_end or not lease.child_shard_ids:
        return False
    children_moved = all(
        child in by_key and not by_key[child].checkpoint.is_sentinel for child in lease.child_shard_ids
    )
    return children_moved and not any(parent in by_key for parent in lease.parent_shard_ids)


def may_create_child(parents: frozenset[str], existing: Collection[str]) -> bool:
    """KCL's merge rule: create a child lease only if all of its parents' leases exist
    or none does. With one merge parent's lease missing, the child would not wait for that parent
    (a missing parent does not block); shard sync creates the missing parent's lease instead, and
    that parent's own shard end creates the child."""
    present = sum(1 for parent in parents if parent in existing)
    return present in (0, len(parents))
