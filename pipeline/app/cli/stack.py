"""``shardhouse up | down | env | provision``: the local stack and the pipeline's resources."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from pipeline.app.cli import context
from pipeline.app.cli.app import app
from pipeline.app.provision import provision_all
from pipeline.app.servers import stack
from pipeline.core.settings import WarehouseDialect


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _print_env(env: dict[str, str]) -> None:
    for key, value in sorted(env.items()):
        typer.echo(f"export {key}={shlex.quote(value)}")


@app.command()
def up(
    kinesis: Annotated[
        stack.KinesisEngine,
        typer.Option(help="Kinesis engine: moto (fast) or kinesis-mock (faithful resharding)."),
    ] = stack.KinesisEngine.MOTO,
    aws_port: Annotated[int, typer.Option(help="moto server port (LocalStack's 4566).")] = 4566,
    kinesis_mock_port: Annotated[int, typer.Option()] = 4567,
    redis_port: Annotated[int, typer.Option()] = 6379,
    pg_port: Annotated[int, typer.Option()] = 5432,
    state_dir: Annotated[Path | None, typer.Option(help="Where data, logs and the pid file live.")] = None,
) -> None:
    """Start moto server, redis-server and PostgreSQL (and kinesis-mock) as local processes."""
    directory = state_dir or context.state_dir()
    cfg = stack.StackConfig(
        state_dir=directory,
        aws_port=aws_port,
        kinesis_engine=kinesis,
        kinesis_mock_port=kinesis_mock_port,
        redis_port=redis_port,
        pg_port=pg_port,
    )
    state, started = stack.up(cfg, on_event=_say)
    if not started:
        _say(f"shardhouse: already up ({', '.join(state.services)}); environment:")
    else:
        _say(f"shardhouse: up ({', '.join(started)} started); logs in {directory / 'logs'}; environment:")
    _print_env(state.env)


@app.command()
def down(
    state_dir: Annotated[Path | None, typer.Option(help="The state dir `up` used.")] = None,
) -> None:
    """Stop exactly the processes `shardhouse up` started."""
    stopped = stack.down(state_dir or context.state_dir(), on_event=_say)
    _say("shardhouse: down" if stopped else "shardhouse: nothing was running")


@app.command()
def env(state_dir: Annotated[Path | None, typer.Option()] = None) -> None:
    """Print the environment of the running local stack (eval "$(shardhouse env)")."""
    state = stack.read_state(state_dir or context.state_dir())
    if state is None:
        raise typer.BadParameter("the local stack is not up; run `shardhouse up`")
    _print_env(state.env)


@app.command()
def provision(
    shards: Annotated[
        int | None, typer.Option(min=1, help="Shard count (default SHARDHOUSE_SHARD_COUNT).")
    ] = None,
) -> None:
    """Create the stream, bucket, queue + dead-letter queue and warehouse database (idempotent)."""
    settings = context.settings()
    resources = settings.resources
    if shards is not None:
        from dataclasses import replace

        resources = replace(resources, shard_count=shards)
    factory = context.clients()
    wh_is_postgres = settings.warehouse.dialect is WarehouseDialect.POSTGRES
    provision_all(
        kinesis=factory.kinesis(),
        s3=factory.s3(),
        sqs=factory.sqs(),
        resources=resources,
        region=settings.aws.region,
        warehouse_url=settings.warehouse.url if wh_is_postgres else None,
        report=lambda what, outcome: _say(f"  {outcome:8} {what}"),
    )
    _say("shardhouse: provisioned")
