"""Per-customer schemas and roles, and schema evolution, on a real PostgreSQL."""

from __future__ import annotations

import io
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pyarrow.parquet as pq
import pytest
from inserter_harness import Env, fresh_database, make_env, make_events, outcomes, parquet_bytes
from psycopg import errors as pg_errors
from psycopg import sql

from inserter.destinations.postgres.dialect import PostgresDialect
from inserter.destinations.postgres.stager import PostgresCopyStager
from inserter.loader import Loader
from inserter.naming import target_table
from inserter.plan import TableLoad
from inserter.source import ObjectSource
from pipeline.core.clients import ClientFactory
from pipeline.core.settings import Settings
from schemas import builtin_definitions, load_registry

pytestmark = pytest.mark.integration


def test_a_customer_role_reads_only_its_own_schema(env: Env, unique_name: str) -> None:
    a, b = f"{unique_name}_a", f"{unique_name}_b"
    env.send(env.manifest([env.put_object(make_events(a, n=7)), env.put_object(make_events(b, n=5))]))
    env.drain()
    stranger = f"stranger_{uuid.uuid4().hex[:8]}"

    with env.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(stranger)))
        try:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(f"c_{a}_reader")))
            assert conn.execute(f'SELECT count(*) FROM "c_{a}".page_view').fetchone() == (7,)
            with pytest.raises(pg_errors.InsufficientPrivilege):
                conn.execute(f'SELECT count(*) FROM "c_{b}".page_view')
            for pooled in ("load_ledger", "events_page_view", "ids_page_view"):  # every customer's
                with pytest.raises(pg_errors.InsufficientPrivilege):
                    conn.execute(f"SELECT count(*) FROM shardhouse.{pooled}")
            conn.execute("RESET ROLE")

            conn.execute("SET ROLE shardhouse_admin")
            assert conn.execute(f'SELECT count(*) FROM "c_{a}".page_view').fetchone() == (7,)
            assert conn.execute(f'SELECT count(*) FROM "c_{b}".page_view').fetchone() == (5,)
            assert conn.execute("SELECT count(*) >= 2 FROM shardhouse.load_ledger").fetchone() == (True,)
            conn.execute("RESET ROLE")

            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(stranger)))  # PUBLIC only
            for customer in (a, b):
                with pytest.raises(pg_errors.InsufficientPrivilege):
                    conn.execute(f'SELECT 1 FROM "c_{customer}".page_view')
            conn.execute("RESET ROLE")
        finally:
            conn.execute("RESET ROLE")
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(stranger)))
        roles = conn.execute(
            "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1",
            ([f"c_{a}_reader", f"c_{b}_reader", "shardhouse_admin"],),
        ).fetchall()
    assert roles == [(f"c_{a}_reader", False), (f"c_{b}_reader", False), ("shardhouse_admin", False)]


def test_v2_rows_load_next_to_v1_rows(clients: ClientFactory, settings: Settings, unique_name: str) -> None:
    """A pool created when only v1 existed gains v2's columns (ALTER TABLE ADD COLUMN; the
    customer's view is replaced) before v2 rows load; v1 rows read NULL there. Its own database: the pool
    is per type, and another test's may already have v2's columns."""
    env = make_env(clients, settings, unique_name, fresh_database(settings.warehouse.url, "v1v2"))
    v1_only = load_registry(definitions=[d for d in builtin_definitions() if d.version == 1])
    v1 = make_events(unique_name, "page_view", 1, 10)
    env.send(env.manifest([env.put_object(v1)]))
    env.drain(registry=v1_only)
    table = f'"c_{unique_name}".page_view'

    def columns() -> list[str]:
        rows = env.query(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = "
            "'page_view' ORDER BY ordinal_position",
            (f"c_{unique_name}",),
        )
        return [r[0] for r in rows]

    assert "referrer" not in columns() and "session_id" not in columns()

    v2 = make_events(unique_name, "page_view", 2, 6, start=100)
    env.send(env.manifest([env.put_object(v2, first=5000)], first=5000, last=5005))
    env.drain()

    # The customer's view is replaced: v1's columns where they were, v2's new ones after them.
    v1_names = [name for name, _ in v1_only.postgres_columns("page_view")]
    assert columns() == [*v1_names, "referrer", "session_id"]
    rows = env.query(
        f"SELECT event_version, count(*), count(referrer), count(session_id) FROM {table} GROUP BY 1 ORDER BY 1"
    )
    assert rows == [(1, 10, 0, 0), (2, 6, 6, 6)]
    assert env.query(f"SELECT url, session_id FROM {table} WHERE user_id = 'u3' AND event_version = 2") == [
        ("https://example.com/p/100", "s9")
    ]


def test_columns_are_matched_by_name_never_by_position(env: Env, unique_name: str) -> None:
    events = make_events(unique_name, "page_view", 2, 8)
    original = pq.read_table(io.BytesIO(parquet_bytes(events)))
    shuffled = original.select(list(reversed(original.column_names)))
    sink = io.BytesIO()
    pq.write_table(shuffled, sink)
    env.send(env.manifest([env.put_object(events, body=sink.getvalue())]))
    env.drain()

    with env.connect() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        got = cur.execute(
            f'SELECT event_id::text, url, referrer, duration_ms, scroll_depth FROM "c_{unique_name}".page_view '
            "ORDER BY duration_ms"
        ).fetchall()
    expected = sorted(
        (
            {
                "event_id": e.event_id,
                "url": e.payload.url,  # type: ignore[attr-defined]
                "referrer": e.payload.referrer,  # type: ignore[attr-defined]
                "duration_ms": e.payload.duration_ms,  # type: ignore[attr-defined]
                "scroll_depth": e.payload.scroll_depth,  # type: ignore[attr-defined]
            }
            for e in events
        ),
        key=lambda r: r["duration_ms"],
    )
    assert got == expected


def test_table_shape_index_and_grants(env: Env, unique_name: str) -> None:
    env.send(env.manifest([env.put_object(make_events(unique_name, "order_placed", 2, 2))]))
    env.drain()
    schema = f"c_{unique_name}"
    # The customer's table is a security-barrier view of the type's pool, which is indexed by
    # customer; the dedupe index is the identity table's (one btree for every customer).
    assert env.query(
        "SELECT c.relkind, c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = 'order_placed'",
        (schema,),
    ) == [("v", ["security_barrier=true"])]
    assert env.query("SELECT 1 FROM pg_indexes WHERE schemaname = %s", (schema,)) == []
    assert env.query(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'shardhouse' "
        "AND tablename IN ('ids_order_placed', 'events_order_placed') ORDER BY 1"
    ) == [
        (
            "CREATE INDEX events_order_placed__customer ON shardhouse.events_order_placed "
            "USING btree (customer_id, occurred_at)",
        ),
        (
            "CREATE INDEX ids_order_placed__dedupe ON shardhouse.ids_order_placed "
            "USING btree (event_id, occurred_at)",
        ),
    ]
    types = dict(
        env.query(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'order_placed'",
            (schema,),
        )
    )
    assert (
        types["event_id"] == "uuid"
        and types["items"] == "jsonb"
        and types["occurred_at"].startswith("timestamp")
    )
    grants = env.query(
        "SELECT grantee, privilege_type FROM information_schema.role_table_grants "
        "WHERE table_schema = %s AND table_name = 'order_placed' AND grantee <> current_user ORDER BY 1",
        (schema,),
    )
    assert grants == [(f"{schema}_reader", "SELECT"), ("shardhouse_admin", "SELECT")]


def test_a_customer_table_made_before_pools_is_adopted_and_keeps_deduplicating(
    env: Env, unique_name: str
) -> None:
    """An upgrade: a customer's standalone table (with its own dedupe index, no identity rows)
    moves into its pool on first sight and is kept as ``page_view__pre_pool``; its rows count for
    dedupe from then on."""
    schema, first = f"c_{unique_name}", make_events(unique_name, "page_view", 2, 10)
    env.send(env.manifest([env.put_object(first)]))
    env.drain()
    with env.connect() as conn:  # back to the shape the inserter made before pools
        conn.execute(f'DROP VIEW "{schema}".page_view')
        conn.execute(
            f'CREATE TABLE "{schema}".page_view AS SELECT * FROM shardhouse.events_page_view '
            "WHERE customer_id = %s",
            (unique_name,),
        )
        conn.execute("DELETE FROM shardhouse.events_page_view WHERE customer_id = %s", (unique_name,))
        conn.execute("DELETE FROM shardhouse.ids_page_view WHERE customer_id = %s", (unique_name,))
        conn.execute(f'CREATE INDEX page_view__dedupe ON "{schema}".page_view (event_id, occurred_at)')

    again = [*first[:4], *make_events(unique_name, "page_view", 2, 6, start=100)]  # 4 seen, 6 new
    env.send(env.manifest([env.put_object(again, first=5000)], first=5000, last=5009))
    env.drain()

    assert sorted(env.event_ids(unique_name)) == sorted(str(e.event_id) for e in [*first, *again[4:]])
    assert env.query(
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'v') ORDER BY 1",
        (schema,),
    ) == [("page_view", "v"), ("page_view__pre_pool", "r")]
    assert env.query(f'SELECT count(*) FROM "{schema}".page_view__pre_pool') == [(10,)]
    assert env.query(
        "SELECT count(*) FROM shardhouse.ids_page_view WHERE customer_id = %s", (unique_name,)
    ) == [(16,)]


def test_two_databases_meeting_the_same_new_customers_at_once_both_make_their_views(
    clients: ClientFactory, settings: Settings, unique_name: str
) -> None:
    """Reader roles are cluster-wide: two inserters on two databases create the same 60 roles
    at the same moment (one script each, a per-role retry after the lost race); both succeed,
    and each database ends with every customer's view."""
    customers = [f"{unique_name}_{i:02d}" for i in range(60)]
    tables = [TableLoad(target_table(c, "page_view"), c, "page_view", ()) for c in customers]
    urls = [fresh_database(settings.warehouse.url, f"race{i}") for i in range(2)]
    start = threading.Barrier(2)

    def first_sight(url: str) -> None:
        dialect = PostgresDialect(load_registry())
        loader = Loader(dialect, PostgresCopyStager(ObjectSource(clients.s3()), dialect))
        with psycopg.connect(url, autocommit=True) as conn:
            loader.prepare(conn)
            start.wait(timeout=30)
            loader.ensure_tables(conn, tables)

    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(first_sight, url) for url in urls]:
            done.result(timeout=120)
    for url in urls:
        with psycopg.connect(url, autocommit=True) as conn:
            views = conn.execute(
                "SELECT count(*) FROM pg_views WHERE viewname = 'page_view' AND schemaname LIKE %s",
                (f"c_{unique_name}\\_%",),
            ).fetchone()
        assert views == (60,)


def test_new_columns_reach_a_view_an_analyst_built_on(
    clients: ClientFactory, settings: Settings, unique_name: str
) -> None:
    """A customer's view gains a new version's columns without being dropped: an analyst's own
    view over it (which a DROP would refuse to outlive) keeps working, and the v2 rows land."""
    env = make_env(clients, settings, unique_name, fresh_database(settings.warehouse.url, "dependent"))
    v1_only = load_registry(definitions=[d for d in builtin_definitions() if d.version == 1])
    env.send(env.manifest([env.put_object(make_events(unique_name, "page_view", 1, 10))]))
    env.drain(registry=v1_only)
    schema = f'"c_{unique_name}"'
    with env.connect() as conn:
        conn.execute(
            f"CREATE VIEW {schema}.daily AS SELECT occurred_at::date AS day, count(*) AS n FROM {schema}.page_view GROUP BY 1"
        )

    env.send(
        env.manifest(
            [env.put_object(make_events(unique_name, "page_view", 2, 6, start=100), first=5000)],
            first=5000,
            last=5005,
        )
    )
    ins = env.drain()

    assert sum(outcomes(ins).values()) == outcomes(ins)["loaded"] == 1
    assert env.query(f"SELECT sum(n) FROM {schema}.daily") == [(16,)]
    assert env.query(f"SELECT count(referrer), count(session_id) FROM {schema}.page_view") == [(6, 6)]
    names = [r[0] for r in env.query(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = 'page_view' "
        "ORDER BY ordinal_position", (f"c_{unique_name}",),
    )]  # fmt: skip
    v1_names = [name for name, _ in v1_only.postgres_columns("page_view")]
    assert names[: len(v1_names)] == v1_names  # the old columns keep their places; new ones follow
    assert set(names) == {name for name, _ in load_registry().postgres_columns("page_view")}
