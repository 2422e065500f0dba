"""Inserter throughput and merge cost on real local servers (moto S3 + PostgreSQL).

    .venv/bin/python benchmarks/bench_inserter.py                 # starts its own servers
    .venv/bin/python benchmarks/bench_inserter.py --rows 200000 --sizes 1000000
    .venv/bin/python benchmarks/bench_inserter.py --staging-only --repeat 3   # encoder vs write_row vs ADBC

1. **staging**: rows/s from S3 Parquet into a PostgreSQL staging table — the shipped vectorized
   COPY BINARY encoder (``inserter.destinations.postgres.pgbinary``) against psycopg's ``Copy.write_row`` with
   ``set_types`` (``to_pylist`` per batch) and against ADBC's PostgreSQL driver (``adbc_ingest`` of the
   Parquet's record batches, its own COPY BINARY from Arrow), on the same objects and columns. Each runs
   into a ``TEMP`` table (what the loader ships: ``ON COMMIT DROP`` in the load's transaction; ADBC's is
   its own session's) and into a committed ``UNLOGGED`` table (the only kind a psycopg load transaction
   could read after an ADBC ingest: ADBC has its own connection, so it cannot write into the load's
   transaction or its temp table); ``--staging-tables`` picks. UNLOGGED times include the commit. ADBC
   is an optional benchmark dependency (``pip install -e '.[bench]'``); without it that mode is skipped.
   ADBC encodes by Arrow type, not by the table's: a string into ``uuid`` fails ("incorrect binary data
   format"), so ``event_id`` goes as ``arrow.uuid`` (16 bytes, converted here, counted in its time); a
   string into ``jsonb`` fails too (needs the ``arrow.json`` extension type, or a ``json``/``text``
   column), and a decimal into ``text`` (numeric's staging type) fails (cast to string here).
   ``--staging-only`` stops after this part. Measured 2026-12-07 (2 cores, 1M rows, 6 runs each, median
   rows/s): vectorized 375k temp / 408k unlogged, write_row 130k / 129k, ADBC 530k / 593k.
2. **load**: a whole load (S3 → staging → dedupe → insert into the type's pool and identity
   table → ledger → commit) of ``--rows`` rows in ``--objects`` objects: into the empty pool,
   again into the filled pool, and as one load per object (each shape a new customer's new ids).
4. **small objects** (``--small``): the shape a low-latency pipeline produces — many batches of
   many small objects (one per customer/type/shard per flush). ``--small-batches`` batches of
   ``--small-objects`` objects of ``--small-rows`` rows over as many customers, loaded one batch
   per load and as one combined load of all the batches (what the inserter does with a receive).
3. **merge**: the merge (lock, dedupe against the target, insert, ledger) of a batch into tables
   that already hold ``--sizes`` rows spread over a year: the cost follows the batch, not the
   table. Each batch is new events of the last day plus 10 % duplicates of rows already in it.
"""

from __future__ import annotations

import argparse
import importlib
import io
import itertools
import json
import os
import statistics
import struct
import tempfile
import time
import types
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from psycopg import sql

from inserter.destinations.postgres.dialect import PostgresDialect
from inserter.destinations.postgres.stager import PostgresCopyStager
from inserter.destinations.sql import OBJ, WarehouseColumn
from inserter.destinations.staging import file_columns
from inserter.loader import Loader
from inserter.plan import combine_plans, plan_load
from inserter.source import ObjectSource
from pipeline.app.provision import ensure_bucket, ensure_database
from pipeline.app.servers import stack as local_stack
from pipeline.core.clients import ClientFactory
from pipeline.core.layout import EventObjectKey
from pipeline.core.manifest import BatchManifest, BatchObject
from pipeline.core.settings import load_settings
from schemas import load_registry

REGISTRY = load_registry()
ET = REGISTRY.get("page_view", 2)
NOW = datetime(2024, 12, 31, 12, tzinfo=UTC)
SHARD = "shardId-000000000000"


@contextmanager
def servers(env_file: str | None) -> Iterator[dict[str, str]]:
    if env_file:
        env = json.loads(Path(env_file).read_text())
        os.environ.update(env)  # boto3 reads the (fake) credentials itself
        yield env
        return
    with tempfile.TemporaryDirectory(prefix="bench-inserter-") as tmp:
        cfg = local_stack.StackConfig.on_free_ports(Path(tmp))
        state, _ = local_stack.up(cfg)
        os.environ.update(state.env)
        try:
            yield state.env
        finally:
            local_stack.down(Path(tmp), discard=True)


def page_views(
    customer: str, n: int, start: int, *, ids: list[str] | None = None, at: datetime = NOW
) -> pa.Table:
    """``n`` page_view v2 rows (~230 bytes each in COPY form) built straight into Arrow."""
    base = int(at.timestamp() * 1_000_000) - n * 1000
    cols: dict[str, Any] = {
        "event_id": ids if ids is not None else [str(uuid.uuid4()) for _ in range(n)],
        "customer_id": [customer] * n,
        "event_type": ["page_view"] * n,
        "event_version": [2] * n,
        "occurred_at": pa.array([base + i * 1000 for i in range(n)], pa.int64()).cast(
            pa.timestamp("us", tz="UTC")
        ),
        "user_id": [f"user-{(start + i) % 5000}" for i in range(n)],
        "url": [f"https://shop.example.com/products/{(start + i) % 20000}?ref=home" for i in range(n)],
        "title": [None if i % 4 == 0 else f"Product {(start + i) % 20000} | Example Shop" for i in range(n)],
        "duration_ms": [None if i % 5 == 0 else (start + i) % 60000 for i in range(n)],
        "scroll_depth": [((start + i) % 100) / 100 for i in range(n)],
        "referrer": [None if i % 3 else "https://search.example.org/?q=shoes" for i in range(n)],
        "session_id": [f"sess-{(start + i) // 20}" for i in range(n)],
        "_shard_id": [SHARD] * n,
        "_sequence_number": [str(49_650_000_000_000_000_000_000_000_000_000 + start + i) for i in range(n)],
        "_sub_sequence_number": [0] * n,
    }
    return pa.table(cols, schema=ET.arrow_schema)


def put_objects(
    s3: Any, bucket: str, customer: str, table: pa.Table, objects: int, first: int
) -> list[BatchObject]:
    out = []
    per = -(-table.num_rows // objects)
    for k in range(objects):
        part = table.slice(k * per, per)
        if part.num_rows == 0:
            break
        lo = first + k * per
        key = str(
            EventObjectKey(
                customer, "page_view", 2, date(2024, 12, 31), SHARD, str(lo), str(lo + part.num_rows - 1)
            )
        )
        sink = io.BytesIO()
        pq.write_table(part, sink, compression="zstd")
        s3.put_object(Bucket=bucket, Key=key, Body=sink.getvalue())
        stamps = part.column("occurred_at")
        out.append(
            BatchObject(key, customer, "page_view", 2, part.num_rows, sink.tell(),
                        _rfc(stamps[0].as_py()), _rfc(stamps[-1].as_py()))
        )  # fmt: skip
    return out


def _rfc(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def manifest(bucket: str, objects: list[BatchObject], tag: str) -> BatchManifest:
    return BatchManifest(1, f"bench/{tag}", "bench", SHARD, "0", "0", bucket, tuple(objects))


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


# -- 1. staging -------------------------------------------------------------------------------------


CONTENDERS = ("vectorized", "write_row", "adbc")
#: "rows:hash" of a staging table's rows as text (untimed): the same for every contender, or one
#: staged something else (a uuid, a null, an ordinal). Table names here are the benchmark's own.
FINGERPRINT = "SELECT count(*) || ':' || coalesce(sum(hashtext(s::text)::bigint), 0) FROM {} AS s"
ADBC_MISSING = "adbc: skipped, adbc-driver-postgresql is not installed (pip install -e '.[bench]')"


def adbc_module() -> types.ModuleType | None:
    """``adbc_driver_postgresql.dbapi``, or None: a benchmark-only dependency (the ``bench`` extra)."""
    try:
        return importlib.import_module("adbc_driver_postgresql.dbapi")
    except ImportError:
        return None


def unlogged_staging(stage: str, columns: Sequence[WarehouseColumn]) -> list[sql.Composed]:
    """The shipped staging table's columns (``PostgresDialect.create_staging``), as a committed
    UNLOGGED table that another connection (ADBC's) can write and the load's connection read."""
    cols = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.staging_type)) for c in columns
    )
    name = sql.Identifier(stage)
    return [
        sql.SQL("DROP TABLE IF EXISTS {}").format(name),
        sql.SQL("CREATE UNLOGGED TABLE {} ({} integer NOT NULL, {})").format(name, sql.Identifier(OBJ), cols),
    ]


def bench_staging(
    url: str,
    source: ObjectSource,
    bucket: str,
    objects: list[BatchObject],
    repeat: int,
    kinds: Sequence[str] = ("temp", "unlogged"),
) -> dict[str, list[float]]:
    """rows/s of each run per ``contender/kind``; ADBC is left out (with a line) when not installed."""
    dialect = PostgresDialect(REGISTRY)
    plan = plan_load(manifest(bucket, objects, "staging"), REGISTRY, bucket=bucket)
    (table,) = plan.tables
    columns = dialect.columns("page_view")
    rows = sum(o.rows for o in objects)
    adbc = adbc_module()
    if adbc is None:
        print(ADBC_MISSING, flush=True)
    contenders = [c for c in CONTENDERS if c != "adbc" or adbc is not None]
    results: dict[str, list[float]] = {f"{c}/{k}": [] for c in contenders for k in kinds}
    expected = ""  # every contender must stage the same rows: FINGERPRINT of the first run
    with connect(url) as conn:
        conn.execute("SET TIME ZONE 'UTC'")  # the fingerprint's text of timestamptz
        adbc_conn = adbc.connect(url) if adbc is not None else None
        try:
            if adbc_conn is not None:
                with adbc_conn.cursor() as cur:
                    cur.execute("SET TIME ZONE 'UTC'")
                adbc_conn.commit()
            for _ in range(repeat):
                for name in results:
                    contender, kind = name.split("/")
                    stage = "_stage_0" if kind == "temp" else "_stage_unlogged"
                    case = StagingCase(dialect, source, bucket, table.objects, columns, stage, kind)
                    if contender == "adbc":
                        elapsed, content = _run_adbc(conn, adbc_conn, case)
                    else:
                        elapsed, content = _run_psycopg(conn, contender, case)
                    expected = expected or content
                    assert content == expected and content.startswith(f"{rows}:"), (name, content, expected)
                    results[name].append(rows / elapsed)
                    print(f"  staging {name}: {rows / elapsed:,.0f} rows/s ({elapsed:.2f} s)", flush=True)
        finally:
            if adbc_conn is not None:
                adbc_conn.close()
            conn.execute("DROP TABLE IF EXISTS _stage_unlogged")
    return results


@dataclass(frozen=True)
class StagingCase:
    """What every staging contender stages, and into which kind of table (temp or unlogged)."""

    dialect: PostgresDialect
    source: ObjectSource
    bucket: str
    objects: Any
    columns: Sequence[WarehouseColumn]
    stage: str
    kind: str


def _run_psycopg(conn: psycopg.Connection[Any], contender: str, case: StagingCase) -> tuple[float, str]:
    dialect, source, bucket, objects = case.dialect, case.source, case.bucket, case.objects
    columns, stage, kind = case.columns, case.stage, case.kind
    if kind == "unlogged":
        for stmt in unlogged_staging(stage, columns):
            conn.execute(stmt)
    t0 = time.perf_counter()
    with conn.transaction(), conn.cursor() as cur:
        if kind == "temp":  # as the loader does it: created in the load's transaction, untimed
            for stmt in dialect.create_staging(stage, columns):
                cur.execute(stmt)
            t0 = time.perf_counter()
        if contender == "vectorized":
            PostgresCopyStager(source, dialect).stage(cur, stage, "page_view", objects, columns, bucket)
        else:
            stage_write_row(cur, dialect, source, bucket, objects, columns, stage)
        if kind == "temp":  # the temp table goes at commit: count it first, untimed
            elapsed = time.perf_counter() - t0
            (content,) = cur.execute(FINGERPRINT.format(stage)).fetchone()  # type: ignore[misc]
    if kind == "unlogged":  # timed through the commit
        elapsed = time.perf_counter() - t0
        (content,) = conn.execute(FINGERPRINT.format(stage)).fetchone()  # type: ignore[misc]
    return elapsed, str(content)


def _run_adbc(conn: psycopg.Connection[Any], adbc_conn: Any, case: StagingCase) -> tuple[float, str]:
    """ADBC's connection is not autocommit: its statements form one transaction until commit."""
    dialect, source, bucket, objects = case.dialect, case.source, case.bucket, case.objects
    columns, stage, kind = case.columns, case.stage, case.kind
    cur = adbc_conn.cursor()
    try:
        if kind == "temp":  # in ADBC's session: TEMP ... ON COMMIT DROP, as the loader's
            for stmt in dialect.create_staging(stage, columns):
                cur.execute(stmt.as_string(conn))
        else:  # committed by psycopg, written by ADBC, read back by psycopg
            for ddl in unlogged_staging(stage, columns):
                conn.execute(ddl)
        t0 = time.perf_counter()
        stage_adbc(cur, source, bucket, objects, columns, stage, temporary=kind == "temp")
        if kind == "temp":
            elapsed = time.perf_counter() - t0
            cur.execute(FINGERPRINT.format(stage))
            (content,) = cur.fetchone()
            adbc_conn.commit()
        else:
            adbc_conn.commit()
            elapsed = time.perf_counter() - t0
            (content,) = conn.execute(FINGERPRINT.format(stage)).fetchone()  # type: ignore[misc]
    except BaseException:
        adbc_conn.rollback()
        raise
    finally:
        cur.close()
    return elapsed, str(content)


def stage_adbc(
    cur: Any,
    source: ObjectSource,
    bucket: str,
    objects: Any,
    columns: Sequence[WarehouseColumn],
    stage: str,
    *,
    temporary: bool,
) -> None:
    """ADBC's contender, shaped like the shipped stager: each object read from S3 and opened as
    Parquet, its file's columns plus ``_obj`` ingested, one ``adbc_ingest`` (one COPY) for
    consecutive objects with the same columns. Arrow types ADBC would send wrong are converted."""
    types_ = {c.name: c.staging_type for c in columns}
    opened = []
    for obj in objects:
        pf = pq.ParquetFile(pa.BufferReader(source.read(bucket, obj.key)))
        opened.append((obj, pf, file_columns(pf.schema_arrow, columns, obj.key)))
    for names, group in itertools.groupby(opened, key=lambda o: o[2]):
        batches = (
            adbc_batch(batch, names, types_, obj.ordinal)
            for obj, pf, _ in group
            for batch in pf.iter_batches(batch_size=65_536, columns=names, use_threads=False)
        )
        first = next(batches, None)
        if first is None:
            continue
        reader = pa.RecordBatchReader.from_batches(first.schema, itertools.chain([first], batches))
        cur.adbc_ingest(stage, reader, mode="append", temporary=temporary)


def adbc_batch(
    batch: pa.RecordBatch, names: list[str], types_: dict[str, str], ordinal: int
) -> pa.RecordBatch:
    """A Parquet batch as ADBC must get it for the staging types: ADBC picks the PostgreSQL wire
    format from the Arrow type, so uuid text → ``arrow.uuid``, json text → ``arrow.json``, and
    decimal → its text (numeric stages as text); then the object's ordinal as ``_obj``."""
    arrays = []
    for name, col in zip(names, batch.columns, strict=True):
        wire = types_[name]
        if wire == "uuid" and not pa.types.is_fixed_size_binary(col.type):
            col = uuid_array(col, name)
        elif wire == "jsonb":
            col = pa.ExtensionArray.from_storage(pa.json_(), col.cast(pa.string()))
        elif pa.types.is_decimal(col.type) and wire == "text":
            col = col.cast(pa.string())
        arrays.append(col)
    arrays.append(pa.repeat(pa.scalar(ordinal, pa.int32()), batch.num_rows))
    return pa.RecordBatch.from_arrays(arrays, names=[*names, OBJ])


def uuid_array(col: Any, name: str) -> Any:
    """Canonical UUID text → ``arrow.uuid`` (16 bytes each), vectorized: drop the hyphens, one
    ``bytes.fromhex`` (as pgbinary does)."""
    hexes = pc.replace_substring(col.cast(pa.string()), "-", "")
    n = len(hexes)
    if col.null_count or pc.min_max(pc.binary_length(hexes)).as_py() not in (
        {"min": 32, "max": 32},
        {"min": None, "max": None},
    ):
        raise ValueError(f"column {name}: not all non-null hyphenated UUIDs")
    (start,) = struct.unpack_from("<i", hexes.buffers()[1], 4 * hexes.offset)
    raw = bytes.fromhex(str(memoryview(hexes.buffers()[2])[start : start + 32 * n], "ascii"))
    storage = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(raw)])
    return pa.ExtensionArray.from_storage(pa.uuid(), storage)


def stage_write_row(
    cur: Any,
    dialect: PostgresDialect,
    source: ObjectSource,
    bucket: str,
    objects: Any,
    columns: Any,
    stage: str = "_stage_0",
) -> None:
    """The alternative: psycopg's binary COPY with set_types, one Python tuple per row."""
    types = {c.name: c.staging_type for c in columns}
    for obj in objects:
        pf = pq.ParquetFile(pa.BufferReader(source.read(bucket, obj.key)))
        names = pf.schema_arrow.names
        with cur.copy(dialect.copy_from_stdin(stage, names)) as copy:
            copy.set_types([types[n] for n in names] + ["integer"])
            for batch in pf.iter_batches(batch_size=65_536):
                cols = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
                cols[names.index("event_id")] = [uuid.UUID(v) for v in cols[names.index("event_id")]]
                for row in zip(*cols, strict=True):
                    copy.write_row((*row, obj.ordinal))


# -- 2. whole load ----------------------------------------------------------------------------------


def bench_load(url: str, source: ObjectSource, bucket: str, objects: list[BatchObject]) -> dict[str, Any]:
    """Shapes of the same rows, each as a new customer's new events in the type's one pool:
    every object in one load into the empty pool (``one_load``), the same again into the pool
    that now holds 1M rows (``one_load_again``: each btree is deeper and a batch's sorted ids
    land all over the identity index), and one load per object (one object per
    customer/type/version per batch) into a pool of 2M."""
    dialect = PostgresDialect(REGISTRY)
    loader = Loader(dialect, PostgresCopyStager(source, dialect))
    rows = sum(o.rows for o in objects)
    out: dict[str, Any] = {}
    with connect(url) as conn:
        loader.prepare(conn)
        shapes = (
            ("one_load", [objects]),
            ("one_load_again", [objects]),
            ("load_per_object", [[o] for o in objects]),
        )
        for shape, groups in shapes:
            customer = f"load_{shape}"
            moved = [_rekey(source, bucket, o, customer) for o in objects]
            by_key = {o.key: m for o, m in zip(objects, moved, strict=True)}
            stage_ms = merge_ms = 0
            t0 = time.perf_counter()
            for k, group in enumerate(groups):
                plan = plan_load(
                    manifest(bucket, [by_key[o.key] for o in group], f"{shape}-{k}"), REGISTRY, bucket=bucket
                )
                result = loader.load(conn, plan)
                stage_ms += result.stage_ms
                merge_ms += result.merge_ms
            elapsed = time.perf_counter() - t0
            (count,) = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.page_view").format(sql.Identifier(f"c_{customer}"))
            ).fetchone()  # type: ignore[misc]
            assert count == rows, (count, rows)
            out[shape] = {"loads": len(groups), "seconds": round(elapsed, 2), "rows_per_s": round(rows / elapsed),
                          "stage_ms": stage_ms, "merge_ms": merge_ms}  # fmt: skip
    return out


def _rekey(source: ObjectSource, bucket: str, obj: BatchObject, customer: str) -> BatchObject:
    """The same object as another customer's new events: rows rewritten with that customer and
    fresh event ids. Every shape loads into the same pool and identity table, so reusing the
    ids would make each probe find another customer's row and read it (a shape that costs
    ≈ 3 µs per row more and that no producer makes)."""
    table = pq.read_table(pa.BufferReader(source.read(bucket, obj.key)))
    n = table.num_rows
    for name, values in (
        ("customer_id", [customer] * n),
        ("event_id", [str(uuid.uuid4()) for _ in range(n)]),
    ):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))
    key = obj.key.replace("customer=bench/", f"customer={customer}/")
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    source.put(bucket, key, sink.getvalue(), "application/octet-stream")
    return BatchObject(
        key, customer, obj.type, obj.version, obj.rows, sink.tell(), obj.min_occurred_at, obj.max_occurred_at
    )


# -- 3. merge cost vs table size --------------------------------------------------------------------


def fill_table(conn: psycopg.Connection[Any], schema: str, rows: int) -> None:
    """``rows`` page views spread over the year before NOW, generated server-side into the
    customer's partition and their identities into the type's identity table, whose dedupe index
    is built afterwards (as a bulk load would); then both are analyzed."""
    t = sql.SQL("{}.page_view").format(sql.Identifier(schema))
    conn.execute("DROP INDEX IF EXISTS shardhouse.ids_page_view__dedupe")
    step = 1_000_000
    for lo in range(0, rows, step):
        conn.execute(
            sql.SQL(
                "INSERT INTO {t} (event_id, customer_id, event_type, event_version, occurred_at, user_id, url, "
                "title, duration_ms, scroll_depth, referrer, session_id, _shard_id, _sequence_number, "
                "_sub_sequence_number) "
                "SELECT gen_random_uuid(), {c}, 'page_view', 2, "
                "{now}::timestamptz - (g * (365 * 86400.0 / {n})) * interval '1 second', "
                "'user-' || (g % 5000), 'https://shop.example.com/products/' || (g % 20000) || '?ref=home', "
                "'Product ' || (g % 20000) || ' | Example Shop', g % 60000, (g % 100) / 100.0, NULL, "
                "'sess-' || (g / 20), 'shardId-000000000000', (10^30 + g)::numeric::text, 0 "
                "FROM generate_series({lo}, {hi}) AS g"
            ).format(
                t=t,
                c=sql.Literal(schema.removeprefix("c_")),
                now=sql.Literal(NOW.isoformat()),
                n=sql.Literal(rows),
                lo=sql.Literal(lo),
                hi=sql.Literal(min(rows, lo + step) - 1),
            )
        )
    conn.execute(
        sql.SQL(
            "INSERT INTO shardhouse.ids_page_view (customer_id, event_id, occurred_at) "
            "SELECT customer_id, event_id, occurred_at FROM {t}"
        ).format(t=t)
    )
    conn.execute("CREATE INDEX ids_page_view__dedupe ON shardhouse.ids_page_view (event_id, occurred_at)")
    conn.execute(sql.SQL("VACUUM ANALYZE {t}").format(t=t))
    conn.execute("VACUUM ANALYZE shardhouse.ids_page_view")


def recent_ids(conn: psycopg.Connection[Any], schema: str, n: int) -> list[str]:
    rows = conn.execute(
        sql.SQL("SELECT event_id::text FROM {}.page_view WHERE occurred_at > %s LIMIT %s").format(
            sql.Identifier(schema)
        ),
        (NOW - timedelta(days=1), n),
    ).fetchall()
    return [r[0] for r in rows]


def bench_merge(
    url: str, s3: Any, source: ObjectSource, bucket: str, sizes: list[int], batches: list[int]
) -> list[dict[str, Any]]:
    dialect = PostgresDialect(REGISTRY)
    loader = Loader(dialect, PostgresCopyStager(source, dialect))
    out = []
    with connect(url) as conn:
        loader.prepare(conn)
        for size in sizes:
            customer = f"bench_{size}"
            schema = f"c_{customer}"
            # create the (empty) table through the loader, then fill it server-side
            seed = put_objects(
                s3, bucket, customer, page_views(customer, 1, 0, at=NOW - timedelta(days=200)), 1, 1
            )
            loader.load(conn, plan_load(manifest(bucket, seed, f"seed-{size}"), REGISTRY, bucket=bucket))
            t0 = time.perf_counter()
            fill_table(conn, schema, size)
            fill_s = time.perf_counter() - t0
            (table_rows,) = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.page_view").format(sql.Identifier(schema))
            ).fetchone()  # type: ignore[misc]
            for k, batch in enumerate(batches):
                dupes = recent_ids(conn, schema, batch // 10)
                new = batch - len(dupes)
                ids = [str(uuid.uuid4()) for _ in range(new)] + dupes
                data = page_views(customer, batch, 10_000_000 * (k + 1), ids=ids, at=NOW)
                objs = put_objects(
                    s3, bucket, customer, data, 1, 10_000_000 * (k + 1)
                )  # one object: the common case
                plan = plan_load(manifest(bucket, objs, f"merge-{size}-{batch}"), REGISTRY, bucket=bucket)
                result = loader.load(conn, plan)
                assert result.rows_loaded == new and result.rows_skipped == len(dupes), result
                out.append(
                    {"table_rows": table_rows, "batch": batch, "duplicates": len(dupes), "stage_ms": result.stage_ms,
                     "merge_ms": result.merge_ms, "total_ms": result.duration_ms, "fill_s": round(fill_s, 1)}
                )  # fmt: skip
                print(json.dumps(out[-1]), flush=True)
            print(f"dedupe plan against {table_rows:,} rows:\n{explain_dedupe(conn, schema)}", flush=True)
            if size == max(sizes):
                print(f"without OFFSET 0:\n{explain_dedupe(conn, schema, fenced=False)}", flush=True)
    return out


def explain_dedupe(
    conn: psycopg.Connection[Any], schema: str, *, fenced: bool = True, batch: int = 100_000
) -> str:
    """EXPLAIN ANALYZE of the shipped dedupe statement for ``batch`` fresh staged rows;
    ``fenced=False``: the same without ``OFFSET 0``, i.e. what the planner does on its own."""
    dialect = PostgresDialect(REGISTRY)
    ref = dialect.identity_target("page_view")
    with conn.transaction(), conn.cursor() as cur:
        for stmt in [*dialect.merge_setup(), *dialect.create_staging("_probe", dialect.columns("page_view"))]:
            cur.execute(stmt)
        cur.execute(
            sql.SQL(
                "INSERT INTO _probe (_obj, event_id, customer_id, event_type, event_version, occurred_at, user_id, "
                "url, _shard_id, _sequence_number, _sub_sequence_number) SELECT 1, gen_random_uuid(), 'x', "
                "'page_view', 2, {now}::timestamptz - g * interval '1 second', 'u', 'https://x', 's', g::text, 0 "
                "FROM generate_series(1, {n}) AS g"
            ).format(now=sql.Literal(NOW.isoformat()), n=sql.Literal(batch))
        )
        cur.execute("ANALYZE _probe")  # give the unfenced planner every chance
        lo, hi = NOW - timedelta(days=8), NOW + timedelta(days=7)
        size = dialect.probe_index_size(ref)
        probe_bytes = int(cur.execute(size).fetchone()[0]) if size is not None else 0  # type: ignore[index]
        steps, _ = dialect.dedupe(
            "_probe", "_probe_fresh", ref, dialect.columns("page_view"), lo, hi, duplicates=False,
            probe_bytes=probe_bytes,
        )  # fmt: skip
        texts = [s.as_string(conn) for s in steps]
        probe = next(i for i, t in enumerate(texts) if "EXISTS" in t)  # a DELETE in staging (or its keys)
        for text in texts[:probe]:  # the sorted keys the probe runs over, past 16 MiB of index
            cur.execute(text)
        text = texts[probe]
        if not fenced:
            text = text.replace(" OFFSET 0)", ")")
        rows = cur.execute(f"EXPLAIN (ANALYZE, COSTS OFF) {text}").fetchall()
    return "\n".join(r[0] for r in rows)


# -- 4. many small objects --------------------------------------------------------------------------


def bench_small(
    url: str, s3: Any, source: ObjectSource, bucket: str, batches: int, per_batch: int, rows: int
) -> dict[str, Any]:
    dialect = PostgresDialect(REGISTRY)
    loader = Loader(dialect, PostgresCopyStager(source, dialect))
    out: dict[str, Any] = {}
    with connect(url) as conn:
        loader.prepare(conn)
        for shape in ("load_per_batch", "combined"):
            plans = []
            for b in range(batches):
                objs = []
                for k in range(per_batch):
                    customer = f"small_{shape}_{k}"
                    objs += put_objects(
                        s3, bucket, customer, page_views(customer, rows, b * rows), 1, 1 + b * rows
                    )
                plans.append(plan_load(manifest(bucket, objs, f"{shape}-{b}"), REGISTRY, bucket=bucket))
            for plan in plans:  # tables exist before timing: the steady state of a running inserter
                loader.ensure_tables(conn, plan.tables)
            loads = [combine_plans(plans)] if shape == "combined" else plans
            stage_ms = merge_ms = 0
            t0 = time.perf_counter()
            for plan in loads:
                result = loader.load(conn, plan)
                stage_ms += result.stage_ms
                merge_ms += result.merge_ms
            elapsed = time.perf_counter() - t0
            n_objects = batches * per_batch
            out[shape] = {"loads": len(loads), "objects": n_objects, "seconds": round(elapsed, 2),
                          "objects_per_s": round(n_objects / elapsed), "rows_per_s": round(n_objects * rows / elapsed),
                          "stage_ms": stage_ms, "merge_ms": merge_ms}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument(
        "--objects", type=int, default=20, help="objects the --rows are split into (batcher flushes ~50k)"
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--sizes", default="1000000,10000000", help="table sizes for the merge benchmark ('' = skip)"
    )
    ap.add_argument("--batches", default="10000,100000", help="batch sizes merged into each table")
    ap.add_argument("--env", help="JSON file with a running stack's environment (default: start one)")
    ap.add_argument("--small", action="store_true", help="only the many-small-objects benchmark")
    ap.add_argument("--small-batches", type=int, default=10)
    ap.add_argument("--small-objects", type=int, default=80, help="objects (= customer tables) per batch")
    ap.add_argument("--small-rows", type=int, default=12)
    ap.add_argument("--staging-only", action="store_true", help="only part 1, the staging comparison")
    ap.add_argument(
        "--staging-tables",
        default="temp,unlogged",
        help="staging table kinds to time: temp, unlogged or both",
    )
    args = ap.parse_args()

    with servers(args.env) as env:
        settings = load_settings(env)
        clients = ClientFactory(settings)
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        ensure_bucket(clients.s3(), bucket, settings.aws.region)
        url = psycopg.conninfo.make_conninfo(settings.warehouse.url, dbname=bucket.replace("-", "_"))
        ensure_database(url)
        s3 = clients.s3()
        source = ObjectSource(s3)
        if args.small:
            small = bench_small(
                url, s3, source, bucket, args.small_batches, args.small_objects, args.small_rows
            )
            print(json.dumps({"small_objects": small}), flush=True)
            return

        t0 = time.perf_counter()
        data = page_views("bench", args.rows, 0)
        objects = put_objects(s3, bucket, "bench", data, args.objects, 1)
        print(f"prepared {args.rows:,} rows in {len(objects)} objects ({sum(o.bytes for o in objects) / 2**20:.1f} MiB zstd) "
              f"in {time.perf_counter() - t0:.1f}s", flush=True)  # fmt: skip

        kinds = [k for k in args.staging_tables.split(",") if k]
        assert set(kinds) <= {"temp", "unlogged"}, kinds
        staging = bench_staging(url, source, bucket, objects, args.repeat, kinds)
        print(json.dumps({"staging_rows_per_s": {k: round(statistics.median(v)) for k, v in staging.items()},
                          "staging_runs": {k: [round(x) for x in v] for k, v in staging.items()}}), flush=True)  # fmt: skip
        if args.staging_only:
            return
        print(json.dumps({"load": bench_load(url, source, bucket, objects)}), flush=True)
        sizes = [int(s) for s in args.sizes.split(",") if s]
        if sizes:
            bench_merge(url, s3, source, bucket, sizes, [int(b) for b in args.batches.split(",")])


if __name__ == "__main__":
    main()
