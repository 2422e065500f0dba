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
from inserter.destinations.staging import Staged
from inserter.loader import Loader
from inserter.naming import TableRef, pool_table, reader_role, target_table
from inserter.plan import plan_load
from pipeline.core.layout import EventObjectKey
from pipeline.core.manifest import BatchManifest, BatchObject, CustomerRows
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
        d.relations([ref, pool_table(event_type)])[0],
        *d.create_pool(event_type),
        *d.create_customer_table(ref, "acme", reader_role("acme")),
        *d.adopt_customer_table(ref, "acme", reader_role("acme"), cols[-2:]),
        *d.refresh_customer_table(ref, "acme", reader_role("acme"), [c.name for c in cols[:-2]]),
        d.add_column(pool_table(event_type), "referrer", cols[-1].target_type),
        *d.ledger_ddl(),
        *d.create_staging("_stage_0", cols),
        d.loaded_keys(["a", "b", "c"])[0],
        d.discard_units("_stage_0", [(2, "acme"), (3, "globex")]),
        d.stage_stats("_stage_0"),
        *d.dedupe("_stage_0", "_fresh_0", d.identity_target(event_type), cols, LO, HI)[0],
        *d.dedupe("_stage_0", "_fresh_0", d.identity_target(event_type), cols, LO, HI, probe_bytes=2**40)[0],
        *[c for c in [d.probe_index_size(d.identity_target(event_type))] if c is not None],
        d.fresh_counts("_fresh_0"),
        d.insert_fresh(pool_table(event_type), "_fresh_0", cols),
        d.record_ledger(2),
        *[c for c in [d.copy_ledger()] if c is not None],
        d.recent_loads(customer=True),
        *(s for s, _ in d.lock_tables([ref, target_table("acme", "page_view")])),
        *(s for s, _ in d.ddl_lock(ref.schema)),
        d.create_role(reader_role("acme")),
        d.roles_present([reader_role("acme"), reader_role("globex")])[0],
        d.schemas_present([ref.schema, "c_globex"])[0],
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


def test_redshift_pools_distribute_on_event_id_and_customers_read_through_views() -> None:
    (ddl, *grants) = RS.create_pool("order_placed")
    props = parse(render(ddl), "redshift").sql("redshift")
    assert '"shardhouse"."events_order_placed"' in props
    assert 'DISTKEY("event_id")' in props and 'SORTKEY("occurred_at")' in props
    assert '"items" SUPER' in props
    assert [render(g) for g in grants] == [
        'REVOKE ALL ON TABLE "shardhouse"."events_order_placed" FROM PUBLIC',
        'GRANT SELECT ON TABLE "shardhouse"."events_order_placed" TO ROLE "shardhouse_admin"',
    ]
    view, *grants = RS.create_customer_table(
        target_table("acme", "order_placed"), "acme", reader_role("acme")
    )
    drop = RS.refresh_customer_table(
        target_table("acme", "order_placed"), "acme", reader_role("acme"), ["event_id"]
    )[0]
    assert render(drop) == 'DROP VIEW IF EXISTS "c_acme"."order_placed"'
    text = render(view)
    assert text.startswith('CREATE VIEW "c_acme"."order_placed" AS SELECT "event_id"')
    assert text.endswith('FROM "shardhouse"."events_order_placed" WHERE customer_id = \'acme\'')
    assert [render(g) for g in grants] == [
        'REVOKE ALL ON TABLE "c_acme"."order_placed" FROM PUBLIC',
        'GRANT SELECT ON TABLE "c_acme"."order_placed" TO ROLE "c_acme_reader", ROLE "shardhouse_admin"',
    ]
    staging = {c.name: c.staging_type for c in RS.columns("order_placed")}
    assert staging["items"] == "VARCHAR(65535)"


def test_redshift_merge_dedupes_with_row_number_and_parses_json_into_super() -> None:
    ref = pool_table("order_placed")
    cols = RS.columns("order_placed")
    (stmt,), source = RS.dedupe("_stage_0", "_fresh_0", ref, cols, LO, HI)
    assert source == "_fresh_0"
    dedupe = parse(render(stmt), "redshift")
    window = dedupe.find(exp.Window)
    assert window is not None and window.this.sql().upper() == "ROW_NUMBER()"
    between = dedupe.find(exp.Between)
    assert between is not None and "2024-04-24" in between.sql() and "2024-05-08" in between.sql()
    insert = parse(render(RS.insert_fresh(ref, "_fresh_0", cols)), "redshift")
    assert isinstance(insert, exp.Insert)
    assert 'JSON_PARSE(f."items")' in insert.sql("redshift")
    assert [c.name for c in insert.this.expressions] == [c.name for c in cols]  # by name


def test_postgres_merge_shape() -> None:
    ref = pool_table("appointment_booked")
    cols = PG.columns("appointment_booked")
    steps, source = PG.dedupe("_stage_0", "_fresh_0", PG.identity_target("appointment_booked"), cols, LO, HI)
    assert source == "_stage_0"  # PostgreSQL dedupes staging in place
    within, against, ids = (render(s) for s in steps)
    # within the load: every copy but the first of a pair (first object, then stream position)
    assert within == (
        'DELETE FROM "_stage_0" WHERE ctid IN (SELECT ctid FROM (SELECT ctid, row_number() OVER '
        '(PARTITION BY customer_id, event_id ORDER BY "_obj", "_shard_id", "_sequence_number", '
        '"_sub_sequence_number") AS _rn FROM "_stage_0") AS d WHERE d._rn > 1)'
    )
    # against the warehouse: identity is the pair, a row is a duplicate only of its own customer's
    assert 'FROM "shardhouse"."ids_appointment_booked" AS t' in against
    assert "t.event_id = s.event_id AND t.customer_id = s.customer_id" in against
    assert (
        "BETWEEN '2024-04-24 00:00:00+00:00'::timestamptz AND '2024-05-08 00:00:00+00:00'::timestamptz OFFSET 0)"
        in against
    )
    assert ids.startswith(
        'INSERT INTO "shardhouse"."ids_appointment_booked" (customer_id, event_id, occurred_at)'
    )
    assert ids.endswith('FROM "_stage_0" ORDER BY event_id')  # the new pairs, in index order
    identity = PG.identity_target("appointment_booked")
    (only_against, _ids), _ = PG.dedupe("_stage_0", "_f", identity, cols, LO, HI, duplicates=False)
    assert render(only_against) == against  # no duplicate pair in staging: no sort of its rows
    insert = render(PG.insert_fresh(ref, "_fresh_0", cols))
    assert 'CAST(f."fee" AS numeric(10,2))' in insert  # numeric is staged as text
    assert {c.name: c.staging_type for c in cols}["fee"] == "text"
    locks = PG.lock_tables([TableRef("c_b", "x"), TableRef("c_a", "y"), TableRef("c_b", "x")])
    assert len(locks) == 2 and locks[0][1] != locks[1][1]  # deduplicated, sorted by table


def test_postgres_refresh_replaces_the_view_keeping_its_columns_in_place() -> None:
    ref = target_table("acme", "page_view")
    names = [c.name for c in PG.columns("page_view")]
    existing = ["event_id", "url", "customer_id"]  # an older view, in its own order
    view, *grants = (render(s) for s in PG.refresh_customer_table(ref, "acme", reader_role("acme"), existing))
    assert view.startswith(
        'CREATE OR REPLACE VIEW "c_acme"."page_view" WITH (security_barrier = true) AS SELECT '
    )
    listed = view.split(" AS SELECT ", 1)[1].split(" FROM ", 1)[0].replace('"', "").split(", ")
    assert listed == [*existing, *(n for n in names if n not in existing)]  # old first, new after
    assert not any(g.startswith("DROP") for g in grants)


def test_postgres_probe_runs_over_sorted_keys_once_the_identity_index_is_large() -> None:
    cols = PG.columns("page_view")
    identity = PG.identity_target("page_view")
    small, source = PG.dedupe(
        "_s", "_k", identity, cols, LO, HI, duplicates=False, probe_bytes=PG.sorted_probe_bytes - 1
    )
    assert source == "_s" and render(small[0]).startswith('DELETE FROM "_s" AS s WHERE EXISTS')
    large, source = PG.dedupe(
        "_s", "_k", identity, cols, LO, HI, duplicates=False, probe_bytes=PG.sorted_probe_bytes
    )
    assert source == "_s"  # the new rows still stay in staging; "_k" holds their keys
    keys, hits, ids = (render(s) for s in large)
    assert keys == (
        'CREATE TEMP TABLE "_k" ON COMMIT DROP AS SELECT ctid AS rid, customer_id, event_id, occurred_at '
        'FROM "_s" ORDER BY event_id'
    )
    assert hits.startswith(
        'WITH hit AS (DELETE FROM "_k" AS k WHERE EXISTS (SELECT 1 FROM "shardhouse"."ids_page_view"'
    )
    assert "t.event_id = k.event_id AND t.customer_id = k.customer_id" in hits
    assert hits.endswith('DELETE FROM "_s" WHERE ctid = ANY (ARRAY(SELECT rid FROM hit))')
    assert ids.endswith('SELECT customer_id, event_id, occurred_at FROM "_k"')  # sorted once, not twice
    size_stmt = PG.probe_index_size(identity)
    assert size_stmt is not None
    size = render(size_stmt)
    assert "nspname = 'shardhouse' AND c.relname = 'ids_page_view__dedupe'" in size
    assert RS.probe_index_size(pool_table("page_view")) is None


# -- the Redshift load through the shared Loader ----------------------------------------------------


class Recorder:
    """A psycopg-shaped connection that records statements and answers catalog/stats queries."""

    def __init__(self, stats: list[tuple[Any, ...]], fresh: Sequence[tuple[int, str, int]] = ()) -> None:
        self.log: list[tuple[str, Any]] = []
        self.stats, self.fresh = stats, list(fresh)
        self.rowcount = -1
        self._rows: list[tuple[Any, ...]] = []

    def _answer(self, text: str) -> list[tuple[Any, ...]]:
        if "count(*), min(occurred_at)" in text:
            return self.stats
        if text.startswith('SELECT "_obj", customer_id, count(*)'):
            return self.fresh
        return []

    def execute(self, stmt: Any, params: Any = None) -> Recorder:
        text = render(stmt)
        self.log.append((text, params))
        self._rows = self._answer(text)
        return self

    @contextlib.contextmanager
    def copy(self, stmt: Any) -> Iterator[Any]:
        """COPY … FROM STDIN: the statement, then the rows written, as one log entry."""
        rows: list[tuple[Any, ...]] = []
        yield type("Pipe", (), {"write_row": staticmethod(rows.append)})()
        self.log.append((render(stmt), rows))

    def load_statements(self) -> list[str]:
        """The last transaction's statements (the load's; DDL transactions come before it)."""
        texts = [t for t, _ in self.log]
        return texts[len(texts) - texts[::-1].index("BEGIN") :]

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
    conn = Recorder(
        stats=[(1, "acme", 5, at, at, "order_placed", "order_placed", 2, 2)], fresh=[(1, "acme", 4)]
    )
    loader = Loader(RS, RedshiftCopyStager(s3, RS, REGISTRY))  # type: ignore[arg-type]

    result = loader.load(conn, plan)  # type: ignore[arg-type]

    assert (result.rows_loaded, result.rows_skipped) == (4, 1)
    load = conn.load_statements()
    assert load[0] == 'LOCK "shardhouse"."load_ledger", "shardhouse"."events_order_placed"'
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
    _, ledger_params = next(
        (t, p) for t, p in conn.log if t.startswith('INSERT INTO "shardhouse"."load_ledger"')
    )
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
    conn = Recorder(stats=stats, fresh=[(1, "acme", 3), (2, "acme", 2)])
    loader = Loader(RS, RedshiftCopyStager(FakeS3(), RS, REGISTRY))  # type: ignore[arg-type]

    result = loader.load(conn, plan_load(manifest, REGISTRY, bucket="bkt"))  # type: ignore[arg-type]

    assert [(o.rows_loaded, o.rows_skipped) for o in result.loaded] == [(3, 0), (2, 1)]
    texts = [t for t, _ in conn.log]
    fresh = next(t for t in texts if t.startswith('CREATE TEMP TABLE "_fresh_0"'))
    assert (
        "ROW_NUMBER() OVER (PARTITION BY s.customer_id, s.event_id" in fresh and "DISTKEY (event_id)" in fresh
    )
    assert any(
        t.startswith('INSERT INTO "shardhouse"."events_page_view"') and t.endswith('FROM "_fresh_0" AS f')
        for t in texts
    )
    assert 'DROP TABLE IF EXISTS "_fresh_0"' in texts
    raws = [t for t in texts if t.startswith('CREATE TEMP TABLE "_raw_')]
    assert len(raws) == 2 and '"referrer"' not in raws[0] and '"referrer"' in raws[1]  # each file's own shape
    for text in texts:
        if text not in ("BEGIN", "COMMIT"):
            parse(text, "redshift")


class NoStager:
    """Staging is the stager's I/O; these tests count the statements around it."""

    def begin(self, bucket: str, objects: Sequence[Any]) -> None: ...
    def end(self) -> None: ...
    def stage(self, *args: Any) -> Staged:
        return Staged()


def shared_load(d: PostgresDialect, customers: int) -> tuple[list[str], list[Any]]:
    """The load statements of one shared page_view object holding ``customers`` customers."""
    key = str(
        EventObjectKey(None, "page_view", 2, datetime(2024, 5, 1).date(), "shardId-000000000000", "1", "9")
    )
    names = [f"c{i:05d}" for i in range(customers)]
    obj = BatchObject(
        key, "", "page_view", 2, 2 * customers, 100, "", "", tuple(CustomerRows(c, 2) for c in names)
    )
    manifest = BatchManifest(1, "b", "s", "shardId-000000000000", "1", "9", "bkt", (obj,))
    at = datetime(2024, 5, 1, 12, tzinfo=UTC)
    conn = Recorder(
        stats=[(1, c, 2, at, at, "page_view", "page_view", 2, 2) for c in names],
        fresh=[(1, c, 1) for c in names],
    )
    result = Loader(d, NoStager()).load(conn, plan_load(manifest, REGISTRY, bucket="bkt"))  # type: ignore[arg-type]
    return conn.load_statements(), list(result.loaded)


@pytest.mark.parametrize("d", [PG, RS], ids=["postgres", "redshift"])
def test_a_loads_statements_do_not_grow_with_its_customers(d: PostgresDialect) -> None:
    """One shared object of 3 or of 3,000 customers: the same statements (one staging, one
    dedupe, one insert into the pool…) but for the ledger's rows — one COPY on PostgreSQL,
    2,000 per INSERT on Redshift; every customer's slice is counted in the ledger."""
    few, few_loaded = shared_load(d, 3)
    many, many_loaded = shared_load(d, 3000)
    assert len(few_loaded) == 3 and len(many_loaded) == 3000
    assert [(o.table, o.rows_loaded, o.rows_skipped) for o in many_loaded[:2]] == [
        (target_table("c00000", "page_view"), 1, 1),
        (target_table("c00001", "page_view"), 1, 1),
    ]
    ledger = [
        t
        for t in many
        if t.startswith(('INSERT INTO "shardhouse"."load_ledger"', 'COPY "shardhouse"."load_ledger"'))
    ]
    if d.copy_ledger() is None:
        assert [t.split(" (")[0] for t in ledger] == ['INSERT INTO "shardhouse"."load_ledger"'] * 2
        assert len(many) == len(few) + 1  # 3,000 rows: 2,000 + 1,000
    else:
        assert [t.split(" (")[0] for t in ledger] == ['COPY "shardhouse"."load_ledger"']
        assert len(many) == len(few)
    inserts = [t for t in many if t.startswith('INSERT INTO "shardhouse"."events_page_view"')]
    assert len(inserts) == 1 and "customer_id =" not in inserts[0]


def test_every_statement_and_lock_wait_is_bounded() -> None:
    pg = [
        render(s) for s in PostgresDialect(REGISTRY, statement_timeout_s=30, lock_timeout_s=5).session_setup()
    ]
    assert "SET statement_timeout = '30s'" in pg and "SET lock_timeout = '5s'" in pg
    rs = [
        render(s) for s in RedshiftDialect(REGISTRY, iam_role="arn:r", statement_timeout_s=30).session_setup()
    ]
    assert "SET statement_timeout TO 30000" in rs
