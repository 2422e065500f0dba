"""The end-of-run check of the promise — every valid event exactly once — against the stores
themselves: warehouse rows by ``event_id`` per customer, dead letters in S3 and the read models
in Redis next to a plain fold of the unique events produced."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from psycopg import sql

from pipeline.app.demo.run import DeadLetters, DemoRun, dead_letters, projection_store, warehouse_tables
from pipeline.producer.synthetic import SyntheticRecord
from schemas import Event, load_registry
from workers.projector.fold import fold


@dataclass(frozen=True)
class Verdict:
    rows_per_customer: dict[str, int]
    #: customer → unique valid events sent that are not in its tables
    missing: dict[str, int]
    #: rows whose event_id was never sent as a valid event of that customer
    unexpected: int
    duplicate_rows: int
    dead: DeadLetters
    invalid_sent: int
    #: differences between the read models and the fold (empty: equal); None when not checked
    model_diff: list[str] | None = field(default=None)

    @property
    def ok(self) -> bool:
        return (
            not self.missing
            and self.unexpected == 0
            and self.duplicate_rows == 0
            and self.dead.records == self.invalid_sent
            and not self.model_diff
        )

    def problems(self) -> list[str]:
        out = []
        if self.missing:
            out.append(f"missing events per customer: {dict(sorted(self.missing.items()))}")
        if self.unexpected:
            out.append(f"{self.unexpected} rows of events never sent")
        if self.duplicate_rows:
            out.append(f"{self.duplicate_rows} duplicate rows")
        if self.dead.records != self.invalid_sent:
            out.append(f"{self.dead.records} records dead-lettered, {self.invalid_sent} invalid sent")
        if self.model_diff:
            out.append("read models differ from the fold: " + "; ".join(self.model_diff[:5]))
        return out


def expected_ids(records: list[SyntheticRecord]) -> dict[str, set[str]]:
    """customer → event ids of the valid events produced (retries counted once)."""
    out: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.valid and r.event_id is not None and r.customer_id is not None:
            out[r.customer_id].add(r.event_id)
    return dict(out)


def warehouse_ids(run: DemoRun) -> dict[str, Counter[str]]:
    """customer → event_id → rows, over every table of every customer schema."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    with run.clients.warehouse() as conn:
        for schema, table in warehouse_tables(conn):
            query = sql.SQL("SELECT event_id::text FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            out[schema[2:]].update(str(row[0]) for row in conn.execute(query))
    return dict(out)


def unique_events(records: list[SyntheticRecord]) -> list[Event]:
    registry = load_registry()
    seen: set[tuple[str, str]] = set()
    events = []
    for r in records:
        if r.valid and r.event_id is not None and r.customer_id is not None:
            pair = (r.customer_id, r.event_id)
            if pair in seen:
                continue
            seen.add(pair)
            events.append(registry.decode(r.data))
    return events


def verify(run: DemoRun, *, read_models: bool = True) -> Verdict:
    want = expected_ids(run.records)
    have = warehouse_ids(run)
    missing = {c: len(ids - set(have.get(c, ()))) for c, ids in want.items()}
    unexpected = sum(n for c, ids in have.items() for i, n in ids.items() if i not in want.get(c, set()))
    diff = None
    if read_models:
        expected_models = fold(unique_events(run.records), now=datetime.now(UTC))
        diff = expected_models.diff(projection_store(run).snapshot(), limit=20)
    return Verdict(
        rows_per_customer={c: sum(ids.values()) for c, ids in have.items()},
        missing={c: n for c, n in missing.items() if n},
        unexpected=unexpected,
        duplicate_rows=sum(n - 1 for ids in have.values() for n in ids.values() if n > 1),
        dead=dead_letters(run),
        invalid_sent=run.expected.invalid,
        model_diff=diff,
    )
