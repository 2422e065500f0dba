"""The read API's access decisions (pure): token scopes, proxy header, public routes, loopback."""

from __future__ import annotations

from http import HTTPStatus

import pytest

from pipeline.core.errors import ConfigError
from workers.projector.readapi import Access, is_loopback, load_access

TOKEN = "t" * 32


def test_token_scopes() -> None:
    access = Access.from_lines([f"{TOKEN} cust_a,cust_b", "  ", "# x", f"{'u' * 40} *"])
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert access.allowed("top", "cust_a", bearer) is None
    assert access.allowed("top", "cust_c", bearer) == HTTPStatus.FORBIDDEN
    assert access.allowed("status", None, bearer) == HTTPStatus.FORBIDDEN
    assert access.allowed("status", None, {"Authorization": "Bearer " + "u" * 40}) is None
    assert access.allowed("top", "cust_a", {}) == HTTPStatus.UNAUTHORIZED
    assert access.allowed("top", "cust_a", {"Authorization": TOKEN}) == HTTPStatus.UNAUTHORIZED
    assert access.allowed("health", None, {}) is None
    assert TOKEN.encode() not in repr(access).encode()  # digests only


@pytest.mark.parametrize("line", ["short cust_a", f"{TOKEN}", f"{TOKEN} ,"])
def test_bad_token_lines_are_refused(line: str) -> None:
    with pytest.raises(ConfigError, match=":1:"):
        Access.from_lines([line])


def test_proxy_and_none_modes() -> None:
    proxy = Access(mode="proxy")
    assert proxy.allowed("entity", "c1", {"X-Shardhouse-Customer": "c2,c1"}) is None
    assert proxy.allowed("entity", "c1", {"X-Shardhouse-Customer": "c2"}) == HTTPStatus.FORBIDDEN
    assert proxy.allowed("entity", "c1", {}) == HTTPStatus.UNAUTHORIZED
    assert Access().allowed("status", None, {}) is None
    with pytest.raises(ConfigError):
        load_access("tokens", None, "X")
    with pytest.raises(ConfigError):
        load_access("basic", None, "X")


@pytest.mark.parametrize(("host", "loop"), [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                            ("0.0.0.0", False), ("10.0.0.5", False), ("", False)])  # fmt: skip
def test_is_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop
