"""Classify botocore failures into the product's transient/terminal split."""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
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


def error_code(exc: BaseException) -> str:
    """The AWS error code of a ClientError, else ''."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_transient_aws(exc: BaseException) -> bool:
    if isinstance(exc, TransientError):
        return True
    if isinstance(
        exc, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError | BotoConnectionError
    ):
        return True
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return error_code(exc) in TRANSIENT_CODES or status >= 500
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
