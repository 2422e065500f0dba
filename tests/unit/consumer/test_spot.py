"""The spot-notice poll against a stand-in metadata service (stdlib HTTP on loopback): IMDSv2
with a session token where offered, a plain GET where not, and no notice when nothing answers."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from pipeline.app.servers.process import free_port
from pipeline.consumer.spot import notice_present, token_url

TOKEN = "tok-123"


class Metadata(http.server.BaseHTTPRequestHandler):
    require_token = True
    notice = False

    def do_PUT(self) -> None:
        if not Metadata.require_token or self.path != "/latest/api/token":
            self.send_error(404)
            return
        assert self.headers["X-aws-ec2-metadata-token-ttl-seconds"]
        self._reply(200, TOKEN.encode())

    def do_GET(self) -> None:
        if Metadata.require_token and self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            self.send_error(401)
        elif Metadata.notice:
            self._reply(200, b'{"action": "terminate", "time": "2026-12-06T05:00:00Z"}')
        else:
            self.send_error(404)

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/latest/meta-data/spot/instance-action"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("imdsv2", [True, False])
def test_notice_seen_with_and_without_a_session_token(url: str, imdsv2: bool) -> None:
    Metadata.require_token, Metadata.notice = imdsv2, False
    assert not notice_present(url)
    Metadata.notice = True
    assert notice_present(url)


def test_no_metadata_service_means_no_notice() -> None:
    assert not notice_present(
        f"http://127.0.0.1:{free_port()}/latest/meta-data/spot/instance-action", timeout=0.5
    )


def test_token_address_is_on_the_same_metadata_host() -> None:
    assert token_url("http://169.254.169.254/latest/meta-data/spot/instance-action") == (
        "http://169.254.169.254/latest/api/token"
    )
