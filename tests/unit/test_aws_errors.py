"""Which botocore failures are outages (waited out) and which are verdicts (terminal)."""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ParamValidationError,
    ProxyConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
    SSLError,
)

from pipeline.core.aws_errors import classify_aws, is_transient_aws
from pipeline.core.errors import TerminalError, TransientError

URL = "http://127.0.0.1:5000/bucket/key"


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
    )


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionClosedError(endpoint_url=URL),  # reset mid-response: what a cut proxy does
        ReadTimeoutError(endpoint_url=URL),
        ConnectTimeoutError(endpoint_url=URL),
        EndpointConnectionError(endpoint_url=URL),
        ProxyConnectionError(proxy_url=URL),
        SSLError(endpoint_url=URL, error="handshake"),
        ResponseStreamingError(error="connection broken"),  # a streamed body cut short
        IncompleteReadError(actual_bytes=10, expected_bytes=100),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("timed out"),
        client_error("SlowDown", 503),
        client_error("InternalError", 500),
        client_error("Whatever", 502),
        client_error("TooManyRequestsException", 429),
        client_error("ProvisionedThroughputExceededException", 400),
    ],
    ids=lambda e: (
        type(e).__name__ + (f"-{e.response['Error']['Code']}" if isinstance(e, ClientError) else "")
    ),
)
def test_a_dependency_that_does_not_answer_is_an_outage(exc: BaseException) -> None:
    assert is_transient_aws(exc)
    wrapped = classify_aws(exc, "get s3://b/k")
    assert isinstance(wrapped, TransientError) and wrapped.__class__ is TransientError
    assert str(wrapped).startswith("get s3://b/k: ")


@pytest.mark.parametrize(
    "exc",
    [
        client_error("AccessDenied", 403),
        client_error("NoSuchBucket", 404),
        client_error("ValidationException", 400),
        NoCredentialsError(),
        ParamValidationError(report="bad"),
    ],
    ids=lambda e: (
        type(e).__name__ + (f"-{e.response['Error']['Code']}" if isinstance(e, ClientError) else "")
    ),
)
def test_a_refusal_is_terminal_and_keeps_its_code(exc: BaseException) -> None:
    assert not is_transient_aws(exc)
    wrapped = classify_aws(exc, "put s3://b/k")
    assert isinstance(wrapped, TerminalError)
    code = exc.response["Error"]["Code"] if isinstance(exc, ClientError) else type(exc).__name__
    assert str(wrapped).startswith(f"put s3://b/k: {code}: ")
