"""Shared fixtures: one real local stack per test session, on free ports.

The stack is the same launcher ``shardhouse up`` uses (pipeline/app/servers/stack.py): moto server
(S3, SQS, DynamoDB, Kinesis), kinesis-mock (faithful resharding), redis-server, PostgreSQL.
Servers start only when an integration test asks for them; unit tests need none.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.app.servers import stack as local_stack
from pipeline.core.clients import ClientFactory
from pipeline.core.errors import ConfigError, TerminalError
from pipeline.core.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


def _kinesis_mock_installed() -> bool:
    return (REPO / ".shardhouse/npm/node_modules/kinesis-local/main.js").exists()


def _up_on_free_ports(state_dir: Path, attempts: int = 3) -> local_stack.StackState:
    """Start the stack; if another process took a chosen port before its server bound it, choose again.

    A port from ``free_port`` is free when chosen, not when bound: parallel test processes (and
    anything else on the machine) can take it in between.
    """
    for attempt in range(attempts):
        cfg = local_stack.StackConfig.on_free_ports(
            state_dir, with_kinesis_mock=_kinesis_mock_installed(), npm_dirs=(REPO / ".shardhouse/npm",)
        )
        try:
            state, _ = local_stack.up(cfg)
            return state
        except (TerminalError, ConfigError) as exc:
            taken = "already in use" in str(exc) or "is taken by" in str(exc)
            if not taken or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local_stack.StackState]:
    state_dir = tmp_path_factory.mktemp("stack")
    state = _up_on_free_ports(state_dir)
    saved = dict(os.environ)
    # Worker subprocesses started by tests inherit the stack's environment.
    os.environ.update(state.env)
    for key in list(os.environ):
        if key.startswith("AWS_ENDPOINT_URL_"):
            del os.environ[key]
    try:
        yield state
    finally:
        local_stack.down(state_dir, discard=True)
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def kinesis_mock_endpoint(stack: local_stack.StackState) -> str:
    """kinesis-mock's URL; resharding tests need its faithful split/merge behaviour."""
    if stack.kinesis_mock_endpoint is None:
        pytest.fail("kinesis-mock is not installed: `make deps` (part of `make test`) installs it")
    return stack.kinesis_mock_endpoint


@pytest.fixture(scope="session")
def settings(stack: local_stack.StackState) -> Settings:
    return load_settings(stack.env)


@pytest.fixture(scope="session")
def clients(settings: Settings) -> ClientFactory:
    return ClientFactory(settings)


@pytest.fixture
def unique_name() -> str:
    """A fresh, valid resource-name prefix (streams, buckets, queues, tables) for one test."""
    return f"t{uuid.uuid4().hex[:12]}"
