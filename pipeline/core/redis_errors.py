"""Redis errors classified where they enter, like AWS errors in :mod:`pipeline.core.aws_errors`."""

from __future__ import annotations

import redis

from pipeline.core.errors import TerminalError, TransientError


def classify_redis(exc: BaseException, what: str) -> TransientError | TerminalError:
    """Connection trouble, timeouts, LOADING and BUSY are worth retrying; the rest is not."""
    msg = f"{what}: {type(exc).__name__}: {exc}"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return TransientError(msg)
    if isinstance(exc, redis.ResponseError) and str(exc).startswith(("BUSY", "LOADING", "TRYAGAIN")):
        return TransientError(msg)
    return TerminalError(msg)
