"""Fixtures for the KCL MultiLangDaemon tests.

Kinesis is kinesis-mock (the Java KCL forces HTTP/2 on its Kinesis client; moto speaks HTTP/1.1
only), DynamoDB is the stack's moto, the recorder writes to the stack's Redis.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kcl_harness import DaemonStarter

from pipeline.app import kcl_daemon
from pipeline.app.servers.stack import StackState
from pipeline.core.clients import ClientFactory
from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[3]

# Short timers so a JVM start-to-first-record stays within seconds.
FAST = {
    "failover_ms": 3000,
    "parent_shard_poll_ms": 500,
    "shard_sync_interval_ms": 1000,
    "idle_between_reads_ms": 200,
    "shutdown_grace_ms": 15_000,
}


def _daemon_missing() -> str | None:
    if shutil.which("java") is None:
        return "java not installed (apt-get install default-jre-headless)"
    try:
        kcl_daemon.find_jars()
    except ConfigError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def kcl_available() -> None:
    missing = _daemon_missing()
    if missing:
        pytest.fail(
            f"KCL MultiLangDaemon unavailable ({missing}): `make deps` (part of `make test`) installs it"
        )


@pytest.fixture
def kcl_settings(
    kcl_available: None, stack: StackState, kinesis_mock_endpoint: str, unique_name: str
) -> Settings:
    env = {**stack.env, "AWS_ENDPOINT_URL_KINESIS": kinesis_mock_endpoint, "SHARDHOUSE_STREAM": unique_name}
    return load_settings(env)


@pytest.fixture
def kcl_clients(kcl_settings: Settings) -> ClientFactory:
    return ClientFactory(kcl_settings)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[DaemonStarter]:
    """Start MultiLangDaemons (logs under tmp_path); every one still running is stopped at teardown."""
    started: list[kcl_daemon.DaemonProcess] = []

    def start(
        settings: Settings, *, app: str, worker_id: str, processor: str = "recorder", **overrides: Any
    ) -> kcl_daemon.DaemonProcess:
        cfg = kcl_daemon.DaemonConfig.from_settings(
            settings, processor=processor, application_name=app, worker_id=worker_id, **{**FAST, **overrides}
        )
        kcl_daemon.preflight(cfg)
        launch = kcl_daemon.prepare(cfg, workdir=tmp_path / worker_id, settings=settings)
        log = open(tmp_path / f"{worker_id}.log", "ab")  # noqa: SIM115 - lives as long as the JVM
        daemon = kcl_daemon.DaemonProcess.start(launch, log=log, cwd=REPO)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()  # a test that wanted a graceful stop has done it already
