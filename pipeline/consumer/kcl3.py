"""The native worker's KCL 3.x participant: follows the table's mode, publishes WorkerMetricStats,
discovers assigned leases through the GSI, honours ``checkpointOwner`` handoffs, and — holding the
``Leader`` lock — assigns leases by :func:`~pipeline.consumer.kcl3_assignment.plan_assignments`.

:class:`~pipeline.consumer.worker.Worker` calls it from its coordinator loop; in a 2.x table it
only watches the mode (and publishes metrics if the 3.x side tables exist, so a KCL 3.x leader
running an upgrade sees native workers as ready). On shutdown in 3.x mode it hands each lease
straight to the least-loaded live worker (KCL lets a stopping worker's leases expire instead).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.consumer.kcl3_assignment import (
    AssignmentConfig,
    LeaderTracker,
    WorkerStats,
    choose_successor,
    plan_assignments,
)
from pipeline.consumer.kcl3_state import (
    LOCK_DURATION_S,
    LOCK_HEARTBEAT_S,
    LockAction,
    LockWatcher,
    Mode,
    Protocol,
    ThroughputMeter,
    mode_for,
)
from pipeline.consumer.kcl3_tables import (
    CoordinatorState,
    Kcl3Leases,
    WorkerMetricsTable,
    checkpoint_owner,
    throughput_kbps,
)
from pipeline.consumer.leases import Lease, deletable_parent
from pipeline.core.errors import ShardhouseError

if TYPE_CHECKING:
    from pipeline.consumer.handle import LeaseHandle
    from pipeline.consumer.worker import Worker

log = logging.getLogger(__name__)
_STEP_ERRORS = (ShardhouseError, BotoCoreError, ClientError)


@dataclass(frozen=True)
class Kcl3Config:
    """Timers of the 3.x protocol; defaults are KCL 3.1.3's except the discovery period."""

    enabled: bool = True  # False: never leave the 2.x protocol, whatever the table says
    mode_check_s: float = 30.0
    # KCL discovers every failover - epsilon; we query the GSI every second (one cheap Query), which
    # is what makes a handoff *to* a native worker take about a second.
    discover_s: float = 1.0
    reporter_s: float = 30.0  # workerMetricsReporterFreqInMillis; the fleet must agree on it
    handoff_timeout_s: float = 30.0  # gracefulLeaseHandoffTimeoutMillis
    lock_duration_s: float = LOCK_DURATION_S
    lock_heartbeat_s: float = LOCK_HEARTBEAT_S
    assignment: AssignmentConfig = field(default_factory=AssignmentConfig)


@dataclass
class _Handoff:
    new_owner: str
    since: float


class Kcl3Participant:
    def __init__(self, worker: Worker, config: Kcl3Config, *, wall: Callable[[], float] = time.time) -> None:
        self.worker = worker
        self.config = replace(
            config, assignment=replace(config.assignment, reporter_interval_s=config.reporter_s)
        )
        self.me = worker.config.worker_id
        db = worker.store.db
        self.state = CoordinatorState(db, worker.config.application)
        self.metrics = WorkerMetricsTable(db, worker.config.application)
        self.leases = Kcl3Leases(worker.store)
        self.wall = wall
        self.mode = Mode(None, Protocol.KCL2, False)
        self.meter = ThroughputMeter()
        self.handoffs: dict[str, _Handoff] = {}
        self.watcher = LockWatcher(self.me)
        self.tracker = LeaderTracker(worker.config.failover_s, config.handoff_timeout_s)
        self.rvn: str | None = None  # our Leader lock's recordVersionNumber while we lead
        self.rng = random.Random()
        self._runs = 0
        self._side_tables = False
        now = worker.clock()
        self._next = {"mode": now, "discover": now, "publish": now, "lead": now, "heartbeat": now}
        self.stopping = False
        self._counters_at_stop: dict[str, tuple[str | None, int]] = {}

    @property
    def protocol(self) -> Protocol:
        return self.mode.protocol

    @property
    def is_leader(self) -> bool:
        return self.rvn is not None

    # -- the loop -------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """One coordinator pass: each duty runs when its period is due; failures retry next pass."""
        for duty, period, run in (
            ("mode", self.config.mode_check_s, self.refresh_mode),
            ("publish", self.config.reporter_s, self.publish),
            ("discover", self.config.discover_s, self.discover),
            ("lead", self.worker.config.take_s, self.lead),
            ("heartbeat", self.config.lock_heartbeat_s, self.heartbeat),
        ):
            if now < self._next[duty]:
                continue
            self._next[duty] = now + period
            try:
                run()
            except _STEP_ERRORS:
                log.exception("kcl3 step failed; retrying", extra={"step": duty, "worker_id": self.me})

    def wake_at(self) -> float:
        return min(self._next.values())

    def refresh_mode(self) -> None:
        if not self.config.enabled:
            return
        if not self._side_tables:
            self._side_tables = self.state.exists()
        version = self.state.client_version() if self._side_tables else None
        metrics = self._side_tables and self.metrics.exists()
        mode = mode_for(version, metrics_table=metrics)
        if mode != self.mode:
            log.info(
                "lease table mode",
                extra={"worker_id": self.me, "protocol": mode.protocol.value,
                       "client_version": version.value if version else None},
            )  # fmt: skip
            if mode.protocol is not Protocol.KCL3:
                self._step_down()
            self.mode = mode
            self._next["publish"] = self._next["discover"] = self.worker.clock()

    def publish(self) -> None:
        if self.mode.publish_metrics and not self.stopping:
            self.metrics.publish(WorkerStats(self.me, int(self.wall())))

    # -- follower -------------------------------------------------------------------------
    def discover(self) -> None:
        """Start consumers for leases the leader assigned to us (GSI, then a consistent read)."""
        if self.protocol is not Protocol.KCL3 or self.stopping:
            return
        keys = self.leases.keys_for(self.me)
        if keys is None:  # no GSI (KCL creates it on entering 3.x): fall back to a scan
            keys = [x.lease_key for x in self.leases.list() if x.lease_owner == self.me]
        worker = self.worker
        for key in keys:
            if key in worker.handles:
                continue
            started = worker.clock()
            lease = self.leases.get(key)
            if lease is None or lease.lease_owner != self.me or checkpoint_owner(lease) is not None:
                continue  # moved on, or the previous owner is still checkpointing
            worker._start(lease, started)

    def renew(self) -> None:
        """3.x renewal of every held lease, with throughput; a lease the leader is handing
        away is renewed without the checkpointOwner condition while its processor checkpoints."""
        worker = self.worker
        now = worker.clock()
        for key, handle in list(worker.handles.items()):
            if handle.lost.is_set():
                continue
            consumer = worker.consumers.get(key)
            kbps = self.meter.sample(key, consumer.stats.bytes, now) if consumer is not None else None
            with handle.lock:
                try:
                    got = self.leases.renew(handle.lease, self.me, kbps, handing_off=key in self.handoffs)
                except _STEP_ERRORS:
                    got = None
                if isinstance(got, Lease):
                    self._begin_handoff(key, handle, got, now)
                    got = self.leases.renew(handle.lease, self.me, kbps, handing_off=True)
                if got is True:
                    handle.lease = replace(handle.lease, lease_counter=handle.lease.lease_counter + 1)
                    handle.renewed_at = now
                elif got is False or now - handle.renewed_at > worker.config.failover_s:
                    log.warning("lease lost", extra={"shard_id": key, "worker_id": self.me})
                    handle.mark_lost()
                    self.handoffs.pop(key, None)
            handoff = self.handoffs.get(key)
            slow = handoff is not None and now - handoff.since > self.config.handoff_timeout_s
            if slow and consumer is not None and not consumer.finished.is_set():
                log.warning("processor slow to hand over; transferring", extra={"shard_id": key})
                self._complete_handoff(key, handle)

    def _begin_handoff(self, key: str, handle: LeaseHandle, current: Lease, now: float) -> None:
        new_owner = current.lease_owner or ""
        log.info("leader hands lease over", extra={"shard_id": key, "worker_id": self.me, "to": new_owner})
        handle.lease = replace(handle.lease, lease_owner=current.lease_owner, extra=current.extra)
        self.handoffs[key] = _Handoff(new_owner, now)
        consumer = self.worker.consumers.get(key)
        if consumer is not None:
            consumer.shutdown_requested.set()  # shutdown_requested: flush and checkpoint, then we transfer

    def _complete_handoff(self, key: str, handle: LeaseHandle) -> None:
        handoff = self.handoffs.pop(key, None)
        if handoff is None or handle.lost.is_set():
            return
        with handle.lock:
            ok = self.leases.assign(handle.lease, handoff.new_owner, cp_owner=self.me)
            handle.mark_lost()  # ours no more, whichever way the write went
        log.info("lease handed over", extra={"shard_id": key, "to": handoff.new_owner, "ok": ok})

    def finished(self, key: str, handle: LeaseHandle) -> None:
        """A consumer ended: complete a pending handoff (its processor has checkpointed)."""
        self.meter.forget(key)
        if key in self.handoffs:
            self._complete_handoff(key, handle)

    # -- leader ---------------------------------------------------------------------------
    def lead(self) -> None:
        if self.protocol is not Protocol.KCL3 or self.stopping:
            return
        now = self.worker.clock()
        item = self.state.leader()
        action = self.watcher.decide(item, self.rvn, now)
        if action is LockAction.WAIT:
            self._step_down()
            return
        if action is not LockAction.HOLD:
            self.rvn = self.state.acquire(action, self.me, item, self.config.lock_duration_s)
            if self.rvn is None:
                self._step_down()
                return
            log.info("elected leader", extra={"worker_id": self.me, "how": action.value})
            self.tracker.forget()
            self._runs = 0
        self._assign(now)

    def heartbeat(self) -> None:
        if self.rvn is not None:
            self.rvn = self.state.heartbeat(self.me, self.rvn, self.config.lock_duration_s)
            if self.rvn is None:
                log.warning("leader lock lost", extra={"worker_id": self.me})
                self.tracker.forget()

    def _step_down(self) -> None:
        if self.rvn is not None:
            self.tracker.forget()
        self.rvn = None

    def _assign(self, now: float) -> None:
        """One LeaseAssignmentManager run."""
        leases = self.leases.list()
        states = self.tracker.observe([(x, throughput_kbps(x), checkpoint_owner(x)) for x in leases], now)
        rebalance = self._runs % max(1, self.config.assignment.variance_balancing_frequency) == 0
        self._runs += 1
        plan = plan_assignments(
            states,
            self.metrics.all(),
            self.wall(),
            rebalance=rebalance,
            config=self.config.assignment,
            rng=self.rng,
        )
        for step in plan:
            lease = step.lease.lease
            if step.graceful:
                if self.leases.initiate_handoff(lease, step.new_owner):
                    self.tracker.handoff_started(lease, step.new_owner, now)
            else:
                self.leases.assign(lease, step.new_owner, cp_owner=step.lease.checkpoint_owner)
        if plan:
            log.info(
                "leases assigned",
                extra={"worker_id": self.me, "moves": {s.lease.lease.lease_key: s.new_owner for s in plan}},
            )
        by_key = {x.lease_key: x for x in leases}
        for lease in leases:
            if deletable_parent(lease, by_key):
                self.worker.store.delete(lease.lease_key)

    # -- shutdown -------------------------------------------------------------------------
    def begin_shutdown(self) -> None:
        """Stop being a candidate at once: no new assignments land on a worker that is leaving."""
        self.stopping = True
        if self.mode.publish_metrics:
            try:
                self.metrics.delete(self.me)
            except _STEP_ERRORS:
                log.warning("could not delete worker metrics; they go stale", extra={"worker_id": self.me})
        if self.protocol is Protocol.KCL3:
            try:  # counters now vs at hand-off time: whose leases move is alive (choose_successor)
                self._counters_at_stop = {
                    x.lease_key: (x.lease_owner, x.lease_counter) for x in self.leases.list()
                }
            except _STEP_ERRORS:
                self._counters_at_stop = {}

    def hand_off_all(self, handles: dict[str, LeaseHandle]) -> None:
        """After every processor checkpointed: each lease to the least-loaded live worker, or
        back to the leader (no owner) when there is none; then give up leadership."""
        live = {k: h for k, h in handles.items() if not h.lost.is_set()}
        try:
            workers, leases = self.metrics.all(), self.leases.list()
        except _STEP_ERRORS:
            workers, leases = [], []
        owned = Counter(x.lease_owner for x in leases if x.lease_owner)
        before = self._counters_at_stop
        proven = {
            x.lease_owner
            for x in leases
            if x.lease_owner
            and x.lease_key in before
            and before[x.lease_key] != (x.lease_owner, x.lease_counter)
            and before[x.lease_key][0] == x.lease_owner
        }
        successors = choose_successor(
            sorted(k for k, h in live.items() if not h.lease.at_shard_end and k not in self.handoffs),
            workers, dict(owned), self.me, self.wall(), self.config.assignment, proven=proven,
        )  # fmt: skip
        for key, handle in live.items():
            try:
                if key in self.handoffs:
                    self._complete_handoff(key, handle)
                    continue
                with handle.lock:
                    to = successors.get(key)
                    lease = handle.lease
                    ok = self.leases.assign(lease, to) if to else self.leases.evict(lease, self.me)
                log.info("lease handed off at shutdown", extra={"shard_id": key, "to": to, "ok": ok})
            except _STEP_ERRORS:
                log.warning("could not hand lease off; it expires after failover", extra={"shard_id": key})
        if self.rvn is not None:
            try:
                self.state.release(self.me, self.rvn)
            except _STEP_ERRORS:
                log.warning("could not release the leader lock; it expires", extra={"worker_id": self.me})
            self.rvn = None
