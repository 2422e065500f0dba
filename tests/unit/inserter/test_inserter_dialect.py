"""The SQL of both dialects, parsed with sqlglot (no Redshift is reachable here), and the
Redshift load driven through the same Loader code path against a recording connection."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import sqlglot
from sqlglot import exp

from inserter.destinations.postgres.dialect import PostgresDialect
from inserter.destinations.redshift.dialect import RedshiftDialect
from inserter.destinations.redshift.stager import RedshiftCopyStager
from inserter.destinations.sql import LEDGER_COLUMNS, render
from inserter.loader import Loader
from inserter.naming import TableRef, reader_role, target_table
from inserter.plan import plan_load
from pipeline.core.layout import EventObjectKey
from pipeline.core.manifest import BatchManifest, BatchObject
from schemas import load_registry

REGISTRY = load_registry()
ROLE = "arn:aws:iam::123456789012:role/shardhouse-copy"
LO, HI = datetime(2024, 4, 24, tzinfo=UTC), datetime(2024, 5, 8, tzinfo=UTC)
PG = PostgresDialect(REGISTRY)
RS = RedshiftDialect(REGISTRY, iam_role=ROLE)


def parse(sql_text: str, dialect: str) -> Any:
    tree = sqlglot.parse_one(sql_text, read=dialect)
    assert tree is not None
    return tree


def statements(d: PostgresDialect, event_type: str) -> list[str]:
    ref = target_table("acme", event_type)
    cols = d.columns(event_type)
    out = [
        *d.create_customer_schema(ref.schema, reader_role("acme")),
        *d.create_table(ref, event_type, reader_role("acme")),
        d.add_column(ref, "referrer", cols[-1].target_type),
        *d.ledger_ddl(),
        *d.create_staging("_stage_0", cols),
        d.loaded_keys(3),
        d.discard_objects("_stage_0", [2, 3]),
        d.stage_stats("_stage_0"),
        d.dedupe("_stage_0", "_fresh_0", ref, cols, LO, HI),
        d.fresh_counts("_fresh_0"),
        d.insert_fresh(ref, "_fresh_0", cols),
        d.record_ledger(2),
        d.recent_loads(customer=True),
        *(s for s, _ in d.lock_tables([ref, target_table("acme", "page_view")])),
        *(s for s, _ in d.ddl_lock(ref.schema)),
        d.create_role(reader_role("acme")),
    ]
    return [render(s) for s in out]


@pytest.mark.parametrize("event_type", REGISTRY.type_names())
def test_every_postgres_statement_parses(event_type: str) -> None:
    for text in statements(PG, event_type):
        parse(text, "postgres")


@pytest.mark.parametrize("event_type", REGISTRY.type_names())
def test_every_redshift_statement_parses(event_type: str) -> None:
    texts = statements(RS, event_type)
    texts += [render(s) for s in RS.create_raw("_raw_1", RS.version_columns(event_type, 1))]
    texts.append(render(RS.copy_from_s3("_raw_1", "s3://bucket/redshift-manifests/x.manifest")))
    texts += [render(s) for s in RS.move_raw("_stage_0", "_raw_1", 1, RS.version_columns(event_type, 1))]
    for text in texts:
        parse(text, "redshift")
        assert "DISTINCT ON" not in text and "ON COMMIT" not in text and "pg_advisory" not in text


def test_redshift_copy_reads_parquet_through_a_manifest_with_the_iam_role() -> None:
    tree = parse(render(RS.copy_from_s3("_raw_1", "s3://b/redshift-manifests/k.manifest")), "redshift")
    assert isinstance(tree, exp.Copy)
    text = tree.sql("redshift")
    assert "FROM 's3://b/redshift-manifests/k.manifest'" in text
    assert f"IAM_ROLE '{ROLE}'" in text and "FORMAT PARQUET" in text and "MANIFEST" in text
    quoted = RedshiftDialect(REGISTRY, iam_role="arn:x'; DROP TABLE t; --")
    assert "'arn:x''; DROP TABLE t; --'" in render(quoted.copy_from_s3("_raw_1", "s3://b/k"))


def test_redshift_tables_distribute_on_event_id_and_sort_on_occurred_at() -> None:
    (ddl, *grants) = RS.create_table(
        target_table("acme", "order_placed"), "order_placed", reader_role("acme")
    )
    tree = parse(render(ddl), "redshift")
    props = tree.sql("redshift")
    assert 'DISTKEY("event_id")' in props and 'SORTKEY("occurred_at")' in props
    assert '"items" SUPER' in props
    assert [render(g) for g in grants] == [
        'GRANT SELECT ON TABLE "c_acme"."order_placed" TO ROLE "c_acme_reader"',
        'GRANT SELECT ON TABLE "c_acme"."order_placed" TO ROLE "shardhouse_admin"',
    ]
    staging = {c.name: c.staging_type for c in RS.columns("order_placed")}
    assert staging["items"] == "VARCHAR(65535)"


def test_redshift_merge_dedupes_with_row_number_and_parses_json_into_super() -> None:
    ref = target_table("acme", "order_placed")
    cols = RS.columns("order_placed")
    dedupe = parse(render(RS.dedupe("_stage_0", "_fresh_0", ref, cols, LO, HI)), "redshift")
    window = dedupe.find(exp.Window)
    assert window is not None and window.this.sql().upper() == "ROW_NUMBER()"
    between = dedupe.find(exp.Between)
    assert between is not None and "2024-04-24" in between.sql() and "2024-05-08" in between.sql()
    insert = parse(render(RS.insert_fresh(ref, "_fresh_0", cols)), "redshift")
    assert isinstance(insert, exp.Insert)
    assert 'JSON_PARSE(f."items")' in insert.sql("redshift")
    assert [c.name for c in insert.this.expressions] == [c.name for c in cols]  # by name


def test_postgres_merge_shape() -> None:
    ref = target_table("acme", "appointment_booked")
    cols = PG.columns("appointment_booked")
    text = render(PG.dedupe("_stage_0", "_fresh_0", ref, cols, LO, HI))
    assert text.startswith(
        'CREATE TEMP TABLE "_fresh_0" ON COMMIT DROP AS SELECT DISTINCT ON (s.customer_id, s.event_id)'
    )
    # identity is the pair: a staged row is a duplicate only of its own customer's copy
    assert "t.event_id = s.event_id AND t.customer_id = s.customer_id" in text
    assert (
        "BETWEEN '2024-04-24 00:00:00+00:00'::timestamptz AND '2024-05-08 00:00:00+00:00'::timestamptz"
        in text
    )
    assert text.endswith(
        'ORDER BY s.customer_id, s.event_id, "s"."_obj", "s"."_shard_id", "s"."_sequence_number", '
        '"s"."_sub_sequence_number"'
    )
    insert = render(PG.insert_fresh(ref, "_fresh_0", cols))
    assert 'CAST(f."fee" AS numeric(10,2))' in insert  # numeric is staged as text
    assert {c.name: c.staging_type for c in cols}["fee"] == "text"
    locks = PG.lock_tables([TableRef("c_b", "x"), TableRef("c_a", "y"), TableRef("c_b", "x")])
    assert len(locks) == 2 and locks[0][1] != locks[1][1]  # deduplicated, sorted by table


# -- the Redshift load through the shared Loader ----------------------------------------------------


class Recorder:
    """A psycopg-shaped connection that records statements and answers catalog/stats queries."""

    def __init__(
        self, stats: list[tuple[Any, ...]], inserted: int, fresh: Sequence[tuple[int, int]] = ()
    ) -> None:
        self.log: list[tuple[str, Any]] = []
        self.stats, self.inserted, self.fresh = stats, inserted, list(fresh)
        self.rowcount = -1
        self._rows: list[tuple[Any, ...]] = []

    def _answer(self, text: str) -> list[tuple[Any, ...]]:
        if "count(*), min(occurred_at)" in text:
            return self.stats
        if text.startswith('SELECT "_obj", count(*)'):
            return self.fresh
        return []

    def execute(self, stmt: Any, params: Any = None) -> Recorder:
        text = render(stmt)
        self.log.append((text, params))
        self._rows = self._answer(text)
        self.rowcount = self.inserted if text.startswith('INSERT INTO "c_') else -1
        return self

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.log.append(("BEGIN", None))
        yield
        self.log.append(("COMMIT", None))

    def cursor(self) -> Recorder:
        return self

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *_: object) -> None:
        return None


class FakeS3:
    def __init__(self) -> None:
        self.puts: dict[str, bytes] = {}

    def size(self, bucket: str, key: str) -> int:
        return 4321

    def put(self, bucket: str, key: str, body: bytes, content_type: str) -> None:
        self.puts[f"{bucket}/{key}"] = body


def test_a_redshift_load_runs_the_shared_path_with_redshift_statements() -> None:
    key = str(
        EventObjectKey(
            "acme", "order_placed", 2, datetime(2024, 5, 1).date(), "shardId-000000000000", "1", "9"
        )
    )
    manifest = BatchManifest(
        1, "s/shardId-000000000000/1-9", "s", "shardId-000000000000", "1", "9", "bkt",
        (BatchObject(key, "acme", "order_placed", 2, 5, 4321, "2024-05-01T12:00:00Z", "2024-05-01T12:00:04Z"),),
    )  # fmt: skip
    plan = plan_load(manifest, REGISTRY, bucket="bkt")
    s3 = FakeS3()
    at = datetime(2024, 5, 1, 12, tzinfo=UTC)
    conn = Recorder(stats=[(1, "acme", 5, at, at, "order_placed", "order_placed", 2, 2)], inserted=4)
    loader = Loader(RS, RedshiftCopyStager(s3, RS, REGISTRY))  # type: ignore[arg-type]

    result = loader.load(conn, plan)  # type: ignore[arg-type]

    assert (result.rows_loaded, result.rows_skipped) == (4, 1)
    texts = [t for t, _ in conn.log]
    load = texts[texts.index("BEGIN", texts.index("COMMIT")) + 1 :]  # after the DDL transaction
    assert load[0] == 'LOCK "shardhouse"."load_ledger", "c_acme"."order_placed"'
    copy = next(t for t in load if t.startswith("COPY"))
    (manifest_key,) = s3.puts
    assert f"FROM 's3://{manifest_key}'" in copy
    assert orjson.loads(s3.puts[manifest_key]) == {
        "entries": [{"url": f"s3://bkt/{key}", "mandatory": True, "meta": {"content_length": 4321}}]
    }
    raw = next(t for t in load if t.startswith('CREATE TEMP TABLE "_raw_1"'))
    file_order = REGISTRY.get("order_placed", 2).arrow_schema.names
    assert [c.this.name for c in parse(raw, "redshift").this.expressions] == file_order
    assert any(
        t.startswith('INSERT INTO "_stage_0" ("_obj", "event_id"') and 'SELECT 1, "event_id"' in t
        for t in load
    )
    assert any("JSON_PARSE" in t for t in load)
    _, ledger_params = next((t, p) for t, p in conn.log if t.startswith('INSERT INTO "shardhouse"'))
    assert ledger_params[: len(LEDGER_COLUMNS)][7:9] == (4, 1)
    assert load[-1] == "COMMIT" and load[-2].startswith("DROP TABLE IF EXISTS")
    for text in load:
        if text not in ("BEGIN", "COMMIT"):
            parse(text, "redshift")


def test_a_redshift_load_of_several_objects_per_table_counts_each_through_a_temp_table() -> None:
    keys = [
        str(
            EventObjectKey(
                "acme", "page_view", v, datetime(2024, 5, 1).date(), "shardId-000000000000", "1", "9"
            )
        )
        for v in (1, 2)
    ]
    manifest = BatchManifest(
        1, "b", "s", "shardId-000000000000", "1", "9", "bkt",
        tuple(BatchObject(k, "acme", "page_view", v, 3, 100, "", "") for k, v in zip(keys, (1, 2), strict=True)),
    )  # fmt: skip
    at = datetime(2024, 5, 1, 12, tzinfo=UTC)
    stats = [(o, "acme", 3, at, at, "page_view", "page_view", o, o) for o in (1, 2)]
    conn = Recorder(stats=stats, inserted=5, fresh=[(1, 3), (2, 2)])
    loader = Loader(RS, RedshiftCopyStager(FakeS3(), RS, REGISTRY))  # type: ignore[arg-type]

    result = loader.load(conn, plan_load(manifest, REGISTRY, bucket="bkt"))  # type: ignore[arg-type]

    assert [(o.rows_loaded, o.rows_skipped) for o in result.loaded] == [(3, 0), (2, 1)]
    texts = [t for t, _ in conn.log]
    fresh = next(t for t in texts if t.startswith('CREATE TEMP TABLE "_fresh_0"'))
    assert "ROW_NUMBER() OVER (PARTITION BY s.customer_id, s.event_id" in fresh and "DISTKEY (event_id)" in fresh
    assert any(
        t.startswith('INSERT INTO "c_acme"."page_view"') and t.endswith('FROM "_fresh_0" AS f') for t in texts
    )
    assert 'DROP TABLE IF EXISTS "_fresh_0"' in texts
    raws = [t for t in texts if t.startswith('CREATE TEMP TABLE "_raw_')]
    assert len(raws) == 2 and '"referrer"' not in raws[0] and '"referrer"' in raws[1]  # each file's own shape
    for text in texts:
        if text not in ("BEGIN", "COMMIT"):
            parse(text, "redshift")


def test_a_slice_confines_the_merge_to_one_customer_and_its_objects() -> None:
    """A shared staging table feeds many customers' tables: each merge reads one customer's rows
    of its own objects, in both dialects (a slice silently dropped would copy every customer's
    rows into each table)."""
    from inserter.destinations.sql import Slice

    ref = target_table("acme", "page_view")
    cols = PG.columns("page_view")
    part = Slice("acme", (1, 3))
    for d in (PG, RS):
        for stmt in (
            d.insert_deduped("_stage_0", ref, cols, LO, HI, part),
            d.dedupe("_stage_0", "_fresh_0", ref, d.columns("page_view"), LO, HI, part),
        ):
            assert """"s".customer_id = 'acme' AND "s"."_obj" IN (1, 3) AND NOT EXISTS""" in render(stmt)


def test_every_statement_and_lock_wait_is_bounded() -> None:
    pg = [render(s) for s in PostgresDialect(REGISTRY, statement_timeout_s=30, lock_timeout_s=5).session_setup()]
    assert "SET statement_timeout = '30s'" in pg and "SET lock_timeout = '5s'" in pg
    rs = [render(s) for s in RedshiftDialect(REGISTRY, iam_role="arn:r", statement_timeout_s=30).session_setup()]
    assert "SET statement_timeout TO 30000" in rs
