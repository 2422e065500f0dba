"""Redis errors classified where they enter, like AWS errors in :mod:`pipeline.core.aws_errors`."""

from __future__ import annotations

import redis

from pipeline.core.errors import TerminalError, TransientError

#: Replies of a server that is there but cannot serve for now: busy with a script, loading its
#: data, mid-failover (a replica that was the primary, no primary, a cluster slot moving), or out
#: of memory until keys expire or an operator scales it (a script is refused for OOM before its
#: first write, so a retry is safe).
#: redis-py parses most of these into classes (and strips the code from the message); the rest
#: arrive as a plain ResponseError that still starts with the code.
_NOT_NOW_CLASSES = (
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ClusterDownError,  # and MasterDownError
    redis.exceptions.TryAgainError,
)
_NOT_NOW = ("BUSY", "LOADING", "TRYAGAIN", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "NOREPLICAS", "OOM")


def classify_redis(exc: BaseException, what: str) -> TransientError | TerminalError:
    """Connection trouble and timeouts (redis-py's and the OS's), and the replies of a server
    that cannot serve for now, are outages worth waiting out; the rest is not."""
    msg = f"{what}: {type(exc).__name__}: {exc}"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | ConnectionError | TimeoutError):
        return TransientError(msg)
    if isinstance(exc, _NOT_NOW_CLASSES):
        return TransientError(msg)
    if isinstance(exc, redis.ResponseError) and str(exc).startswith(_NOT_NOW):
        return TransientError(msg)
    return TerminalError(msg)
