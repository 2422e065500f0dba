"""The one client factory.

Built once at the entrypoint from :class:`~pipeline.core.settings.Settings`; components receive the
clients they need as arguments. All boto3 clients share one botocore config (timeouts, bounded
retries in botocore's ``standard`` mode, which backs off with jitter).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import boto3
import psycopg
import redis
from botocore.config import Config

from pipeline.core.settings import Settings

#: libpq settings for warehouse connections (docs/inserter.md, "Timeouts"): keepalive probes
#: after 30 s idle, every 10 s, given up after 3 unanswered; data unacknowledged for 60 s ends
#: the connection too (a COPY into a vanished server).
WAREHOUSE_KEEPALIVES: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}


def warehouse_conninfo(url: str) -> str:
    """``url`` with :data:`WAREHOUSE_KEEPALIVES` added where it does not set them itself."""
    given = psycopg.conninfo.conninfo_to_dict(url)
    return psycopg.conninfo.make_conninfo(
        url, **{k: v for k, v in WAREHOUSE_KEEPALIVES.items() if k not in given}
    )


if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient


class ClientFactory:
    """Builds and caches one client per service for this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        aws = settings.aws
        self._config = Config(
            region_name=aws.region,
            connect_timeout=aws.connect_timeout,
            read_timeout=aws.read_timeout,
            retries={"max_attempts": aws.max_attempts, "mode": "standard"},
            max_pool_connections=32,
        )
        self._session = boto3.session.Session(region_name=aws.region)

    def _boto(self, service: str) -> Any:
        endpoint = self.settings.aws.endpoint_for(service)
        return self._session.client(service, endpoint_url=endpoint, config=self._config)  # type: ignore[call-overload]

    @functools.cache  # noqa: B019 - one factory per process; caching is the point
    def kinesis(self) -> KinesisClient:
        return self._boto("kinesis")  # type: ignore[no-any-return]

    @functools.cache  # noqa: B019
    def dynamodb(self) -> DynamoDBClient:
        return self._boto("dynamodb")  # type: ignore[no-any-return]

    @functools.cache  # noqa: B019
    def s3(self) -> S3Client:
        return self._boto("s3")  # type: ignore[no-any-return]

    @functools.cache  # noqa: B019
    def sqs(self) -> SQSClient:
        return self._boto("sqs")  # type: ignore[no-any-return]

    @functools.cache  # noqa: B019
    def cloudformation(self) -> CloudFormationClient:
        return self._boto("cloudformation")  # type: ignore[no-any-return]

    @functools.cache  # noqa: B019
    def redis(self) -> redis.Redis:
        cfg = self.settings.redis
        return redis.Redis.from_url(
            cfg.url,
            socket_timeout=cfg.socket_timeout,
            socket_connect_timeout=cfg.socket_timeout,
            health_check_interval=30,
        )

    def warehouse(self, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        """A new warehouse connection (connections are not shared across threads). TCP
        keepalives (unless the URL sets its own): a server that vanishes without a reset (a
        failover, a partition) fails the connection within ~1 minute instead of the kernel's
        retransmission timeout of ~15, so the caller's retries and outage wait take over."""
        cfg = self.settings.warehouse
        return psycopg.connect(
            warehouse_conninfo(cfg.url), connect_timeout=int(cfg.connect_timeout), autocommit=autocommit
        )
