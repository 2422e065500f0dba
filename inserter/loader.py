"""Load one :class:`~inserter.plan.LoadPlan` exactly once: DDL first (short transactions of its
own), then one load transaction — the order is written down in :mod:`inserter.destinations.postgres.dialect`.

Exactly once holds because, inside one transaction, (1) objects already in the ledger are
skipped, (2) rows are deduplicated within the batch and against the target (by (customer_id,
event_id), within the dedupe window), (3) the objects are recorded in the ledger, and (4) loads
into one table are serialized, so (1) and (2) always see every earlier commit. A crash anywhere before COMMIT
leaves nothing behind; the message comes back and the load runs again.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

from inserter.destinations.postgres.dialect import PostgresDialect
from inserter.destinations.sql import Statement, WarehouseColumn
from inserter.destinations.staging import Staged, Stager
from inserter.errors import LoadError, classify_pg
from inserter.naming import ADMIN_ROLE, TableRef, pool_table, reader_role
from inserter.plan import LoadPlan, ObjectLoad, TableLoad, merge_window
from inserter.tables import PartAction, Relation, catalog, missing_columns, part_action

log = logging.getLogger(__name__)
#: Ledger rows per INSERT where there is no COPY FROM STDIN (Redshift): 13 parameters each, and
#: a statement carries at most 65,535.
LEDGER_ROWS_PER_STATEMENT = 2000
#: New customers' parts per DDL transaction: each takes a few locks, and a transaction may hold
#: at most max_locks_per_transaction x max_connections of them.
PARTS_PER_TRANSACTION = 200
Conn = psycopg.Connection[Any]
_T = TypeVar("_T")


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
                self._ensure_roles(conn, [ADMIN_ROLE])
                for stmt in self.dialect.ledger_ddl():
                    conn.execute(stmt)
        except psycopg.Error as exc:
            raise classify_pg(exc, "prepare warehouse") from exc

    def ensure_tables(self, conn: Conn, tables: Sequence[TableLoad]) -> None:
        """Each table's pool and part (schema, role, grants on first sight; columns of newer
        versions added). One catalog query for all tables not yet known ready, DDL only for what
        it finds missing, before the load and in transactions of its own: an ALTER holds an
        exclusive lock, which must not last as long as a load does."""
        # Every load asks this for each of its tables: the columns once per type, not per table.
        wanted = {e: tuple(c.name for c in self.dialect.columns(e)) for e in {t.event_type for t in tables}}
        todo = [t for t in tables if (t.target, wanted[t.event_type]) not in self._ready]
        if not todo:
            return
        types = sorted({t.event_type for t in todo})
        found = self._relations(conn, [pool_table(t) for t in types] + [t.target for t in todo])
        for event_type in types:
            if missing_columns(found.get(pool_table(event_type)), wanted[event_type]):
                self._ensure_pool(conn, event_type)
        parts = [
            t for t in todo if part_action(found.get(t.target), wanted[t.event_type]) is not PartAction.READY
        ]
        for chunk in _chunks(parts, PARTS_PER_TRANSACTION):
            self._ensure_parts(conn, chunk, wanted)
        self._ready.update((t.target, wanted[t.event_type]) for t in todo)

    def _relations(self, conn: Conn, refs: Sequence[TableRef]) -> dict[TableRef, Relation]:
        found: dict[TableRef, Relation] = {}
        for chunk in _chunks(refs, 1000):
            stmt, params = self.dialect.relations(chunk)
            found.update(catalog(conn.execute(stmt, params).fetchall()))
        return found

    def _ensure_pool(self, conn: Conn, event_type: str) -> None:
        pool = pool_table(event_type)
        with conn.transaction():
            self._ddl_lock(conn, str(pool))
            existing = self._relations(conn, [pool]).get(pool)
            if existing is None:
                for stmt in self.dialect.create_pool(event_type):
                    conn.execute(stmt)
                return
            added = [c for c in self.dialect.columns(event_type) if c.name not in existing.columns]
            for col in added:
                conn.execute(self.dialect.add_column(pool, col.name, col.target_type))
        if added:
            log.info("columns added", extra={"table": str(pool), "columns": [c.name for c in added]})

    def _ensure_parts(
        self, conn: Conn, tables: Sequence[TableLoad], wanted: dict[str, tuple[str, ...]]
    ) -> None:
        """Many customers' parts in one transaction and one script: first sight of a customer
        costs its catalog rows, not round trips. Re-checked under the DDL lock, which another
        inserter making the same parts holds meanwhile."""
        d = self.dialect
        readers = {t.target.schema: reader_role(t.customer_id) for t in tables}
        with conn.transaction():
            self._ddl_lock(conn, "parts")
            self._ensure_roles(conn, sorted(set(readers.values())))
            stmt, params = d.schemas_present(sorted(readers))
            present = {str(r[0]) for r in conn.execute(stmt, params).fetchall()}
            script = [
                s
                for schema, reader in sorted(readers.items())
                if schema not in present
                for s in d.create_customer_schema(schema, reader)
            ]
            found = self._relations(conn, [t.target for t in tables])
            for table in tables:
                script += self._part_ddl(table, found.get(table.target), wanted[table.event_type])
            if script:
                conn.execute(d.script(script))

    def _part_ddl(
        self, table: TableLoad, existing: Relation | None, wanted: Sequence[str]
    ) -> list[Statement]:
        ref, customer, d = table.target, table.customer_id, self.dialect
        reader = reader_role(customer)
        action = part_action(existing, wanted)
        if action is PartAction.CREATE:
            return d.create_customer_table(ref, customer, reader)
        if action is PartAction.ADOPT:
            gone = set(missing_columns(existing, wanted))
            log.info("customer table adopted into its pool", extra={"table": str(ref)})
            missing = [c for c in d.columns(table.event_type) if c.name in gone]
            return d.adopt_customer_table(ref, customer, reader, missing)
        if action is PartAction.REFRESH and existing is not None:
            return d.refresh_customer_table(ref, customer, reader, existing.columns)
        return []

    def _ddl_lock(self, conn: Conn, name: str) -> None:
        for stmt, params in self.dialect.ddl_lock(name):
            conn.execute(stmt, params)

    def _ensure_roles(self, conn: Conn, roles: Sequence[str]) -> None:
        """Roles are cluster-wide: another database's inserter may create the same one at the
        same moment; losing that race is success. All missing roles go in one script; only
        after a lost race are they made one by one."""
        stmt, params = self.dialect.roles_present(roles)
        present = {str(r[0]) for r in conn.execute(stmt, params).fetchall()}
        missing = [r for r in roles if r not in present]
        if not missing:
            return
        with contextlib.suppress(pg_errors.DuplicateObject, pg_errors.UniqueViolation):
            with conn.transaction():  # a savepoint: a lost race must not abort the DDL transaction
                conn.execute(self.dialect.script([self.dialect.create_role(r) for r in missing]))
            return
        for role in missing:
            with (
                contextlib.suppress(pg_errors.DuplicateObject, pg_errors.UniqueViolation),
                conn.transaction(),
            ):
                conn.execute(self.dialect.create_role(role))

    # -- the load -------------------------------------------------------------------------------

    def load(self, conn: Conn, plan: LoadPlan) -> LoadResult:
        """Load ``plan`` exactly once. Raises TransientError (retry) or TerminalError."""
        started = time.monotonic()
        try:
            self.ensure_tables(conn, plan.tables)
            return self._load(conn, plan, started)
        except psycopg.Error as exc:
            self._ready.clear()  # a table dropped or altered underneath us: check again next time
            raise classify_pg(exc, f"load {plan.batch_id}") from exc

    def _load(self, conn: Conn, plan: LoadPlan, started: float) -> LoadResult:
        load_id = str(uuid.uuid4())
        d = self.dialect
        with conn.transaction(), conn.cursor() as cur:
            if d.lock_before_staging:
                self._lock(cur, plan.pools)
            every = plan.objects  # sorts every unit: once per load
            keys = tuple(o.unit for o in every)
            done = self._loaded_keys(cur, keys)
            todo = plan.without(done)
            # One staging table per event type, whatever the number of customers: a shared
            # object is staged once, and one statement per step moves every customer's rows.
            stages: list[tuple[str, str, list[WarehouseColumn], Staged]] = []
            staging_started = time.monotonic()
            typed = todo.stages()
            self.stager.begin(plan.bucket, [o for _, objs in typed for o in objs])
            try:
                for i, (event_type, objects) in enumerate(typed):
                    stage, columns = f"_stage_{i}", d.columns(event_type)
                    for stmt in d.create_staging(stage, columns):
                        cur.execute(stmt)
                    seen = self.stager.stage(cur, stage, event_type, objects, columns, plan.bucket)
                    stages.append((event_type, stage, columns, seen))
            finally:
                self.stager.end()
            merge_started = time.monotonic()
            if not d.lock_before_staging:
                self._lock(cur, todo.pools)
                done |= self._loaded_keys(cur, todo.keys)  # loaded by another inserter meanwhile
            outcomes: list[ObjectOutcome] = []
            fresh_tables: list[str] = []
            if stages:
                for stmt in d.merge_setup():
                    cur.execute(stmt)
            staged = {o.ordinal for _, objs in typed for o in objs}
            targets = {(t.customer_id, t.event_type): t.target for t in plan.tables}
            for i, (event_type, stage, columns, seen) in enumerate(stages):
                units = [o for o in every if o.event_type == event_type and o.ordinal in staged]
                stats = self._stats(cur, stage, units, seen)
                fresh_tables.append(fresh := f"_fresh_{i}")
                outcomes.extend(
                    self._merge(cur, fresh, event_type, stage, columns, units, stats, seen, done, targets)
                )
            duration_ms = _ms_since(started)
            rows = self._ledger_rows(plan.batch_id, every, load_id, outcomes, duration_ms)
            self._record_ledger(cur, rows)
            for stmt in d.cleanup([stage for _, stage, _, _ in stages] + fresh_tables):
                cur.execute(stmt)
        return LoadResult(
            batch_id=plan.batch_id,
            load_id=load_id,
            loaded=tuple(outcomes),
            already_loaded=tuple(k for k in keys if k in done),
            duration_ms=_ms_since(started),
            stage_ms=int((merge_started - staging_started) * 1000),
            merge_ms=_ms_since(merge_started),
        )

    def _lock(self, cur: psycopg.Cursor[Any], refs: Sequence[TableRef]) -> None:
        for stmt, params in self.dialect.lock_tables(refs):
            cur.execute(stmt, params)

    def _loaded_keys(self, cur: psycopg.Cursor[Any], keys: Sequence[str]) -> set[str]:
        loaded: set[str] = set()
        for chunk in _chunks(keys, 5000):  # a statement carries at most 65,535 parameters
            cur.execute(*self.dialect.loaded_keys(chunk))
            loaded.update(row[0] for row in cur.fetchall())
        return loaded

    def _merge(
        self,
        cur: psycopg.Cursor[Any],
        fresh: str,
        event_type: str,
        stage: str,
        columns: Sequence[WarehouseColumn],
        units: Sequence[ObjectLoad],
        stats: dict[tuple[int, str], _Stats],
        seen: Staged,
        done: set[str],
        targets: dict[tuple[str, str], TableRef],
    ) -> list[ObjectOutcome]:
        """Every customer's new rows of the type's staging into the type's pool (each row
        lands in its customer's part), in the same few statements whatever the number of
        customers: dedupe (PostgreSQL: in staging; Redshift: into ``fresh``) and record their
        identities, insert into the pool, count the new rows per unit (unless all were new)."""
        d = self.dialect
        todo = [u for u in units if u.unit not in done]
        if not todo:
            return []
        skip = [k for u in units if u.unit in done and (k := (u.ordinal, u.customer_id)) in stats]
        if skip:  # rare: slices loaded by another inserter meanwhile, or before the rest of their object
            cur.execute(d.discard_units(stage, skip))
        present = {k: s for u in todo if (s := stats.get(k := (u.ordinal, u.customer_id))) is not None}
        loaded: dict[tuple[int, str], int] = {}
        if present:
            lo, hi = merge_window(
                min(s.lo for s in present.values()), max(s.hi for s in present.values()), self.dedupe_window
            )
            repeated = seen.repeated_ids()
            duplicates = True if repeated is None else repeated  # not known: dedupe within the load
            identity = d.identity_target(event_type)
            steps, new_rows = d.dedupe(
                stage, fresh, identity, columns, lo, hi, duplicates=duplicates,
                probe_bytes=self._probe_bytes(cur, identity),
            )  # fmt: skip
            for stmt in steps:
                cur.execute(stmt)
            inserted = cur.execute(d.insert_fresh(pool_table(event_type), new_rows, columns)).rowcount
            if inserted == sum(s.rows for s in present.values()):
                # Every staged row is new (the common load): each unit's count is its staged
                # rows, and the per-unit count over the fresh rows (0.2 s per 1M) is not needed.
                loaded = {k: s.rows for k, s in present.items()}
            else:
                cur.execute(d.fresh_counts(new_rows))
                loaded = {(int(o), str(c)): int(n) for o, c, n in cur.fetchall()}
        outcomes = []
        for u in todo:
            s = stats.get((u.ordinal, u.customer_id))
            rows = s.rows if s else 0
            if rows != u.rows:
                log.warning(
                    "object row count differs from its manifest entry (loading what S3 holds)",
                    extra={"key": u.unit, "manifest_rows": u.rows, "object_rows": rows},
                )
            n = loaded.get((u.ordinal, u.customer_id), 0)
            target = targets[(u.customer_id, u.event_type)]
            lo_, hi_ = (s.lo, s.hi) if s else (None, None)
            outcomes.append(ObjectOutcome(u.unit, target, n, rows - n, lo_, hi_))
        return outcomes

    def _probe_bytes(self, cur: psycopg.Cursor[Any], identity: TableRef) -> int:
        """Size of the index the dedupe probe reads (0 where the dialect has none)."""
        stmt = self.dialect.probe_index_size(identity)
        row = cur.execute(stmt).fetchone() if stmt is not None else None
        return int(row[0]) if row else 0

    def _stats(
        self, cur: psycopg.Cursor[Any], stage: str, units: Sequence[ObjectLoad], seen: Staged
    ) -> dict[tuple[int, str], _Stats]:
        """Rows and occurred_at range per (object, customer), refusing rows of a customer the
        object's manifest entry does not list, or of another type or version than its key names
        (they would land in the wrong customer's table)."""
        by_unit = {(o.ordinal, o.customer_id): o for o in units}
        by_ordinal = {o.ordinal: o for o in units}
        known = seen.slice_stats()  # the stager's own count of what it sent, when it sent the rows
        found = known if known is not None else cur.execute(self.dialect.stage_stats(stage)).fetchall()
        out: dict[tuple[int, str], _Stats] = {}
        for ordinal, customer, rows, lo, hi, t_lo, t_hi, v_lo, v_hi in found:
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

    def _record_ledger(self, cur: psycopg.Cursor[Any], rows: Sequence[tuple[Any, ...]]) -> None:
        copy = self.dialect.copy_ledger()
        if copy is not None:
            with cur.copy(copy) as pipe:
                for row in rows:
                    pipe.write_row(row)
            return
        for chunk in _chunks(rows, LEDGER_ROWS_PER_STATEMENT):
            cur.execute(self.dialect.record_ledger(len(chunk)), tuple(x for row in chunk for x in row))

    def _ledger_rows(
        self,
        batch_id: str,
        objects: Sequence[ObjectLoad],
        load_id: str,
        outcomes: Sequence[ObjectOutcome],
        duration_ms: int,
    ) -> list[tuple[Any, ...]]:
        """One row per unit, in LEDGER_COLUMNS order."""
        by_key = {o.unit: o for o in objects}
        now = self.clock()
        rows = []
        for out in outcomes:
            obj = by_key[out.key]
            rows.append(
                (
                    out.key,
                    obj.batch_id or batch_id,
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
        return rows


def _chunks(items: Sequence[_T], size: int) -> list[Sequence[_T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _ms_since(start: float) -> int:
    return int((time.monotonic() - start) * 1000)
