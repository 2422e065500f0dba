"""Which Redis failures are outages (waited out) and which are verdicts (terminal)."""

from __future__ import annotations

import pytest
import redis
from redis._parsers.base import BaseParser

from pipeline.core.errors import TerminalError, TransientError
from pipeline.core.redis_errors import classify_redis


@pytest.mark.parametrize(
    "exc",
    [
        redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
        redis.TimeoutError("Timeout reading from socket"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("timed out"),
        redis.BusyLoadingError("LOADING Redis is loading the dataset in memory"),
        redis.ResponseError("BUSY Redis is busy running a script."),
        redis.ReadOnlyError("READONLY You can't write against a read only replica."),
        redis.ResponseError(
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."
        ),
        redis.ResponseError("CLUSTERDOWN The cluster is down"),
        redis.ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"),
        redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_server_that_cannot_serve_now_is_an_outage(exc: BaseException) -> None:
    wrapped = classify_redis(exc, "apply read models")
    assert type(wrapped) is TransientError
    assert str(wrapped).startswith(f"apply read models: {type(exc).__name__}: ")


@pytest.mark.parametrize(
    "exc",
    [
        *map(
            BaseParser.parse_error,
            [
                "WRONGTYPE Operation against a key holding the wrong kind of value",
                "ERR user_script:12: Script attempted to access nonexistent global variable",
                "NOSCRIPT No matching script. Please use EVAL.",
            ],
        ),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_refusal_is_terminal(exc: BaseException) -> None:
    assert isinstance(classify_redis(exc, "dedupe check"), TerminalError)
