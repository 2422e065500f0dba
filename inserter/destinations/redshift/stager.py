"""Redshift staging: the cluster reads S3 itself (COPY … FORMAT AS PARQUET MANIFEST)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg

from inserter.destinations.redshift.dialect import RedshiftDialect
from inserter.destinations.sql import WarehouseColumn
from inserter.destinations.staging import Staged
from inserter.plan import ObjectLoad
from inserter.source import ObjectSource
from schemas import Registry


class RedshiftCopyStager:
    """Per object: a one-entry COPY manifest in S3, ``COPY`` into a table shaped like that
    version's files (columnar COPY maps by position), then ``INSERT … SELECT`` by name into
    staging with the object's ordinal. One manifest per object keeps the ordinal exact; a batch
    holds one shared object per (type, version) plus one per large customer, so COPYs per load
    follow batches and types, not customers."""

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
        event_type: str,
        objects: Sequence[ObjectLoad],
        columns: Sequence[WarehouseColumn],
        bucket: str,
    ) -> Staged:
        for obj in objects:
            raw = f"_raw_{obj.ordinal}"
            version_cols = self.dialect.version_columns(event_type, obj.version)
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
        return Staged()  # the cluster read the rows: nothing known here
