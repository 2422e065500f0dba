"""The inserter loop's decisions with in-memory collaborators: what happens to each message."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import psycopg
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from inserter.errors import LoadError, WarehouseRefused, classify_pg
from inserter.loader import LoadResult, ObjectOutcome
from inserter.naming import TableRef
from inserter.plan import LoadPlan
from inserter.queue import BatchQueue, Heartbeat, Message
from inserter.service import Inserter, InserterConfig, retry_delay
from inserter.wiring import dependency_probes
from pipeline.core.errors import TerminalError, TransientError
from pipeline.core.layout import EventObjectKey
from pipeline.core.manifest import BatchManifest, BatchObject, encode_manifest
from pipeline.core.retry import Backoff
from pipeline.core.settings import Settings
from schemas import load_registry

REGISTRY = load_registry()
KEY = str(EventObjectKey("acme", "page_view", 1, date(2024, 5, 1), "shardId-000000000000", "1", "9"))
GOOD = encode_manifest(
    BatchManifest(
        1, "b1", "s", "shardId-000000000000", "1", "9", "bkt",
        (BatchObject(KEY, "acme", "page_view", 1, 3, 10, "2024-05-01T12:00:00Z", "2024-05-01T12:00:02Z"),),
    )
)  # fmt: skip


def message(body: str = GOOD, receives: int = 1, mid: str = "m1") -> Message:
    return Message(mid, f"r-{mid}-{receives}", body, receives, 0)


@dataclass
class FakeQueue:
    batches: list[list[Message]]
    deleted: list[str] = field(default_factory=list)
    released: list[tuple[str, int]] = field(default_factory=list)
    dead: list[tuple[str, str]] = field(default_factory=list)
    extended: list[list[str]] = field(default_factory=list)

    def receive(self, **_: Any) -> list[Message]:
        return self.batches.pop(0) if self.batches else []

    def delete_all(self, messages: list[Message]) -> list[str]:
        self.deleted.extend(m.message_id for m in messages)
        return []

    def release(self, m: Message, delay: int) -> bool:
        self.released.append((m.message_id, delay))
        return True

    def dead_letter(self, m: Message, reason: str) -> None:
        self.dead.append((m.message_id, reason))

    def extend(self, messages: list[Message], visibility: int) -> list[str]:
        self.extended.append([m.message_id for m in messages])
        return []


@dataclass
class FakeConn:
    closed: bool = False
    broken: bool = False
    answers: bool = True  # False: the warehouse is out (SELECT 1 fails)

    def close(self) -> None:
        self.closed = True

    def execute(self, query: str) -> FakeConn:
        if not self.answers:
            self.broken = True
            raise TransientError("connection refused")
        return self


@dataclass
class FakeLoader:
    outcomes: list[Any]
    calls: list[LoadPlan] = field(default_factory=list)
    prepared: int = 0

    def prepare(self, conn: Any) -> None:
        self.prepared += 1

    def load(self, conn: Any, plan: LoadPlan) -> LoadResult:
        self.calls.append(plan)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            if isinstance(outcome, TransientError):
                conn.broken = True  # a dropped connection: the next attempt reconnects
            raise outcome
        return outcome  # type: ignore[no-any-return]


def loaded(rows: int = 3) -> LoadResult:
    at = datetime(2024, 5, 1, 12, tzinfo=UTC)
    return LoadResult(
        "b1", "l1", (ObjectOutcome(KEY, TableRef("c_acme", "page_view"), rows, 0, at, at),), (), 12
    )


def inserter(queue: FakeQueue, loader: FakeLoader, **config: Any) -> tuple[Inserter, list[FakeConn]]:
    conns: list[FakeConn] = []

    def connect() -> FakeConn:
        conns.append(FakeConn())
        return conns[-1]

    settings: dict[str, Any] = {"bucket": "bkt", "exit_when_idle": True, "max_receive_count": 3}
    ins = Inserter(
        InserterConfig(**(settings | config)),
        queue=queue,  # type: ignore[arg-type]
        loader=loader,  # type: ignore[arg-type]
        registry=REGISTRY,
        connect=connect,  # type: ignore[arg-type]
        backoff=Backoff(base=0.0, cap=0.0, max_attempts=3),
    )
    return ins, conns


def test_a_loaded_message_is_deleted_after_the_load() -> None:
    q = FakeQueue([[message()]])
    ins, _ = inserter(q, FakeLoader([loaded()]))
    ins.run()
    assert q.deleted == ["m1"] and q.released == [] and q.dead == []


def test_malformed_messages_go_to_the_dlq_with_the_reason() -> None:
    q = FakeQueue([[message("{}", mid="bad"), message(GOOD.replace('"bkt"', '"other"'), mid="wrong-bucket")]])
    loader = FakeLoader([])
    ins, _ = inserter(q, loader)
    ins.run()
    assert [m for m, _ in q.dead] == ["bad", "wrong-bucket"]
    assert q.dead[0][1].startswith("malformed batch manifest") and "this inserter loads" in q.dead[1][1]
    assert loader.calls == [] and q.deleted == []  # dead_letter deletes it itself


def test_transient_failures_retry_in_process_on_a_new_connection() -> None:
    q = FakeQueue([[message()]])
    loader = FakeLoader([TransientError("connection reset"), TransientError("again"), loaded()])
    ins, conns = inserter(q, loader)
    ins.run()
    assert len(loader.calls) == 3 and q.deleted == ["m1"]
    assert len(conns) == 3 and loader.prepared == 3


def test_a_failed_load_is_given_back_with_a_growing_delay() -> None:
    q = FakeQueue([[message(receives=1)], [message(receives=2)], [message(receives=3)]])
    loader = FakeLoader([LoadError("object not found")] * 3)
    ins, _ = inserter(q, loader, retry_base_seconds=5)
    ins.run()
    assert q.released == [("m1", 5), ("m1", 10), ("m1", 20)]
    assert q.deleted == [] and q.dead == []  # the redrive policy dead-letters it, not us
    assert len(loader.calls) == 3  # terminal: no in-process retries


def test_stop_finishes_the_current_load_and_receives_no_more() -> None:
    q = FakeQueue([[message(mid="a"), message(mid="b"), message(mid="c")], [message(mid="d")]])
    loader = FakeLoader([loaded()])
    ins, _ = inserter(q, loader, exit_when_idle=False)
    original = loader.load

    def load_then_stop(conn: Any, plan: LoadPlan) -> LoadResult:
        ins.request_stop("SIGTERM")  # arrives while a, b and c load (together)
        return original(conn, plan)

    loader.load = load_then_stop  # type: ignore[method-assign]
    ins.run()
    assert q.deleted == ["a", "b", "c"] and q.released == []
    assert q.batches == [[message(mid="d")]]  # no new receive


def test_a_stop_before_the_load_gives_every_received_message_back() -> None:
    q = FakeQueue([[message(mid="a"), message(mid="b")]])
    loader = FakeLoader([])
    ins, _ = inserter(q, loader, exit_when_idle=False)
    original = q.receive

    def receive_then_stop(**kw: Any) -> list[Message]:
        got = original(**kw)
        ins.request_stop("SIGTERM")
        return got

    q.receive = receive_then_stop  # type: ignore[method-assign]
    ins.run()
    assert loader.calls == [] and q.deleted == []
    assert q.released == [("a", 0), ("b", 0)]


def second_batch() -> str:
    other = str(EventObjectKey("beta", "page_view", 1, date(2024, 5, 1), "shardId-000000000001", "5", "7"))
    return encode_manifest(
        BatchManifest(
            1, "b2", "s", "shardId-000000000001", "5", "7", "bkt",
            (BatchObject(other, "beta", "page_view", 1, 2, 10, "2024-05-01T12:00:00Z", "2024-05-01T12:00:01Z"),),
        )
    )  # fmt: skip


def test_one_receive_is_loaded_in_one_transaction() -> None:
    q = FakeQueue([[message(mid="a"), message(second_batch(), mid="b"), message("{}", mid="bad")]])
    loader = FakeLoader([loaded()])
    ins, _ = inserter(q, loader)
    ins.run()
    assert len(loader.calls) == 1
    assert loader.calls[0].batch_id == "b1+b2"
    assert sorted(o.batch_id for o in loader.calls[0].objects) == ["b1", "b2"]
    assert q.deleted == ["a", "b"] and [m for m, _ in q.dead] == ["bad"]


def test_a_failed_combined_load_falls_back_to_one_load_per_message() -> None:
    q = FakeQueue([[message(mid="a"), message(second_batch(), mid="b")]])
    loader = FakeLoader([LoadError("one object is corrupt"), LoadError("object not found"), loaded()])
    ins, _ = inserter(q, loader, retry_base_seconds=5)
    ins.run()
    assert [p.batch_id for p in loader.calls] == ["b1+b2", "b1", "b2"]
    assert q.released == [("a", 5)] and q.deleted == ["b"]


def test_retry_delay_doubles_and_is_capped() -> None:
    assert [retry_delay(n, 5, 600) for n in (1, 2, 3, 4, 8, 20)] == [5, 10, 20, 40, 600, 600]
    assert retry_delay(30, 5, 10**9) == 43_200  # SQS's maximum visibility timeout


def test_the_heartbeat_extends_every_held_message() -> None:
    q = FakeQueue([])
    hb = Heartbeat(q, every=1, extend_to=30)  # type: ignore[arg-type]
    hb.beat()
    assert q.extended == []
    hb.hold([message(mid="a"), message(mid="b")])
    hb.drop(message(mid="a"))
    hb.beat()
    assert q.extended == [["b"]]
    with pytest.raises(ValueError, match="cannot keep"):
        Heartbeat(q, every=30, extend_to=30)  # type: ignore[arg-type]


def test_a_message_held_past_the_bound_is_no_longer_extended() -> None:
    q, now = FakeQueue([]), {"t": 0.0}
    hb = Heartbeat(q, every=1, extend_to=30, max_hold=100, clock=lambda: now["t"])  # type: ignore[arg-type]
    hb.hold([message(mid="stuck")])
    now["t"] = 50.0
    hb.hold([message(mid="fresh")])
    hb.beat()
    now["t"] = 120.0  # "stuck" held 120 s, "fresh" 70 s
    hb.beat()
    assert q.extended == [["stuck", "fresh"], ["fresh"]]
    assert [m.message_id for m in hb.held()] == ["fresh"]


@dataclass
class RefusingQueue(FakeQueue):
    """SQS failing in the ways that used to end the process."""

    refuse: set[str] = field(default_factory=set)  # "receive", "dead_letter", "delete"
    receive_failures: int = 0

    def receive(self, **kw: Any) -> list[Message]:
        if "receive" in self.refuse and self.receive_failures < 2:
            self.receive_failures += 1
            raise TransientError("receive: gave up after 4 attempts")
        return super().receive(**kw)

    def dead_letter(self, m: Message, reason: str) -> None:
        if "dead_letter" in self.refuse:
            raise TransientError("SendMessage: message must be shorter than 262144 bytes")
        super().dead_letter(m, reason)

    def delete_all(self, messages: list[Message]) -> list[str]:
        if "delete" in self.refuse:
            raise TransientError("DeleteMessageBatch: endpoint unreachable")
        return super().delete_all(messages)


def test_no_sqs_failure_ends_the_inserter_and_the_other_messages_load() -> None:
    q = RefusingQueue(
        [[message("{}", mid="forged")], [message(mid="good")]], refuse={"receive", "dead_letter", "delete"}
    )
    loader = FakeLoader([loaded()])
    ins, _ = inserter(q, loader)
    ins.run()  # two failed receives, a refused dead letter, a failed delete: it went on
    assert q.receive_failures == 2
    assert q.released == [("forged", 0)]  # back to the queue: the redrive policy moves it
    assert len(loader.calls) == 1 and q.deleted == []  # loaded; its redelivery is a ledger no-op


@dataclass
class BatchDeleteSqs:
    """An SQS client's DeleteMessageBatch answers, one per call (the adapter's own logic only)."""

    answers: list[dict[str, Any]]
    calls: list[list[str]] = field(default_factory=list)

    def get_queue_url(self, QueueName: str) -> dict[str, str]:
        return {"QueueUrl": f"url/{QueueName}"}

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        self.calls.append([e["ReceiptHandle"] for e in Entries])
        return self.answers.pop(0)


def test_delete_all_retries_only_the_entries_sqs_failed_and_names_stale_receipts() -> None:
    sqs = BatchDeleteSqs(
        [
            {"Failed": [{"Id": "1", "Code": "InternalError"}, {"Id": "2", "Code": "ReceiptHandleIsInvalid"}]},
            {"Successful": [{"Id": "0"}]},
        ]
    )
    queue = BatchQueue(sqs, "q", "dlq", backoff=Backoff(base=0.0, cap=0.0, max_attempts=3))  # type: ignore[arg-type]
    gone = queue.delete_all([message(mid="a"), message(mid="b"), message(mid="c")])
    assert gone == ["c"]
    assert sqs.calls == [["r-a-1", "r-b-1", "r-c-1"], ["r-b-1"]]


def test_delete_all_gives_up_after_its_attempts_with_the_codes() -> None:
    failing = {"Failed": [{"Id": "0", "Code": "InternalError"}]}
    sqs = BatchDeleteSqs([failing, failing])
    queue = BatchQueue(sqs, "q", "dlq", backoff=Backoff(base=0.0, cap=0.0, max_attempts=2))  # type: ignore[arg-type]
    with pytest.raises(TransientError, match=r"1 entries failed \(InternalError\)"):
        queue.delete_all([message(mid="a")])


# -- outages: no receive is spent while a dependency does not answer ------------------------------


@dataclass
class Outage:
    """A warehouse that stops answering once a load fails and answers again after ``probes``
    probes; ``events`` records connects and receives in order."""

    probes: int
    events: list[str] = field(default_factory=list)
    out: bool = False

    def connect(self) -> FakeConn:
        if self.out:
            self.probes -= 1
            self.out = self.probes >= 0
        self.events.append("connect (out)" if self.out else "connect")
        return FakeConn(answers=not self.out)


def gated(queue: FakeQueue, loader: FakeLoader, outage: Outage, **config: Any) -> Inserter:
    ins, _ = inserter(queue, loader, **config)
    ins.connect = outage.connect  # type: ignore[method-assign]
    ins.outage_backoff = Backoff(base=0.0, cap=0.0, max_attempts=3)
    receive = queue.receive

    def logged_receive(**kw: Any) -> list[Message]:
        outage.events.append("receive")
        return receive(**kw)

    queue.receive = logged_receive  # type: ignore[method-assign]
    original = loader.load

    def load(conn: Any, plan: LoadPlan) -> LoadResult:
        try:
            return original(conn, plan)
        except TransientError:
            outage.out = True  # the load failed because the warehouse went away
            raise

    loader.load = load  # type: ignore[method-assign]
    return ins


def test_an_outage_gives_the_messages_back_at_once_and_receives_nothing_until_it_ends() -> None:
    q = FakeQueue([[message(mid="a"), message(second_batch(), mid="b")], [message(mid="a", receives=2)]])
    # the combined load and a's own load fail (3 attempts each); b is given back untried
    loader = FakeLoader([TransientError("connection reset")] * 6 + [loaded()])
    outage = Outage(probes=8)  # connects that fail: the loads' 5 retries, then 3 probes
    ins = gated(q, loader, outage, retry_base_seconds=30)
    ins.run()
    assert q.released == [("a", 0), ("b", 0)]  # not the messages' fault: no delay
    assert len(loader.calls) == 7  # b never tried during the outage
    out = outage.events.index("connect (out)")
    back = outage.events.index("connect", out)
    assert "receive" not in outage.events[out:back]  # nothing received while out
    assert outage.events[out:back] == ["connect (out)"] * 8
    assert q.deleted == ["a"] and ins.metrics.dependency_out._value.get() == 0


def test_a_transient_failure_while_the_warehouse_answers_is_an_ordinary_failure() -> None:
    q = FakeQueue([[message(receives=2)]])
    loader = FakeLoader([TransientError("lock timeout")] * 3)
    ins, _ = inserter(q, loader, retry_base_seconds=5)
    ins.run()
    assert q.released == [("m1", 10)]  # the growing delay: the redrive policy counts this one
    assert ins._outage is None


def test_a_probe_that_does_not_answer_is_an_outage_too() -> None:
    q = FakeQueue([[message()], [message(receives=2)]])
    loader = FakeLoader([TransientError("s3 read timed out")] * 3 + [loaded()])
    ins, _ = inserter(q, loader, retry_base_seconds=5)
    ins.outage_backoff = Backoff(base=0.0, cap=0.0, max_attempts=2)
    answers = iter([False, False, True])
    reasons: list[str | None] = []

    def s3() -> None:
        if not next(answers):
            raise TransientError("s3: EndpointConnectionError")

    ins.probes = {"s3": s3}
    original = ins._unanswered

    def unanswered() -> str | None:
        reasons.append(original())
        return reasons[-1]

    ins._unanswered = unanswered  # type: ignore[method-assign]
    ins.run()
    assert q.released == [("m1", 0)] and q.deleted == ["m1"]
    assert reasons == ["s3: TransientError: s3: EndpointConnectionError"] * 2 + [None]


def test_an_inserter_started_during_an_outage_waits_for_the_warehouse() -> None:
    q = FakeQueue([[message()]])
    loader = FakeLoader([loaded()])
    ins, _ = inserter(q, loader)
    ins.outage_backoff = Backoff(base=0.0, cap=0.0, max_attempts=2)
    events: list[str] = []
    refusals = iter(range(5))  # the start's 3 attempts, then 2 probes

    def connect() -> FakeConn:
        if next(refusals, None) is not None:
            events.append("refused")
            raise TransientError("connect to warehouse: connection refused")
        events.append("connect")
        return FakeConn()

    def receive(**kw: Any) -> list[Message]:
        events.append("receive")
        return FakeQueue.receive(q, **kw)

    ins.connect = connect  # type: ignore[method-assign]
    q.receive = receive  # type: ignore[method-assign]
    ins.run()  # does not raise: the outage is waited out
    assert events[:6] == ["refused"] * 5 + ["connect"]  # nothing received while out
    assert events[6:] == ["receive", "receive"]  # the message, then the idle receive that ends the run
    assert q.deleted == ["m1"] and q.released == [] and q.dead == []
    assert loader.prepared == 1 and ins.metrics.dependency_out._value.get() == 0


def test_a_terminal_error_at_start_ends_the_inserter_with_its_reason() -> None:
    q = FakeQueue([[message()]])
    ins, _ = inserter(q, FakeLoader([loaded()]))

    def connect() -> FakeConn:
        raise TerminalError('connect to warehouse: 28P01: password authentication failed for user "x"')

    ins.connect = connect  # type: ignore[method-assign]
    with pytest.raises(TerminalError, match="password authentication failed"):
        ins.run()
    assert q.batches == [[message()]]  # nothing was received


def test_a_warehouse_refusing_the_settings_at_start_ends_the_inserter_with_its_reason() -> None:
    q = FakeQueue([[message()]])
    ins, _ = inserter(q, FakeLoader([loaded()]))
    refusal = psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
        'FATAL:  database "nosuchdb" does not exist'
    )

    def connect() -> FakeConn:
        raise refusal

    ins.connect = connect  # type: ignore[method-assign]
    with pytest.raises(TerminalError, match='database "nosuchdb" does not exist; check the warehouse URL'):
        ins.run()
    assert q.batches == [[message()]]  # nothing was received


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ('FATAL:  password authentication failed for user "shardhouse"', True),
        ('FATAL:  database "x" does not exist', True),
        ('FATAL:  role "x" does not exist', True),
        ('FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "x", database "y"', True),
        ("FATAL:  the database system is starting up", False),
        ("FATAL:  sorry, too many clients already", False),
        ("Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?", False),
    ],
)
def test_a_refusal_is_told_from_an_outage(text: str, refused: bool) -> None:
    error = classify_pg(psycopg.OperationalError(f"connection failed: {text}"), "connect to warehouse")
    assert isinstance(error, WarehouseRefused) is refused
    assert isinstance(error, TransientError)  # while running, both are waited out


@dataclass
class FakeS3:
    error: BaseException | None

    def head_bucket(self, Bucket: str) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        return {}


@pytest.mark.parametrize(
    ("error", "out"),
    [
        (None, False),
        (
            ClientError(
                {"Error": {"Code": "403"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "HeadBucket"
            ),
            False,
        ),
        (
            ClientError(
                {"Error": {"Code": "404"}, "ResponseMetadata": {"HTTPStatusCode": 404}}, "HeadBucket"
            ),
            False,
        ),
        (
            ClientError(
                {"Error": {"Code": "503"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "HeadBucket"
            ),
            True,
        ),
        (EndpointConnectionError(endpoint_url="http://s3"), True),
        (ReadTimeoutError(endpoint_url="http://s3"), True),
    ],
)
def test_s3_answers_unless_its_failure_is_transient(error: BaseException | None, out: bool) -> None:
    settings = Settings()

    class Clients:
        def s3(self) -> FakeS3:
            return FakeS3(error)

    probe = dependency_probes(settings, Clients())["s3"]  # type: ignore[arg-type]
    if out:
        with pytest.raises(type(error)):  # type: ignore[arg-type]
            probe()
    else:
        probe()
