"""Every SQL statement the inserter runs on PostgreSQL — pure functions of names and plans.

The Redshift dialect is the PostgreSQL dialect with differences (dlt's
``RedshiftSqlClient(Psycopg2SqlClient)`` shape): Redshift speaks the PostgreSQL protocol, so one
loader runs both through psycopg, and only the statements below differ. Statements are
``psycopg.sql.Composed``: identifiers pass :mod:`inserter.naming` checks and are quoted by
``sql.Identifier``; values travel as parameters or ``sql.Literal``; type names come from
:mod:`schemas` (derived from definitions, never from events). Nothing from an event is ever
spliced into SQL text — rows travel by COPY.

The load transaction, in order (:class:`inserter.loader.Loader` drives it)::

    [Redshift: LOCK ledger + targets]         ← Redshift snapshots at the first statement
    pre-check ledger → create staging → stage objects (COPY)
    [PostgreSQL: pg_advisory_xact_lock per target, sorted]
    re-check ledger under the locks → drop rows of objects loaded meanwhile
    stats per object (rows, occurred_at range, identity check)
    dedupe: staging rows, one per (customer_id, event_id), whose pair the target does not hold
            within the dedupe window → "fresh" temp table
    insert fresh into target → ledger rows → COMMIT
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from psycopg import sql

from inserter.destinations.sql import (
    LEDGER_COLUMNS,
    OBJ,
    TIE_BREAK,
    Params,
    Slice,
    Statement,
    WarehouseColumn,
    _id,
    _ids,
    _placeholders,
    _table,
    slice_filter,
)
from inserter.naming import ADMIN_ROLE, TableRef, ledger_table, lock_key
from schemas import Registry


class PostgresDialect:
    """PostgreSQL: staging filled by ``COPY … FROM STDIN (FORMAT BINARY)``; per-table
    ``pg_advisory_xact_lock`` taken after staging (so COPYs into one table run in parallel and
    only the merge serializes); an index on ``(event_id, occurred_at)`` makes each dedupe
    probe one index lookup."""

    name = "postgres"
    #: Redshift fixes a transaction's snapshot at its first statement; PostgreSQL (READ
    #: COMMITTED) takes one per statement, so it may lock late and still see every commit.
    lock_before_staging = False

    def __init__(
        self, registry: Registry, *, statement_timeout_s: int = 600, lock_timeout_s: int = 60
    ) -> None:
        self.registry = registry
        #: No statement runs longer, and no lock is waited for longer: a hung load fails (and
        #: its message comes back) instead of holding the message and the table forever.
        self.statement_timeout_s = statement_timeout_s
        self.lock_timeout_s = lock_timeout_s

    # -- columns ----------------------------------------------------------------------------------

    def _target_types(self, event_type: str) -> list[tuple[str, str]]:
        return self.registry.postgres_columns(event_type)

    def staging_type(self, target_type: str) -> str:
        """numeric travels as text (its binary form is not worth encoding by hand; the merge
        casts it); every other type is staged as itself."""
        return "text" if target_type.startswith("numeric") else target_type

    def columns(self, event_type: str) -> list[WarehouseColumn]:
        """Every column of the event type's table (union of versions), in schema order."""
        return [WarehouseColumn(n, t, self.staging_type(t)) for n, t in self._target_types(event_type)]

    # -- catalog probes ---------------------------------------------------------------------------

    def role_exists(self, role: str) -> tuple[Statement, Params]:
        return sql.SQL("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s").format(), (role,)

    def schema_exists(self, schema: str) -> tuple[Statement, Params]:
        return sql.SQL("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s").format(), (schema,)

    def existing_columns(self, ref: TableRef) -> tuple[Statement, Params]:
        return (
            sql.SQL(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s"
            ).format(),
            (ref.schema, ref.table),
        )

    # -- DDL --------------------------------------------------------------------------------------

    def ddl_lock(self, name: str) -> list[tuple[Statement, Params]]:
        """Serializes DDL on ``name`` across inserters (CREATE … IF NOT EXISTS races otherwise);
        an ALTER waiting behind a long analyst query gives up (and is retried) instead of
        queueing every reader of the table behind it."""
        return [
            (sql.SQL("SET LOCAL lock_timeout = '30s'").format(), ()),
            (sql.SQL("SELECT pg_advisory_xact_lock(%s)").format(), (lock_key(f"ddl:{name}"),)),
        ]

    def create_role(self, role: str) -> Statement:
        return sql.SQL("CREATE ROLE {} NOLOGIN").format(_id(role))

    def _grantee(self, role: str) -> sql.Composable:
        return _id(role)

    def create_customer_schema(self, schema: str, reader: str) -> list[Statement]:
        """The schema, closed to PUBLIC, readable by the customer's role and the admin role —
        including tables created later (default privileges of the role that creates them)."""
        s = _id(schema)
        stmts = [
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s),
            sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(s),
        ]
        for role in (reader, ADMIN_ROLE):
            g = self._grantee(role)
            stmts.append(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, g))
            stmts.append(
                sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON TABLES TO {}").format(s, g)
            )
        return stmts

    def create_table(self, ref: TableRef, event_type: str, reader: str) -> list[Statement]:
        stmts = [sql.SQL(self.registry.postgres_ddl(event_type, ref.schema, ref.table)).format()]
        stmts.extend(self._table_extras(ref))
        stmts.append(sql.SQL("REVOKE ALL ON TABLE {} FROM PUBLIC").format(_table(ref)))
        for role in (reader, ADMIN_ROLE):
            stmts.append(sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(_table(ref), self._grantee(role)))
        return stmts

    def _table_extras(self, ref: TableRef) -> list[Statement]:
        """The dedupe index: event_id first (the merge's probe is an equality on it), then
        occurred_at (the window is checked inside the index: index-only probes).

        A hash index on event_id was measured too: ~2.5x faster inserts into a table whose
        index was built over existing rows, but ~8x *slower* (≈35k vs ≈270k rows/s) while the
        table grows from empty — bucket splits — which is what every customer table does."""
        index = _id(f"{ref.table}__dedupe")
        return [
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (event_id, occurred_at)").format(index, _table(ref))
        ]

    def add_column(self, ref: TableRef, name: str, target_type: str) -> Statement:
        """A new version's column; nullable (rows of older versions have no value for it)."""
        return sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(_table(ref), _id(name), sql.SQL(target_type))

    def ledger_ddl(self) -> list[Statement]:
        """The load ledger's schema, table and grants; the table and its indexes are the
        dialect's (Redshift has no secondary indexes, it sorts instead)."""
        led = _table(ledger_table())
        s = _id(ledger_table().schema)
        return [
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s),
            sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(s),
            self._ledger_table(led),
            *self._ledger_indexes(led),
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, self._grantee(ADMIN_ROLE)),
            sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(led, self._grantee(ADMIN_ROLE)),
        ]

    def _ledger_table(self, led: sql.Composed) -> Statement:
        return sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "object_key text PRIMARY KEY, batch_id text NOT NULL, load_id uuid NOT NULL, "
            "customer_id text NOT NULL, event_type text NOT NULL, event_version smallint NOT NULL, "
            "target_table text NOT NULL, rows_loaded bigint NOT NULL, rows_skipped bigint NOT NULL, "
            "min_occurred_at timestamptz, max_occurred_at timestamptz, "
            "loaded_at timestamptz NOT NULL, duration_ms integer NOT NULL)"
        ).format(led)

    def _ledger_indexes(self, led: sql.Composed) -> list[Statement]:
        return [
            sql.SQL(
                "CREATE INDEX IF NOT EXISTS load_ledger_customer_loaded ON {} (customer_id, loaded_at)"
            ).format(led),
            sql.SQL("CREATE INDEX IF NOT EXISTS load_ledger_loaded ON {} (loaded_at)").format(led),
        ]

    # -- the load transaction ---------------------------------------------------------------------

    def session_setup(self) -> list[Statement]:
        """Per connection: name it (operators and tests find it in pg_stat_activity) and let the
        server end a transaction whose client went silent (it holds no locks but a snapshot)."""
        return [
            sql.SQL("SET application_name = 'shardhouse-inserter'").format(),
            sql.SQL("SET idle_in_transaction_session_timeout = '10min'").format(),
            sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{self.statement_timeout_s}s")),
            sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{self.lock_timeout_s}s")),
            # Staging tables are temp tables: they live in session-local buffers (8 MB by
            # default); a batch's worth keeps them out of the OS. Only settable before the
            # session's first temp table, hence here.
            sql.SQL("SET temp_buffers = '256MB'").format(),
        ]

    def lock_tables(self, refs: Sequence[TableRef]) -> list[tuple[Statement, Params]]:
        """Serialize merges per target: transaction-scoped advisory locks in sorted order (two
        loads touching the same tables take them in the same order: no deadlock)."""
        return [
            (sql.SQL("SELECT pg_advisory_xact_lock(%s)").format(), (lock_key(f"table:{ref}"),))
            for ref in sorted(set(refs))
        ]

    def loaded_keys(self, n: int) -> Statement:
        return sql.SQL("SELECT object_key FROM {} WHERE object_key IN ({})").format(
            _table(ledger_table()), _placeholders(n)
        )

    def create_staging(self, stage: str, columns: Sequence[WarehouseColumn]) -> list[Statement]:
        cols = sql.SQL(", ").join(
            sql.SQL("{} {}").format(_id(c.name), sql.SQL(c.staging_type)) for c in columns
        )
        return [
            sql.SQL("CREATE TEMP TABLE {} ({} integer NOT NULL, {}) ON COMMIT DROP").format(
                _id(stage), _id(OBJ), cols
            )
        ]

    def copy_from_stdin(self, stage: str, names: Sequence[str]) -> Statement:
        return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(_id(stage), _ids([*names, OBJ]))

    def discard_objects(self, stage: str, ordinals: Sequence[int]) -> Statement:
        return sql.SQL("DELETE FROM {} WHERE {} IN ({})").format(
            _id(stage), _id(OBJ), sql.SQL(", ").join(sql.Literal(int(o)) for o in ordinals)
        )

    def stage_stats(self, stage: str) -> Statement:
        """Per object and customer: rows, occurred_at range, and the type and version ranges (a
        row of a customer the object's entry does not list, or of another type or version, is
        refused, not loaded). One statement per staging table, whatever the customers."""
        return sql.SQL(
            "SELECT {obj}, customer_id, count(*), min(occurred_at), max(occurred_at), "
            "min(event_type), max(event_type), min(event_version), max(event_version) "
            "FROM {stage} GROUP BY {obj}, customer_id"
        ).format(obj=_id(OBJ), stage=_id(stage))

    def merge_setup(self) -> list[Statement]:
        """For this transaction: room to sort a batch by event_id in memory (the default 4 MB
        spills a 100k-row batch to disk)."""
        return [sql.SQL("SET LOCAL work_mem = '256MB'").format()]

    def _deduped(
        self,
        stage: str,
        target: TableRef,
        columns: Sequence[WarehouseColumn],
        lo: datetime,
        hi: datetime,
        part: Slice | None = None,
    ) -> sql.Composed:
        """One row per (customer_id, event_id) of ``stage`` (first object, then stream position),
        keeping only pairs the target does not hold with occurred_at in ``[lo, hi]`` — the
        batch's occurred_at range widened by the dedupe window on both sides. Identity is per
        customer (DESIGN invariant 9): the pair, not the id, so a staging table or target that
        holds several customers' rows keeps each customer's copy of a shared id. The probe
        stays one lookup of the (event_id, occurred_at) index; customer_id is compared only on
        the rows it finds, and a new event finds none.

        ``OFFSET 0`` keeps the NOT EXISTS a correlated sub-plan instead of letting the planner
        turn it into an anti-join: each staged row is one probe of the (event_id, occurred_at)
        index, so the cost follows the batch. As a join, the planner may prefer a sequential
        scan of the target (measured: a Merge Anti Join over the whole table), whose cost
        follows the table."""
        names = [OBJ, *(c.name for c in columns)]
        return sql.SQL(
            "SELECT DISTINCT ON (s.customer_id, s.event_id) {cols} FROM {stage} AS s "
            "WHERE {part}NOT EXISTS (SELECT 1 FROM {target} AS t WHERE t.event_id = s.event_id "
            "AND t.customer_id = s.customer_id AND t.occurred_at BETWEEN {lo} AND {hi} OFFSET 0) "
            "ORDER BY s.customer_id, s.event_id, {tie}"
        ).format(
            cols=_ids(names, "s"),
            stage=_id(stage),
            part=slice_filter(part),
            target=_table(target),
            lo=sql.Literal(lo),
            hi=sql.Literal(hi),
            tie=_ids(TIE_BREAK, "s"),
        )

    def _create_temp_as(self, name: str) -> sql.Composed:
        return sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS ").format(_id(name))

    def dedupe(
        self,
        stage: str,
        fresh: str,
        target: TableRef,
        columns: Sequence[WarehouseColumn],
        lo: datetime,
        hi: datetime,
        part: Slice | None = None,
    ) -> Statement:
        """``fresh`` := the deduplicated new rows, when a table's slice holds several objects
        (the ledger needs each object's count of new rows)."""
        return self._create_temp_as(fresh) + self._deduped(stage, target, columns, lo, hi, part)

    def insert_deduped(
        self,
        stage: str,
        target: TableRef,
        columns: Sequence[WarehouseColumn],
        lo: datetime,
        hi: datetime,
        part: Slice | None = None,
    ) -> Statement:
        """The deduplicated new rows straight into the target, when its slice holds one object
        (the common case: one batch per load and table); the row count is that object's count
        of new rows."""
        rows = self._deduped(stage, target, columns, lo, hi, part)
        return self.insert_fresh(target, sql.SQL("({}) AS f").format(rows), columns)

    def fresh_counts(self, fresh: str) -> Statement:
        return sql.SQL("SELECT {obj}, count(*) FROM {fresh} GROUP BY {obj}").format(
            obj=_id(OBJ), fresh=_id(fresh)
        )

    def _load_expr(self, column: WarehouseColumn) -> sql.Composable:
        if column.staging_type == column.target_type:
            return sql.SQL("f.{}").format(_id(column.name))
        return sql.SQL("CAST(f.{} AS {})").format(_id(column.name), sql.SQL(column.target_type))

    def insert_fresh(
        self, target: TableRef, fresh: str | sql.Composable, columns: Sequence[WarehouseColumn]
    ) -> Statement:
        """Columns by name, never by position. ``fresh``: a temp table's name, or a subquery."""
        source = sql.SQL("{} AS f").format(_id(fresh)) if isinstance(fresh, str) else fresh
        return sql.SQL("INSERT INTO {target} ({cols}) SELECT {exprs} FROM {source}").format(
            target=_table(target),
            cols=_ids([c.name for c in columns]),
            exprs=sql.SQL(", ").join(self._load_expr(c) for c in columns),
            source=source,
        )

    def record_ledger(self, n_objects: int) -> Statement:
        row = sql.SQL("({})").format(_placeholders(len(LEDGER_COLUMNS)))
        return sql.SQL("INSERT INTO {} ({}) VALUES {}").format(
            _table(ledger_table()), _ids(LEDGER_COLUMNS), sql.SQL(", ").join(row for _ in range(n_objects))
        )

    def cleanup(self, tables: Sequence[str]) -> list[Statement]:
        return []  # ON COMMIT DROP

    def recent_loads(self, *, customer: bool) -> Statement:
        """One row per (load, customer): objects, rows, duration, lag from event time to load."""
        where = sql.SQL("WHERE customer_id = %s ") if customer else sql.SQL("")
        return sql.SQL(
            "SELECT customer_id, load_id, min(batch_id), count(*), sum(rows_loaded), sum(rows_skipped), "
            "max(duration_ms), max(loaded_at), min(min_occurred_at), max(max_occurred_at) "
            "FROM {ledger} {where}GROUP BY customer_id, load_id "
            "ORDER BY max(loaded_at) DESC, customer_id LIMIT %s"
        ).format(ledger=_table(ledger_table()), where=where)

    def customer_freshness(self) -> Statement:
        """Per customer: newest load, newest event loaded, rows and loads so far (portable SQL:
        ``shardhouse status`` runs it against Redshift too)."""
        return sql.SQL(
            "SELECT customer_id, max(loaded_at), max(max_occurred_at), sum(rows_loaded), "
            "count(DISTINCT load_id) FROM {ledger} GROUP BY customer_id ORDER BY customer_id"
        ).format(ledger=_table(ledger_table()))
