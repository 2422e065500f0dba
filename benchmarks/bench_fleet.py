"""A worker fleet on a simulated clock: the real Worker's coordinator (pipeline/consumer/worker.py:
``Worker.tick`` → renew, ``plan_take`` taking and stealing, the release scan, shard sync, reap,
graceful release) over a simulated lease table, with workers that join, leave gracefully, get
spot notices, die without notice, and a stream resharded under them.

    .venv/bin/python benchmarks/bench_fleet.py                       # 50 workers x 500 shards
    .venv/bin/python benchmarks/bench_fleet.py --workers 6 --shards 24 --change 1

What is simulated, and only that: the clock, the DynamoDB lease table (the same conditional
writes as pipeline/consumer/lease_store.py: every write conditional on the lease counter), the
stream's shard list, and the shard consumers (a held lease "processes" instantly; at shard end
it creates the child leases, checkpoints SHARD_END and finishes, as ShardConsumer._shard_end
does; a child checkpoints past TRIM_HORIZON a few seconds after its parents are done; a
graceful shutdown flushes for ``flush_s``). Every decision about leases is the worker's own code.
Workers run in the 2.x protocol (KCL 3.x disabled): the 3.x leader assignment is not simulated.

Reported per scenario: time until every lease is held again, until the fleet is balanced to ±1
lease, the taker passes that took (time / the taker interval), lease moves, the worst imbalance
seen, and the takeover gaps (from a lease's release, or its owner's death, to its next take).
"""

from __future__ import annotations

import argparse
import functools
import heapq
import itertools
import logging
import random
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, cast

from pipeline.consumer.kcl3 import Kcl3Config
from pipeline.consumer.lease_store import LeaseStore
from pipeline.consumer.leases import Lease, may_create_child, parents_done
from pipeline.consumer.sequence import SHARD_END, TRIM_HORIZON, ExtendedSequenceNumber
from pipeline.consumer.shard_consumer import ShardConsumer
from pipeline.consumer.worker import Schedule, Worker, WorkerConfig

MAX_HASH = 2**128 - 1


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Move:
    at: float
    key: str
    old: str | None
    new: str


class SimTable(LeaseStore):
    """The lease table in memory, with LeaseStore's conditional writes (counter must match)."""

    def __init__(self, clock: SimClock) -> None:
        super().__init__(cast(Any, None), "sim")
        self.clock = clock
        self.leases: dict[str, Lease] = {}
        self.moves: list[Move] = []
        #: lease → since when no live worker processes it (released, created, or owner died)
        self.free_since: dict[str, float] = {}
        #: (when taken, lease, seconds it was free)
        self.gaps: list[tuple[float, str, float]] = []

    def _swap(self, lease: Lease, **changes: Any) -> bool:
        current = self.leases.get(lease.lease_key)
        if current is None or current.lease_counter != lease.lease_counter:
            return False
        self.leases[lease.lease_key] = replace(current, lease_counter=current.lease_counter + 1, **changes)
        return True

    def ensure_table(self, timeout: float = 60.0) -> bool:
        return False

    def list_leases(self) -> list[Lease]:
        return list(self.leases.values())

    def get(self, key: str) -> Lease | None:
        return self.leases.get(key)

    def create_if_absent(self, lease: Lease) -> bool:
        if lease.lease_key in self.leases:
            return False
        self.leases[lease.lease_key] = lease
        self.free_since[lease.lease_key] = self.clock()
        return True

    def renew(self, lease: Lease, me: str) -> bool:
        return self._swap(lease)

    def take(self, lease: Lease, me: str) -> bool:
        switches = lease.owner_switches + (1 if lease.lease_owner != me else 0)
        if not self._swap(lease, lease_owner=me, owner_switches=switches):
            return False
        now = self.clock()
        self.moves.append(Move(now, lease.lease_key, lease.lease_owner, me))
        if lease.lease_key in self.free_since:
            self.gaps.append((now, lease.lease_key, now - self.free_since.pop(lease.lease_key)))
        return True

    def release(self, lease: Lease) -> bool:
        ok = self._swap(lease, lease_owner=None)
        if ok and not lease.at_shard_end:
            self.free_since[lease.lease_key] = self.clock()
        return ok

    def checkpoint(self, lease: Lease, value: ExtendedSequenceNumber) -> bool:
        return self._swap(lease, checkpoint=value)

    def set_children(self, key: str, children: list[str]) -> None:
        if key in self.leases:
            self.leases[key] = replace(self.leases[key], child_shard_ids=frozenset(children))

    def delete(self, key: str) -> None:
        self.leases.pop(key, None)
        self.free_since.pop(key, None)


class SimStream:
    """ListShards over the simulated shard list (what shard sync reads)."""

    def __init__(self, shards: int) -> None:
        step = (MAX_HASH + 1) // shards
        self.shards: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count()
        for i in range(shards):
            end = MAX_HASH if i == shards - 1 else (i + 1) * step - 1
            self._add(None, i * step, end)

    def _add(self, parent: str | None, start: int, end: int) -> str:
        shard_id = f"shardId-{next(self._ids):012d}"
        shard: dict[str, Any] = {
            "ShardId": shard_id,
            "HashKeyRange": {"StartingHashKey": str(start), "EndingHashKey": str(end)},
            "SequenceNumberRange": {"StartingSequenceNumber": "1"},
        }
        if parent:
            shard["ParentShardId"] = parent
        self.shards[shard_id] = shard
        return shard_id

    def list_shards(self, **_: Any) -> dict[str, Any]:
        return {"Shards": list(self.shards.values())}

    def open_shards(self) -> list[str]:
        return [k for k, s in self.shards.items() if "EndingSequenceNumber" not in s["SequenceNumberRange"]]

    def split(self, shard_id: str) -> list[dict[str, Any]]:
        """Close ``shard_id``; two children share its hash range. Returns the children."""
        parent = self.shards[shard_id]
        parent["SequenceNumberRange"]["EndingSequenceNumber"] = "9"
        start, end = (int(parent["HashKeyRange"][k]) for k in ("StartingHashKey", "EndingHashKey"))
        middle = (start + end) // 2
        return [
            self.shards[self._add(shard_id, start, middle)],
            self.shards[self._add(shard_id, middle + 1, end)],
        ]


class _Flag:
    """ShardConsumer.shutdown_requested for a simulated consumer: setting it finishes the consumer
    (its flush time is modelled before the worker's shutdown starts)."""

    def __init__(self, finished: threading.Event) -> None:
        self.finished = finished

    def set(self) -> None:
        self.finished.set()


@dataclass
class SimConsumer:
    """What Worker._reap and Worker._shutdown read from a ShardConsumer."""

    shard_id: str
    started_at: float
    finished: threading.Event = field(default_factory=threading.Event)
    reached_shard_end: bool = False
    stats: Any = field(default_factory=lambda: type("Stats", (), {"records": 0, "millis_behind_latest": 0})())

    def __post_init__(self) -> None:
        self.shutdown_requested = _Flag(self.finished)


class SimWorker(Worker):
    """The real Worker; only the shard consumer thread it would start is simulated."""

    def _start(self, lease: Lease, taken_at: float) -> None:
        from pipeline.consumer.handle import LeaseHandle

        handle = LeaseHandle(lease, renewed_at=taken_at, failover_s=self.config.failover_s, clock=self.clock)
        self.handles[lease.lease_key] = handle
        self.consumers[lease.lease_key] = cast(ShardConsumer, SimConsumer(lease.lease_key, self.clock()))


@dataclass(frozen=True)
class FleetConfig:
    workers: int = 50
    shards: int = 500
    failover_s: float = 10.0
    seed: int = 1
    join_spread_s: float = 5.0  # workers of one wave start within this many seconds
    flush_s: float = 2.0  # a graceful shutdown's flush and checkpoint, before the leases go back
    spot_poll_s: float = 5.0  # WorkerSettings.spot_poll_seconds: the notice is seen within this
    shard_end_s: float = 2.0  # after a split, the parent's consumer reaches SHARD_END
    child_checkpoint_s: float = 5.0  # a child's first checkpoint after its parents are done
    settle_s: float = 30.0  # quiet time after a scenario is balanced, before the next one


@dataclass
class Outcome:
    kind: str  # start | join | leave | spot | crash | split
    scenario: str
    workers_after: int
    leases_after: int
    all_held_s: float | None
    balanced_s: float | None
    taker_passes: float | None
    moves: int
    worst_spread: int
    gaps: list[float]

    def row(self) -> str:
        def s(x: float | None) -> str:
            return "not reached" if x is None else f"{x:.1f}"

        gaps = f"{max(self.gaps):.2f} / {statistics.median(self.gaps):.2f}" if self.gaps else "-"
        passes = "-" if self.taker_passes is None else f"{self.taker_passes:.1f}"
        return (
            f"| {self.scenario} | {self.workers_after} x {self.leases_after} | {s(self.all_held_s)} | "
            f"{s(self.balanced_s)} | {passes} | {self.moves} | {self.worst_spread} | {gaps} |"
        )


HEADER = (
    "| scenario | workers x leases after | all held (s) | balanced ±1 (s) | taker passes | lease moves "
    "| worst spread | takeover gap max / median (s) |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
)


class Fleet:
    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.clock = SimClock()
        self.table = SimTable(self.clock)
        self.stream = SimStream(config.shards)
        self.rng = random.Random(config.seed)
        self.workers: dict[str, SimWorker] = {}
        self.schedules: dict[str, Schedule] = {}
        self.alive: set[str] = set()
        self.leaving: set[str] = set()
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._ids = itertools.count()
        #: changes scheduled but not yet in effect (a join not started, a shutdown not done)
        self.pending = 0

    # -- the event loop ----------------------------------------------------------------------
    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._seq), action))

    def run_until(
        self, end: float, done: Callable[[], bool] | None = None, every: float = 1.0
    ) -> float | None:
        """Advance to ``end``; with ``done``, stop at the first whole step where it holds."""
        next_check = self.clock.now
        while self._queue and self._queue[0][0] <= end:
            when, _, action = heapq.heappop(self._queue)
            if done is not None and when >= next_check:
                self.clock.now = next_check
                if done():
                    heapq.heappush(self._queue, (when, next(self._seq), action))
                    return next_check
                next_check += every
            self.clock.now = when
            action()
        self.clock.now = end
        return self.clock.now if done is not None and done() else None

    # -- workers -----------------------------------------------------------------------------
    def join(self, delay: float = 0.0) -> str:
        wid = f"w{next(self._ids):03d}"

        def start() -> None:
            config = WorkerConfig(
                application="sim", stream="sim", worker_id=wid, failover_s=self.config.failover_s,
                kcl3=Kcl3Config(enabled=False),
            )  # fmt: skip
            worker = SimWorker(
                config, store=self.table, kinesis=cast(Any, self.stream),
                processor_factory=lambda: cast(Any, None), clock=self.clock,
            )  # fmt: skip
            worker.rng = random.Random(self.rng.random())
            self.workers[wid] = worker
            self.alive.add(wid)
            worker.store.ensure_table()
            worker._sync()  # what Worker.run does before its loop
            self.schedules[wid] = Schedule.starting(self.clock(), config)
            self._tick(wid)

        self.pending += 1

        def started() -> None:
            start()
            self.pending -= 1

        self.at(self.clock.now + delay, started)
        return wid

    def _tick(self, wid: str) -> None:
        if wid not in self.alive:
            return
        worker, now = self.workers[wid], self.clock()
        self._consume(worker)
        wake = worker.tick(self.schedules[wid])
        # Worker.run waits max(0.05, min(0.5, wake - now)) between passes.
        self.at(now + max(0.05, min(0.5, wake - now)), lambda: self._tick(wid))

    def _consume(self, worker: SimWorker) -> None:
        """The consumers' side: children checkpoint once their parents are done."""
        now = self.clock()
        for key, handle in list(worker.handles.items()):
            lease = self.table.get(key)
            if (
                lease is None
                or handle.lost.is_set()
                or lease.at_shard_end
                or not lease.checkpoint.is_sentinel
            ):
                continue
            started = cast(SimConsumer, worker.consumers[key]).started_at if key in worker.consumers else now
            if parents_done(lease, self.table.leases) and now - started >= self.config.child_checkpoint_s:
                with handle.lock:
                    if self.table.checkpoint(handle.lease, ExtendedSequenceNumber("1")):
                        handle.lease = replace(
                            handle.lease, lease_counter=handle.lease.lease_counter + 1,
                            checkpoint=ExtendedSequenceNumber("1"),
                        )  # fmt: skip
                        handle.renewed_at = now

    def leave(self, wid: str, notice_delay: float = 0.0) -> None:
        """SIGTERM or a spot notice: seen after ``notice_delay``, flush, then release everything."""

        def notice() -> None:
            self.leaving.add(wid)
            self.at(self.clock.now + self.config.flush_s, shutdown)

        def shutdown() -> None:
            self.alive.discard(wid)
            self.workers[wid]._shutdown()  # the real shutdown: release every lease
            self.leaving.discard(wid)
            self.pending -= 1

        self.pending += 1
        self.at(self.clock.now + notice_delay, notice)

    def crash(self, wid: str) -> None:
        self.alive.discard(wid)
        for key, lease in self.table.leases.items():
            if lease.lease_owner == wid and not lease.at_shard_end:
                self.table.free_since[key] = self.clock.now

    def split(self, count: int) -> None:
        """Split ``count`` open shards; each parent's holder reaches SHARD_END ``shard_end_s`` later."""
        for parent in self.rng.sample(self.stream.open_shards(), count):
            children = self.stream.split(parent)
            self.pending += 1
            self.at(
                self.clock.now + self.config.shard_end_s, functools.partial(self._shard_end, parent, children)
            )

    def _shard_end(self, parent: str, children: list[dict[str, Any]]) -> None:
        """ShardConsumer._shard_end for the parent's current holder (retried until one holds it)."""
        lease = self.table.get(parent)
        holder = lease.lease_owner if lease is not None else None
        if holder is None or holder not in self.alive or parent not in self.workers[holder].handles:
            self.at(self.clock.now + 1.0, lambda: self._shard_end(parent, children))
            return
        worker = self.workers[holder]
        handle = worker.handles[parent]
        for child in children:
            parents = frozenset({parent})
            if may_create_child(parents, set(self.table.leases)):
                hash_range = child["HashKeyRange"]
                self.table.create_if_absent(
                    Lease(child["ShardId"], checkpoint=ExtendedSequenceNumber(TRIM_HORIZON),
                          parent_shard_ids=parents, starting_hash_key=hash_range["StartingHashKey"],
                          ending_hash_key=hash_range["EndingHashKey"])
                )  # fmt: skip
        self.table.set_children(parent, [c["ShardId"] for c in children])
        with handle.lock:
            if not self.table.checkpoint(handle.lease, ExtendedSequenceNumber(SHARD_END)):
                # stolen meanwhile: the new holder's consumer reaches the shard end instead
                self.at(self.clock.now + 1.0, lambda: self._shard_end(parent, children))
                return
            handle.lease = replace(
                handle.lease, lease_counter=handle.lease.lease_counter + 1,
                checkpoint=ExtendedSequenceNumber(SHARD_END),
            )  # fmt: skip
        consumer = cast(SimConsumer, worker.consumers[parent])
        consumer.reached_shard_end = True
        consumer.finished.set()  # Worker._reap releases the lease and forgets it
        self.pending -= 1

    # -- what the table says ---------------------------------------------------------------
    def live_leases(self) -> list[Lease]:
        return [x for x in self.table.leases.values() if not x.at_shard_end]

    def counts(self) -> Counter[str]:
        held = Counter(x.lease_owner for x in self.live_leases() if x.lease_owner in self.alive)
        return Counter({w: held.get(w, 0) for w in self.alive if w not in self.leaving})

    def all_held(self) -> bool:
        """Every change in effect, and every live lease held by a running worker."""
        live = self.live_leases()
        return self.pending == 0 and bool(live) and all(x.lease_owner in self.alive for x in live)

    def spread(self) -> int:
        counts = self.counts()
        return max(counts.values()) - min(counts.values()) if counts else 0

    def balanced(self) -> bool:
        return self.all_held() and self.spread() <= 1

    # -- scenarios -----------------------------------------------------------------------------
    def scenario(
        self, kind: str, name: str, change: Callable[[], None], *, timeout: float = 1200.0
    ) -> Outcome:
        start, moves_before, gaps_before = self.clock.now, len(self.table.moves), len(self.table.gaps)
        change()
        worst = 0

        def watch() -> bool:
            nonlocal worst
            worst = max(worst, self.spread())
            return self.all_held()

        held_at = self.run_until(start + timeout, watch)
        balanced_at = self.run_until(start + timeout, lambda: watch() and self.spread() <= 1)
        # quiet time: nothing should move once balanced
        self.run_until(self.clock.now + self.config.settle_s, lambda: watch() and False)
        moves = self.table.moves[moves_before:]
        gaps = [gap for _, _, gap in self.table.gaps[gaps_before:]]
        take_s = 2 * (self.config.failover_s + 0.025)
        return Outcome(
            kind=kind,
            scenario=name,
            workers_after=len(self.counts()),
            leases_after=len(self.live_leases()),
            all_held_s=None if held_at is None else held_at - start,
            balanced_s=None if balanced_at is None else balanced_at - start,
            taker_passes=None if balanced_at is None else (balanced_at - start) / take_s,
            moves=len(moves),
            worst_spread=worst,
            gaps=gaps,
        )


def run_all(config: FleetConfig, change: int) -> list[Outcome]:
    """The standard sequence on one fleet: start, join, graceful leave, spot, crash, reshard."""
    fleet = Fleet(config)
    out = []

    def start() -> None:
        for _ in range(config.workers):
            fleet.join(fleet.rng.uniform(0, config.join_spread_s))

    def join() -> None:
        for _ in range(change):
            fleet.join(fleet.rng.uniform(0, config.join_spread_s))

    def pick() -> list[str]:
        return fleet.rng.sample(sorted(fleet.alive - fleet.leaving), change)

    def leave() -> None:
        for w in pick():
            fleet.leave(w)

    def spot() -> None:
        for w in pick():
            fleet.leave(w, fleet.rng.uniform(0, config.spot_poll_s))

    def crash() -> None:
        for w in pick():
            fleet.crash(w)

    splits = max(1, config.shards // 10)
    out.append(fleet.scenario("start", f"cold start: {config.workers} workers join", start))
    out.append(fleet.scenario("join", f"{change} workers join", join))
    out.append(fleet.scenario("leave", f"{change} leave gracefully (SIGTERM)", leave))
    out.append(fleet.scenario("spot", f"{change} get spot notices", spot))
    out.append(fleet.scenario("crash", f"{change} crash (kill -9)", crash))
    out.append(fleet.scenario("split", f"split {splits} shards", lambda: fleet.split(splits)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--shards", type=int, default=500)
    parser.add_argument("--change", type=int, default=10, help="workers joining/leaving per scenario")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the worker logs every acquisition; thousands here
    config = FleetConfig(workers=args.workers, shards=args.shards, seed=args.seed)
    began = time.perf_counter()
    outcomes = run_all(config, args.change)
    print(HEADER)
    for outcome in outcomes:
        print(outcome.row())
    print(f"\n{args.workers} workers x {args.shards} shards, seed {args.seed}: "
          f"{time.perf_counter() - began:.1f} s of real time", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
