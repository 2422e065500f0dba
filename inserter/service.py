"""The inserter loop: long-poll the queue, load the batches of each receive together (one
transaction, one merge per table), delete their messages only after the load committed.

Per message, exactly one of:

- **loaded** (or everything already in the ledger): delete the message.
- **malformed** (:class:`~pipeline.core.manifest.ManifestError`): send it to the dead-letter queue
  with the reason as a message attribute, then delete it — retrying cannot help.
- **failed** (anything else, after in-process retries of transient errors): log the reason,
  give the message back with a delay growing with its receive count; after the queue's
  ``maxReceiveCount`` receives, SQS's redrive policy moves it to the dead-letter queue.

An outage is not the message's fault, and must not walk valid batches to the dead-letter queue:
after a load fails with a transient error the inserter asks its dependencies (the warehouse, and
the ``probes`` it was given: S3) whether they answer. If one does not, the messages in hand go
back at once and nothing more is received — no receive is spent — until every dependency
answers again (probed with capped, jittered backoff, each wait logged). An outage of any length
costs each message in flight one receive.

Every received message is kept invisible by one heartbeat thread until it is deleted or given
back. On SIGTERM (:meth:`Inserter.request_stop`) the current load finishes, messages received
but not started are given back at once, and no more are received. Several inserter processes
may run at once: the ledger and the per-table locks make that safe.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from inserter.errors import WarehouseRefused, classify_pg
from inserter.loader import Loader, LoadResult
from inserter.plan import LoadPlan, combine_plans, plan_load
from inserter.queue import BatchQueue, Heartbeat, Message
from pipeline.core.errors import RetriesExhausted, ShardhouseError, TerminalError, TransientError
from pipeline.core.manifest import ManifestError, decode_manifest
from pipeline.core.retry import Backoff, call_with_retry
from schemas import Registry

log = logging.getLogger(__name__)
Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class InserterConfig:
    bucket: str
    max_messages: int = 10
    wait_seconds: int = 20
    #: What each heartbeat extends a held message's invisibility to; after a crash the message
    #: is back on the queue within this many seconds.
    visibility_timeout: int = 60
    heartbeat_seconds: float = 20.0
    #: A held message is extended for at most this long, whatever its load does (then it
    #: returns to the queue and, after maxReceiveCount such returns, to the dead-letter queue).
    max_hold_seconds: float = 1800.0
    #: In-process attempts of a load that fails with a transient error (connection lost,
    #: serialization failure…) before the message is given back.
    attempts: int = 3
    #: A failed message is visible again after min(cap, base * 2**(receives-1)) seconds.
    retry_base_seconds: int = 5
    retry_cap_seconds: int = 600
    #: The queue's redrive maxReceiveCount (for the log line that says a message is going).
    max_receive_count: int = 5
    #: Stop after a receive that returns nothing (tests, backfills).
    exit_when_idle: bool = False


def retry_delay(receive_count: int, base: int, cap: int) -> int:
    """Seconds until a failed message is visible again: doubling per receive, capped (SQS allows
    at most 12 hours)."""
    return int(min(cap, 43_200, base * 2 ** max(0, receive_count - 1)))


class InserterMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.messages = Counter(
            "shardhouse_inserter_messages", "Messages handled, by outcome", ["outcome"], registry=registry
        )
        self.rows_loaded = Counter("shardhouse_inserter_rows_loaded", "Rows inserted", registry=registry)
        self.rows_skipped = Counter(
            "shardhouse_inserter_rows_skipped", "Rows dropped as duplicates by the merge", registry=registry
        )
        self.objects_loaded = Counter(
            "shardhouse_inserter_objects_loaded", "Objects loaded", registry=registry
        )
        self.objects_already = Counter(
            "shardhouse_inserter_objects_already_loaded",
            "Objects skipped: already in the ledger",
            registry=registry,
        )
        self.load_seconds = Histogram(
            "shardhouse_inserter_load_seconds",
            "Duration of one load (staging + merge + commit)",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=registry,
        )
        self.dependency_out = Gauge(
            "shardhouse_inserter_dependency_out",
            "1 while a dependency of the loads does not answer (nothing is received meanwhile)",
            registry=registry,
        )
        self.lag_seconds = Gauge(
            "shardhouse_inserter_lag_seconds",
            "Last load: commit time minus its newest occurred_at",
            registry=registry,
        )


class Inserter:
    def __init__(
        self,
        config: InserterConfig,
        *,
        queue: BatchQueue,
        loader: Loader,
        registry: Registry,
        connect: Callable[[], Conn],
        metrics: InserterMetrics | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        probes: Mapping[str, Callable[[], object]] | None = None,
        outage_backoff: Backoff | None = None,
    ) -> None:
        """``probes``: dependencies besides the warehouse a load needs, by name; each raises
        when its dependency does not answer (wiring.dependency_probes)."""
        self.config = config
        self.queue = queue
        self.loader = loader
        self.registry = registry
        self.connect = connect
        self.metrics = metrics or InserterMetrics(CollectorRegistry())
        self.backoff = backoff or Backoff(base=0.5, cap=10.0, max_attempts=config.attempts)
        self.clock = clock
        self.stop = threading.Event()
        self.probes = dict(probes or {})
        # Waits between probes while a dependency is out; max_attempts only sizes the sequence
        # (it repeats: the wait has no end but the dependency's return or a stop).
        self.outage_backoff = outage_backoff or Backoff(base=1.0, cap=30.0, max_attempts=16)
        self._outage: str | None = None  # "<dependency>: <why>" while one does not answer
        self._conn: Conn | None = None
        self.heartbeat = Heartbeat(
            queue, every=config.heartbeat_seconds, extend_to=config.visibility_timeout,
            max_hold=config.max_hold_seconds,
        )  # fmt: skip

    # -- lifecycle ------------------------------------------------------------------------------

    def request_stop(self, reason: str = "requested") -> None:
        if not self.stop.is_set():
            log.info("stopping: the current load finishes, no new messages", extra={"reason": reason})
        self.stop.set()

    def run(self) -> None:
        try:
            call_with_retry(self._connection, what="connect to warehouse", backoff=self.backoff)
        except TransientError as exc:
            # A warehouse that does not answer at start is an outage like any other: wait for
            # it, holding no message. One that answers and refuses the settings (no such
            # database, a wrong password) is bad input, and ends the process with its reason.
            refused = exc.last if isinstance(exc, RetriesExhausted) else exc
            if isinstance(refused, WarehouseRefused):
                raise TerminalError(f"{refused}; check the warehouse URL (SHARDHOUSE_DATABASE_URL)") from exc
            self._outage = f"warehouse: {type(exc).__name__}: {exc}"
        with self.heartbeat:
            try:
                failures = 0
                while not self.stop.is_set():
                    if self._outage is not None and not self._wait_for_dependencies():
                        break  # stopped while waiting
                    try:
                        received = self.poll_once()
                    except Exception as exc:
                        # A receive that exhausted its retries, or anything unforeseen: the
                        # process keeps serving (its messages come back on their own).
                        failures += 1
                        delay = min(60.0, self.backoff.base * 2 ** min(failures, 10))
                        log.error(
                            "inserter loop failed; waiting, then going on",
                            extra={"reason": f"{type(exc).__name__}: {exc}", "failures": failures,
                                   "retry_in_s": round(delay, 2)},
                            exc_info=not isinstance(exc, ShardhouseError),
                        )  # fmt: skip
                        self.metrics.messages.labels("loop_error").inc()
                        self.stop.wait(delay)
                        continue
                    failures = 0
                    if received == 0 and self.config.exit_when_idle:
                        break
            finally:
                self._close()
        log.info("inserter stopped")

    def poll_once(self) -> int:
        """One receive and the loads of what it returned; the number of messages received.

        The well-formed messages of one receive are loaded together, in one transaction (one
        merge per table, not per batch); if that combined load fails, each is loaded on its own,
        so one bad batch never holds the others back and failures are counted per message."""
        messages = self.queue.receive(
            max_messages=self.config.max_messages,
            wait_seconds=self.config.wait_seconds,
            visibility_timeout=self.config.visibility_timeout,
        )
        self.heartbeat.hold(messages)
        try:
            ready: list[tuple[Message, LoadPlan]] = []
            for message in messages:
                plan = self._plan(message)
                if plan is not None:
                    ready.append((message, plan))
            if self.stop.is_set():
                self._give_back([m for m, _ in ready])
            elif len(ready) > 1:
                self._load_together(ready)
            elif ready:
                self._load_one(*ready[0])
        finally:
            for message in messages:
                self.heartbeat.drop(message)
        return len(messages)

    def _give_back(self, messages: list[Message]) -> None:
        for message in messages:
            self.heartbeat.drop(message)
            self._release(message, 0)

    # -- one message ----------------------------------------------------------------------------

    def handle(self, message: Message) -> str:
        """Load one message; returns the outcome (loaded, duplicate, dead_lettered, failed)."""
        plan = self._plan(message)
        return "dead_lettered" if plan is None else self._load_one(message, plan)

    def _plan(self, message: Message) -> LoadPlan | None:
        """The message's plan; None when it was dead-lettered or given back (already handled)."""
        try:
            manifest = decode_manifest(message.body)
            return plan_load(manifest, self.registry, bucket=self.config.bucket)
        except ManifestError as exc:
            self._poison(message, str(exc))
        except Exception as exc:
            self._failed(message, None, exc)
        return None

    def _load_one(self, message: Message, plan: LoadPlan) -> str:
        if self._outage is not None:  # found out by an earlier message of this receive
            return self._failed(message, plan.batch_id, TransientError(f"not tried: {self._outage}"))
        try:
            result = self._load(plan)
        except Exception as exc:
            return self._failed(message, plan.batch_id, exc)
        self._done([message], result)
        return "loaded" if result.loaded else "duplicate"

    def _load_together(self, ready: list[tuple[Message, LoadPlan]]) -> None:
        try:
            result = self._load(combine_plans([plan for _, plan in ready]))
        except Exception as exc:
            log.warning(
                "combined load failed; loading its batches one by one",
                extra={
                    "batches": [plan.batch_id for _, plan in ready],
                    "reason": f"{type(exc).__name__}: {exc}",
                },
            )
            for message, plan in ready:
                self._load_one(message, plan)
            return
        self._done([message for message, _ in ready], result)

    def _done(self, messages: list[Message], result: LoadResult) -> None:
        """Committed: the messages can go, and the load is counted and logged."""
        for message in messages:
            self.heartbeat.drop(message)
        try:
            self.queue.delete_all(messages)
        except Exception as exc:  # they come back; the ledger makes those deliveries no-ops
            log.warning(
                "delete after commit failed; the messages will come back as already loaded",
                extra={
                    "message_ids": [m.message_id for m in messages],
                    "reason": f"{type(exc).__name__}: {exc}",
                },
            )
        self._record(messages, result, "loaded" if result.loaded else "duplicate")

    def _load(self, plan: LoadPlan) -> LoadResult:
        def attempt() -> LoadResult:
            return self.loader.load(self._connection(), plan)

        def on_retry(n: int, exc: BaseException, delay: float) -> None:
            log.warning(
                "load failed, retrying",
                extra={
                    "batch_id": plan.batch_id,
                    "attempt": n,
                    "reason": str(exc),
                    "delay_s": round(delay, 2),
                },
            )
            self._drop_broken()

        try:
            return call_with_retry(
                attempt, what=f"load {plan.batch_id}", backoff=self.backoff, on_retry=on_retry
            )
        finally:
            self._drop_broken()

    def _poison(self, message: Message, reason: str) -> str:
        log.error(
            "malformed message dead-lettered",
            extra={"message_id": message.message_id, "reason": reason, "receives": message.receive_count},
        )
        self.heartbeat.drop(message)
        try:
            self.queue.dead_letter(message, reason)
        except Exception as exc:
            # e.g. a forged body near SQS's size limit plus the reason attributes: give it back
            # instead, and the queue's redrive policy moves it, untouched, after maxReceiveCount.
            log.error(
                "dead-letter send failed; message given back for the redrive policy",
                extra={"message_id": message.message_id, "reason": f"{type(exc).__name__}: {exc}"},
            )
            self._release(message, 0)
            self.metrics.messages.labels("failed").inc()
            return "failed"
        self.metrics.messages.labels("dead_lettered").inc()
        return "dead_lettered"

    def _failed(self, message: Message, batch_id: str | None, exc: BaseException) -> str:
        if isinstance(exc, TransientError) and self._outage is None:
            self._outage = self._unanswered()
        delay = retry_delay(
            message.receive_count, self.config.retry_base_seconds, self.config.retry_cap_seconds
        )
        if self._outage is not None:
            delay = 0  # not the message's fault; nothing is received again until the outage ends
        final = message.receive_count >= self.config.max_receive_count
        log.error(
            "load failed; the redrive policy dead-letters the message"
            if final
            else "load failed; message given back",
            extra={
                "message_id": message.message_id,
                "batch_id": batch_id,
                "reason": f"{type(exc).__name__}: {exc}",
                "transient": isinstance(exc, TransientError),
                "receives": message.receive_count,
                "max_receives": self.config.max_receive_count,
                "retry_in_s": delay,
                "outage": self._outage,
            },
            exc_info=not isinstance(exc, ShardhouseError),  # a traceback only for the unexpected
        )
        self.heartbeat.drop(message)
        self._release(message, delay)
        self.metrics.messages.labels("failed").inc()
        return "failed"

    def _release(self, message: Message, delay: int) -> None:
        try:
            self.queue.release(message, delay)
        except Exception as exc:  # it comes back when its visibility runs out anyway
            log.warning(
                "could not give a message back", extra={"message_id": message.message_id, "reason": str(exc)}
            )

    def _record(self, messages: list[Message], result: LoadResult, outcome: str) -> None:
        m = self.metrics
        m.messages.labels(outcome).inc(len(messages))
        m.rows_loaded.inc(result.rows_loaded)
        m.rows_skipped.inc(result.rows_skipped)
        m.objects_loaded.inc(len(result.loaded))
        m.objects_already.inc(len(result.already_loaded))
        m.load_seconds.observe(result.duration_ms / 1000)
        lag = None
        if result.newest_event is not None:
            lag = (self.clock() - result.newest_event).total_seconds()
            m.lag_seconds.set(lag)
        log.info(
            "batch loaded" if result.loaded else "batch already loaded",
            extra={
                "batch_id": result.batch_id,
                "load_id": result.load_id,
                "message_ids": [message.message_id for message in messages],
                "receives": max(message.receive_count for message in messages),
                "objects_loaded": len(result.loaded),
                "objects_already_loaded": len(result.already_loaded),
                "rows_loaded": result.rows_loaded,
                "rows_skipped": result.rows_skipped,
                "tables": len({str(o.table) for o in result.loaded}),
                "duration_ms": result.duration_ms,
                "stage_ms": result.stage_ms,
                "merge_ms": result.merge_ms,
                "lag_s": None if lag is None else round(lag, 3),
            },
        )

    # -- outages --------------------------------------------------------------------------------

    def _unanswered(self) -> str | None:
        """The first dependency that does not answer, as "<name>: <why>"; None if all do."""
        try:
            self._connection().execute("SELECT 1")
        except Exception as exc:
            self._drop_broken()
            return f"warehouse: {type(exc).__name__}: {exc}"
        for name, probe in self.probes.items():
            try:
                probe()
            except Exception as exc:
                return f"{name}: {type(exc).__name__}: {exc}"
        return None

    def _wait_for_dependencies(self) -> bool:
        """Probe until every dependency answers (True) or a stop is requested (False)."""
        waited = 0.0
        self.metrics.dependency_out.set(1)
        try:
            for pause in self.outage_backoff.endless():
                log.warning(
                    "dependency out; not receiving until it answers",
                    extra={
                        "outage": self._outage,
                        "waited_s": round(waited, 1),
                        "next_probe_in_s": round(pause, 2),
                    },
                )
                if self.stop.wait(pause):
                    return False
                waited += pause
                self._outage = self._unanswered()
                if self._outage is None:
                    log.info("dependencies answer again; receiving", extra={"waited_s": round(waited, 1)})
                    return True
        finally:
            self.metrics.dependency_out.set(0)
        return False  # pragma: no cover - the pauses never end

    # -- the connection -------------------------------------------------------------------------

    def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed:
            try:
                conn = self.connect()
            except psycopg.Error as exc:
                raise classify_pg(exc, "connect to warehouse") from exc
            try:
                self.loader.prepare(conn)
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop_broken(self) -> None:
        conn = self._conn
        if conn is not None and (conn.broken or conn.closed):
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
