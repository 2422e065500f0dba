"""How a table's objects get into its staging table — the one step where the dialects do
different I/O. PostgreSQL: the inserter reads each object from S3 and streams it with binary
COPY. Redshift: the cluster reads S3 itself (COPY … FORMAT AS PARQUET MANIFEST).

Both fill the same staging shape (the target's columns + ``_obj``), so everything after staging
is one code path (:mod:`inserter.loader`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import orjson
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq

from inserter.dialect import PostgresDialect, RedshiftDialect, WarehouseColumn
from inserter.errors import LoadError
from inserter.pgbinary import HEADER, TRAILER, Column, EncodeError, constant_piece, encode_batch
from inserter.plan import ObjectLoad, TableLoad
from inserter.prefetch import Prefetcher
from inserter.source import ObjectSource
from schemas import Registry
from schemas.definition import ENVELOPE_COLUMNS, METADATA_COLUMNS

REQUIRED_COLUMNS = (*ENVELOPE_COLUMNS, *METADATA_COLUMNS)


class Stager(Protocol):
    def begin(self, bucket: str, objects: Sequence[ObjectLoad]) -> None:
        """The objects the next ``stage`` calls will stage, in that order (to read ahead)."""
        ...

    def end(self) -> None:
        """The load's staging is over (or failed): drop anything read ahead."""
        ...

    def stage(
        self,
        cur: psycopg.Cursor[Any],
        stage: str,
        table: TableLoad,
        columns: Sequence[WarehouseColumn],
        bucket: str,
    ) -> None:
        """Fill ``stage`` with every row of ``table.objects``, each tagged with its ordinal."""
        ...


def file_columns(schema: Any, columns: Sequence[WarehouseColumn], key: str) -> list[str]:
    """The object's columns, by name, that the table has; refuses a file with a column the
    table does not know (newer definitions are needed) or without the envelope columns."""
    known = {c.name for c in columns}
    names = list(schema.names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise LoadError(f"{key}: columns {unknown} are not in the table's definitions")
    missing = [n for n in REQUIRED_COLUMNS if n not in names]
    if missing:
        raise LoadError(f"{key}: required columns {missing} missing")
    if len(set(names)) != len(names):
        raise LoadError(f"{key}: duplicate column names")
    return names


class PostgresCopyStager:
    """S3 → pyarrow → ``COPY … FROM STDIN (FORMAT BINARY)``, ``batch_rows`` rows per write.

    ``pause`` (seconds after each written batch) exists for crash tests: it makes a COPY last
    long enough to kill the process in the middle of it."""

    def __init__(
        self,
        source: ObjectSource,
        dialect: PostgresDialect,
        *,
        batch_rows: int = 65_536,
        pause: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.source = source
        self.dialect = dialect
        self.batch_rows = batch_rows
        self.pause = pause
        self.sleep = sleep
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="s3-read")
        self._ahead: Prefetcher | None = None

    def begin(self, bucket: str, objects: Sequence[ObjectLoad]) -> None:
        self.end()
        self._ahead = Prefetcher(lambda key: self.source.read(bucket, key), self._pool, objects)

    def end(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None

    def stage(
        self,
        cur: psycopg.Cursor[Any],
        stage: str,
        table: TableLoad,
        columns: Sequence[WarehouseColumn],
        bucket: str,
    ) -> None:
        types = {c.name: c.staging_type for c in columns}
        opened = (self._open(obj, columns, bucket) for obj in table.objects)
        pending = next(opened, None)
        # One COPY for consecutive objects with the same columns (one version, as a rule): a
        # busy table gets many small objects, and a COPY round trip each would dominate.
        while pending is not None:
            names = pending[2]
            wire = [Column(n, types[n]) for n in names]
            with cur.copy(self.dialect.copy_from_stdin(stage, names)) as copy:
                copy.write(HEADER)
                while pending is not None and pending[2] == names:
                    self._write(copy, pending[0], pending[1], wire)
                    pending = next(opened, None)
                copy.write(TRAILER)

    def _open(
        self, obj: ObjectLoad, columns: Sequence[WarehouseColumn], bucket: str
    ) -> tuple[ObjectLoad, Any, list[str]]:
        body = self._ahead.get(obj.key) if self._ahead is not None else self.source.read(bucket, obj.key)
        try:
            parquet = pq.ParquetFile(pa.BufferReader(body))
        except (pa.ArrowInvalid, OSError) as exc:
            raise LoadError(f"{obj.key}: not a Parquet file: {exc}") from exc
        return obj, parquet, file_columns(parquet.schema_arrow, columns, obj.key)

    def _write(self, copy: Any, obj: ObjectLoad, parquet: Any, wire: list[Column]) -> None:
        tag = [constant_piece(obj.ordinal)]
        try:
            for batch in parquet.iter_batches(
                batch_size=self.batch_rows, columns=[c.name for c in wire], use_threads=False
            ):
                copy.write(encode_batch(batch, wire, tag))
                if self.pause:
                    self.sleep(self.pause)
        except EncodeError as exc:
            raise LoadError(f"{obj.key}: {exc}") from exc
        except (pa.ArrowInvalid, OSError) as exc:
            raise LoadError(f"{obj.key}: unreadable Parquet data: {exc}") from exc


class RedshiftCopyStager:
    """Per object: a one-entry COPY manifest in S3, ``COPY`` into a table shaped like that
    version's files (columnar COPY maps by position), then ``INSERT … SELECT`` by name into
    staging with the object's ordinal. One manifest per object keeps the ordinal exact; a batch
    holds one object per (customer, type, version), so this is also one COPY per version."""

    def __init__(
        self,
        source: ObjectSource,
        dialect: RedshiftDialect,
        registry: Registry,
        *,
        prefix: str = "redshift-manifests/",
    ) -> None:
        self.source = source
        self.dialect = dialect
        self.registry = registry
        self.prefix = prefix

    def begin(self, bucket: str, objects: Sequence[ObjectLoad]) -> None:
        """Nothing to read ahead: the cluster reads S3 itself."""

    def end(self) -> None:
        pass

    def manifest_key(self, obj: ObjectLoad) -> str:
        """Derived from the object key: a retried load overwrites its own manifest."""
        digest = hashlib.sha256(obj.key.encode()).hexdigest()[:32]
        return f"{self.prefix}{digest}.manifest"

    @staticmethod
    def manifest_body(bucket: str, key: str, size: int) -> bytes:
        """Parquet COPY requires ``meta.content_length`` for every entry."""
        entry = {"url": f"s3://{bucket}/{key}", "mandatory": True, "meta": {"content_length": size}}
        return orjson.dumps({"entries": [entry]})

    def stage(
        self,
        cur: psycopg.Cursor[Any],
        stage: str,
        table: TableLoad,
        columns: Sequence[WarehouseColumn],
        bucket: str,
    ) -> None:
        for obj in table.objects:
            raw = f"_raw_{obj.ordinal}"
            version_cols = self.dialect.version_columns(table.event_type, obj.version)
            for stmt in self.dialect.create_raw(raw, version_cols):
                cur.execute(stmt)
            size = self.source.size(bucket, obj.key)
            manifest_key = self.manifest_key(obj)
            self.source.put(
                bucket, manifest_key, self.manifest_body(bucket, obj.key, size), "application/json"
            )
            cur.execute(self.dialect.copy_from_s3(raw, f"s3://{bucket}/{manifest_key}"))
            for stmt in self.dialect.move_raw(stage, raw, obj.ordinal, version_cols):
                cur.execute(stmt)
