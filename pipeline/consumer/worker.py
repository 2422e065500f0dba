"""The worker: one process, many shards. A coordinator thread renews, takes, syncs and cleans
up leases; one :class:`ShardConsumer` thread per held lease feeds its processor.

Shutdown (SIGTERM/SIGINT or an EC2 spot notice): stop fetching, let every processor flush and
checkpoint (``shutdown_requested``), then *release* each lease (owner removed, counter bumped)
so another worker takes it on its next scan (≈1 s) rather than after the failover time.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from pipeline.consumer.handle import LeaseHandle
from pipeline.consumer.kcl3 import Kcl3Config, Kcl3Participant
from pipeline.consumer.kcl3_state import Protocol
from pipeline.consumer.kpl import AggregateLimits
from pipeline.consumer.lease_store import LeaseStore
from pipeline.consumer.leases import FAILING, ExpiryTracker, Lease, deletable_parent, plan_take
from pipeline.consumer.processor import Record, RecordProcessor
from pipeline.consumer.resilient import DeadLetterSink, ResilientProcessor, refuse_dead_letter
from pipeline.consumer.shard_consumer import ConsumerConfig, ShardConsumer
from pipeline.consumer.shard_sync import sync_shards
from pipeline.core.aws_errors import is_transient_aws
from pipeline.core.errors import ShardhouseError
from pipeline.core.retry import Backoff

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient

log = logging.getLogger(__name__)
EPSILON_S = 0.025


@dataclass(frozen=True)
class WorkerConfig:
    application: str
    stream: str
    worker_id: str
    failover_s: float = 10.0
    max_leases_for_worker: int = 0
    max_leases_to_steal: int = 1
    initial_position: str = "TRIM_HORIZON"
    max_records: int = 10_000
    idle_between_reads_s: float = 1.5
    parent_poll_s: float = 10.0
    aggregate_limits: AggregateLimits = field(default_factory=AggregateLimits)
    max_delivery_records: int = 10_000
    # A light scan for released (ownerless) leases between full taker runs: the handoff gap.
    release_scan_s: float = 1.0
    shard_sync_s: float = 60.0
    status_log_s: float = 30.0  # a "progress" log line: leases held, records/s, max lag
    kcl3: Kcl3Config = field(default_factory=Kcl3Config)  # the 3.x protocol, when the table is in 3.x mode

    @property
    def renew_s(self) -> float:
        return self.failover_s / 3 - EPSILON_S

    @property
    def take_s(self) -> float:
        return 2 * (self.failover_s + EPSILON_S)


@dataclass
class Schedule:
    """When each coordinator step of one worker is next due (its own clock), and the records
    delivered as of the last progress line."""

    renew: float
    take: float
    release_scan: float
    sync: float
    status: float
    delivered: int = 0

    @classmethod
    def starting(cls, now: float, config: WorkerConfig) -> Schedule:
        return cls(
            renew=now,
            take=now,
            release_scan=now + config.release_scan_s,
            sync=now + config.shard_sync_s,
            status=now + config.status_log_s,
        )


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.records = Counter(
            "shardhouse_consumer_records",
            "Records delivered to processors",
            ["app", "shard_id"],
            registry=registry,
        )
        self.behind = Gauge(
            "shardhouse_consumer_millis_behind_latest", "millisBehindLatest of the last GetRecords",
            ["app", "shard_id"], registry=registry,
        )  # fmt: skip
        self.leases = Gauge(
            "shardhouse_consumer_leases_held", "Leases held by this worker", ["app"], registry=registry
        )
        self.failing = Gauge(
            "shardhouse_consumer_shard_failing",
            "1 while the shard's processor keeps failing (its records are kept and redelivered)",
            ["app", "shard_id", "reason"], registry=registry,
        )  # fmt: skip
        self.dead_lettered = Counter(
            "shardhouse_consumer_dead_letters",
            "Records the runtime dead-lettered (processor_error, aggregate limits)",
            ["app", "shard_id", "reason"], registry=registry,
        )  # fmt: skip


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        *,
        store: LeaseStore,
        kinesis: KinesisClient,
        processor_factory: Callable[[], RecordProcessor],
        dead_letter: DeadLetterSink = refuse_dead_letter,
        metrics: WorkerMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.kinesis = kinesis
        self.processor_factory = processor_factory
        self.dead_letter = dead_letter
        self.failing: dict[str, str] = {}  # shard -> why its processor keeps failing
        self.metrics = metrics
        self.clock = clock
        self.tracker = ExpiryTracker(config.failover_s)
        self.handles: dict[str, LeaseHandle] = {}
        self.consumers: dict[str, ShardConsumer] = {}
        self.stop_event = threading.Event()
        self.rng = random.Random()
        self._delivered_by_finished = 0  # records of consumers already reaped (for progress)
        self.kcl3 = Kcl3Participant(self, config.kcl3)
        #: Waits between tries of a lease table that does not answer at start (without end).
        self.outage_backoff = Backoff(base=1.0, cap=30.0, max_attempts=6, rng=self.rng)

    # -- public ---------------------------------------------------------------------------
    def request_shutdown(self, reason: str = "requested") -> None:
        if not self.stop_event.is_set():
            log.info("shutdown requested", extra={"reason": reason, "worker_id": self.config.worker_id})
        self.stop_event.set()

    def run(self) -> None:
        if not self._ensure_lease_table():
            return  # stopped before the lease table answered: nothing taken, nothing to hand back
        self._sync()
        schedule = Schedule.starting(self.clock(), self.config)
        while not self.stop_event.is_set():
            wake = self.tick(schedule)
            self.stop_event.wait(max(0.05, min(0.5, wake - self.clock())))
        self._shutdown()

    def _ensure_lease_table(self) -> bool:
        """Create or find the lease table, waiting out an outage of DynamoDB: a worker started
        during one serves once it ends, as a running worker does. False if stopped first. A
        terminal error (access denied, a bad table name) ends the worker with its reason."""
        pauses = self.outage_backoff.endless()
        while True:
            try:
                self.store.ensure_table()
                return True
            except Exception as exc:
                if not is_transient_aws(exc):
                    raise
                pause = next(pauses)
                log.warning(
                    "lease table does not answer; waiting before taking any lease",
                    extra={"reason": f"{type(exc).__name__}: {exc}", "retry_in_s": round(pause, 2),
                           "app": self.config.application},
                )  # fmt: skip
                if self.stop_event.wait(pause):
                    return False

    def tick(self, schedule: Schedule) -> float:
        """One coordinator pass: every step that is due on this worker's clock; returns when the
        next one is due. ``run`` loops it; benchmarks/bench_fleet.py drives it on a simulated clock."""
        now = self.clock()
        self.kcl3.tick(now)  # the table's mode; in 3.x: metrics, discovery, leadership
        if now >= schedule.renew:
            self._step("renew", self._renew)
            schedule.renew = now + self.config.renew_s
        if self.kcl3.protocol is Protocol.KCL3:
            pass  # a 3.x worker never takes: the leader assigns (KCL-SPEC §2.6)
        elif now >= schedule.take:
            self._step("take", lambda: self._take(self.store.list_leases()))
            schedule.take = now + self.config.take_s
        elif now >= schedule.release_scan:
            self._step("scan for released leases", self._scan_for_released)
            schedule.release_scan = now + self.config.release_scan_s
        if now >= schedule.sync:
            self._sync()
            schedule.sync = now + self.config.shard_sync_s
        self._step("reap", self._reap)
        if now >= schedule.status:
            period = self.config.status_log_s + now - schedule.status
            schedule.delivered = self._report(schedule.delivered, period)
            schedule.status = now + self.config.status_log_s
        due = (schedule.renew, schedule.take, schedule.release_scan, schedule.sync, schedule.status)
        return min(*due, self.kcl3.wake_at())

    # -- coordinator steps --------------------------------------------------------------------
    def _step(self, what: str, step: Callable[[], None]) -> None:
        """Run one coordinator step; a failing table or stream is retried on the next tick.

        Renewals that keep failing end in locally expired leases, which the consumers treat as
        lost; so an outage degrades to "stop and resume after it", never to a stale checkpoint.
        """
        try:
            step()
        except (ShardhouseError, BotoCoreError, ClientError):
            log.exception("coordinator step failed; retrying", extra={"step": what})

    def _report(self, delivered_before: int, period_s: float) -> int:
        """Log one progress line; returns the running total of records delivered."""
        consumers = list(self.consumers.values())
        delivered = self._delivered_by_finished + sum(c.stats.records for c in consumers)
        log.info(
            "progress",
            extra={
                "worker_id": self.config.worker_id,
                "leases": sorted(self.handles),
                "records_per_s": round((delivered - delivered_before) / max(period_s, 1e-3), 1),
                "records_total": delivered,
                "max_millis_behind_latest": max((c.stats.millis_behind_latest for c in consumers), default=0),
            },
        )
        return delivered

    def _scan_for_released(self) -> None:
        """Between taker runs: take released (ownerless) leases at once — the handoff path."""
        leases = self.store.list_leases()
        if any(lease.lease_owner is None and not lease.at_shard_end for lease in leases):
            self._take(leases)
        else:
            self.tracker.observe(leases, self.clock())

    def _sync(self) -> None:
        try:
            created = sync_shards(self.kinesis, self.store, self.config.stream, self.config.initial_position)
            if created:
                log.info("created leases", extra={"count": created, "app": self.config.application})
        except (ShardhouseError, BotoCoreError, ClientError):
            log.exception("shard sync failed; will retry")

    def _renew(self) -> None:
        if self.kcl3.protocol is Protocol.KCL3:
            self.kcl3.renew()
            return
        now = self.clock()
        for key, handle in list(self.handles.items()):
            if handle.lost.is_set():
                continue
            with handle.lock:
                try:
                    ok = self.store.renew(handle.lease, self.config.worker_id)
                except (ShardhouseError, BotoCoreError, ClientError):
                    ok = None  # could not reach the table: keep trying until failover passes
                if ok:
                    handle.lease = replace(handle.lease, lease_counter=handle.lease.lease_counter + 1)
                    handle.renewed_at = now
                elif ok is False or now - handle.renewed_at > self.config.failover_s:
                    log.warning("lease lost", extra={"shard_id": key, "worker_id": self.config.worker_id})
                    handle.mark_lost()

    def _take(self, leases: list[Lease]) -> None:
        now = self.clock()
        self.tracker.observe(leases, now)
        held = {k for k, h in self.handles.items() if not h.lost.is_set()}
        plan = plan_take(
            leases,
            self.config.worker_id,
            self.tracker,
            now,
            max_leases_for_worker=self.config.max_leases_for_worker,
            max_leases_to_steal=self.config.max_leases_to_steal,
            rng=self.rng,
            held=held,
        )
        for lease in (*plan.take, *plan.steal):
            if lease.lease_key in held:
                continue
            started = self.clock()
            if self.store.take(lease, self.config.worker_id):
                taken = replace(  # what the take wrote, its removal of FAILING included
                    lease,
                    lease_counter=lease.lease_counter + 1,
                    lease_owner=self.config.worker_id,
                    extra={k: v for k, v in lease.extra.items() if k != FAILING},
                )
                self._start(taken, started)
        by_key = {lease.lease_key: lease for lease in leases}
        for lease in leases:
            if deletable_parent(lease, by_key):
                self.store.delete(lease.lease_key)

    def _on_failure(self, shard_id: str, reason: str | None, *, published: bool = False) -> None:
        """``published``: the lease carries a failure this worker did not record (clear it)."""
        previous = self.failing.pop(shard_id, None)
        if reason is not None:
            self.failing[shard_id] = reason
        if published or (reason is None) != (previous is None) or (reason and reason != previous):
            try:  # on the lease, so `shardhouse status` shows it for every worker of the fleet
                self.store.set_failing(shard_id, self.config.worker_id, reason)
            except Exception:
                log.warning("could not publish the shard's failure", extra={"shard_id": shard_id},
                            exc_info=True)  # fmt: skip
        if self.metrics is not None:
            app = self.config.application
            if previous is not None:
                self.metrics.failing.remove(app, shard_id, previous[:120])
            if reason is not None:
                self.metrics.failing.labels(app, shard_id, reason[:120]).set(1)

    def _dead_letter(self, shard_id: str, record: Record, reason: str, detail: str) -> None:
        self.dead_letter(shard_id, record, reason, detail)
        if self.metrics is not None:
            self.metrics.dead_lettered.labels(self.config.application, shard_id, reason).inc()

    def _start(self, lease: Lease, taken_at: float) -> None:
        log.info("lease acquired", extra={"shard_id": lease.lease_key, "worker_id": self.config.worker_id})
        if FAILING in lease.extra:  # a writer that does not know it (a Java leader) left it there
            self._on_failure(lease.lease_key, None, published=True)
        handle = LeaseHandle(lease, renewed_at=taken_at, failover_s=self.config.failover_s, clock=self.clock)
        self.handles[lease.lease_key] = handle
        shutdown = threading.Event()
        processor = ResilientProcessor(
            self.processor_factory,
            self._dead_letter,
            stopping=lambda: shutdown.is_set() or not handle.usable(),
            wait=shutdown.wait,
            on_failure=self._on_failure,
        )
        consumer = ShardConsumer(
            kinesis=self.kinesis,
            store=self.store,
            handle=handle,
            processor=processor,
            shutdown_requested=shutdown,
            config=ConsumerConfig(
                stream=self.config.stream,
                max_records=self.config.max_records,
                idle_between_reads_s=self.config.idle_between_reads_s,
                parent_poll_s=self.config.parent_poll_s,
                aggregate_limits=self.config.aggregate_limits,
                max_delivery_records=self.config.max_delivery_records,
            ),
            on_records=self._on_records,
            refuse=lambda record, reason, detail: processor.refuse(record, reason, detail),
        )
        self.consumers[lease.lease_key] = consumer
        consumer.start()
        self._gauge()

    def _on_records(self, shard_id: str, count: int, lag: int) -> None:
        if self.metrics is not None:
            self.metrics.records.labels(self.config.application, shard_id).inc(count)
            self.metrics.behind.labels(self.config.application, shard_id).set(lag)

    def _reap(self) -> None:
        """Forget consumers that ended (lease lost, shard end); a lost lease stops at once."""
        for key, consumer in list(self.consumers.items()):
            if consumer.finished.is_set():
                del self.consumers[key]
                self._delivered_by_finished += consumer.stats.records
                handle = self.handles.pop(key, None)
                if handle is not None:
                    self.kcl3.finished(key, handle)
                if handle is not None and consumer.reached_shard_end and not handle.lost.is_set():
                    with handle.lock:
                        self.store.release(handle.lease)
                self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.leases.labels(self.config.application).set(len(self.handles))

    def _shutdown(self) -> None:
        """Flush and checkpoint everywhere, then hand every lease back at once."""
        self.kcl3.begin_shutdown()
        for consumer in self.consumers.values():
            consumer.shutdown_requested.set()
        deadline = self.clock() + max(30.0, self.config.failover_s)
        for consumer in self.consumers.values():
            # Keep renewing while processors flush, so no one steals mid-flush.
            while not consumer.finished.wait(min(0.5, self.config.renew_s)):
                self._renew()
                if self.clock() > deadline:
                    log.error("processor did not finish shutting down", extra={"shard_id": consumer.shard_id})
                    break
        if self.kcl3.protocol is Protocol.KCL3:
            self.kcl3.hand_off_all(self.handles)  # straight to a successor, not back to the leader
        for key, handle in self.handles.items():
            if handle.lost.is_set() or self.kcl3.protocol is Protocol.KCL3:
                continue
            with handle.lock:
                try:
                    self.store.release(handle.lease)
                except ShardhouseError:
                    log.warning("could not release lease; it expires after failover", extra={"shard_id": key})
        self.handles.clear()
        self.consumers.clear()
        self._gauge()
        log.info("worker stopped", extra={"worker_id": self.config.worker_id})
