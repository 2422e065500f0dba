"""A worker started while its lease table does not answer: it waits, takes nothing, then serves."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from pipeline.consumer.worker import Worker, WorkerConfig
from pipeline.core.aws_errors import classify_aws
from pipeline.core.errors import TerminalError
from pipeline.core.retry import Backoff


@dataclass
class Store:
    """A lease table that raises ``failures`` (in order) before it answers."""

    failures: list[BaseException]
    db: object = None  # the KCL 3.x side tables are reached through the lease store
    table: str = "app"
    calls: int = 0
    answered: threading.Event = field(default_factory=threading.Event)

    def ensure_table(self) -> bool:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        self.answered.set()
        return False


def worker(store: Store) -> Worker:
    w = Worker(
        WorkerConfig(application="app", stream="s", worker_id="w1"),
        store=store,  # type: ignore[arg-type]
        kinesis=object(),  # type: ignore[arg-type]
        processor_factory=lambda: None,  # type: ignore[arg-type, return-value]
    )
    w.outage_backoff = Backoff(base=0.0, cap=0.0, max_attempts=2)
    return w


def unreachable() -> EndpointConnectionError:
    return EndpointConnectionError(endpoint_url="http://127.0.0.1:1")


def test_a_lease_table_that_does_not_answer_at_start_is_waited_for() -> None:
    throttled = ClientError({"Error": {"Code": "ThrottlingException"}}, "CreateTable")
    store = Store(
        [unreachable(), unreachable(), classify_aws(throttled, "create lease table"), unreachable()]
    )
    assert worker(store)._ensure_lease_table() is True
    assert store.calls == 5 and store.answered.is_set()


def test_a_terminal_error_at_start_ends_the_worker_with_its_reason() -> None:
    denied = ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "CreateTable")
    store = Store([classify_aws(denied, "create lease table app")])
    with pytest.raises(TerminalError, match="AccessDeniedException"):
        worker(store).run()
    assert store.calls == 1


def test_a_stop_while_waiting_ends_the_run_before_any_shard_is_looked_at() -> None:
    store = Store([unreachable()] * 1000)
    w = worker(store)
    w.outage_backoff = Backoff(base=0.05, cap=0.05, max_attempts=2)

    def sync(*_: Any) -> None:
        raise AssertionError("the worker looked at shards before its lease table answered")

    w._sync = sync  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            w.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    while store.calls < 3 and thread.is_alive():
        threading.Event().wait(0.01)
    w.request_shutdown("test")
    thread.join(timeout=10)
    assert errors == [] and not thread.is_alive()
    assert 3 <= store.calls < 1000 and not store.answered.is_set()
