"""Redshift: PostgreSQL's statements with the differences below (dlt's
``RedshiftSqlClient(Psycopg2SqlClient)`` shape). Redshift speaks the PostgreSQL protocol, so one
loader runs both through psycopg."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from psycopg import sql

from inserter.destinations.postgres.dialect import PostgresDialect
from inserter.destinations.sql import (
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
from inserter.naming import TableRef, ledger_table, pool_table
from schemas import Registry
from schemas import ddl as schema_ddl


class RedshiftDialect(PostgresDialect):
    """Redshift: staging filled by ``COPY … FROM 's3://…manifest' IAM_ROLE … FORMAT AS PARQUET
    MANIFEST``; a type's pool is ``DISTKEY(event_id) SORTKEY(occurred_at)`` (see docs/inserter.md)
    and has no index: the merge's ``occurred_at`` window is what keeps it cheap, through the
    sort key's zone maps; each customer reads its rows through a view. No advisory locks:
    ``LOCK`` the ledger and the pools as the first
    statement (Redshift's serializable isolation would otherwise abort one of two concurrent
    merges). JSON payload fields are SUPER; they travel as VARCHAR and go through JSON_PARSE."""

    name = "redshift"
    lock_before_staging = True

    def __init__(
        self, registry: Registry, *, iam_role: str, statement_timeout_s: int = 600, lock_timeout_s: int = 60
    ) -> None:
        super().__init__(registry, statement_timeout_s=statement_timeout_s, lock_timeout_s=lock_timeout_s)
        self.iam_role = iam_role

    def _target_types(self, event_type: str) -> list[tuple[str, str]]:
        return self.registry.redshift_columns(event_type)

    def staging_type(self, target_type: str) -> str:
        return f"VARCHAR({schema_ddl.REDSHIFT_MAX_VARCHAR})" if target_type == "SUPER" else target_type

    def version_columns(self, event_type: str, version: int) -> list[WarehouseColumn]:
        """The columns of one version's Parquet files, *in file order*: Redshift's columnar COPY
        maps by position, so each object lands in a table shaped exactly like its file and moves
        into staging by name."""
        et = self.registry.get(event_type, version)
        return [
            WarehouseColumn(n, t, self.staging_type(t)) for n, t in schema_ddl.redshift_columns(et.fields)
        ]

    def roles_present(self, roles: Sequence[str]) -> tuple[Statement, Params]:
        q = sql.SQL("SELECT role_name FROM svv_roles WHERE role_name IN ({})")
        return q.format(_placeholders(len(roles))), tuple(roles)

    def loaded_keys(self, keys: Sequence[str]) -> tuple[Statement, Params]:
        """No array parameters on Redshift: one placeholder per key."""
        q = sql.SQL("SELECT object_key FROM {} WHERE object_key IN ({})")
        return q.format(_table(ledger_table()), _placeholders(len(keys))), tuple(keys)

    def ddl_lock(self, name: str) -> list[tuple[Statement, Params]]:
        """No advisory locks: DDL serializes on the ledger's table lock (once it exists)."""
        if name == "ledger":
            return []
        return [(sql.SQL("LOCK {}").format(_table(ledger_table())), ())]

    def create_role(self, role: str) -> Statement:
        return sql.SQL("CREATE ROLE {}").format(_id(role))

    def _grantee(self, role: str) -> sql.Composable:
        return sql.SQL("ROLE {}").format(_id(role))

    def _relations_query(self) -> tuple[str, str, str]:
        """information_schema: a customer's part of its pool is a view here."""
        return (
            "c.table_schema",
            "c.table_name",
            "SELECT c.table_schema, c.table_name, c.column_name, t.table_type = 'VIEW' "
            "FROM information_schema.columns c JOIN information_schema.tables t "
            "ON t.table_schema = c.table_schema AND t.table_name = c.table_name WHERE {} "
            "ORDER BY c.ordinal_position",
        )

    def create_pool(self, event_type: str) -> list[Statement]:
        """One table per type for every customer; no identity table: the dedupe probe is an
        anti-join against the pool itself, pruned to the window by the occurred_at sort key."""
        pool = pool_table(event_type)
        return [
            sql.SQL(self.registry.redshift_ddl(event_type, pool.schema, pool.table)).format(),
            *self._admin_only(pool),
        ]

    def _view_options(self) -> sql.Composable:
        return sql.SQL("")  # Redshift has no security_barrier option

    def refresh_customer_table(
        self, ref: TableRef, customer_id: str, reader: str, existing: Sequence[str]
    ) -> list[Statement]:
        """Dropped and made again: Redshift's CREATE OR REPLACE VIEW cannot add columns. An
        analyst's view over a customer's view must be late-binding (``WITH NO SCHEMA BINDING``)
        not to stop the DROP."""
        return [sql.SQL("DROP VIEW IF EXISTS {}").format(_table(ref)), *self._view(ref, customer_id, reader)]

    def _identities_from(
        self, identity: TableRef, source: sql.Composable, *, ordered: bool = False
    ) -> list[Statement]:
        return []  # no identity table: the probe reads the pool

    def probe_index_size(self, identity: TableRef) -> Statement | None:
        return None  # no index: the anti-join is pruned by zone maps

    def identity_target(self, event_type: str) -> TableRef:
        return pool_table(event_type)

    def copy_ledger(self) -> Statement | None:
        return None  # Redshift has no COPY FROM STDIN: multi-row INSERTs

    def _ledger_table(self, led: sql.Composed) -> Statement:
        return sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "object_key VARCHAR(1024) NOT NULL PRIMARY KEY, batch_id VARCHAR(1024) NOT NULL, "
            "load_id VARCHAR(36) NOT NULL, customer_id VARCHAR(48) NOT NULL, "
            "event_type VARCHAR(48) NOT NULL, event_version SMALLINT NOT NULL, "
            "target_table VARCHAR(128) NOT NULL, "
            "rows_loaded BIGINT NOT NULL, rows_skipped BIGINT NOT NULL, "
            "min_occurred_at TIMESTAMPTZ, max_occurred_at TIMESTAMPTZ, loaded_at TIMESTAMPTZ NOT NULL, "
            "duration_ms INTEGER NOT NULL) DISTSTYLE KEY DISTKEY (object_key) SORTKEY (loaded_at)"
        ).format(led)

    def _ledger_indexes(self, led: sql.Composed) -> list[Statement]:
        return []

    def session_setup(self) -> list[Statement]:
        """Redshift has ``statement_timeout`` (milliseconds) but no ``lock_timeout``: a ``LOCK``
        waits inside the statement, so the statement timeout bounds the lock wait too."""
        return [
            sql.SQL("SET application_name TO 'shardhouse-inserter'").format(),
            sql.SQL("SET statement_timeout TO {}").format(sql.Literal(self.statement_timeout_s * 1000)),
        ]

    def lock_tables(self, refs: Sequence[TableRef]) -> list[tuple[Statement, Params]]:
        tables = [ledger_table(), *sorted(set(refs))]
        return [(sql.SQL("LOCK {}").format(sql.SQL(", ").join(_table(t) for t in tables)), ())]

    def create_staging(self, stage: str, columns: Sequence[WarehouseColumn]) -> list[Statement]:
        cols = sql.SQL(", ").join(
            sql.SQL("{} {}").format(_id(c.name), sql.SQL(c.staging_type)) for c in columns
        )
        return [
            sql.SQL("DROP TABLE IF EXISTS {}").format(_id(stage)),
            sql.SQL("CREATE TEMP TABLE {} ({} INTEGER NOT NULL, {}) DISTSTYLE KEY DISTKEY (event_id)").format(
                _id(stage), _id(OBJ), cols
            ),
        ]

    def create_raw(self, raw: str, columns: Sequence[WarehouseColumn]) -> list[Statement]:
        cols = sql.SQL(", ").join(
            sql.SQL("{} {}").format(_id(c.name), sql.SQL(c.staging_type)) for c in columns
        )
        return [
            sql.SQL("DROP TABLE IF EXISTS {}").format(_id(raw)),
            sql.SQL("CREATE TEMP TABLE {} ({}) DISTSTYLE KEY DISTKEY (event_id)").format(_id(raw), cols),
        ]

    def copy_from_s3(self, raw: str, manifest_url: str) -> Statement:
        """One object through a one-entry manifest (exactly that file: a bare S3 URL would be a
        *prefix* and could load more). Temp tables need no compression analysis or stats."""
        return sql.SQL(
            "COPY {} FROM {} IAM_ROLE {} FORMAT AS PARQUET MANIFEST COMPUPDATE OFF STATUPDATE OFF"
        ).format(_id(raw), sql.Literal(manifest_url), sql.Literal(self.iam_role))

    def move_raw(
        self, stage: str, raw: str, ordinal: int, columns: Sequence[WarehouseColumn]
    ) -> list[Statement]:
        names = [c.name for c in columns]
        return [
            sql.SQL("INSERT INTO {} ({}) SELECT {}, {} FROM {}").format(
                _id(stage), _ids([OBJ, *names]), sql.Literal(int(ordinal)), _ids(names), _id(raw)
            ),
            sql.SQL("DROP TABLE {}").format(_id(raw)),
        ]

    def merge_setup(self) -> list[Statement]:
        return []  # Redshift sizes its own query memory (WLM)

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
        """As PostgreSQL's, into the temp table ``fresh`` (Redshift deletes are costly: they mark
        whole blocks), with ROW_NUMBER for the first copy of each (customer_id, event_id), and
        no index to probe: Redshift decorrelates the NOT EXISTS into an anti-join whose scan of
        the pool is pruned to the window by the occurred_at sort key's zone maps. The pool is
        the identity: nothing else to record."""
        names = [OBJ, *(c.name for c in columns)]
        select = sql.SQL(
            "SELECT {dcols} FROM (SELECT {scols}, ROW_NUMBER() OVER (PARTITION BY s.customer_id, s.event_id "
            "ORDER BY {tie}) AS _rn FROM {stage} AS s WHERE NOT EXISTS (SELECT 1 FROM {target} AS t "
            "WHERE t.event_id = s.event_id AND t.customer_id = s.customer_id "
            "AND t.occurred_at BETWEEN {lo} AND {hi})) AS d WHERE d._rn = 1"
        ).format(
            dcols=_ids(names, "d"),
            scols=_ids(names, "s"),
            tie=_ids(TIE_BREAK, "s"),
            stage=_id(stage),
            target=_table(identity),
            lo=sql.Literal(lo),
            hi=sql.Literal(hi),
        )
        create = sql.SQL("CREATE TEMP TABLE {} DISTSTYLE KEY DISTKEY (event_id) AS ").format(_id(fresh))
        return [create + select], fresh

    def _load_expr(self, column: WarehouseColumn) -> sql.Composable:
        if column.target_type == "SUPER":
            return sql.SQL("JSON_PARSE(f.{})").format(_id(column.name))
        return super()._load_expr(column)

    def cleanup(self, tables: Sequence[str]) -> list[Statement]:
        return [sql.SQL("DROP TABLE IF EXISTS {}").format(_id(t)) for t in tables]
