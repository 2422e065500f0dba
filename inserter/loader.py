"""Load one :class:`~inserter.plan.LoadPlan` exactly once: DDL first (short transactions of its
own), then one load transaction — the order is written down in :mod:`inserter.destinations.postgres.dialect`.

Exactly once holds because, inside one transaction, (1) objects already in the ledger are
skipped, (2) rows are deduplicated within the batch and against the target (by (customer_id,
event_id), within the dedupe window), (3) the objects are recorded in the ledger, and (4) loads
into one table are serialized, so (1) and (2) always see every earlier commit. A crash anywhere before COMMIT
leaves nothing behind; the message comes back and the load runs again.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from inserter.destinations.postgres.dialect import PostgresDialect
from inserter.destinations.sql import Slice, WarehouseColumn
from inserter.destinations.staging import Stager
from inserter.errors import LoadError, classify_pg
from inserter.naming import ADMIN_ROLE, TableRef, reader_role
from inserter.plan import LoadPlan, ObjectLoad, TableLoad, merge_window

log = logging.getLogger(__name__)
Conn = psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class ObjectOutcome:
    key: str
    table: TableRef
    rows_loaded: int
    rows_skipped: int
    min_occurred_at: datetime | None
    max_occurred_at: datetime | None


@dataclass(frozen=True, slots=True)
class LoadResult:
    batch_id: str
    load_id: str
    loaded: tuple[ObjectOutcome, ...] = ()
    already_loaded: tuple[str, ...] = ()  # keys the ledger already held
    duration_ms: int = 0
    stage_ms: int = 0  # S3 → staging (COPY)
    merge_ms: int = 0  # locks, dedupe, insert, ledger

    @property
    def rows_loaded(self) -> int:
        return sum(o.rows_loaded for o in self.loaded)

    @property
    def rows_skipped(self) -> int:
        return sum(o.rows_skipped for o in self.loaded)

    @property
    def newest_event(self) -> datetime | None:
        stamps = [o.max_occurred_at for o in self.loaded if o.max_occurred_at is not None]
        return max(stamps, default=None)


@dataclass(slots=True)
class _Stats:
    rows: int
    lo: datetime
    hi: datetime


@dataclass
class Loader:
    """One per process (it caches which tables are ready). Connections are passed per call and
    must be in autocommit mode: every transaction here is an explicit ``conn.transaction()``."""

    dialect: PostgresDialect
    stager: Stager
    dedupe_window: timedelta = timedelta(days=7)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _ready: set[tuple[TableRef, tuple[str, ...]]] = field(default_factory=set, init=False)

    # -- DDL ------------------------------------------------------------------------------------

    def prepare(self, conn: Conn) -> None:
        """Session settings, the admin role and the ledger (idempotent; run per connection)."""
        try:
            for stmt in self.dialect.session_setup():
                conn.execute(stmt)
            with conn.transaction():
                self._ddl_lock(conn, "ledger")
                self._ensure_role(conn, ADMIN_ROLE)
                for stmt in self.dialect.ledger_ddl():
                    conn.execute(stmt)
        except psycopg.Error as exc:
            raise classify_pg(exc, "prepare warehouse") from exc

    def ensure_table(self, conn: Conn, table: TableLoad) -> list[str]:
        """Schema, role, grants and table on first sight; columns of newer versions added.
        Returns the columns added. Runs in its own short transaction, before the load: an
        ALTER holds an exclusive lock, which must not last as long as a load does."""
        columns = self.dialect.columns(table.event_type)
        marker = (table.target, tuple(c.name for c in columns))
        if marker in self._ready:
            return []
        ref = table.target
        reader = reader_role(table.customer_id)
        added: list[str] = []
        with conn.transaction():
            self._ddl_lock(conn, ref.schema)
            self._ensure_role(conn, reader)
            stmt, params = self.dialect.schema_exists(ref.schema)
            if conn.execute(stmt, params).fetchone() is None:
                for s in self.dialect.create_customer_schema(ref.schema, reader):
                    conn.execute(s)
            stmt, params = self.dialect.existing_columns(ref)
            existing = {row[0] for row in conn.execute(stmt, params)}
            if not existing:
                for s in self.dialect.create_table(ref, table.event_type, reader):
                    conn.execute(s)
            else:
                for col in columns:
                    if col.name not in existing:
                        conn.execute(self.dialect.add_column(ref, col.name, col.target_type))
                        added.append(col.name)
        if added:
            log.info("columns added", extra={"table": str(ref), "columns": added})
        self._ready.add(marker)
        return added

    def _ddl_lock(self, conn: Conn, name: str) -> None:
        for stmt, params in self.dialect.ddl_lock(name):
            conn.execute(stmt, params)

    def _ensure_role(self, conn: Conn, role: str) -> None:
        """Roles are cluster-wide: another database's inserter may create the same one at the
        same moment; losing that race is success."""
        stmt, params = self.dialect.role_exists(role)
        if conn.execute(stmt, params).fetchone() is not None:
            return
        try:
            with conn.transaction():  # a savepoint: a lost race must not abort the DDL transaction
                conn.execute(self.dialect.create_role(role))
        except (pg_errors.DuplicateObject, pg_errors.UniqueViolation):
            pass

    # -- the load -------------------------------------------------------------------------------

    def load(self, conn: Conn, plan: LoadPlan) -> LoadResult:
        """Load ``plan`` exactly once. Raises TransientError (retry) or TerminalError."""
        started = time.monotonic()
        try:
            for table in plan.tables:
                self.ensure_table(conn, table)
            return self._load(conn, plan, started)
        except psycopg.Error as exc:
            self._ready.clear()  # a table dropped or altered underneath us: check again next time
            raise classify_pg(exc, f"load {plan.batch_id}") from exc

    def _load(self, conn: Conn, plan: LoadPlan, started: float) -> LoadResult:
        load_id = str(uuid.uuid4())
        d = self.dialect
        with conn.transaction(), conn.cursor() as cur:
            if d.lock_before_staging:
                self._lock(cur, [t.target for t in plan.tables])
            done = self._loaded_keys(cur, plan.keys)
            todo = plan.without(done)
            # One staging table per event type: a shared object is staged once for all of its
            # customers, and each customer's table takes its slice of the type's staging.
            stages: dict[str, tuple[str, list[WarehouseColumn], dict[tuple[int, str], _Stats]]] = {}
            staging_started = time.monotonic()
            typed = todo.stages()
            self.stager.begin(plan.bucket, [o for _, objs in typed for o in objs])
            try:
                for i, (event_type, objects) in enumerate(typed):
                    stage, columns = f"_stage_{i}", d.columns(event_type)
                    for stmt in d.create_staging(stage, columns):
                        cur.execute(stmt)
                    self.stager.stage(cur, stage, event_type, objects, columns, plan.bucket)
                    stages[event_type] = (stage, columns, {})
            finally:
                self.stager.end()
            merge_started = time.monotonic()
            late: set[str] = set()
            if not d.lock_before_staging:
                self._lock(cur, [t.target for t in todo.tables])
                late = self._loaded_keys(cur, todo.keys)  # loaded by another inserter meanwhile
                done |= late
            outcomes: list[ObjectOutcome] = []
            if stages:
                for stmt in d.merge_setup():
                    cur.execute(stmt)
            for event_type, (stage, _, stats) in stages.items():
                stats.update(self._stats(cur, stage, [o for o in todo.objects if o.event_type == event_type]))
            fresh_tables: list[str] = []
            for i, table in enumerate(todo.tables):
                stage, columns, stats = stages[table.event_type]
                outcomes.extend(self._merge(cur, i, table, stage, columns, stats, late, fresh_tables))
            duration_ms = _ms_since(started)
            if outcomes:
                params = self._ledger_params(plan, load_id, outcomes, duration_ms)
                cur.execute(d.record_ledger(len(outcomes)), params)
            temp = [name for name, _, _ in stages.values()] + fresh_tables
            for stmt in d.cleanup(temp):
                cur.execute(stmt)
        return LoadResult(
            batch_id=plan.batch_id,
            load_id=load_id,
            loaded=tuple(outcomes),
            already_loaded=tuple(k for k in plan.keys if k in done),
            duration_ms=_ms_since(started),
            stage_ms=int((merge_started - staging_started) * 1000),
            merge_ms=_ms_since(merge_started),
        )

    def _lock(self, cur: psycopg.Cursor[Any], refs: Sequence[TableRef]) -> None:
        for stmt, params in self.dialect.lock_tables(refs):
            cur.execute(stmt, params)

    def _loaded_keys(self, cur: psycopg.Cursor[Any], keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        cur.execute(self.dialect.loaded_keys(len(keys)), tuple(keys))
        return {row[0] for row in cur.fetchall()}

    def _merge(
        self,
        cur: psycopg.Cursor[Any],
        i: int,
        table: TableLoad,
        stage: str,
        columns: Sequence[WarehouseColumn],
        stats: dict[tuple[int, str], _Stats],
        late: set[str],
        fresh_tables: list[str],
    ) -> list[ObjectOutcome]:
        """The table's slice of its type's staging: this customer's rows of its objects."""
        d = self.dialect
        objects = [o for o in table.objects if o.unit not in late]
        if not objects:
            return []
        mine = {o.ordinal: stats.get((o.ordinal, table.customer_id)) for o in objects}
        present = [s for s in mine.values() if s is not None]
        loaded: dict[int, int] = {}
        if present:
            lo, hi = merge_window(min(s.lo for s in present), max(s.hi for s in present), self.dedupe_window)
            part = Slice(table.customer_id, tuple(o.ordinal for o in objects))
            if len(objects) == 1:  # the common case: no temp copy, the row count says it all
                cur.execute(d.insert_deduped(stage, table.target, columns, lo, hi, part))
                loaded = {objects[0].ordinal: cur.rowcount}
            else:
                fresh = f"_fresh_{i}"
                fresh_tables.append(fresh)
                cur.execute(d.dedupe(stage, fresh, table.target, columns, lo, hi, part))
                cur.execute(d.fresh_counts(fresh))
                loaded = {int(ordinal): int(n) for ordinal, n in cur.fetchall()}
                cur.execute(d.insert_fresh(table.target, fresh, columns))
        outcomes = []
        for obj in objects:
            s = mine[obj.ordinal]
            rows = s.rows if s else 0
            if rows != obj.rows:
                log.warning(
                    "object row count differs from its manifest entry (loading what S3 holds)",
                    extra={"key": obj.unit, "manifest_rows": obj.rows, "object_rows": rows},
                )
            n = loaded.get(obj.ordinal, 0)
            outcomes.append(
                ObjectOutcome(obj.unit, table.target, n, rows - n, s.lo if s else None, s.hi if s else None)
            )
        return outcomes

    def _stats(
        self, cur: psycopg.Cursor[Any], stage: str, units: Sequence[ObjectLoad]
    ) -> dict[tuple[int, str], _Stats]:
        """Rows and occurred_at range per (object, customer), refusing rows of a customer the
        object's manifest entry does not list, or of another type or version than its key names
        (they would land in the wrong customer's table)."""
        by_unit = {(o.ordinal, o.customer_id): o for o in units}
        by_ordinal = {o.ordinal: o for o in units}
        cur.execute(self.dialect.stage_stats(stage))
        out: dict[tuple[int, str], _Stats] = {}
        for ordinal, customer, rows, lo, hi, t_lo, t_hi, v_lo, v_hi in cur.fetchall():
            obj = by_ordinal[int(ordinal)]
            if (int(ordinal), customer) not in by_unit:
                listed = sorted(o.customer_id for o in units if o.ordinal == obj.ordinal)
                raise LoadError(
                    f"{obj.key}: holds rows of customer {customer!r}, which its manifest entry does not "
                    f"list ({', '.join(listed[:5])}{'…' if len(listed) > 5 else ''})"
                )
            if not (t_lo == t_hi == obj.event_type and v_lo == v_hi == obj.version):
                raise LoadError(
                    f"{obj.key}: holds rows of type {t_lo!r}..{t_hi!r}, version {v_lo}..{v_hi}; "
                    f"its key says {obj.event_type}/v{obj.version}"
                )
            out[(int(ordinal), customer)] = _Stats(int(rows), lo, hi)
        return out

    def _ledger_params(
        self, plan: LoadPlan, load_id: str, outcomes: Sequence[ObjectOutcome], duration_ms: int
    ) -> tuple[Any, ...]:
        by_key = {o.unit: o for o in plan.objects}
        now = self.clock()
        params: list[Any] = []
        for out in outcomes:
            obj = by_key[out.key]
            params.extend(
                (
                    out.key,
                    obj.batch_id or plan.batch_id,
                    load_id,
                    obj.customer_id,
                    obj.event_type,
                    obj.version,
                    str(out.table),
                    out.rows_loaded,
                    out.rows_skipped,
                    out.min_occurred_at,
                    out.max_occurred_at,
                    now,
                    duration_ms,
                )
            )
        return tuple(params)


def _ms_since(start: float) -> int:
    return int((time.monotonic() - start) * 1000)
