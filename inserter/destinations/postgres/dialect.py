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
    stats per object (rows, occurred_at range, identity check; PostgreSQL: from the stager)
    dedupe: staging rows, one per (customer_id, event_id), whose pair the target does not hold
            within the dedupe window (PostgreSQL: in staging, identities recorded; Redshift:
            → "fresh" temp table)
    insert fresh into target → [per-object counts, unless every staged row was new]
    → ledger rows → COMMIT
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
    Statement,
    WarehouseColumn,
    _id,
    _ids,
    _placeholders,
    _table,
)
from inserter.naming import ADMIN_ROLE, TableRef, identity_table, ledger_table, lock_key, pool_table
from schemas import Registry

#: Probe index size from which the dedupe probe runs in event_id order (≈ 400k ids; see
#: :meth:`PostgresDialect.dedupe`).
SORTED_PROBE_BYTES = 16 * 2**20


class PostgresDialect:
    """PostgreSQL: staging filled by ``COPY … FROM STDIN (FORMAT BINARY)``; per-table
    ``pg_advisory_xact_lock`` taken after staging (so COPYs into one table run in parallel and
    only the merge serializes); the identity table's index on ``(event_id, occurred_at)`` makes
    each dedupe probe one index lookup."""

    name = "postgres"
    #: Redshift fixes a transaction's snapshot at its first statement; PostgreSQL (READ
    #: COMMITTED) takes one per statement, so it may lock late and still see every commit.
    lock_before_staging = False

    def __init__(
        self,
        registry: Registry,
        *,
        statement_timeout_s: int = 600,
        lock_timeout_s: int = 60,
        sorted_probe_bytes: int = SORTED_PROBE_BYTES,
    ) -> None:
        self.registry = registry
        #: No statement runs longer, and no lock is waited for longer: a hung load fails (and
        #: its message comes back) instead of holding the message and the table forever.
        self.statement_timeout_s = statement_timeout_s
        self.lock_timeout_s = lock_timeout_s
        self.sorted_probe_bytes = sorted_probe_bytes

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

    def roles_present(self, roles: Sequence[str]) -> tuple[Statement, Params]:
        """Which of ``roles`` exist (one round trip for a load's new customers)."""
        q = sql.SQL("SELECT rolname FROM pg_catalog.pg_roles WHERE rolname IN ({})")
        return q.format(_placeholders(len(roles))), tuple(roles)

    def schemas_present(self, schemas: Sequence[str]) -> tuple[Statement, Params]:
        q = sql.SQL("SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname IN ({})")
        return q.format(_placeholders(len(schemas))), tuple(schemas)

    def script(self, stmts: Sequence[Statement]) -> Statement:
        """Statements without parameters sent as one simple-protocol query: one round trip
        for a load's first-sight DDL, however many customers it brings."""
        return sql.SQL(";\n").join(stmts)

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

    def _grantees(self, *roles: str) -> sql.Composable:
        """Several grantees in one GRANT: first sight of a customer costs statements, each a
        catalog write."""
        return sql.SQL(", ").join(self._grantee(r) for r in roles)

    def create_customer_schema(self, schema: str, reader: str) -> list[Statement]:
        """The schema, closed to PUBLIC, readable by the customer's role and the admin role —
        including tables created later (default privileges of the role that creates them)."""
        s = _id(schema)
        stmts = [
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s),
            sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(s),
        ]
        both = self._grantees(reader, ADMIN_ROLE)
        return [
            *stmts,
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, both),
            sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON TABLES TO {}").format(s, both),
        ]

    # -- pooled tables: one per event type, each customer's table a part of it ------------------

    def relations(self, refs: Sequence[TableRef]) -> tuple[Statement, Params]:
        """(schema, table, column, is a part of its pool) for each existing relation of ``refs``:
        what the DDL step needs to know about a load's tables, in one round trip whatever the
        number of customers. A part is a view."""
        schema_col, table_col, query = self._relations_query()
        pairs = sql.SQL(" OR ").join(
            sql.SQL("({} = %s AND {} = %s)").format(sql.SQL(schema_col), sql.SQL(table_col)) for _ in refs
        )
        return sql.SQL(query).format(pairs), tuple(x for ref in refs for x in (ref.schema, ref.table))

    def _relations_query(self) -> tuple[str, str, str]:
        """(schema column, table column, query with ``{}`` for the pairs) of the catalog."""
        return (
            "n.nspname",
            "c.relname",
            "SELECT n.nspname, c.relname, a.attname, c.relkind = 'v' "
            "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "WHERE {} ORDER BY a.attnum",
        )

    def create_pool(self, event_type: str) -> list[Statement]:
        """The type's pool, indexed by (customer_id, occurred_at) for each customer's view, and
        its identity table with the dedupe index; both closed to everyone but the admin role.

        A plain table, not partitioned by customer: attaching a partition rebuilds the pool's
        partition map, so first sight cost 10 ms per customer at 300 partitions and 18 ms at
        3,000, against 0.5-0.8 ms for a view at either (docs/inserter.md, "Pools"). The dedupe
        probe goes to the identity table: one narrow btree, event_id first (the probe is an
        equality on it), then occurred_at (the window is checked inside the index). A hash
        index on event_id was measured too: ~8x *slower* while the table grows from empty."""
        pool, ids = pool_table(event_type), identity_table(event_type)
        index = _id(f"{ids.table}__dedupe")
        return [
            sql.SQL(self.registry.postgres_ddl(event_type, pool.schema, pool.table)).format(),
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (customer_id, occurred_at)").format(
                _id(f"{pool.table}__customer"), _table(pool)
            ),
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (customer_id text NOT NULL, event_id uuid NOT NULL, "
                "occurred_at timestamptz NOT NULL)"
            ).format(_table(ids)),
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (event_id, occurred_at)").format(index, _table(ids)),
            *self._admin_only(pool),
            *self._admin_only(ids),
        ]

    def _admin_only(self, ref: TableRef) -> list[Statement]:
        return [
            sql.SQL("REVOKE ALL ON TABLE {} FROM PUBLIC").format(_table(ref)),
            sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(_table(ref), self._grantee(ADMIN_ROLE)),
        ]

    def _readable_by(self, ref: TableRef, reader: str) -> list[Statement]:
        return [
            sql.SQL("REVOKE ALL ON TABLE {} FROM PUBLIC").format(_table(ref)),
            sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(_table(ref), self._grantees(reader, ADMIN_ROLE)),
        ]

    def _view_options(self) -> sql.Composable:
        """security_barrier: a reader's own functions in a WHERE run only on the rows the view
        lets through, so they cannot be used to peek at other customers' rows of the pool."""
        return sql.SQL(" WITH (security_barrier = true)")

    def _view(
        self,
        ref: TableRef,
        customer_id: str,
        reader: str,
        names: Sequence[str] | None = None,
        *,
        replace: bool = False,
    ) -> list[Statement]:
        """The customer's rows of the pool, as a view (run with its owner's rights: the reader
        needs no grant on the pool, and gets none): ``names`` (default: every column of the
        type, in the schema's order); ``replace``: CREATE OR REPLACE."""
        names = names if names is not None else [c.name for c in self.columns(ref.table)]
        verb = sql.SQL("CREATE OR REPLACE VIEW" if replace else "CREATE VIEW")
        return [
            sql.SQL("{} {}{} AS SELECT {} FROM {} WHERE customer_id = {}").format(
                verb,
                _table(ref),
                self._view_options(),
                _ids(names),
                _table(pool_table(ref.table)),
                sql.Literal(customer_id),
            ),
            *self._readable_by(ref, reader),
        ]

    def create_customer_table(self, ref: TableRef, customer_id: str, reader: str) -> list[Statement]:
        """``c_<customer>.<type>``: the customer's view of the type's pool, readable by the
        customer's role (which cannot read the pool, nor another customer's view)."""
        return self._view(ref, customer_id, reader)

    def adopt_customer_table(
        self, ref: TableRef, customer_id: str, reader: str, missing: Sequence[WarehouseColumn]
    ) -> list[Statement]:
        """A customer table made before pools: its rows move into the pool (and its ids into the
        identity table), the table is kept as ``<type>__pre_pool`` for the operator to drop
        once checked, and the view takes its name."""
        absent = {c.name for c in missing}
        names = [c.name for c in self.columns(ref.table) if c.name not in absent]
        return [
            sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
                _table(pool_table(ref.table)), _ids(names), _ids(names), _table(ref)
            ),
            *self._identities_from(identity_table(ref.table), _table(ref)),
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(_table(ref), _id(f"{ref.table}__pre_pool")),
            *self._view(ref, customer_id, reader),
        ]

    def refresh_customer_table(
        self, ref: TableRef, customer_id: str, reader: str, existing: Sequence[str]
    ) -> list[Statement]:
        """A view lists its columns when made: a new version's columns need it made again.
        Replaced, never dropped — an analyst's view over it would make the DROP fail, and every
        load of the customer's type with it — so its ``existing`` columns keep their places and
        the new ones follow them (CREATE OR REPLACE may only add columns at the end)."""
        added = [c.name for c in self.columns(ref.table) if c.name not in existing]
        return self._view(ref, customer_id, reader, [*existing, *added], replace=True)

    def identity_target(self, event_type: str) -> TableRef:
        """Where the dedupe probe looks."""
        return identity_table(event_type)

    def _identities_from(
        self, identity: TableRef, source: sql.Composable, *, ordered: bool = False
    ) -> list[Statement]:
        """In event_id order: the btree then fills page by page (1M ids: 1.8 s, 3.0 s unordered).
        ``ordered``: ``source`` already holds its rows in that order (no sort)."""
        order = sql.SQL("") if ordered else sql.SQL(" ORDER BY event_id")
        return [
            sql.SQL(
                "INSERT INTO {} (customer_id, event_id, occurred_at) "
                "SELECT customer_id, event_id, occurred_at FROM {}{}"
            ).format(_table(identity), source, order)
        ]

    def probe_index_size(self, identity: TableRef) -> Statement | None:
        """Bytes of the index the dedupe probe reads (0 before the pool exists)."""
        return sql.SQL(
            "SELECT coalesce(sum(pg_relation_size(c.oid)), 0) FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = {} AND c.relname = {}"
        ).format(sql.Literal(identity.schema), sql.Literal(f"{identity.table}__dedupe"))

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

    def loaded_keys(self, keys: Sequence[str]) -> tuple[Statement, Params]:
        """Which of ``keys`` the ledger holds. One array parameter: a load of 2,000 customers
        asks about ~6,000 units, and 6,000 placeholders cost psycopg and the planner more than
        the probe (46-48 ms against 52-96 ms, measured)."""
        return sql.SQL("SELECT object_key FROM {} WHERE object_key = ANY(%s)").format(
            _table(ledger_table())
        ), (list(keys),)

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
        spills a 100k-row batch to disk), and the dedupe probe as a plain index scan: the
        planner's bitmap scan pays a bitmap's set-up on every one of a batch's lookups (1M
        lookups into a 4M-row identity table: 3.2 s bitmap, 2.5 s index scan)."""
        return [
            sql.SQL("SET LOCAL work_mem = '256MB'").format(),
            sql.SQL("SET LOCAL enable_bitmapscan = off").format(),
        ]

    def dedupe(
        self,
        stage: str,
        fresh: str,
        identity: TableRef,
        columns: Sequence[WarehouseColumn],
        lo: datetime,
        hi: datetime,
        *,
        duplicates: bool = True,
        probe_bytes: int = 0,
    ) -> tuple[list[Statement], str]:
        """Statements leaving, in the returned table, one row per (customer_id, event_id) of
        ``stage`` (first object, then stream position) whose pair ``identity`` does not hold with
        occurred_at in ``[lo, hi]`` — the load's occurred_at range widened by the dedupe window
        on both sides — and recording those pairs in ``identity``. PostgreSQL deletes from
        staging in place: measured on 1M rows, that and an identity insert in event_id order
        take 4.6 s where a sorted copy of the rows (``DISTINCT ON`` into a temp table) took 6.4 s.

        The probe is one lookup of the (event_id, occurred_at) index per staged row; customer_id
        is compared only on the rows it finds, and a new event finds none. ``OFFSET 0`` keeps the
        EXISTS a correlated sub-plan instead of letting the planner turn it into a join: as a
        join, it may prefer a scan of the whole identity table (measured: a Merge Join over the
        table), whose cost follows the table, not the batch.

        Once the index (``probe_bytes``) reaches ``sorted_probe_bytes``, lookups in
        staging order miss the CPU's caches on every level of the btree; the probe then runs
        over the batch's keys sorted by event_id (``fresh``), which the identity insert reuses
        without sorting again. 1M lookups into a 4M-id table: 2.5-2.7 s + 1.6-1.8 s for the
        insert, against 0.5-0.6 s for the sort, 1.1-1.4 s probing, 1.4-1.6 s inserting. Into
        an empty table, the unsorted probe is 0.2 s and the sort would cost more than it saves."""
        stmts = []
        if duplicates:
            stmts.append(
                sql.SQL(
                    "DELETE FROM {stage} WHERE ctid IN (SELECT ctid FROM (SELECT ctid, row_number() "
                    "OVER (PARTITION BY customer_id, event_id ORDER BY {tie}) AS _rn FROM {stage}) AS d "
                    "WHERE d._rn > 1)"
                ).format(stage=_id(stage), tie=_ids(TIE_BREAK))
            )
        seen = sql.SQL(
            "EXISTS (SELECT 1 FROM {target} AS t WHERE t.event_id = {a}.event_id AND t.customer_id = "
            "{a}.customer_id AND t.occurred_at BETWEEN {lo} AND {hi} OFFSET 0)"
        )
        if probe_bytes < self.sorted_probe_bytes:
            stmts.append(
                sql.SQL("DELETE FROM {stage} AS s WHERE {seen}").format(
                    stage=_id(stage),
                    seen=seen.format(
                        target=_table(identity), a=sql.SQL("s"), lo=sql.Literal(lo), hi=sql.Literal(hi)
                    ),
                )
            )
            return [*stmts, *self._identities_from(identity, _id(stage))], stage
        stmts += [
            sql.SQL(
                "CREATE TEMP TABLE {keys} ON COMMIT DROP AS SELECT ctid AS rid, customer_id, event_id, "
                "occurred_at FROM {stage} ORDER BY event_id"
            ).format(keys=_id(fresh), stage=_id(stage)),
            sql.SQL(
                "WITH hit AS (DELETE FROM {keys} AS k WHERE {seen} RETURNING k.rid) "
                "DELETE FROM {stage} WHERE ctid = ANY (ARRAY(SELECT rid FROM hit))"
            ).format(
                keys=_id(fresh),
                stage=_id(stage),
                seen=seen.format(
                    target=_table(identity), a=sql.SQL("k"), lo=sql.Literal(lo), hi=sql.Literal(hi)
                ),
            ),
        ]
        return [*stmts, *self._identities_from(identity, _id(fresh), ordered=True)], stage

    def fresh_counts(self, fresh: str) -> Statement:
        return sql.SQL("SELECT {obj}, customer_id, count(*) FROM {fresh} GROUP BY {obj}, customer_id").format(
            obj=_id(OBJ), fresh=_id(fresh)
        )

    def discard_units(self, stage: str, units: Sequence[tuple[int, str]]) -> Statement:
        """Drop the staged rows of (object, customer) units not to merge: loaded meanwhile by
        another inserter, or already loaded when the rest of their shared object was not."""
        cond = sql.SQL(" OR ").join(
            sql.SQL("({} = {} AND customer_id = {})").format(_id(OBJ), sql.Literal(int(o)), sql.Literal(c))
            for o, c in units
        )
        return sql.SQL("DELETE FROM {} WHERE {}").format(_id(stage), cond)

    def _load_expr(self, column: WarehouseColumn) -> sql.Composable:
        if column.staging_type == column.target_type:
            return sql.SQL("f.{}").format(_id(column.name))
        return sql.SQL("CAST(f.{} AS {})").format(_id(column.name), sql.SQL(column.target_type))

    def insert_fresh(self, target: TableRef, fresh: str, columns: Sequence[WarehouseColumn]) -> Statement:
        """Columns by name, never by position."""
        return sql.SQL("INSERT INTO {target} ({cols}) SELECT {exprs} FROM {fresh} AS f").format(
            target=_table(target),
            cols=_ids([c.name for c in columns]),
            exprs=sql.SQL(", ").join(self._load_expr(c) for c in columns),
            fresh=_id(fresh),
        )

    def copy_ledger(self) -> Statement | None:
        """The ledger rows by COPY: a multi-row INSERT of 2,000 rows (26,000 parameters) took
        225 ms to plan and run, 0.5 s of a 2,000-customer load's 1.3 s (bench_tenants profile)."""
        return sql.SQL("COPY {} ({}) FROM STDIN").format(_table(ledger_table()), _ids(LEDGER_COLUMNS))

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
