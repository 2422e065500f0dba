"""``shardhouse kcl-daemon``: run our processors under the Java KCL MultiLangDaemon."""

from __future__ import annotations

import inspect
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer

from pipeline.app import kcl_daemon
from pipeline.app.cli.app import app
from pipeline.app.cli.context import settings as load_cli_settings
from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings


def _config(
    *,
    processor: str,
    app_name: str | None,
    stream: str | None,
    kinesis_endpoint: str | None,
    dynamodb_endpoint: str | None,
    initial_position: str | None,
    failover_ms: int | None,
    worker_id: str | None,
    client_version: str,
    cbor: bool | None,
    properties: list[str],
) -> tuple[Settings, kcl_daemon.DaemonConfig]:
    settings = load_cli_settings()
    endpoints = dict(settings.aws.service_endpoints)
    if kinesis_endpoint:
        endpoints["kinesis"] = kinesis_endpoint
    if dynamodb_endpoint:
        endpoints["dynamodb"] = dynamodb_endpoint
    settings = replace(
        settings,
        aws=replace(settings.aws, service_endpoints=endpoints),
        resources=replace(settings.resources, stream=stream or settings.resources.stream),
    )
    overrides: dict[str, object] = {"client_version": client_version, "cbor": cbor}
    if initial_position:
        overrides["initial_position"] = initial_position.upper()
    if failover_ms:
        overrides["failover_ms"] = failover_ms
    if worker_id:
        overrides["worker_id"] = worker_id
    extra: dict[str, str] = {}
    for item in properties:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--property {item!r}: expected KEY=VALUE")
        extra[key.strip()] = value.strip()
    overrides["extra"] = extra
    cfg = kcl_daemon.DaemonConfig.from_settings(
        settings, processor=processor, application_name=app_name, **overrides
    )
    return settings, cfg


def _config_options(options: dict[str, Any]) -> dict[str, Any]:
    """The command's options that :func:`_config` takes (both commands share them)."""
    return {name: options[name] for name in inspect.signature(_config).parameters}


ProcessorOpt = typer.Option(
    ..., "--processor", "-p", help="batcher, projector, recorder, noop or package.module:factory"
)
AppOpt = typer.Option(
    None, "--app", help="KCL applicationName = lease table (default: the processor's app setting)"
)
StreamOpt = typer.Option(None, "--stream", help="stream name (default: SHARDHOUSE_STREAM)")
KinesisOpt = typer.Option(
    None, "--kinesis-endpoint", help="override the Kinesis endpoint (must speak HTTP/2)"
)
DynamoOpt = typer.Option(None, "--dynamodb-endpoint", help="override the DynamoDB endpoint")
PositionOpt = typer.Option(None, "--initial-position", help="TRIM_HORIZON or LATEST (default: settings)")
FailoverOpt = typer.Option(None, "--failover-ms", help="lease failover time (default: settings)")
WorkerOpt = typer.Option(None, "--worker-id", help="KCL workerId (default: host-random)")
VersionOpt = typer.Option(
    kcl_daemon.CLIENT_VERSION_2X_COMPATIBLE, "--client-version", help="KCL 3.x clientVersionConfig"
)
CborOpt = typer.Option(None, "--cbor/--no-cbor", help="Kinesis wire format (default: off on emulators)")
PropOpt = typer.Option([], "--property", help="extra KEY=VALUE property (repeatable)")
WorkdirOpt = typer.Option(Path(".shardhouse/kcl"), "--workdir", help="where the rendered properties go")
JavaOpt = typer.Option(None, "--java", help="java executable (default: JAVA_HOME or PATH)")


@app.command("kcl-daemon")
def kcl_daemon_command(
    processor: str = ProcessorOpt,
    app_name: str | None = AppOpt,
    stream: str | None = StreamOpt,
    kinesis_endpoint: str | None = KinesisOpt,
    dynamodb_endpoint: str | None = DynamoOpt,
    initial_position: str | None = PositionOpt,
    failover_ms: int | None = FailoverOpt,
    worker_id: str | None = WorkerOpt,
    client_version: str = VersionOpt,
    cbor: bool | None = CborOpt,
    properties: list[str] = PropOpt,
    workdir: Path = WorkdirOpt,
    java: str | None = JavaOpt,
    print_command: bool = typer.Option(
        False, "--print-command", help="print the java command (for systemd, Docker…) and exit"
    ),
    skip_preflight: bool = typer.Option(False, "--skip-preflight", help="don't probe the Kinesis endpoint"),
) -> None:
    """Run the Java KCL MultiLangDaemon with PROCESSOR as the per-shard child (Ctrl-C stops it gracefully)."""
    settings, cfg = _config(**_config_options(locals()))
    launch = kcl_daemon.prepare(cfg, workdir=workdir, settings=settings, java=java)
    if print_command:
        typer.echo(shlex.join(launch.command))
        return
    if not skip_preflight:
        kcl_daemon.preflight(cfg)
    typer.echo(
        f"kcl-daemon: app={cfg.application_name} stream={cfg.stream_name} properties={launch.properties}",
        err=True,
    )
    kcl_daemon.run_foreground(launch, grace=cfg.shutdown_grace_ms / 1000 + 5)
