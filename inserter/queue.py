"""The "batch ready" queue as the inserter uses it: receive, keep invisible while loading,
delete after commit, give back, dead-letter. One small adapter over SQS (every call bounded by
botocore's timeouts and retried with backoff + jitter when transient), plus the heartbeat
thread that extends the visibility of every message this process holds.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.core.aws_errors import classify_aws, error_code
from pipeline.core.errors import TransientError
from pipeline.core.retry import Backoff, call_with_retry

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The receipt handle no longer refers to a message we hold (deleted, or its visibility ran
#: out and someone else received it): nothing to retry.
_GONE = frozenset(
    {"ReceiptHandleIsInvalid", "InvalidParameterValue", "AWS.SimpleQueueService.NonExistentQueue"}
)
#: Entries per SQS batch call (DeleteMessageBatch, ChangeMessageVisibilityBatch): SQS's limit.
SQS_BATCH = 10
#: SQS refuses message attribute values above 256 KiB in total; reasons are short anyway.
MAX_REASON_CHARS = 1000


@dataclass(frozen=True, slots=True)
class Message:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    sent_at_ms: int


class BatchQueue:
    """The batch queue and its dead-letter queue (URLs resolved once, lazily)."""

    def __init__(
        self, sqs: SQSClient, queue: str, dead_letter_queue: str, *, backoff: Backoff | None = None
    ) -> None:
        self.sqs = sqs
        self.queue = queue
        self.dead_letter_queue = dead_letter_queue
        self.backoff = backoff or Backoff(base=0.2, cap=5.0, max_attempts=6)
        self._urls: dict[str, str] = {}
        self._lock = threading.Lock()

    def _call(self, fn: Callable[[], T], what: str) -> T:
        def attempt() -> T:
            try:
                return fn()
            except (ClientError, BotoCoreError) as exc:
                raise classify_aws(exc, what) from exc

        return call_with_retry(attempt, what=what, backoff=self.backoff)

    def url(self, name: str) -> str:
        with self._lock:
            if name not in self._urls:
                self._urls[name] = self._call(
                    lambda: self.sqs.get_queue_url(QueueName=name)["QueueUrl"], f"get queue url {name}"
                )
            return self._urls[name]

    def receive(self, *, max_messages: int, wait_seconds: int, visibility_timeout: int) -> list[Message]:
        url = self.url(self.queue)
        resp = self._call(
            lambda: self.sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=max_messages,
                WaitTimeSeconds=wait_seconds,
                VisibilityTimeout=visibility_timeout,
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            ),
            f"receive from {self.queue}",
        )
        return [_message(m) for m in resp.get("Messages", [])]

    def extend(self, messages: Sequence[Message], visibility_timeout: int) -> list[str]:
        """Keep ``messages`` invisible for ``visibility_timeout`` more seconds; returns the ids
        SQS refused (their receipt is no longer ours)."""
        url = self.url(self.queue)
        failed: list[str] = []
        for start in range(0, len(messages), SQS_BATCH):
            chunk = messages[start : start + SQS_BATCH]
            entries: list[Any] = [
                {"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": visibility_timeout}
                for i, m in enumerate(chunk)
            ]
            resp = self._call(
                functools.partial(self.sqs.change_message_visibility_batch, QueueUrl=url, Entries=entries),
                f"extend visibility on {self.queue}",
            )
            failed.extend(chunk[int(f["Id"])].message_id for f in resp.get("Failed", []))
        return failed

    def release(self, message: Message, delay_seconds: int) -> bool:
        """Give ``message`` back: visible again after ``delay_seconds`` (0 = now)."""
        return self._on_receipt(
            lambda: self.sqs.change_message_visibility(
                QueueUrl=self.url(self.queue),
                ReceiptHandle=message.receipt_handle,
                VisibilityTimeout=delay_seconds,
            ),
            f"release {message.message_id}",
        )

    def delete_all(self, messages: Sequence[Message]) -> list[str]:
        """Delete after commit, ten per call (one round trip for a whole receive, where one per
        message took a fifth of the inserter's time in the 2,000-customer demo); returns the ids
        whose receipt was no longer ours. Entries SQS fails for another reason are retried."""
        gone: list[str] = []
        for start in range(0, len(messages), SQS_BATCH):
            pending = list(messages[start : start + SQS_BATCH])
            what = f"delete {len(pending)} messages from {self.queue}"
            call_with_retry(
                functools.partial(self._delete_batch, pending, gone, what), what=what, backoff=self.backoff
            )
        if gone:
            log.warning("receipt no longer valid", extra={"what": "delete", "message_ids": gone})
        return gone

    def _delete_batch(self, pending: list[Message], gone: list[str], what: str) -> None:
        """One DeleteMessageBatch of ``pending``; leaves in it only the entries to try again."""
        entries: list[Any] = [
            {"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(pending)
        ]
        try:
            resp = self.sqs.delete_message_batch(QueueUrl=self.url(self.queue), Entries=entries)
        except (ClientError, BotoCoreError) as exc:
            raise classify_aws(exc, what) from exc
        failed = {int(f["Id"]): str(f.get("Code", "")) for f in resp.get("Failed", [])}
        gone.extend(pending[i].message_id for i, code in failed.items() if code in _GONE)
        pending[:] = [m for i, m in enumerate(pending) if i in failed and failed[i] not in _GONE]
        if pending:
            codes = sorted({c for c in failed.values() if c not in _GONE})
            raise TransientError(f"{what}: {len(pending)} entries failed ({', '.join(codes)})")

    def _on_receipt(self, fn: Callable[[], Any], what: str) -> bool:
        def attempt() -> bool:
            try:
                fn()
            except ClientError as exc:
                if error_code(exc) in _GONE:
                    log.warning("receipt no longer valid", extra={"what": what, "code": error_code(exc)})
                    return False
                raise classify_aws(exc, what) from exc
            except BotoCoreError as exc:
                raise classify_aws(exc, what) from exc
            return True

        return call_with_retry(attempt, what=what, backoff=self.backoff)

    def dead_letter(self, message: Message, reason: str) -> None:
        """Send the body to the dead-letter queue with the reason as a message attribute, then
        delete the original (in that order: a crash between the two dead-letters it twice, never
        zero times)."""
        dlq = self.url(self.dead_letter_queue)
        attributes: dict[str, Any] = {
            "reason": {"DataType": "String", "StringValue": reason[:MAX_REASON_CHARS] or "unknown"},
            "source_queue": {"DataType": "String", "StringValue": self.queue},
            "source_message_id": {"DataType": "String", "StringValue": message.message_id},
            "receive_count": {"DataType": "Number", "StringValue": str(message.receive_count)},
        }
        self._call(
            lambda: self.sqs.send_message(
                QueueUrl=dlq, MessageBody=message.body or "(empty)", MessageAttributes=attributes
            ),
            f"dead-letter {message.message_id}",
        )
        self.delete_all([message])

    def send(self, body: str, attributes: dict[str, str] | None = None) -> str:
        """Announce a manifest (replay uses this; the batcher has its own announcer)."""
        url = self.url(self.queue)
        attrs: dict[str, Any] = {
            k: {"DataType": "String", "StringValue": v} for k, v in (attributes or {}).items()
        }
        resp = self._call(
            lambda: self.sqs.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=attrs),
            f"send to {self.queue}",
        )
        return str(resp["MessageId"])


def _message(raw: Any) -> Message:
    attrs = raw.get("Attributes", {})
    return Message(
        message_id=str(raw["MessageId"]),
        receipt_handle=str(raw["ReceiptHandle"]),
        body=str(raw.get("Body", "")),
        receive_count=int(attrs.get("ApproximateReceiveCount", "1")),
        sent_at_ms=int(attrs.get("SentTimestamp", "0")),
    )


class Heartbeat:
    """A thread that extends the visibility of every message the process holds, every
    ``every`` seconds, to ``extend_to`` seconds — so a long load keeps its message and a crash
    gives it back within ``extend_to`` seconds."""

    def __init__(
        self,
        queue: BatchQueue,
        *,
        every: float,
        extend_to: int,
        max_hold: float = 1800.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every >= extend_to:
            raise ValueError(f"heartbeat every {every}s cannot keep a {extend_to}s visibility timeout")
        self.queue = queue
        self.every = every
        self.extend_to = extend_to
        #: A message is extended for at most this long after it was first held: a load hung past
        #: every timeout cannot keep it from the redrive policy (the ledger makes a late commit
        #: and the message's next delivery safe together).
        self.max_hold = max_hold
        self.clock = clock
        self._since: dict[str, float] = {}
        self._held: dict[str, Message] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqs-heartbeat", daemon=True)

    def hold(self, messages: Sequence[Message]) -> None:
        now = self.clock()
        with self._lock:
            self._held.update((m.message_id, m) for m in messages)
            for m in messages:
                self._since.setdefault(m.message_id, now)

    def drop(self, message: Message) -> None:
        with self._lock:
            self._held.pop(message.message_id, None)
            self._since.pop(message.message_id, None)

    def held(self) -> list[Message]:
        with self._lock:
            return list(self._held.values())

    def beat(self) -> None:
        now = self.clock()
        with self._lock:
            expired = [m for m in self._held.values() if now - self._since[m.message_id] >= self.max_hold]
            for m in expired:
                self._held.pop(m.message_id, None)
        if expired:
            log.error(
                "messages held past the bound; no longer extended, they return to the queue",
                extra={"message_ids": [m.message_id for m in expired], "max_hold_seconds": self.max_hold},
            )
        held = self.held()
        if not held:
            return
        try:
            lost = self.queue.extend(held, self.extend_to)
        except Exception as exc:  # the next beat tries again; the loop must not die
            log.warning("visibility extension failed", extra={"reason": str(exc), "messages": len(held)})
            return
        if lost:
            log.warning("messages no longer ours (visibility ran out)", extra={"message_ids": lost})

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.beat()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every + 5)
