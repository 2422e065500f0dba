"""``shardhouse produce``: synthetic (seeded) load or NDJSON from a file/stdin, into the stream.

The command is a thin shell: sources yield ``(data, partition_key)`` records and count what they
yield, :class:`~pipeline.producer.client.Producer` sends them, a reporter shows progress (rich on a
terminal, a plain line every few seconds otherwise), and a summary goes to stdout. Records that
could not be sent make the command exit non-zero with the count.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any, Protocol

import typer

from pipeline.app.cli import context
from pipeline.app.cli.app import app
from pipeline.core.errors import ConfigError, ShardhouseError, TerminalError
from pipeline.core.ratelimit import throttle
from pipeline.producer.batching import Entry, partition_key_for_line
from pipeline.producer.client import Producer, ProduceResult, describe_stream
from pipeline.producer.synthetic import SyntheticConfig, generate

DEFAULT_COUNT = 1_000
_DEFAULTS = SyntheticConfig()


@dataclass
class SourceStats:
    """What the source yielded so far (user records, before any aggregation)."""

    read: int = 0
    duplicates: int = 0
    invalid: int = 0
    blank_lines: int = 0


def synthetic_records(
    config: SyntheticConfig, count: int, stats: SourceStats, occurred_at: datetime | None = None
) -> Iterator[Entry]:
    """Records from :func:`pipeline.producer.synthetic.generate`, counting duplicates and invalid ones.
    ``occurred_at`` pins the events' clock, making the bytes identical run to run."""
    clock = (lambda: occurred_at) if occurred_at is not None else None
    for record in generate(config, count, now=clock):
        stats.read += 1
        stats.duplicates += record.is_duplicate
        stats.invalid += not record.valid
        yield record.data, record.partition_key


def parse_occurred_at(raw: str) -> datetime:
    """RFC 3339 (``Z`` or an offset; no offset means UTC)."""
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ConfigError(
            f"--occurred-at {raw!r}: expected an RFC 3339 time such as 2026-01-01T00:00:00Z"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def ndjson_records(lines: Iterable[bytes], stats: SourceStats, limit: int | None) -> Iterator[Entry]:
    """Each non-blank line as-is (without its line ending), keyed by its customer (and entity)
    when it parses, else by a hash of the line. Lines that are not JSON are still sent: the
    batcher dead-letters them with a reason; a producer does not silently drop input."""
    for raw in lines:
        if limit is not None and stats.read >= limit:
            return
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            stats.blank_lines += 1
            continue
        key, parsed = partition_key_for_line(line)
        stats.read += 1
        stats.invalid += not parsed
        yield line, key


class Reporter(Protocol):
    def update(self, stats: SourceStats, result: ProduceResult) -> None: ...

    def close(self) -> None: ...


class PlainReporter:
    """For logs and CI: one line every ``every`` seconds (and none for short runs)."""

    def __init__(self, err: IO[str], every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.err = err
        self.every = every
        self.clock = clock
        self.started = clock()
        self.next_line = self.started + every

    def update(self, stats: SourceStats, result: ProduceResult) -> None:
        now = self.clock()
        if self.every <= 0 or now < self.next_line:
            return
        self.next_line = now + self.every
        rate = result.sent / max(now - self.started, 1e-9)
        print(
            f"produce: {stats.read:,} read, {result.sent:,} sent ({rate:,.0f} rec/s), "
            f"{result.retries:,} retries, {result.failed_permanently:,} failed",
            file=self.err,
            flush=True,
        )

    def close(self) -> None:
        pass


class RichReporter:
    """For a terminal: a live bar with the counts, rate and retries."""

    def __init__(self, err: IO[str], total: int | None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]produce"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}{task.fields[of]} read"),
            TextColumn("{task.fields[sent]:,} sent"),
            TextColumn("{task.fields[rate]:,.0f} rec/s"),
            TextColumn("{task.fields[retries]:,} retries"),
            TimeElapsedColumn(),
            console=Console(file=err),
            transient=True,
        )
        self.started = time.monotonic()
        of = f"/{total:,}" if total is not None else ""
        self.task = self.progress.add_task("produce", total=total, of=of, sent=0, rate=0.0, retries=0)
        self.progress.start()

    def update(self, stats: SourceStats, result: ProduceResult) -> None:
        rate = result.sent / max(time.monotonic() - self.started, 1e-9)
        self.progress.update(
            self.task, completed=stats.read, sent=result.sent, rate=rate, retries=result.retries
        )

    def close(self) -> None:
        self.progress.stop()


@dataclass
class Summary:
    stream: str
    stats: SourceStats
    result: ProduceResult
    elapsed: float
    synthetic: SyntheticConfig | None = None
    aggregated: bool = False
    failed_user_records: int = 0

    @property
    def user_records_sent(self) -> int:
        if not self.aggregated:
            return self.result.sent
        return self.stats.read - self.failed_user_records

    def lines(self) -> list[str]:
        r, s = self.result, self.stats
        rate = self.user_records_sent / max(self.elapsed, 1e-9)
        out = [
            f"produced {self.user_records_sent:,} records to stream {self.stream!r} "
            f"in {self.elapsed:.1f}s ({rate:,.0f} rec/s)",
        ]
        if self.aggregated:
            out.append(f"  aggregated into {r.sent:,} Kinesis records (KPL format)")
        out.append(
            f"  sent {self.user_records_sent:,}, failed {self.failed_user_records:,}, "
            f"retries {r.retries:,} (throttled {r.throttled:,}), PutRecords calls {r.calls:,}"
        )
        if self.synthetic is not None:
            syn = self.synthetic
            out.append(
                f"  synthetic: seed {syn.seed}, {syn.customers:,} customers, "
                f"{s.duplicates:,} duplicates, {s.invalid:,} invalid"
            )
        else:
            out.append(
                f"  input: {s.read:,} lines, {s.invalid:,} not valid JSON (sent anyway; "
                f"the batcher dead-letters them), {s.blank_lines:,} blank skipped"
            )
        return out


class RecordsFailed(ShardhouseError):
    """Some records were not accepted by Kinesis even after retries."""


def produce_records(
    kinesis: Any,
    stream: str,
    records: Iterable[Entry],
    *,
    rate: float = 0.0,
    aggregated: bool = False,
    concurrency: int = 1,
    on_progress: Callable[[ProduceResult], None] | None = None,
) -> ProduceResult:
    """Throttle, optionally aggregate (grouped by the stream's current shards), and send."""
    source: Iterable[Entry] = throttle(records, rate) if rate > 0 else records
    if aggregated:
        from pipeline.producer.aggregation import aggregate, load_shard_map  # only when asked: see module

        source = aggregate(source, shard_map=load_shard_map(kinesis, stream))
    # At low rates, close batches after 200 ms so records do not wait for 500 to accumulate.
    max_age = 0.2 if rate > 0 else None
    producer = Producer(
        kinesis, stream, concurrency=concurrency, max_batch_age=max_age, on_progress=on_progress
    )
    return producer.put(source)


def _open_lines(path: str, cleanup: contextlib.ExitStack) -> Iterable[bytes]:
    if path == "-":
        return sys.stdin.buffer
    try:
        return cleanup.enter_context(Path(path).open("rb"))
    except FileNotFoundError:
        raise ConfigError(f"--file {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"--file {path}: {exc.strerror or exc}") from None


@app.command()
def produce(
    count: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=f"Records to send (synthetic: default {DEFAULT_COUNT:,}; --file: at most this many lines).",
        ),
    ] = None,
    rate: Annotated[float, typer.Option(min=0, help="Records per second; 0 = as fast as possible.")] = 0.0,
    customers: Annotated[
        int | None,
        typer.Option(min=1, help=f"Synthetic: distinct customers (default {_DEFAULTS.customers})."),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help=f"Synthetic: seed; the same seed gives the same events (default {_DEFAULTS.seed})."
        ),
    ] = None,
    duplicate_ratio: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=1,
            help=f"Synthetic: share of records that re-send an earlier event, as a producer retry "
            f"would (default {_DEFAULTS.duplicate_ratio}).",
        ),
    ] = None,
    invalid_ratio: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=1,
            help=f"Synthetic: share of invalid records, which the batcher dead-letters "
            f"(default {_DEFAULTS.invalid_ratio}).",
        ),
    ] = None,
    occurred_at: Annotated[
        str | None,
        typer.Option(
            help="Synthetic: give every event this occurred_at (RFC 3339) instead of the "
            "wall clock, so a seed reproduces the same bytes."
        ),
    ] = None,
    aggregate_records: Annotated[
        bool, typer.Option("--aggregate", help="Pack user records into KPL-aggregated Kinesis records.")
    ] = False,
    stream: Annotated[str | None, typer.Option(help="Stream name (default SHARDHOUSE_STREAM).")] = None,
    file: Annotated[
        str | None,
        typer.Option(
            help="Send newline-delimited JSON from this file ('-' = stdin) instead of synthetic load."
        ),
    ] = None,
    concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="PutRecords requests in flight. Keep 1 on moto: its Kinesis loses records under "
            "concurrent writes; more helps against AWS.",
        ),
    ] = 1,
    progress_every: Annotated[
        float, typer.Option(min=0, help="Without a terminal: seconds between progress lines (0 = none).")
    ] = 5.0,
) -> None:
    """Send synthetic events (seeded, reproducible) or NDJSON lines to the stream."""
    synthetic_flags = {
        "--customers": customers,
        "--seed": seed,
        "--duplicate-ratio": duplicate_ratio,
        "--invalid-ratio": invalid_ratio,
        "--occurred-at": occurred_at,
    }
    if file is not None:
        given = [name for name, value in synthetic_flags.items() if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: only for synthetic load, not with --file")
    settings = context.settings()
    if stream is not None:
        if not stream.strip():
            raise ConfigError("--stream must not be empty")
        settings = replace(settings, resources=replace(settings.resources, stream=stream))
    stream_name = settings.resources.stream

    with contextlib.ExitStack() as cleanup:
        stats = SourceStats()
        options: SyntheticConfig | None = None
        if file is None:
            changes: dict[str, Any] = {
                "seed": seed,
                "customers": customers,
                "duplicate_ratio": duplicate_ratio,
                "invalid_ratio": invalid_ratio,
            }
            options = replace(_DEFAULTS, **{k: v for k, v in changes.items() if v is not None})
            pinned = parse_occurred_at(occurred_at) if occurred_at is not None else None
            wanted = count or DEFAULT_COUNT
            total: int | None = wanted
            records: Iterable[Entry] = synthetic_records(options, wanted, stats, pinned)
        else:
            total = count
            records = ndjson_records(_open_lines(file, cleanup), stats, count)

        kinesis = context.clients().kinesis()
        info = describe_stream(kinesis, stream_name)  # missing stream / endpoint down: one line
        if info.status not in {"ACTIVE", "UPDATING"}:
            raise TerminalError(f"stream {stream_name!r} is {info.status}; wait until it is ACTIVE")

        err = sys.stderr
        reporter: Reporter = RichReporter(err, total) if err.isatty() else PlainReporter(err, progress_every)
        summary = _send(
            kinesis, stream_name, records, stats, options, reporter, rate, aggregate_records, concurrency
        )
    typer.echo("\n".join(summary.lines()))
    raise_if_failed(summary)


def raise_if_failed(summary: Summary) -> None:
    """Records Kinesis never accepted make the command fail, saying how many and why."""
    failed = summary.result.failed
    if failed:
        codes = Counter(f.error_code for f in failed)
        detail = ", ".join(f"{code} x{n:,}" for code, n in codes.most_common())
        raise RecordsFailed(
            f"{summary.failed_user_records:,} records were not accepted by Kinesis after retries ({detail})"
        )


def _send(
    kinesis: Any,
    stream: str,
    records: Iterable[Entry],
    stats: SourceStats,
    options: SyntheticConfig | None,
    reporter: Reporter,
    rate: float,
    aggregated: bool,
    concurrency: int,
) -> Summary:
    summary = Summary(stream, stats, ProduceResult(), 0.0, options, aggregated)

    def progress(result: ProduceResult) -> None:
        summary.result = result
        reporter.update(stats, result)

    started = time.monotonic()
    try:
        summary.result = produce_records(
            kinesis,
            stream,
            records,
            rate=rate,
            aggregated=aggregated,
            concurrency=concurrency,
            on_progress=progress,
        )
    except BaseException:
        reporter.close()
        r = summary.result
        typer.echo(
            f"stopped after {time.monotonic() - started:.1f}s: {stats.read:,} records read, "
            f"{r.sent:,} Kinesis records accepted, {r.retries:,} retries"
        )
        raise
    reporter.close()
    summary.elapsed = time.monotonic() - started
    if aggregated:
        from pipeline.producer.aggregation import count_user_records

        summary.failed_user_records = sum(count_user_records(f.data) for f in summary.result.failed)
    else:
        summary.failed_user_records = len(summary.result.failed)
    return summary
