"""The inserter loop: long-poll SQS, load each batch, delete its message only after commit.

A message whose load fails stays on the queue (visibility backs off with the receive count)
and, after the queue's ``maxReceiveCount``, the redrive policy moves it to the dead-letter
queue. A message that is not a manifest (poison) goes to the DLQ at once, with the reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from inserter.postgres import LoadResult, PostgresLoader
from pipeline.aws_errors import is_transient_aws
from pipeline.manifest import ManifestError, decode_manifest
from pipeline.retry import Backoff, call_with_retry

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InserterConfig:
    queue_url: str
    dlq_url: str
    wait_seconds: int = 10
    visibility_seconds: int = 120
    heartbeat_seconds: float = 30.0


class Heartbeat:
    """Extends a message's visibility while its load runs."""

    def __init__(self, sqs: SQSClient, queue_url: str, receipt: str, every: float, extend_to: int) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(sqs, queue_url, receipt, every, extend_to), daemon=True
        )

    def _run(self, sqs: SQSClient, queue_url: str, receipt: str, every: float, extend_to: int) -> None:
        while not self._stop.wait(every):
            try:
                sqs.change_message_visibility(
                    QueueUrl=queue_url, ReceiptHandle=receipt, VisibilityTimeout=extend_to
                )
            except Exception:
                log.warning("could not extend visibility", exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()


class Inserter:
    def __init__(
        self,
        config: InserterConfig,
        *,
        sqs: SQSClient,
        loader: PostgresLoader,
        connect: Callable[[], psycopg.Connection[Any]],
        on_load: Callable[[LoadResult, float], None] = lambda _r, _s: None,
    ) -> None:
        self.config = config
        self.sqs = sqs
        self.loader = loader
        self.connect = connect
        self.on_load = on_load
        self.stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None

    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = self.connect()
            self.loader.ensure_ledger(self._conn)
        return self._conn

    def run(self) -> None:
        while not self.stop.is_set():
            self.poll_once()
        if self._conn is not None:
            self._conn.close()

    def poll_once(self) -> int:
        resp = call_with_retry(
            lambda: self.sqs.receive_message(
                QueueUrl=self.config.queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=self.config.wait_seconds,
                VisibilityTimeout=self.config.visibility_seconds,
                AttributeNames=["ApproximateReceiveCount"],
            ),
            what="receive batch messages",
            backoff=Backoff(base=0.5, cap=10.0, max_attempts=6),
            retry_if=is_transient_aws,
        )
        messages = resp.get("Messages", [])
        for message in messages:
            if self.stop.is_set():
                break  # unprocessed messages become visible again after the timeout
            self.handle(message)
        return len(messages)

    def handle(self, message: Any) -> None:
        receipt = message["ReceiptHandle"]
        try:
            manifest = decode_manifest(message["Body"])
        except ManifestError as exc:
            log.error(
                "poison message dead-lettered", extra={"reason": str(exc), "message_id": message["MessageId"]}
            )
            self.sqs.send_message(
                QueueUrl=self.config.dlq_url,
                MessageBody=message["Body"],
                MessageAttributes={"reason": {"DataType": "String", "StringValue": str(exc)[:1000]}},
            )
            self.sqs.delete_message(QueueUrl=self.config.queue_url, ReceiptHandle=receipt)
            return
        started = time.monotonic()
        try:
            with Heartbeat(
                self.sqs,
                self.config.queue_url,
                receipt,
                self.config.heartbeat_seconds,
                self.config.visibility_seconds,
            ):
                result = self.loader.load(self.conn(), manifest)
        except Exception as exc:
            receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
            log.error(
                "load failed; the message returns to the queue",
                extra={
                    "batch_id": manifest.batch_id,
                    "reason": f"{type(exc).__name__}: {exc}",
                    "receives": receives,
                },
            )
            if self._conn is not None and self._conn.broken:
                self._conn = None
            self._retry_later(receipt, receives)
            return
        self.sqs.delete_message(QueueUrl=self.config.queue_url, ReceiptHandle=receipt)
        seconds = time.monotonic() - started
        self.on_load(result, seconds)
        log.info(
            "batch loaded",
            extra={
                "batch_id": manifest.batch_id,
                "objects_loaded": result.objects_loaded,
                "objects_skipped": result.objects_skipped,
                "rows_in": result.rows_in,
                "rows_inserted": result.rows_inserted,
                "seconds": round(seconds, 3),
            },
        )

    def _retry_later(self, receipt: str, receives: int) -> None:
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.config.queue_url,
                ReceiptHandle=receipt,
                VisibilityTimeout=min(300, 2 * receives),
            )
        except Exception:
            log.warning("could not shorten visibility", exc_info=True)
