"""``shardhouse query …``, ``serve-api`` and ``rebuild-projections``: the projector's read side.

The projector itself runs as ``shardhouse worker --app <projector_app> --processor projector``.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any

import orjson
import typer

from pipeline.app.cli import context
from pipeline.app.cli.app import app
from pipeline.consumer.lease_store import LeaseStore
from pipeline.core.clients import ClientFactory
from pipeline.core.observability import configure_logging, serve_metrics
from schemas import load_registry
from workers.projector.context import build_context
from workers.projector.readapi import ReadApiServer, load_access
from workers.projector.reader import QueryError, ReadModelReader, parse_time, reader_for
from workers.projector.rebuild import Archive, CatchUp, Rebuild, RebuildReport

query_app = typer.Typer(help="Read the projector's read models (JSON on stdout).", no_args_is_help=True)
app.add_typer(query_app, name="query")

Customer = Annotated[str, typer.Option("--customer", "-c", help="Customer id.")]


def _reader() -> ReadModelReader:
    return reader_for(context.clients(), context.settings())


def _time(raw: str | None, what: str) -> datetime | None:
    return None if raw is None else parse_time(raw, what)


def _emit(result: Any) -> None:
    if result is None:
        typer.echo("shardhouse: not found", err=True)
        raise typer.Exit(1)
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")


@query_app.command("counts")
def query_counts(
    customer: Customer,
    event_type: Annotated[str, typer.Option("--type", "-t", help="Event type, e.g. page_view.")],
    by: Annotated[str, typer.Option(help="hour or day.")] = "hour",
    start: Annotated[
        str | None, typer.Option("--from", help="ISO date/time (default: 24 h / 30 d ago).")
    ] = None,
    end: Annotated[str | None, typer.Option("--to", help="ISO date/time (default: now).")] = None,
) -> None:
    """Events of one type per hour or per day."""
    _emit(_reader().counts(customer, event_type, by, _time(start, "--from"), _time(end, "--to")))


@query_app.command("entity")
def query_entity(
    customer: Customer,
    kind: Annotated[str, typer.Option(help="user, order or appointment.")],
    entity_id: Annotated[str, typer.Option("--id", help="The entity's id.")],
) -> None:
    """The latest state of one entity (exit 1 if unknown)."""
    _emit(_reader().entity(customer, kind, entity_id))


@query_app.command("top")
def query_top(
    customer: Customer,
    measure: Annotated[
        str, typer.Option(help="page_views, bookings, revenue (with --currency) or revenue.EUR.")
    ],
    n: Annotated[int, typer.Option("-n", help="How many.")] = 10,
    currency: Annotated[
        str | None, typer.Option(help="For --measure revenue: the ranking's currency.")
    ] = None,
) -> None:
    """The top members of a ranking."""
    if measure == "revenue":
        if currency is None:
            raise QueryError("revenue is ranked per currency: add --currency EUR (or --measure revenue.EUR)")
        measure = f"revenue.{currency.upper()}"
    _emit(_reader().top(customer, measure, n))


@query_app.command("calendar")
def query_calendar(
    customer: Customer,
    provider: Annotated[str, typer.Option(help="Provider id.")],
    start: Annotated[str | None, typer.Option("--from", help="ISO date/time (default: now).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="ISO date/time (default: 14 days on).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many appointments.")] = 100,
) -> None:
    """A provider's calendar: appointments by start time, cancelled ones left out."""
    _emit(_reader().calendar(customer, provider, _time(start, "--from"), _time(end, "--to"), limit))


@query_app.command("status")
def query_status() -> None:
    """Current generation, a rebuild in progress, where the models came from, applied positions."""
    _emit(_reader().status())


@app.command("serve-api")
def serve_api(
    host: Annotated[
        str, typer.Option(help="Address to bind (loopback by default; see SHARDHOUSE_READAPI_AUTH).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 = any free one, printed).")] = 8080,
    redis_url: Annotated[
        str | None,
        typer.Option(
            help="Read from this Redis (e.g. an ElastiCache replica endpoint, so reads never queue "
            "behind the projector's scripts on the primary); default SHARDHOUSE_REDIS_URL."
        ),
    ] = None,
) -> None:
    """Serve the read models over HTTP (JSON; see docs/openapi.yaml) until SIGTERM/SIGINT."""
    settings = context.settings()
    if redis_url is not None:
        settings = replace(settings, redis=replace(settings.redis, url=redis_url))
    configure_logging(settings.log_level, role="readapi")
    serve_metrics(settings.worker.metrics_port)
    api = settings.readapi
    server = ReadApiServer(
        (host, port),
        reader_for(ClientFactory(settings), settings),
        access=load_access(api.auth, api.tokens_file, api.proxy_header),
        idle_timeout=api.idle_timeout_seconds,
        max_connections=api.max_connections,
    )
    logging.getLogger("workers.projector.readapi").info(
        "read API listening", extra={"url": f"http://{host}:{server.port}"}
    )

    def stop(_signum: int, _frame: object) -> None:
        # shutdown() waits for serve_forever, which runs in this thread: do it from another one.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command("rebuild-projections")
def rebuild_projections(
    catch_up: Annotated[
        bool,
        typer.Option(
            help="Wait until the batcher has archived what the projector applied (reads both lease "
            "tables). Turn off only when no batcher/projector runs against the stream."
        ),
    ] = True,
    catch_up_timeout: Annotated[float, typer.Option(help="Seconds to wait for the batcher.")] = 600.0,
    force: Annotated[
        bool, typer.Option(help="Take over from a rebuild that died (its marker remains).")
    ] = False,
) -> None:
    """Recompute the read models from the S3 archive into a new generation and switch to it.

    The recovery after Redis lost the models (ElastiCache without persistence, a restart, a
    failover to an empty replica): until it runs, the models hold only what the projector
    applied since."""
    settings = context.settings()
    clients = context.clients()
    configure_logging(settings.log_level, role="rebuild-projections")
    registry = load_registry()
    ctx = build_context(clients, settings, registry=registry, prom_registry=None)
    waiter = None
    if catch_up:
        waiter = CatchUp(
            LeaseStore(clients.dynamodb(), settings.worker.batcher_app),
            LeaseStore(clients.dynamodb(), settings.worker.projector_app),
            timeout=catch_up_timeout,
        )

    def progress(report: RebuildReport) -> None:
        if report.objects % 100 == 0:
            typer.echo(f"shardhouse: {report.objects} objects, {report.events} events loaded", err=True)

    rebuild = Rebuild(
        ctx.store,
        ctx.planner(),
        Archive(clients.s3(), settings.resources.bucket, registry),
        catch_up=waiter,
        progress=progress,
    )
    _emit(rebuild.run(force=force).as_dict())
