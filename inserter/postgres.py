"""Load one batch manifest into PostgreSQL in one transaction (exactly once, by ledger + merge).

    lock every target table of the batch (sorted: no deadlocks between inserters)
    → skip objects already in the ledger → per table: ensure schema/table/columns,
    COPY the objects' Parquet into a staging table (binary), merge rows whose event_id the
    table does not hold → record the objects in the ledger → commit.

A crash anywhere before commit leaves nothing behind; a duplicate delivery finds the ledger.
"""

from __future__ import annotations

import io
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from inserter import naming
from inserter import sql as q
from pipeline.aws_errors import classify_aws, is_transient_aws
from pipeline.manifest import BatchManifest, BatchObject
from pipeline.retry import Backoff, call_with_retry
from schemas import Registry

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# COPY BINARY type names for the staging table; json and uuid travel as text and are cast in
# the merge (psycopg's jsonb dumper would re-encode a JSON string as a JSON string).
_BINARY_TYPE = {
    "smallint": "int2",
    "integer": "int4",
    "bigint": "int8",
    "double precision": "float8",
    "boolean": "bool",
    "timestamptz": "timestamptz",
    "text": "text",
    "jsonb": "text",
    "uuid": "text",
}


def _binary_type(pg_type: str) -> str:
    return "numeric" if pg_type.startswith("numeric") else _BINARY_TYPE[pg_type]


@dataclass
class LoadResult:
    objects_loaded: int = 0
    objects_skipped: int = 0
    rows_in: int = 0
    rows_inserted: int = 0
    tables: set[str] = field(default_factory=set)


class PostgresLoader:
    """One per inserter process; connections are passed per call (one per worker thread)."""

    def __init__(self, s3: S3Client, registry: Registry, *, window_days: int = 7) -> None:
        self.s3 = s3
        self.registry = registry
        self.window_days = window_days
        self._ensured: set[tuple[str, str, int]] = set()

    def ensure_ledger(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('shardhouse.ddl', 0))")
            for stmt in q.ledger_ddl():
                conn.execute(stmt)
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (naming.ADMIN_ROLE,)).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(naming.ADMIN_ROLE)))

    def load(self, conn: psycopg.Connection[Any], manifest: BatchManifest) -> LoadResult:
        result = LoadResult()
        groups: dict[tuple[str, str], list[BatchObject]] = defaultdict(list)
        for obj in manifest.objects:
            groups[(naming.customer_schema(obj.customer_id), naming.event_table(obj.type))].append(obj)
        with conn.transaction():
            for schema_name, table in sorted(groups):
                conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{schema_name}.{table}",)
                )
            keys = [obj.key for obj in manifest.objects]
            done = {row[0] for row in conn.execute(q.already_loaded(), (keys,))}
            for (schema_name, table), objects in sorted(groups.items()):
                todo = [obj for obj in objects if obj.key not in done]
                result.objects_skipped += len(objects) - len(todo)
                if not todo:
                    continue
                self._load_table(conn, manifest, schema_name, table, todo, result)
        return result

    def _ensure_table(
        self, conn: psycopg.Connection[Any], schema_name: str, table: str, customer_id: str
    ) -> None:
        columns = self.registry.postgres_columns(table)
        marker = (schema_name, table, len(columns))
        if marker in self._ensured:
            return
        role = naming.customer_role(customer_id)
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('shardhouse.roles', 0))")
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        for stmt in q.customer_schema_ddl(schema_name, role):
            conn.execute(stmt)
        conn.execute(self.registry.postgres_ddl(table, schema_name, table))
        existing = {
            row[0]
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = %s",
                (schema_name, table),
            )
        }
        missing = [(name, pg_type) for name, pg_type in columns if name not in existing]
        for stmt in q.add_columns(schema_name, table, missing):  # a new schema version's fields
            conn.execute(stmt)
        for stmt in q.target_extras(schema_name, table):
            conn.execute(stmt)
        conn.execute(sql.SQL("GRANT SELECT ON {}.{} TO {}").format(
            sql.Identifier(schema_name), sql.Identifier(table), sql.Identifier(role)))  # fmt: skip
        self._ensured.add(marker)

    def _load_table(
        self,
        conn: psycopg.Connection[Any],
        manifest: BatchManifest,
        schema_name: str,
        table: str,
        objects: Sequence[BatchObject],
        result: LoadResult,
    ) -> None:
        started = time.monotonic()
        self._ensure_table(conn, schema_name, table, objects[0].customer_id)
        columns = self.registry.postgres_columns(table)
        staging = f"stage_{table}"
        staging_cols = sql.SQL(", ").join(
            sql.SQL("{} {}").format(
                sql.Identifier(name), sql.SQL("text" if pg_type in ("jsonb", "uuid") else pg_type)
            )
            for name, pg_type in columns
        )
        conn.execute(
            sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DROP").format(
                sql.Identifier(staging), staging_cols
            )
        )
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(staging)))
        names = [name for name, _ in columns]
        per_object_rows: dict[str, int] = {}
        with conn.cursor() as cur, cur.copy(q.copy_into(staging, names)) as copy:
            copy.set_types([_binary_type(t) for _, t in columns])
            for obj in objects:
                table_data = self._read(manifest.bucket, obj.key, names)
                per_object_rows[obj.key] = table_data.num_rows
                for row in _rows(table_data, names):
                    copy.write_row(row)
        casts = {name: pg_type for name, pg_type in columns if pg_type in ("jsonb", "uuid")}
        inserted = conn.execute(q.merge(schema_name, table, staging, names, casts, self.window_days)).rowcount
        rows_in = sum(per_object_rows.values())
        duration_ms = int((time.monotonic() - started) * 1000)
        for obj in objects:
            conn.execute(
                q.record_ledger(),
                (obj.key, manifest.batch_id, obj.customer_id, obj.type, obj.version, per_object_rows[obj.key],
                 inserted if len(objects) == 1 else 0, _ts(obj.min_occurred_at), _ts(obj.max_occurred_at),
                 duration_ms),
            )  # fmt: skip
        if len(objects) > 1:  # attribute the merged count to the group's first object
            conn.execute(
                sql.SQL("UPDATE {}.{} SET rows_inserted = %s WHERE object_key = %s").format(
                    sql.Identifier(naming.LEDGER_SCHEMA), sql.Identifier(q.LEDGER)
                ),
                (inserted, objects[0].key),
            )
        result.objects_loaded += len(objects)
        result.rows_in += rows_in
        result.rows_inserted += inserted
        result.tables.add(f"{schema_name}.{table}")

    def _read(self, bucket: str, key: str, names: Sequence[str]) -> pa.Table:
        from pipeline.errors import TransientError

        def fetch() -> bytes:
            try:
                return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except Exception as exc:
                if is_transient_aws(exc):
                    raise TransientError(str(exc)) from exc
                raise classify_aws(exc, f"read s3://{bucket}/{key}") from exc

        body = call_with_retry(fetch, what=f"get {key}", backoff=Backoff(base=0.2, cap=5.0, max_attempts=5))
        data = pq.read_table(io.BytesIO(body))
        # Columns by name, never by position; a column an older version lacks is null.
        arrays = [
            data.column(name) if name in data.column_names else pa.nulls(data.num_rows) for name in names
        ]
        return pa.table(arrays, names=list(names))


def _rows(table: pa.Table, names: Sequence[str]) -> Iterator[tuple[Any, ...]]:
    columns = [table.column(name).to_pylist() for name in names]
    return zip(*columns, strict=True)


def _ts(value: str) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
