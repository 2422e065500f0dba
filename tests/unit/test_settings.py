from __future__ import annotations

import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.settings import load_settings, redact_url


def test_defaults_and_overrides() -> None:
    s = load_settings(
        {
            "AWS_ENDPOINT_URL": "http://127.0.0.1:4566",
            "AWS_ENDPOINT_URL_KINESIS": "http://127.0.0.1:4567",
            "SHARDHOUSE_STREAM": "clicks",
            "SHARDHOUSE_SHARD_COUNT": "8",
            "SHARDHOUSE_FLUSH_AGE_SECONDS": "2.5",
            "SHARDHOUSE_DATABASE_URL": "postgresql://u:pw@db:5432/wh",
        }
    )
    assert s.resources.stream == "clicks" and s.resources.shard_count == 8
    assert s.worker.flush_age_seconds == 2.5
    assert s.aws.endpoint_for("kinesis") == "http://127.0.0.1:4567"
    assert s.aws.endpoint_for("s3") == "http://127.0.0.1:4566"
    assert s.warehouse.url == "postgresql://u:pw@db:5432/wh"


def test_secrets_never_printed() -> None:
    s = load_settings(
        {
            "SHARDHOUSE_DATABASE_URL": "postgresql://u:hunter2@db/wh",
            "SHARDHOUSE_REDIS_URL": "redis://:hunter2@r:6379/0",
        }
    )
    assert "hunter2" not in repr(s)
    assert redact_url("postgresql://u:hunter2@db:5/wh") == "postgresql://u:***@db:5/wh"


def test_round_trips_through_child_environment() -> None:
    s = load_settings({"SHARDHOUSE_STREAM": "x", "AWS_ENDPOINT_URL_KINESIS": "http://k:1"})
    again = load_settings(s.to_env())
    assert again.resources == s.resources and again.aws == s.aws and again.warehouse == s.warehouse


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SHARDHOUSE_SHARD_COUNT": "many"}, "SHARDHOUSE_SHARD_COUNT='many' is not a valid int"),
        ({"SHARDHOUSE_SHARD_COUNT": "0"}, "SHARDHOUSE_SHARD_COUNT must be at least 1"),
        ({"SHARDHOUSE_WAREHOUSE_DIALECT": "oracle"}, "expected postgres or redshift"),
        ({"SHARDHOUSE_INITIAL_POSITION": "MIDDLE"}, "TRIM_HORIZON or LATEST"),
        (
            {"SHARDHOUSE_REDIS_DEDUPE_WINDOW_SECONDS": "30"},
            "SHARDHOUSE_REDIS_DEDUPE_WINDOW_SECONDS must be at least 60",
        ),
    ],
)
def test_bad_values_give_clear_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("'", "'")):
        load_settings(env)
