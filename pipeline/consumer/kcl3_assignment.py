"""KCL 3.x lease assignment as pure decisions: what the leader's ``LeaseAssignmentManager`` and
``VarianceBasedLeaseAssignmentDecider`` (KCL 3.1.3) decide, over plain data.

The leader (:mod:`pipeline.consumer.kcl3`) loads leases and ``WorkerMetricStats``, calls
:func:`plan_assignments`, and executes the result with conditional writes. Reproducing KCL's
choices — including its arithmetic on "no throughput yet", where Java divides by zero — is what
lets a native leader and a Java leader take turns on one table without fighting.

Rules, as read from the KCL sources:
- *Active workers*: a valid stats entry (``lut`` present; metric names covered by an operating
  range whose ceiling is not 0, or no explicit metrics at all = the "default" metric) updated
  within 2 reporter periods, with no metric whose last sample is -1 (failing).
- *Expired or unassigned leases* (no owner, or counter unchanged for failover as the leader saw
  it) go first, unassigned before longest-expired, each to the assignable worker with the most
  room to reach the fleet average (``computePercentageToReachAverage``); after each assignment
  the worker's metrics are extrapolated by the lease's share.
- *Rebalance* (every ``varianceBalancingFrequency``-th run): per metric, workers outside ±10 % of
  the fleet average trigger it; load is taken from those at or above the upper limit (or the most
  loaded), dampened to 60 %, as leases whose throughput adds up to it, each moved while the
  receiver stays under the average.
- A lease being handed off (``checkpointOwner`` set) is not reassigned until its handoff times
  out; an assignment of a live lease is a *graceful* handoff, of an expired one a plain assign.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.consumer.leases import Lease
from pipeline.consumer.sequence import SHARD_END

THROUGHPUT = "T"  # the name KCL gives the synthetic metric of workers with no explicit metrics
_DEFAULT_METRIC_KEY = "THROUGHPUT"  # what KCL's isUsingDefaultWorkerMetric looks for (sic)


@dataclass(frozen=True)
class WorkerStats:
    """One ``<app>-WorkerMetricStats`` item: ``wid``, ``lut`` (epoch s), ``sts``, ``opr``."""

    worker_id: str
    last_update: int | None
    metric_stats: Mapping[str, Sequence[float]] = field(default_factory=dict)
    operating_range: Mapping[str, Sequence[int]] = field(default_factory=dict)

    @property
    def uses_default_metric(self) -> bool:
        if not self.metric_stats and not self.operating_range:
            return True
        return _DEFAULT_METRIC_KEY in self.metric_stats

    @property
    def valid(self) -> bool:
        if self.last_update is None:
            return False
        if self.uses_default_metric:
            return True
        if any(name not in self.operating_range for name in self.metric_stats):
            return False
        return all(values and values[0] != 0 for values in self.operating_range.values())

    @property
    def failing(self) -> bool:
        """A metric whose last sample is -1 could not be read: KCL leaves such a worker alone."""
        if self.uses_default_metric:
            return False
        return any(values and values[-1] == -1 for values in self.metric_stats.values())


@dataclass(frozen=True)
class LeaseState:
    """A lease as the leader sees it this run."""

    lease: Lease
    expired: bool  # no counter change for failover since the leader first saw this counter
    last_change: float = 0.0  # when the leader saw the counter change; 0 = never (unassigned)
    throughput_kbps: float | None = None
    checkpoint_owner: str | None = None
    handoff_timed_out: bool = False  # checkpointOwner set for longer than handoff timeout + failover

    @property
    def actual_owner(self) -> str | None:
        return self.checkpoint_owner if self.checkpoint_owner is not None else self.lease.lease_owner

    @property
    def unassigned(self) -> bool:
        return self.lease.lease_owner is None

    @property
    def expired_or_unassigned(self) -> bool:
        return self.unassigned or self.expired

    @property
    def at_shard_end(self) -> bool:
        return self.lease.checkpoint.sequence_number == SHARD_END


@dataclass(frozen=True)
class AssignmentConfig:
    """KCL 3.1.3's ``WorkerUtilizationAwareAssignmentConfig`` defaults."""

    reporter_interval_s: float = 30.0
    dampening_percentage: int = 60
    rebalance_threshold_percentage: int = 10
    allow_throughput_overshoot: bool = True
    max_throughput_per_host_kbps: float = math.inf
    max_leases_for_worker: int = 0  # 0 = unlimited
    ema_alpha: float = 0.5
    variance_balancing_frequency: int = 3


@dataclass(frozen=True)
class Assignment:
    lease: LeaseState
    new_owner: str
    graceful: bool  # live lease: set checkpointOwner and let the owner checkpoint and hand over


def active_workers(
    workers: Sequence[WorkerStats], now_s: float, config: AssignmentConfig
) -> list[WorkerStats]:
    """Valid, recent (``lut`` within 2 reporter periods, compared in whole seconds) and not failing."""
    threshold = math.floor(now_s - 2 * config.reporter_interval_s)
    return [
        w
        for w in workers
        if w.valid and w.last_update is not None and w.last_update >= threshold and not w.failing
    ]


def ema(values: Sequence[float], alpha: float) -> float:
    """KCL's exponential moving average, oldest first, skipping -1 (failed) samples; 0 if empty."""
    value, started = 0.0, False
    for sample in values:
        if sample == -1:
            continue
        value = sample if not started else alpha * sample + (1 - alpha) * value
        started = True
    return value


def _div(a: float, b: float) -> float:
    """IEEE division as Java does it: x/0 is ±inf, 0/0 is NaN (KCL relies on it at startup)."""
    if b != 0:
        return a / b
    if a == 0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def _java_key(value: float) -> float:
    """Order doubles as ``Double.compare`` does: NaN above +inf."""
    return math.inf if math.isnan(value) else value


@dataclass
class _Worker:
    """A worker during one run: averaged metrics that grow as leases are planned onto it."""

    worker_id: str
    names: tuple[str, ...]
    value: dict[str, float]
    ceiling: dict[str, float]

    def room(self, fleet: Mapping[str, float]) -> float:
        """``computePercentageToReachAverage``: the smallest relative distance to the average
        (Java's ``Math.min``, so one NaN makes it NaN)."""
        best = sys.float_info.max
        for name in self.names:
            v = self.value[name]
            ratio = 1.0 if v == 0 else _div(fleet[name] - v, v)
            best = math.nan if math.isnan(ratio) or math.isnan(best) else min(best, ratio)
        return best

    def grown(
        self, name: str, fleet: Mapping[str, float], avg_tp: float, tp: float, per_worker: float
    ) -> float:
        if avg_tp > 0:
            return self.value[name] + _div(tp * fleet[name], avg_tp)
        return self.value[name] + _div(fleet[name], per_worker)

    def add(self, fleet: Mapping[str, float], avg_tp: float, tp: float, per_worker: float) -> None:
        self.value = {name: self.grown(name, fleet, avg_tp, tp, per_worker) for name in self.value}

    def would_overshoot(
        self, fleet: Mapping[str, float], avg_tp: float, tp: float, per_worker: float
    ) -> bool:
        for name in self.names:
            after = self.grown(name, fleet, avg_tp, tp, per_worker)
            if after > fleet[name] or after > self.ceiling[name]:
                return True
        return False

    def above_range(self, name: str) -> bool:
        return name in self.value and self.value[name] > self.ceiling[name]


class _Run:
    """The in-memory view of one assignment run (KCL's ``InMemoryStorageView`` + decider)."""

    def __init__(
        self,
        leases: Sequence[LeaseState],
        active: Sequence[WorkerStats],
        cfg: AssignmentConfig,
        rand: random.Random,
    ) -> None:
        self.cfg, self.rand = cfg, rand
        known = [x.throughput_kbps for x in leases if x.throughput_kbps is not None]
        avg_lease_tp = sum(known) / len(known) if known else 0.0
        self.target_tp = avg_lease_tp * len(leases) / max(1, len(active))
        self.by_owner: dict[str | None, list[LeaseState]] = {}
        self.tp_of: dict[str, float] = {}
        self.owner_tp: dict[str | None, float] = {}
        self.new_owner: dict[str, str] = {}
        for lease in leases:
            tp = lease.throughput_kbps if lease.throughput_kbps is not None else avg_lease_tp
            self.tp_of[lease.lease.lease_key] = tp
            self.by_owner.setdefault(lease.actual_owner, []).append(lease)
            self._add_tp(lease.actual_owner, tp)
        self.pool = [self._worker(w) for w in active]
        self.fleet = _fleet_averages(self.pool)
        self.per_worker = max(len(leases) // max(len(active), 1), 1)
        self.queue = [w for w in self.pool if self.has_room(w.worker_id)]

    def _add_tp(self, owner: str | None, tp: float) -> None:
        self.owner_tp[owner] = self.owner_tp.get(owner, 0.0) + tp

    def _worker(self, stats: WorkerStats) -> _Worker:
        if stats.uses_default_metric:
            # KCL: a worker without explicit metrics is measured by its share of the throughput,
            # against a ceiling of 100 (= the fleet's target throughput).
            ratio = _div(self.owner_tp.get(stats.worker_id, 0.0), self.target_tp)
            value = ema([ratio * 100] * 2, self.cfg.ema_alpha)
            return _Worker(stats.worker_id, (THROUGHPUT,), {THROUGHPUT: value}, {THROUGHPUT: 100.0})
        names = tuple(stats.metric_stats)
        return _Worker(
            stats.worker_id,
            names,
            {name: ema(stats.metric_stats[name], self.cfg.ema_alpha) for name in names},
            {name: float(stats.operating_range[name][0]) for name in names},
        )

    def has_room(self, worker_id: str) -> bool:
        cap = self.cfg.max_leases_for_worker or math.inf
        return (
            self.owner_tp.get(worker_id, 0.0) <= self.cfg.max_throughput_per_host_kbps
            and len(self.by_owner.get(worker_id, [])) < cap
        )

    def poll(self) -> _Worker | None:
        """The assignable worker with the most room (NaN first, as Java orders it; ties by id)."""
        if not self.queue:
            return None
        best = min(self.queue, key=lambda w: (-_java_key(w.room(self.fleet)), w.worker_id))
        self.queue.remove(best)
        return best

    def assign(self, lease: LeaseState, worker: _Worker) -> None:
        # KCL compares with, and moves away from, the owner the lease was *read* with, also when
        # this run already planned it elsewhere; kept as is so both leaders plan alike.
        old = lease.actual_owner
        if old == worker.worker_id:
            self.queue.append(worker)  # nothing to write; the worker stays available
            return
        tp = self.tp_of[lease.lease.lease_key]
        worker.add(self.fleet, self.target_tp, tp, self.per_worker)
        key = lease.lease.lease_key
        self.by_owner[old] = [x for x in self.by_owner.get(old, []) if x.lease.lease_key != key]
        self.by_owner.setdefault(worker.worker_id, []).append(lease)
        self._add_tp(worker.worker_id, tp)
        self._add_tp(old, -tp)
        self.new_owner[key] = worker.worker_id
        if self.has_room(worker.worker_id):
            self.queue.append(worker)

    def assign_expired(self, leases: Sequence[LeaseState]) -> None:
        """Unassigned first (``last_change`` 0), then the longest expired, until no worker is left."""
        for lease in sorted((x for x in leases if x.expired_or_unassigned), key=lambda x: x.last_change):
            worker = self.poll()
            if worker is None:
                return
            self.assign(lease, worker)

    def balance(self) -> None:
        take: dict[str, float] = {}
        most = -1.0
        for name, average in self.fleet.items():
            having = [w for w in self.pool if name in w.names]
            amounts: dict[str, float] = {}
            total = 0.0
            for worker in _donors(having, name, average, self.cfg):
                value = worker.value[name]
                share = _div(value - average, value) * (self.cfg.dampening_percentage / 100)
                amounts[worker.worker_id] = self.owner_tp.get(worker.worker_id, 0.0) * share
                total += amounts[worker.worker_id]
            if most < total:
                most, take = total, amounts
        for worker_id, amount in sorted(take.items(), key=lambda kv: (-_java_key(kv[1]), kv[0])):
            for lease in self._leases_to_take(worker_id, amount):
                receiver = self.poll()
                tp = self.tp_of[lease.lease.lease_key]
                if receiver is not None and receiver.would_overshoot(
                    self.fleet, self.target_tp, tp, self.per_worker
                ):
                    break  # KCL: no receiver below the average left this run (the polled one is dropped)
                if receiver is not None:
                    self.assign(lease, receiver)

    def _leases_to_take(self, worker_id: str, amount: float) -> list[LeaseState]:
        held = sorted(self.by_owner.get(worker_id, []), key=lambda x: x.lease.lease_key)
        if not held:
            return []
        if self.owner_tp.get(worker_id, 0.0) == 0:
            return held[:1]  # no throughput known: one lease per run
        self.rand.shuffle(held)
        out: list[LeaseState] = []
        remaining = amount
        for lease in held:
            tp = self.tp_of[lease.lease.lease_key]
            if remaining - tp <= 0:
                continue
            remaining -= tp
            out.append(lease)
        if self.cfg.allow_throughput_overshoot and not out:
            out.append(min(held, key=lambda x: self.tp_of[x.lease.lease_key]))
        return out


def plan_assignments(
    leases: Sequence[LeaseState],
    workers: Sequence[WorkerStats],
    now_s: float,
    *,
    rebalance: bool,
    config: AssignmentConfig | None = None,
    rng: random.Random | None = None,
) -> list[Assignment]:
    """One ``LeaseAssignmentManager`` run: assign expired/unassigned leases, then (when
    ``rebalance``) move load off workers above the fleet average. Returns the writes to make."""
    cfg = config or AssignmentConfig()
    active = sorted(active_workers(workers, now_s, cfg), key=lambda w: w.worker_id)
    run = _Run(leases, active, cfg, rng or random.Random())
    run.assign_expired(leases)
    if rebalance:
        run.balance()
    out: list[Assignment] = []
    for lease in leases:
        to = run.new_owner.get(lease.lease.lease_key)
        if to is None or _blocked_on_handoff(lease):
            continue
        graceful = (
            not lease.expired_or_unassigned and not lease.at_shard_end and lease.checkpoint_owner is None
        )
        out.append(Assignment(lease, to, graceful))
    return out


def _blocked_on_handoff(lease: LeaseState) -> bool:
    """A handoff in progress is left to finish unless the lease expired, ended, or timed out."""
    return not (
        lease.expired_or_unassigned
        or lease.at_shard_end
        or lease.checkpoint_owner is None
        or lease.handoff_timed_out
    )


def _fleet_averages(pool: Sequence[_Worker]) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for worker in pool:
        for name in worker.names:
            sums.setdefault(name, []).append(worker.value[name])
    return {name: sum(values) / len(values) for name, values in sums.items()}


def _donors(having: Sequence[_Worker], name: str, average: float, cfg: AssignmentConfig) -> list[_Worker]:
    """Workers to take load from for one metric; none unless someone is outside ±threshold."""
    upper = average * (1 + cfg.rebalance_threshold_percentage / 100)
    lower = average * (1 - cfg.rebalance_threshold_percentage / 100)
    trigger = False
    above: list[_Worker] = []
    loaded: _Worker | None = None
    for worker in having:
        value = worker.value[name]
        hot = worker.above_range(name)
        if value > upper or value < lower or hot:
            trigger = True
        if value >= upper or hot:
            above.append(worker)
        if loaded is None or loaded.value[name] < value:
            loaded = worker
    if not above and loaded is not None:
        above.append(loaded)
    return above if trigger else []


def choose_successor(
    mine: Sequence[str],
    workers: Sequence[WorkerStats],
    owned: Mapping[str, int],
    me: str,
    now_s: float,
    config: AssignmentConfig | None = None,
    *,
    proven: Collection[str] = (),
) -> dict[str, str]:
    """Our shutdown handoff (not KCL's: KCL lets a stopping worker's leases expire): give each of
    ``mine`` to the active worker holding the fewest leases, one at a time, so the leader finds a
    balanced table and the new owner starts on its next lease discovery instead of after
    failover plus an assignment run. Empty when no other worker is active.

    KCL counts a worker active for two reporter periods after its last report, so a worker that
    stopped a minute ago still looks alive. Workers in ``proven`` (whose lease counters were seen
    moving) come first; the others must have reported within 1.5 periods (+ 2 s)."""
    cfg = config or AssignmentConfig()
    fresh = now_s - (1.5 * cfg.reporter_interval_s + 2)  # lut is whole seconds
    others = [
        w.worker_id
        for w in active_workers(workers, now_s, cfg)
        if w.worker_id != me and (w.worker_id in proven or (w.last_update or 0) >= fresh)
    ]
    if not others:
        return {}
    load = {w: owned.get(w, 0) for w in others}
    out: dict[str, str] = {}
    for key in sorted(mine):
        to = min(others, key=lambda w: (w not in proven, load[w], w))
        out[key] = to
        load[to] += 1
    return out


@dataclass
class LeaderTracker:
    """What the leader remembers between runs (KCL's ``prevRunLeasesState``): when it saw each
    counter change, and since when each handoff has been pending. Forgotten on losing leadership."""

    failover_s: float
    handoff_timeout_s: float = 30.0
    _seen: dict[str, tuple[int, float]] = field(default_factory=dict)
    _handoffs: dict[str, tuple[str | None, str, float]] = field(default_factory=dict)

    def observe(
        self, leases: Sequence[tuple[Lease, float | None, str | None]], now: float
    ) -> list[LeaseState]:
        """``(lease, throughputKBps, checkpointOwner)`` as scanned at ``now`` (monotonic) → states."""
        seen: dict[str, tuple[int, float]] = {}
        handoffs: dict[str, tuple[str | None, str, float]] = {}
        out: list[LeaseState] = []
        for lease, tp, cp_owner in leases:
            key = lease.lease_key
            previous = self._seen.get(key)
            if previous is None:
                changed = 0.0 if lease.lease_owner is None else now
            else:
                changed = now if lease.lease_counter > previous[0] else previous[1]
            seen[key] = (lease.lease_counter, changed)
            timed_out = False
            if cp_owner is not None:
                started = self._handoffs.get(key)
                since = started[2] if started and started[:2] == (lease.lease_owner, cp_owner) else now
                handoffs[key] = (lease.lease_owner, cp_owner, since)
                timed_out = now - since >= self.handoff_timeout_s + self.failover_s
            expired = changed == 0.0 or now - changed > self.failover_s
            out.append(LeaseState(lease, expired, changed, tp, cp_owner, timed_out))
        self._seen, self._handoffs = seen, handoffs
        return out

    def handoff_started(self, lease: Lease, new_owner: str, now: float) -> None:
        if lease.lease_owner is not None:
            self._handoffs[lease.lease_key] = (new_owner, lease.lease_owner, now)

    def forget(self) -> None:
        self._seen.clear()
        self._handoffs.clear()
