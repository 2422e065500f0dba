"""Classify botocore failures into the product's transient/terminal split.

Transient, by category rather than by name: anything the transport raises (botocore's
``HTTPClientError`` family — a connection closed or reset mid-response, a read timeout, a
streamed body cut short — and its ``ConnectionError`` family — refused, unreachable, connect
timeout, proxy or TLS failure — plus an incomplete body and the OS's own connection and timeout
errors), throttling and server-side codes, and any 5xx or 429. A dependency that does not answer
is an outage to wait out, never a verdict on the work."""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from pipeline.core.errors import TerminalError, TransientError

TRANSIENT_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "KMSThrottlingException",
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "TransactionInProgressException",
    }
)


#: What the transport raises when the other end is out (builtin ConnectionError and TimeoutError:
#: resets and timeouts that reach us unwrapped, e.g. from a streamed body).
_TRANSPORT = (HTTPClientError, BotoConnectionError, IncompleteReadError, ConnectionError, TimeoutError)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a ClientError, else ''."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_transient_aws(exc: BaseException) -> bool:
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, _TRANSPORT):
        return True
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return error_code(exc) in TRANSIENT_CODES or status >= 500 or status == 429
    return False


def classify_aws(exc: BaseException, what: str) -> TransientError | TerminalError:
    """Wrap a botocore error, keeping the AWS code in the message."""
    code = error_code(exc) or type(exc).__name__
    msg = f"{what}: {code}: {exc}"
    if is_transient_aws(exc):
        return TransientError(msg)
    if isinstance(exc, ClientError | BotoCoreError):
        return TerminalError(msg)
    return TerminalError(msg)
