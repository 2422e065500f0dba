"""A worker whose Kinesis and DynamoDB stop answering (a network partition, an endpoint outage)
waits and carries on in the same process when they answer again: nothing is skipped."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from consumer_fleet import Fleet, put
from support.tcp_proxy import TcpProxy

from pipeline.core.settings import Settings


def payloads(n: int, tag: str) -> list[bytes]:
    return [f"{tag}-{i:06d}".encode() for i in range(n)]


def test_kinesis_and_dynamodb_cut_for_fifteen_seconds_lose_nothing(fleet: Fleet, settings: Settings) -> None:
    kinesis = urlsplit(settings.aws.endpoint_for("kinesis"))
    dynamodb = urlsplit(settings.aws.endpoint_for("dynamodb"))
    with (
        TcpProxy(kinesis.hostname or "127.0.0.1", kinesis.port or 80) as to_kinesis,
        TcpProxy(dynamodb.hostname or "127.0.0.1", dynamodb.port or 80) as to_dynamodb,
    ):
        worker = fleet.start(
            "w1",
            AWS_ENDPOINT_URL_KINESIS=f"http://127.0.0.1:{to_kinesis.port}",
            AWS_ENDPOINT_URL_DYNAMODB=f"http://127.0.0.1:{to_dynamodb.port}",
        )
        first = payloads(400, "a")
        put(fleet.clients, fleet.stream, first)
        fleet.wait_for("the first records", lambda: set(fleet.recorded_data()) >= set(first))
        to_kinesis.cut()
        to_dynamodb.cut()
        try:
            second = payloads(400, "b")
            put(fleet.clients, fleet.stream, second)  # while the worker cannot read or renew
            time.sleep(15)
            assert to_kinesis.refused + to_dynamodb.refused > 0, "the worker never tried during the cut"
            assert worker.poll() is None, "the worker exited during the outage"
        finally:
            to_kinesis.restore()
            to_dynamodb.restore()
        fleet.wait_for(
            "every record after the outage", lambda: set(fleet.recorded_data()) >= set(second), 120
        )
        assert worker.poll() is None, "the worker process exited"
        assert set(fleet.owners().values()) == {"w1"}
