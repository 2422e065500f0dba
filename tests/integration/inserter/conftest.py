"""Fixtures for inserter tests: a fresh PostgreSQL database per test module, and per test a
bucket, a queue and its dead-letter queue of the test's own (real local servers throughout)."""

from __future__ import annotations

import pytest
from inserter_harness import Env, fresh_database, make_env

from pipeline.core.clients import ClientFactory
from pipeline.core.settings import Settings


@pytest.fixture(scope="module")
def db_url(settings: Settings, request: pytest.FixtureRequest) -> str:
    prefix = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")[:20]
    return fresh_database(settings.warehouse.url, prefix)


@pytest.fixture
def env(clients: ClientFactory, settings: Settings, unique_name: str, db_url: str) -> Env:
    return make_env(clients, settings, unique_name, db_url)
