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

Access (threat model in docs/projector.md): ``none`` (loopback only, a warning otherwise),
``tokens`` (``Authorization: Bearer <token>``, each token scoped to customers or ``*``), or
``proxy`` (a reverse proxy authenticates and names the customer in a header). Connections idle
past a timeout are closed and at most ``max_connections`` are served at once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from pipeline.core.errors import ConfigError, TerminalError, TransientError
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


#: Routes anyone may call (a load balancer's health check); every other route needs access to
#: its customer, and ``status`` (all customers' positions) to every customer (``*``).
PUBLIC_ROUTES: Final = frozenset({"health"})
ALL: Final = "*"
MIN_TOKEN_LENGTH: Final = 32


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Access:
    """Who may read which customer. ``tokens`` maps SHA-256 digests of bearer tokens to their
    customers (``*`` = all), so a lookup compares digests, never the secrets themselves."""

    mode: str = "none"
    tokens: Mapping[bytes, frozenset[str]] = field(default_factory=dict)
    proxy_header: str = "X-Shardhouse-Customer"

    @classmethod
    def from_lines(cls, lines: list[str], origin: str = "<tokens>") -> Access:
        """``tokens`` access from ``<token> <customer>[,<customer>…]`` lines (``*`` = every
        customer; blank lines and ``#`` comments ignored)."""
        tokens: dict[bytes, frozenset[str]] = {}
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            token, _, scope = text.partition(" ")
            customers = frozenset(c.strip() for c in scope.split(",") if c.strip())
            if len(token) < MIN_TOKEN_LENGTH or not customers:
                raise ConfigError(
                    f"{origin}:{number}: expected '<token of {MIN_TOKEN_LENGTH}+ chars> <customer>[,...]|*'"
                )
            tokens[_digest(token)] = customers
        return cls(mode="tokens", tokens=tokens)

    def allowed(self, route_name: str, customer: str | None, headers: Any) -> HTTPStatus | None:
        """None when the request may proceed, else 401 (no or unknown credentials) or 403.
        ``headers``: anything with ``get(name)`` (the request's ``http.client`` headers)."""
        if self.mode == "none" or route_name in PUBLIC_ROUTES:
            return None
        if self.mode == "proxy":
            named = headers.get(self.proxy_header)
            scope = frozenset(c.strip() for c in named.split(",")) if named else None
        else:
            auth = headers.get("Authorization") or ""
            scheme, _, token = auth.partition(" ")
            scope = self.tokens.get(_digest(token.strip())) if scheme.lower() == "bearer" else None
        if scope is None:
            return HTTPStatus.UNAUTHORIZED
        if ALL in scope or (customer is not None and customer in scope):
            return None
        return HTTPStatus.FORBIDDEN


def load_access(mode: str, tokens_file: str | None, proxy_header: str) -> Access:
    """The Access of the read API's settings (reads the tokens file for ``tokens``)."""
    if mode == "tokens":
        if not tokens_file:
            raise ConfigError("read API auth 'tokens' needs a tokens file")
        try:
            with open(tokens_file, encoding="utf-8") as fh:
                return Access.from_lines(fh.read().splitlines(), tokens_file)
        except OSError as exc:
            raise ConfigError(f"cannot read read-API tokens file {tokens_file}: {exc}") from exc
    if mode not in ("none", "proxy"):
        raise ConfigError(f"read API auth {mode!r}: expected none, tokens or proxy")
    return Access(mode=mode, proxy_header=proxy_header)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        access: Access | None = None,
        idle_timeout: float = 30.0,
        max_connections: int = 256,
    ) -> None:
        self.access = access or Access()
        if not is_loopback(address[0]):
            log.warning(
                "read API bound to a non-loopback address"
                + (
                    " WITHOUT authentication: anyone who reaches it reads every customer"
                    if self.access.mode == "none"
                    else ""
                ),
                extra={"host": address[0], "auth": self.access.mode},
            )
        super().__init__(address, _RequestHandler)
        self.reader = reader
        self.idle_timeout = idle_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused_connections = 0
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

    def process_request(self, request: Any, client_address: Any) -> None:
        """At most ``max_connections`` at once (a thread each): beyond, the connection is closed
        at once, so idle or slow clients cannot pile up threads."""
        if not self._slots.acquire(blocking=False):
            self.refused_connections += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

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

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.idle_timeout)  # idle keep-alive connections close

    def do_GET(self) -> None:
        started = time.perf_counter()
        parts = urlsplit(self.path)
        found = route(parts.path)
        name = found[0] if found else "unknown"
        denied = None
        if found is not None:
            customer = found[2][0] if found[2] else None
            denied = self.server.access.allowed(found[0], customer, self.headers)
        if found is None:
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no such resource: {parts.path[:200]}"})
        elif denied is not None:
            self._reply(
                denied, {"error": "unauthorized" if denied == HTTPStatus.UNAUTHORIZED else "forbidden"}
            )
        else:
            _, handler, args = found
            params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            try:
                body = handler(self.server.reader, args, params)
            except QueryError as exc:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            except OverflowError:  # a query value no check foresaw: still the client's, not ours
                self._reply(HTTPStatus.BAD_REQUEST, {"error": "a query value is out of range"})
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
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="shardhouse"')
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(payload)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Per-request lines would cost more than the request; latency is in the metrics."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("read api: " + format, *args)
