"""EC2 spot interruption notices: poll instance metadata and ask the worker to hand off.

``spot/instance-action`` answers 404 until AWS schedules the interruption (two minutes ahead),
then 200 with the action. Off EC2 the address does not answer; that is not an error. Each poll
first asks for an IMDSv2 session token (so instances can require IMDSv2, as deploy/shardhouse.yaml
does) and falls back to a plain GET where the metadata service offers no token.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)


TOKEN_TTL_S = 300


def token_url(action_url: str) -> str:
    """IMDSv2's session-token address on the metadata host of ``action_url``."""
    return urlunsplit(urlsplit(action_url)._replace(path="/latest/api/token", query="", fragment=""))


def session_token(action_url: str, *, timeout: float = 1.0) -> str | None:
    """An IMDSv2 token, or None where there is none to have (IMDSv1 only, or not on EC2)."""
    ttl = {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)}
    request = urllib.request.Request(token_url(action_url), method="PUT", headers=ttl)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            return str(resp.read().decode()) or None
    except OSError:  # HTTPError included: a metadata service without IMDSv2
        return None


def notice_present(url: str, *, timeout: float = 1.0) -> bool:
    token = session_token(url, timeout=timeout)
    headers = {"X-aws-ec2-metadata-token": token} if token else {}
    try:
        request = urllib.request.Request(url, headers=headers)  # noqa: S310 - operator-configured URL
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            return 200 <= int(resp.status) < 300
    except urllib.error.HTTPError:
        return False  # 404: no interruption scheduled
    except OSError:
        return False  # not on EC2 (or metadata unreachable)


def watch_spot_notice(
    url: str, interval_s: float, on_notice: Callable[[], None], stop: threading.Event
) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(interval_s):
            if notice_present(url):
                log.warning("spot interruption notice: handing leases off", extra={"url": url})
                on_notice()
                return

    thread = threading.Thread(target=loop, name="spot-notice", daemon=True)
    thread.start()
    return thread
