"""Create the pipeline's AWS resources and warehouse database, idempotently.

Every step first asks whether the resource exists, so running provision twice (or from two
terminals) is harmless.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
from botocore.exceptions import ClientError
from psycopg import sql

from pipeline.core.aws_errors import classify_aws, error_code
from pipeline.core.errors import TerminalError
from pipeline.core.settings import ResourceSettings

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient


def ensure_stream(kinesis: KinesisClient, name: str, shards: int, *, timeout: float = 60.0) -> str:
    """Create the stream if missing and wait until ACTIVE. Returns 'created' or 'exists'."""
    outcome = "exists"
    try:
        kinesis.create_stream(StreamName=name, ShardCount=shards)
        outcome = "created"
    except ClientError as exc:
        if error_code(exc) != "ResourceInUseException":
            raise classify_aws(exc, f"create stream {name}") from exc
    deadline = time.monotonic() + timeout
    while True:
        status = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"]
        if status == "ACTIVE":
            return outcome
        if time.monotonic() > deadline:
            raise TerminalError(f"stream {name} still {status} after {timeout:.0f}s")
        time.sleep(0.2)


def ensure_bucket(s3: S3Client, name: str, region: str) -> str:
    try:
        s3.head_bucket(Bucket=name)
        return "exists"
    except ClientError as exc:
        if error_code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
            raise classify_aws(exc, f"head bucket {name}") from exc
    try:
        if region == "us-east-1":
            s3.create_bucket(Bucket=name)
        else:
            s3.create_bucket(
                Bucket=name,
                CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item]
            )
    except ClientError as exc:
        if error_code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
            raise classify_aws(exc, f"create bucket {name}") from exc
    return "created"


def ensure_queues(sqs: SQSClient, resources: ResourceSettings, *, visibility_timeout: int = 120) -> str:
    """The batch queue with its dead-letter queue and redrive policy."""
    dlq_url = sqs.create_queue(
        QueueName=resources.dead_letter_queue,
        Attributes={"MessageRetentionPeriod": str(14 * 24 * 3600)},
    )["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = json.dumps(
        {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(resources.max_receive_count)}
    )
    try:
        url = sqs.get_queue_url(QueueName=resources.queue)["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": redrive})
        return "exists"
    except ClientError as exc:
        if error_code(exc) not in {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}:
            raise classify_aws(exc, f"get queue {resources.queue}") from exc
    sqs.create_queue(
        QueueName=resources.queue,
        Attributes={
            "VisibilityTimeout": str(visibility_timeout),
            "ReceiveMessageWaitTimeSeconds": "20",
            "RedrivePolicy": redrive,
        },
    )
    return "created"


def _admin(url: str, connect_timeout: int) -> tuple[psycopg.Connection[Any], str]:
    """An autocommit session on the server's ``postgres`` database, and the dbname ``url`` names."""
    dbname = str(psycopg.conninfo.conninfo_to_dict(url).get("dbname") or "shardhouse")
    admin = psycopg.conninfo.make_conninfo(url, dbname="postgres")
    return psycopg.connect(admin, autocommit=True, connect_timeout=connect_timeout), dbname


def _exists(conn: psycopg.Connection[Any], dbname: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is not None


def ensure_database(url: str, *, connect_timeout: int = 10) -> str:
    """Create the warehouse database named in ``url``."""
    conn, dbname = _admin(url, connect_timeout)
    with conn:
        if _exists(conn, dbname):
            return "exists"
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    return "created"


def drop_database(url: str, *, connect_timeout: int = 10) -> bool:
    """Drop the database named in ``url`` (its sessions are ended first); True if it existed."""
    conn, dbname = _admin(url, connect_timeout)
    with conn:
        if not _exists(conn, dbname):
            return False
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname)))
    return True


def provision_all(
    *,
    kinesis: KinesisClient,
    s3: S3Client,
    sqs: SQSClient,
    resources: ResourceSettings,
    region: str,
    warehouse_url: str | None,
    report: Callable[[str, str], None] = lambda _what, _outcome: None,
) -> None:
    report(
        f"stream {resources.stream} ({resources.shard_count} shards)",
        ensure_stream(kinesis, resources.stream, resources.shard_count),
    )
    report(f"bucket {resources.bucket}", ensure_bucket(s3, resources.bucket, region))
    report(f"queue {resources.queue} + DLQ {resources.dead_letter_queue}", ensure_queues(sqs, resources))
    if warehouse_url:
        report("warehouse database", ensure_database(warehouse_url))
