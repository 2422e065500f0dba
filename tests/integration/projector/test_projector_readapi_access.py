"""The read API under hostile use, on a real server over a real redis-server: bearer tokens
scoped to customers, the reverse-proxy mode, idle connections closed, and out-of-range query
values answered 400 (never 500) whatever hypothesis sends."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from projector_harness import REGISTRY, T0, make_env
from prometheus_client import CollectorRegistry

from pipeline.core.settings import Settings
from workers.projector.readapi import Access, ReadApiServer
from workers.projector.reader import ReadModelReader

pytestmark = pytest.mark.integration

TOKEN_A = "a" * 40
TOKEN_ALL = "z" * 40


def _serve(settings: Settings, name: str, access: Access, **kw: Any) -> ReadApiServer:
    env = make_env(settings, name)
    reader = ReadModelReader(env.clients.redis(), env.namespace, REGISTRY.type_names(), clock=lambda: T0)
    server = ReadApiServer(("127.0.0.1", 0), reader, prom_registry=CollectorRegistry(), access=access, **kw)
    server.start()
    return server


@pytest.fixture
def tokens_server(settings: Settings, unique_name: str) -> Iterator[ReadApiServer]:
    access = Access.from_lines([f"{TOKEN_A} cust_a", f"{TOKEN_ALL} *", "# comment", ""])
    server = _serve(settings, unique_name, access)
    try:
        yield server
    finally:
        server.close()


def _get(server: ReadApiServer, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_are_scoped_to_customers(tokens_server: ReadApiServer) -> None:
    path = "/v1/customers/{}/top/page_views?n=3"
    assert _get(tokens_server, "/healthz")[0] == 200  # public
    assert _get(tokens_server, path.format("cust_a"))[0] == 401
    assert _get(tokens_server, path.format("cust_a"), _bearer("b" * 40))[0] == 401
    assert _get(tokens_server, path.format("cust_a"), {"Authorization": f"Basic {TOKEN_A}"})[0] == 401
    assert _get(tokens_server, path.format("cust_a"), _bearer(TOKEN_A))[0] == 200
    assert _get(tokens_server, path.format("cust_b"), _bearer(TOKEN_A)) == (403, {"error": "forbidden"})
    assert _get(tokens_server, path.format("cust_b"), _bearer(TOKEN_ALL))[0] == 200
    assert _get(tokens_server, "/v1/status", _bearer(TOKEN_A))[0] == 403  # every customer's positions
    assert _get(tokens_server, "/v1/status", _bearer(TOKEN_ALL))[0] == 200


def test_proxy_mode_trusts_the_proxys_header(settings: Settings, unique_name: str) -> None:
    server = _serve(settings, unique_name, Access(mode="proxy", proxy_header="X-Customer"))
    try:
        path = "/v1/customers/cust_a/top/bookings"
        assert _get(server, path)[0] == 401
        assert _get(server, path, {"X-Customer": "cust_b"})[0] == 403
        assert _get(server, path, {"X-Customer": "cust_b, cust_a"})[0] == 200
    finally:
        server.close()


def test_idle_connections_are_closed_and_connections_capped(settings: Settings, unique_name: str) -> None:
    server = _serve(settings, unique_name, Access(), idle_timeout=0.5, max_connections=2)
    try:
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200" in _one_response(idle).split(b"\r\n")[0]
        idle.settimeout(10)
        started = time.monotonic()
        rest = idle.recv(4096)  # keep-alive: the server closes it after the idle timeout
        assert rest == b"" and time.monotonic() - started < 9
        idle.close()
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
        time.sleep(0.1)
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        assert extra.recv(4096) == b""  # over max_connections: closed at once
        extra.close()
        for s in held:
            s.close()
        deadline = time.monotonic() + 10
        while server.refused_connections < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.refused_connections >= 1
    finally:
        server.close()


def _one_response(sock: socket.socket) -> bytes:
    """Read exactly one HTTP response (headers, then Content-Length bytes): TCP may split it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed before the headers ended: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, "closed before the body ended"
        body += chunk
    return head


_EDGE = st.sampled_from(
    ["0001-01-01", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59", "9999-12-31", "1969-12-31",
     "2200-01-01", "1970-01-01T00:00:00Z", "2199-12-31T23:00:00Z", "-1", "1e999", "9" * 5000, "",
     "2024-05-01T12:00:00+25:00", "nan", "\x00", "2024-02-30", "-" * 3]
)  # fmt: skip
_VALUE = _EDGE | st.text(max_size=30) | st.integers().map(str)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    route=st.sampled_from(["counts", "calendar", "top", "entity"]),
    params=st.dictionaries(st.sampled_from(["from", "to", "n", "limit", "by"]), _VALUE, max_size=4),
    segment=_VALUE,
)
def test_out_of_range_query_values_are_400_not_500(
    tokens_server: ReadApiServer, route: str, params: dict[str, str], segment: str
) -> None:
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    seg = quote(segment, safe="") or "x"
    path = {
        "counts": f"/v1/customers/cust_a/counts/page_view?{query}",
        "calendar": f"/v1/customers/cust_a/calendars/{seg}?{query}",
        "top": f"/v1/customers/cust_a/top/page_views?{query}",
        "entity": f"/v1/customers/cust_a/entities/user/{seg}",
    }[route]
    status, body = _get(tokens_server, path, _bearer(TOKEN_ALL))
    assert status in (200, 400, 404), (path, status, body)
    if status == 400:
        assert body["error"]
