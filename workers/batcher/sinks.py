"""The batcher's I/O edges, one small interface each: object store (S3), announcer (SQS),
dedupe store (Redis, in :mod:`workers.batcher.dedupe`). Every method is a single attempt that
classifies its failure as transient or terminal; retries are the caller's policy (commit.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.core.aws_errors import classify_aws, error_code
from pipeline.core.errors import TerminalError, TransientError
from pipeline.core.manifest import BatchManifest, encode_manifest
from workers.batcher.dedupe import DedupeCheck

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size: int
    metadata: Mapping[str, str]
    created: bool  # False: an earlier attempt had already written it (If-None-Match said so)


class ObjectStore(Protocol):
    def put_once(
        self, key: str, body: bytes, *, metadata: Mapping[str, str], content_type: str
    ) -> StoredObject: ...

    def read(self, key: str) -> bytes:
        """The stored body (a reused shared object is described from its own rows)."""
        ...


class Announcer(Protocol):
    def announce(self, manifest: BatchManifest) -> None: ...


class DedupeStore(Protocol):
    def check(self, batch_id: str | None, ids: Sequence[bytes]) -> DedupeCheck: ...

    def mark(self, batch_id: str | None, ids: Sequence[bytes]) -> int: ...


_CONFLICT_CODES = frozenset({"ConditionalRequestConflict", "OperationAborted"})


def _classify_s3(exc: Exception, what: str) -> TransientError | TerminalError:
    if error_code(exc) in _CONFLICT_CODES:  # a concurrent conditional write: try again
        return TransientError(f"{what}: {error_code(exc)}: {exc}")
    return classify_aws(exc, what)


class S3ObjectStore:
    """Write-once objects: ``PutObject``/``CompleteMultipartUpload`` with ``If-None-Match: *``.

    When the key already exists (an earlier attempt of the same batch, or a retry whose first
    response was lost), S3 answers PreconditionFailed; the object is then read back with HEAD and
    described from its own metadata, so the manifest always tells the truth about what is stored.
    Bodies of ``multipart_threshold`` bytes or more go up in ``part_size`` parts. (boto3's
    TransferManager cannot pass If-None-Match, hence the few lines of multipart here.)
    """

    def __init__(
        self,
        s3: S3Client,
        bucket: str,
        *,
        multipart_threshold: int = 64 * MiB,
        part_size: int = 16 * MiB,
    ) -> None:
        if part_size < 5 * MiB:
            raise ValueError("S3 parts must be at least 5 MiB")
        self.s3 = s3
        self.bucket = bucket
        self.multipart_threshold = max(multipart_threshold, part_size)
        self.part_size = part_size

    def put_once(
        self, key: str, body: bytes, *, metadata: Mapping[str, str], content_type: str
    ) -> StoredObject:
        what = f"put s3://{self.bucket}/{key}"
        try:
            if len(body) >= self.multipart_threshold:
                self._multipart(key, body, metadata, content_type)
            else:
                self.s3.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    Metadata=dict(metadata),
                    ContentType=content_type,
                    IfNoneMatch="*",
                )
        except ClientError as exc:
            if error_code(exc) == "PreconditionFailed":
                return self._existing(key)
            raise _classify_s3(exc, what) from exc
        except BotoCoreError as exc:
            raise _classify_s3(exc, what) from exc
        return StoredObject(key=key, size=len(body), metadata=dict(metadata), created=True)

    def _multipart(self, key: str, body: bytes, metadata: Mapping[str, str], content_type: str) -> None:
        upload_id = self.s3.create_multipart_upload(
            Bucket=self.bucket, Key=key, Metadata=dict(metadata), ContentType=content_type
        )["UploadId"]
        try:
            parts: list[Any] = []
            view = memoryview(body)
            for number, start in enumerate(range(0, len(body), self.part_size), start=1):
                chunk = view[start : start + self.part_size]
                etag = self.s3.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=bytes(chunk)
                )["ETag"]
                parts.append({"ETag": etag, "PartNumber": number})
            self.s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except BaseException:
            # If the abort fails too, the bucket's lifecycle rule reclaims the abandoned upload.
            with contextlib.suppress(ClientError, BotoCoreError):
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    def read(self, key: str) -> bytes:
        try:
            body: bytes = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise _classify_s3(exc, f"get s3://{self.bucket}/{key}") from exc
        return body

    def _existing(self, key: str) -> StoredObject:
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise _classify_s3(exc, f"head s3://{self.bucket}/{key}") from exc
        return StoredObject(
            key=key, size=int(head["ContentLength"]), metadata=dict(head.get("Metadata", {})), created=False
        )


class SqsAnnouncer:
    """Sends a manifest as one SQS message. On a FIFO queue the batch id is the deduplication
    id, so a replayed announcement inside SQS' 5-minute window is dropped by SQS itself; on a
    standard queue the inserter's ledger (keyed on batch id) makes a second delivery harmless."""

    def __init__(self, sqs: SQSClient, queue_name: str) -> None:
        self.sqs = sqs
        self.queue_name = queue_name
        self._url: str | None = None
        self._lock = threading.Lock()

    def _queue_url(self) -> str:
        with self._lock:
            if self._url is None:
                try:
                    self._url = self.sqs.get_queue_url(QueueName=self.queue_name)["QueueUrl"]
                except (ClientError, BotoCoreError) as exc:
                    raise classify_aws(exc, f"get queue url {self.queue_name}") from exc
            return self._url

    def announce(self, manifest: BatchManifest) -> None:
        url = self._queue_url()
        body = encode_manifest(manifest)
        attributes: dict[str, Any] = {
            "batch_id": {"DataType": "String", "StringValue": manifest.batch_id},
        }
        try:
            if url.endswith(".fifo"):
                dedup = hashlib.sha256(manifest.batch_id.encode()).hexdigest()
                self.sqs.send_message(
                    QueueUrl=url,
                    MessageBody=body,
                    MessageAttributes=attributes,
                    MessageGroupId=manifest.shard_id,
                    MessageDeduplicationId=dedup,
                )
            else:
                self.sqs.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=attributes)
        except (ClientError, BotoCoreError) as exc:
            raise classify_aws(exc, f"send manifest {manifest.batch_id}") from exc
