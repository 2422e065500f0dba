"""The inserter's SQL, generated in one place per dialect (pure: no connection needed).

PostgreSQL statements are ``psycopg.sql.Composed`` (identifiers quoted by psycopg); Redshift
statements are strings built from the same plan with the same quoting rule, checked by tests
with a Redshift-dialect parser. Nothing from an event is ever part of SQL text: rows travel by
COPY, names are validated (:mod:`inserter.naming`) and quoted.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from inserter.naming import ADMIN_ROLE, LEDGER_SCHEMA

LEDGER = "load_ledger"


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def ledger_ddl() -> list[sql.Composed]:
    schema = sql.Identifier(LEDGER_SCHEMA)
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.{} ("
            " object_key text PRIMARY KEY, batch_id text NOT NULL, customer_id text NOT NULL,"
            " event_type text NOT NULL, event_version smallint NOT NULL, rows_in_object bigint NOT NULL,"
            " rows_inserted bigint NOT NULL, min_occurred_at timestamptz, max_occurred_at timestamptz,"
            " loaded_at timestamptz NOT NULL DEFAULT now(), duration_ms integer NOT NULL)"
        ).format(schema, sql.Identifier(LEDGER)),
        sql.SQL("CREATE INDEX IF NOT EXISTS load_ledger_customer ON {}.{} (customer_id, loaded_at)").format(
            schema, sql.Identifier(LEDGER)
        ),
    ]


def customer_schema_ddl(schema_name: str, role: str) -> list[sql.Composed]:
    """The customer's schema, readable by its own role and the admin role only."""
    s, r, admin = sql.Identifier(schema_name), sql.Identifier(role), sql.Identifier(ADMIN_ROLE)
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s),
        sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(s),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}, {}").format(s, r, admin),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON TABLES TO {}, {}").format(s, r, admin),
    ]


def add_columns(schema_name: str, table: str, missing: Sequence[tuple[str, str]]) -> list[sql.Composed]:
    return [
        sql.SQL("ALTER TABLE {}.{} ADD COLUMN IF NOT EXISTS {} {}").format(
            sql.Identifier(schema_name), sql.Identifier(table), sql.Identifier(name), sql.SQL(pg_type)
        )
        for name, pg_type in missing
    ]


def target_extras(schema_name: str, table: str) -> list[sql.Composed]:
    """Load time per row (freshness, latency) and the index the merge's anti-join uses."""
    s, t = sql.Identifier(schema_name), sql.Identifier(table)
    return [
        sql.SQL(
            "ALTER TABLE {}.{} ADD COLUMN IF NOT EXISTS _loaded_at timestamptz NOT NULL DEFAULT now()"
        ).format(s, t),
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {}.{} (occurred_at, event_id)").format(
            sql.Identifier(f"{table}_occurred_event"), s, t
        ),
        sql.SQL("GRANT SELECT ON {}.{} TO {}").format(s, t, sql.Identifier(ADMIN_ROLE)),
    ]


def copy_into(staging: str, columns: Sequence[str]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(staging), sql.SQL(", ").join(map(sql.Identifier, columns))
    )


def merge(
    schema_name: str, table: str, staging: str, names: Sequence[str], casts: dict[str, str], window_days: int
) -> sql.Composed:
    """Insert rows whose event_id the target does not hold within the dedupe window.

    The window bounds the anti-join to the (occurred_at, event_id) index range a row can collide
    with, so the cost grows with the batch, not the table. Duplicates inside the batch collapse
    through DISTINCT ON. ``casts`` turns staging's text back into jsonb/uuid.
    """
    target = sql.SQL("{}.{}").format(sql.Identifier(schema_name), sql.Identifier(table))
    cols = sql.SQL(", ").join(map(sql.Identifier, names))
    select = sql.SQL(", ").join(
        sql.SQL("s.{}::{}").format(sql.Identifier(n), sql.SQL(casts[n])) if n in casts
        else sql.SQL("s.{}").format(sql.Identifier(n))
        for n in names
    )  # fmt: skip
    return sql.SQL(
        "INSERT INTO {target} ({cols}) SELECT {select} FROM "
        "(SELECT DISTINCT ON (event_id) * FROM {staging} ORDER BY event_id, occurred_at) s "
        "WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE t.event_id = s.event_id::uuid "
        "AND t.occurred_at BETWEEN s.occurred_at - make_interval(days => {days}) "
        "AND s.occurred_at + make_interval(days => {days}))"
    ).format(
        target=target,
        cols=cols,
        select=select,
        staging=sql.Identifier(staging),
        days=sql.Literal(window_days),
    )


def record_ledger() -> sql.Composed:
    return sql.SQL(
        "INSERT INTO {}.{} (object_key, batch_id, customer_id, event_type, event_version, rows_in_object,"
        " rows_inserted, min_occurred_at, max_occurred_at, duration_ms)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    ).format(sql.Identifier(LEDGER_SCHEMA), sql.Identifier(LEDGER))


def already_loaded() -> sql.Composed:
    return sql.SQL("SELECT object_key FROM {}.{} WHERE object_key = ANY(%s)").format(
        sql.Identifier(LEDGER_SCHEMA), sql.Identifier(LEDGER)
    )


# -- Redshift ------------------------------------------------------------------------------------


def redshift_load(
    *,
    schema_name: str,
    table: str,
    staging: str,
    columns: Sequence[tuple[str, str]],
    staging_columns: Sequence[tuple[str, str]],
    manifest_url: str,
    iam_role: str,
    window_days: int,
) -> list[str]:
    """COPY the batch's Parquet (through an S3 manifest) into staging, then the same merge.

    JSON fields arrive as text in staging and are parsed into SUPER with JSON_PARSE.
    """
    names = [c for c, _ in columns]
    staging_types = dict(staging_columns)
    target = f"{quote(schema_name)}.{quote(table)}"
    select = ", ".join(
        f"JSON_PARSE(s.{quote(c)})"
        if t == "SUPER" and staging_types.get(c, t) != "SUPER"
        else f"s.{quote(c)}"
        for c, t in columns
    )
    col_list = ", ".join(quote(c) for c in names)
    staging_cols = ", ".join(f"{quote(c)} {t}" for c, t in staging_columns)
    role = iam_role.replace("'", "''")
    url = manifest_url.replace("'", "''")
    return [
        f"CREATE TEMP TABLE {quote(staging)} ({staging_cols})",
        f"COPY {quote(staging)} ({col_list}) FROM '{url}' IAM_ROLE '{role}' FORMAT AS PARQUET MANIFEST",
        f"LOCK {target}",
        # Identifiers validated and quoted; no value from an event appears in this text.
        f"INSERT INTO {target} ({col_list}) SELECT {select} FROM "  # noqa: S608
        f"(SELECT *, ROW_NUMBER() OVER (PARTITION BY event_id ORDER BY occurred_at) AS rn "
        f"FROM {quote(staging)}) s "
        f"WHERE s.rn = 1 AND NOT EXISTS (SELECT 1 FROM {target} t WHERE t.event_id = s.event_id "
        f"AND t.occurred_at BETWEEN DATEADD(day, -{int(window_days)}, s.occurred_at) "
        f"AND DATEADD(day, {int(window_days)}, s.occurred_at))",
        f"DROP TABLE {quote(staging)}",
    ]
