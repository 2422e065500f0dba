"""Pure parts of the KCL MultiLangDaemon launcher and the child adapter (no JVM, no servers)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.app import kcl_daemon, kcl_entry
from pipeline.app.processors import resolve_processor
from pipeline.consumer.processor import CheckpointError, Record
from pipeline.core.errors import ConfigError
from pipeline.core.settings import load_settings

BASE = kcl_daemon.DaemonConfig(application_name="app1", stream_name="s1", processor="recorder", python="/py")


def parse(text: str) -> dict[str, str]:
    """Java .properties, the subset we emit: `key = value`, # comments, blank lines."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a property line: {line!r}"
        assert key.strip() not in out, f"duplicate key {key.strip()}"
        out[key.strip()] = value.strip()
    return out


def test_render_has_the_required_and_emulator_properties() -> None:
    cfg = kcl_daemon.DaemonConfig(
        application_name="shardhouse-batcher",
        stream_name="events",
        processor="batcher",
        python="/venv/bin/python",
        kinesis_endpoint="http://127.0.0.1:4567",
        dynamodb_endpoint="http://127.0.0.1:4566",
        worker_id="w1",
    )
    props = parse(kcl_daemon.render_properties(cfg))
    assert props["executableName"] == "/venv/bin/python -m pipeline.app.kcl_entry --processor batcher"
    assert props["applicationName"] == "shardhouse-batcher"
    assert props["streamName"] == "events"
    assert props["AwsCredentialsProvider"] == "DefaultCredentialsProvider"
    assert props["kinesisEndpoint"] == "http://127.0.0.1:4567"
    assert props["dynamoDBEndpoint"] == "http://127.0.0.1:4566"
    assert props["retrievalMode"] == "POLLING"
    assert props["metricsLevel"] == "NONE"
    assert props["clientVersionConfig"] == "CLIENT_VERSION_CONFIG_COMPATIBLE_WITH_2X"
    assert props["maxLeasesForWorker"] == "2147483647"  # 0 = unlimited
    assert props["callProcessRecordsEvenForEmptyRecordList"] == "true"
    assert props["workerId"] == "w1"
    assert "timeoutInSeconds" not in props


def test_real_aws_has_no_endpoints_and_keeps_cbor() -> None:
    props = parse(kcl_daemon.render_properties(BASE))
    assert "kinesisEndpoint" not in props and "dynamoDBEndpoint" not in props
    assert kcl_daemon.jvm_options(BASE) == []


def test_emulator_disables_cbor_unless_told_otherwise() -> None:
    emu = kcl_daemon.DaemonConfig(**{**BASE.__dict__, "kinesis_endpoint": "http://h:1"})
    assert kcl_daemon.jvm_options(emu) == ["-Daws.cborEnabled=false"]
    forced = kcl_daemon.DaemonConfig(**{**emu.__dict__, "cbor": True})
    assert kcl_daemon.jvm_options(forced) == []


def test_extra_properties_and_timeout_are_appended() -> None:
    cfg = kcl_daemon.DaemonConfig(**{**BASE.__dict__, "timeout_seconds": 60, "extra": {"maxRecords2": "5"}})
    props = parse(kcl_daemon.render_properties(cfg))
    assert props["timeoutInSeconds"] == "60" and props["maxRecords2"] == "5"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"initial_position": "AT_SOMETIME"}, "initial position"),
        ({"client_version": "CLIENT_VERSION_CONFIG_2X"}, "client version"),
        ({"python": "/my venv/bin/python"}, "no whitespace"),
        ({"processor": ""}, "non-empty"),
        ({"kinesis_endpoint": "127.0.0.1:4566"}, "http:// or https://"),
        ({"max_records": 20_000}, "1..10000"),
        ({"failover_ms": 0}, "must be positive"),
        ({"application_name": "bad name"}, "DynamoDB table name"),
        ({"extra": {"k": "a\nb"}}, "no newlines"),
    ],
)
def test_bad_values_fail_with_a_clear_message(change: dict[str, Any], message: str) -> None:
    cfg = kcl_daemon.DaemonConfig(**{**BASE.__dict__, **change})
    with pytest.raises(ConfigError, match=message):
        kcl_daemon.render_properties(cfg)


@given(
    app=st.from_regex(r"[A-Za-z0-9_.\-]{3,40}", fullmatch=True),
    stream=st.from_regex(r"[A-Za-z0-9_.\-]{1,40}", fullmatch=True),
    failover=st.integers(1, 10**7),
)
def test_render_round_trips_names(app: str, stream: str, failover: int) -> None:
    cfg = kcl_daemon.DaemonConfig(
        **{**BASE.__dict__, "application_name": app, "stream_name": stream, "failover_ms": failover}
    )
    text = kcl_daemon.render_properties(cfg)
    assert "${" not in text
    props = parse(text)
    assert (props["applicationName"], props["streamName"], props["failoverTimeMillis"]) == (
        app,
        stream,
        str(failover),
    )


def test_build_command_follows_kclpys_helper(tmp_path: Path) -> None:
    props = tmp_path / "conf" / "a.properties"
    jars = [Path("/j/a.jar"), Path("/j/amazon-kinesis-client-multilang-3.1.3.jar")]
    cmd = kcl_daemon.build_command("/usr/bin/java", jars, props, ["-Daws.cborEnabled=false"])
    assert cmd[:2] == ["/usr/bin/java", "-Daws.cborEnabled=false"]
    assert cmd[cmd.index("-cp") + 1].split(":") == [
        "/j/a.jar",
        "/j/amazon-kinesis-client-multilang-3.1.3.jar",
        str(props.parent),
    ]
    assert cmd[-3:] == [kcl_daemon.MULTILANG_DAEMON_CLASS, "--properties-file", str(props)]
    assert kcl_daemon.kcl_version(jars) == "3.1.3"
    assert kcl_daemon.kcl_version([Path("/j/a.jar")]) is None


def test_from_settings_maps_the_worker_section() -> None:
    settings = load_settings(
        {
            "AWS_ENDPOINT_URL": "http://127.0.0.1:4566",
            "AWS_ENDPOINT_URL_KINESIS": "http://127.0.0.1:4567",
            "SHARDHOUSE_STREAM": "ev",
            "SHARDHOUSE_FAILOVER_MS": "3000",
            "SHARDHOUSE_MAX_RECORDS": "500",
        }
    )
    cfg = kcl_daemon.DaemonConfig.from_settings(settings, processor="batcher")
    assert cfg.application_name == settings.worker.batcher_app
    assert (cfg.kinesis_endpoint, cfg.dynamodb_endpoint) == ("http://127.0.0.1:4567", "http://127.0.0.1:4566")
    assert (cfg.stream_name, cfg.failover_ms, cfg.max_records) == ("ev", 3000, 500)
    with pytest.raises(ConfigError, match="--app"):
        kcl_daemon.DaemonConfig.from_settings(settings, processor="recorder")


def test_resolve_processor() -> None:
    assert resolve_processor("noop").__name__ == "create_noop"
    assert resolve_processor("pipeline.consumer.diagnostic:create_recorder").__name__ == "create_recorder"
    with pytest.raises(ConfigError, match="unknown processor 'nope'"):
        resolve_processor("nope")
    with pytest.raises(ConfigError, match="cannot import"):
        resolve_processor("no.such.module:f")
    with pytest.raises(ConfigError, match="no callable"):
        resolve_processor("pipeline.consumer.diagnostic:missing")


def test_to_record_uses_epoch_millis() -> None:
    kcl_record = SimpleNamespace(
        binary_data=b"x",
        partition_key="k",
        sequence_number="9",
        sub_sequence_number=None,
        timestamp_millis=1234,
    )
    assert kcl_entry.to_record(kcl_record) == Record(b"x", "k", "9", 0, 1234)


def test_checkpoint_errors_are_translated_with_their_value() -> None:
    from amazon_kclpy.checkpoint_error import CheckpointError as KclCheckpointError

    class Inner:
        def __init__(self, exc: Exception) -> None:
            self.exc = exc

        def checkpoint(self, seq: str | None, sub: int | None) -> None:
            raise self.exc

    with pytest.raises(CheckpointError) as caught:
        kcl_entry.KclCheckpointer(Inner(KclCheckpointError("ThrottlingException"))).checkpoint("1", 0)
    assert caught.value.value == "ThrottlingException"
    with pytest.raises(CheckpointError) as caught:
        kcl_entry.KclCheckpointer(Inner(ValueError("Expecting value"))).checkpoint()
    assert caught.value.value == "ShutdownException"
