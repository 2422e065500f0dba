"""The HTTP read API: JSON over the projector's read models (docs/openapi.yaml).

The standard library's ThreadingHTTPServer is enough: a request is one ``read.lua`` round trip
to Redis plus ~100 µs of Python, HTTP/1.1 keep-alive spares the connection set-up, and Nagle is
off so a response never waits for a delayed ACK (docs/projector.md has the latencies). A thread
per connection; the Redis client's pool is thread-safe.

    GET /healthz
    GET /v1/status
    GET /v1/customers/{customer}/counts/{type}?by=hour|day&from=&to=
    GET /v1/customers/{customer}/entities/{kind}/{id}
    GET /v1/customers/{customer}/top/{measure}?n=10
    GET /v1/customers/{customer}/calendars/{provider}?from=&to=&limit=
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from pipeline.core.errors import TerminalError, TransientError
from workers.projector.reader import QueryError, ReadModelReader, parse_time

log = logging.getLogger("shardhouse.readapi")

_SEGMENT: Final = r"([^/]+)"
Handler = Callable[[ReadModelReader, tuple[str, ...], Mapping[str, str]], Any]


def _param_int(params: Mapping[str, str], name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise QueryError(f"{name}: {raw!r} is not an integer") from None


def _param_time(params: Mapping[str, str], name: str) -> Any:
    raw = params.get(name)
    return None if raw is None else parse_time(raw, name)


def _status(reader: ReadModelReader, _args: tuple[str, ...], _params: Mapping[str, str]) -> Any:
    return reader.status()


def _health(reader: ReadModelReader, _args: tuple[str, ...], _params: Mapping[str, str]) -> Any:
    status = reader.status()
    return {"ok": True, "generation": status["generation"], "building": status["building"]}


def _counts(reader: ReadModelReader, args: tuple[str, ...], params: Mapping[str, str]) -> Any:
    return reader.counts(
        args[0], args[1], params.get("by", "hour"), _param_time(params, "from"), _param_time(params, "to")
    )


def _entity(reader: ReadModelReader, args: tuple[str, ...], _params: Mapping[str, str]) -> Any:
    return reader.entity(args[0], args[1], args[2])


def _top(reader: ReadModelReader, args: tuple[str, ...], params: Mapping[str, str]) -> Any:
    return reader.top(args[0], args[1], _param_int(params, "n", 10))


def _calendar(reader: ReadModelReader, args: tuple[str, ...], params: Mapping[str, str]) -> Any:
    return reader.calendar(
        args[0],
        args[1],
        _param_time(params, "from"),
        _param_time(params, "to"),
        _param_int(params, "limit", 100),
    )


ROUTES: Final[tuple[tuple[str, re.Pattern[str], Handler], ...]] = (
    ("health", re.compile(r"/healthz"), _health),
    ("status", re.compile(r"/v1/status"), _status),
    ("counts", re.compile(rf"/v1/customers/{_SEGMENT}/counts/{_SEGMENT}"), _counts),
    ("entity", re.compile(rf"/v1/customers/{_SEGMENT}/entities/{_SEGMENT}/{_SEGMENT}"), _entity),
    ("top", re.compile(rf"/v1/customers/{_SEGMENT}/top/{_SEGMENT}"), _top),
    ("calendar", re.compile(rf"/v1/customers/{_SEGMENT}/calendars/{_SEGMENT}"), _calendar),
)


def route(path: str) -> tuple[str, Handler, tuple[str, ...]] | None:
    """The route of a raw request path; segments are percent-decoded after matching, so an id
    may contain an encoded "/" (``%2F``)."""
    for name, pattern, handler in ROUTES:
        match = pattern.fullmatch(path)
        if match is not None:
            return name, handler, tuple(unquote(g) for g in match.groups())
    return None


class ReadApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        reader: ReadModelReader,
        *,
        prom_registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        super().__init__(address, _RequestHandler)
        self.reader = reader
        self.latency = (
            Histogram(
                "shardhouse_readapi_seconds",
                "Read API request latency by route",
                ["route"],
                buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
                registry=prom_registry,
            )
            if prom_registry is not None
            else None
        )

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> threading.Thread:
        """Serve on a daemon thread (tests, benchmarks); stop with :meth:`close`."""
        thread = threading.Thread(target=self.serve_forever, name="readapi", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: ReadApiServer
    server_version = "shardhouse-readapi"
    sys_version = ""

    def do_GET(self) -> None:
        started = time.perf_counter()
        parts = urlsplit(self.path)
        found = route(parts.path)
        name = found[0] if found else "unknown"
        if found is None:
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no such resource: {parts.path}"})
        else:
            _, handler, args = found
            params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            try:
                body = handler(self.server.reader, args, params)
            except QueryError as exc:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            except TransientError as exc:
                log.warning("read api: redis unavailable", extra={"error": str(exc)})
                self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "read models unavailable, retry"})
            except TerminalError as exc:
                log.error("read api: query failed", extra={"error": str(exc), "path": parts.path})
                self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})
            except Exception:
                log.exception("read api: unexpected error", extra={"path": parts.path})
                self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})
            else:
                if body is None:
                    self._reply(HTTPStatus.NOT_FOUND, {"error": "not found"})
                else:
                    self._reply(HTTPStatus.OK, body)
        if self.server.latency is not None:
            self.server.latency.labels(name).observe(time.perf_counter() - started)

    def _reply(self, status: HTTPStatus, body: Any) -> None:
        payload = orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(payload)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Per-request lines would cost more than the request; latency is in the metrics."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("read api: " + format, *args)
