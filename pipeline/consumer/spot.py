"""EC2 spot interruption notices: poll instance metadata and ask the worker to hand off.

``spot/instance-action`` answers 404 until AWS schedules the interruption (two minutes ahead),
then 200 with the action. Off EC2 the address does not answer; that is not an error.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable

log = logging.getLogger(__name__)


def notice_present(url: str, *, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - operator-configured URL
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
