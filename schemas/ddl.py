"""PostgreSQL and Redshift column types and CREATE TABLE text, derived from definitions.

Only names that passed :func:`schemas.ids.quote_ident` (definition field names, and the schema
and table names the caller gives) appear in the SQL; nothing from an event ever does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from schemas.definition import ENVELOPE_COLUMNS, METADATA_COLUMNS, FieldDef
from schemas.ids import quote_ident

#: Envelope + metadata column types. Redshift: a UUID is 36 ASCII chars; customer ids and type
#: names are at most 48; Kinesis shard ids and sequence numbers fit in 128.
_PG_ENVELOPE: Final = (
    ("event_id", "uuid"),
    ("customer_id", "text"),
    ("event_type", "text"),
    ("event_version", "smallint"),
    ("occurred_at", "timestamptz"),
)
_PG_METADATA: Final = (
    ("_shard_id", "text"),
    ("_sequence_number", "text"),
    ("_sub_sequence_number", "integer"),
)
_RS_ENVELOPE: Final = (
    ("event_id", "VARCHAR(36)"),
    ("customer_id", "VARCHAR(48)"),
    ("event_type", "VARCHAR(48)"),
    ("event_version", "SMALLINT"),
    ("occurred_at", "TIMESTAMPTZ"),
)
_RS_METADATA: Final = (
    ("_shard_id", "VARCHAR(128)"),
    ("_sequence_number", "VARCHAR(128)"),
    ("_sub_sequence_number", "INTEGER"),
)
#: Redshift VARCHAR(n) counts bytes; a UTF-8 character is at most 4 bytes.
REDSHIFT_MAX_VARCHAR: Final = 65535


#: Payload kinds both warehouses name alike (Redshift's spelling is the upper-case one).
_PLAIN_KIND: Final = {
    "int": "bigint",
    "float": "double precision",
    "bool": "boolean",
    "timestamp": "timestamptz",
}
_PG_KIND: Final = {"string": "text", "json": "jsonb", **_PLAIN_KIND}


def postgres_type(f: FieldDef) -> str:
    """PostgreSQL type of a payload field (string → text: PostgreSQL needs no length)."""
    if f.kind == "decimal":
        return f"numeric({f.precision},{f.scale})"
    return _PG_KIND[f.kind]


def redshift_type(f: FieldDef, *, staging: bool = False) -> str:
    """Redshift type of a payload field. ``string`` → VARCHAR(4 * max_length), capped at 65535;
    ``json`` → SUPER, or VARCHAR(65535) in a staging table (Parquet carries JSON as text;
    ``JSON_PARSE`` turns it into SUPER on the way into the final table)."""
    if f.kind == "string":
        return f"VARCHAR({min(REDSHIFT_MAX_VARCHAR, 4 * f.limit)})"
    if f.kind == "json":
        return f"VARCHAR({REDSHIFT_MAX_VARCHAR})" if staging else "SUPER"
    if f.kind == "decimal":
        return f"DECIMAL({f.precision},{f.scale})"
    return _PLAIN_KIND[f.kind].upper()


def postgres_columns(fields: Sequence[FieldDef]) -> list[tuple[str, str]]:
    """(column, type) for every column of the warehouse table, in schema order."""
    return [*_PG_ENVELOPE, *((f.name, postgres_type(f)) for f in fields), *_PG_METADATA]


def redshift_columns(fields: Sequence[FieldDef], *, staging: bool = False) -> list[tuple[str, str]]:
    """(column, type) for every column of the Redshift table, in schema order."""
    return [*_RS_ENVELOPE, *((f.name, redshift_type(f, staging=staging)) for f in fields), *_RS_METADATA]


def _not_null(fields: Sequence[FieldDef]) -> set[str]:
    return {*ENVELOPE_COLUMNS, *METADATA_COLUMNS, *(f.name for f in fields if f.required)}


def _create(schema_name: str, table_name: str, columns: list[tuple[str, str]], not_null: set[str]) -> str:
    target = f"{quote_ident(schema_name)}.{quote_ident(table_name)}"
    lines = [
        f"    {quote_ident(name)} {sql_type}{' NOT NULL' if name in not_null else ''}"
        for name, sql_type in columns
    ]
    return f"CREATE TABLE IF NOT EXISTS {target} (\n" + ",\n".join(lines) + "\n)"


def postgres_ddl(fields: Sequence[FieldDef], schema_name: str, table_name: str) -> str:
    """CREATE TABLE IF NOT EXISTS with quoted identifiers. ``event_id`` is ``uuid NOT NULL`` with
    no key: whether to add a unique index is the loader's decision (its merge already drops seen
    ids)."""
    return _create(schema_name, table_name, postgres_columns(fields), _not_null(fields))


def redshift_ddl(
    fields: Sequence[FieldDef], schema_name: str, table_name: str, *, staging: bool = False
) -> str:
    """CREATE TABLE IF NOT EXISTS for Redshift.

    ``DISTSTYLE KEY DISTKEY(event_id)``: ids are random UUIDs, so rows spread evenly, and the
    loader's merge (staging JOIN target ON event_id) is co-located when staging uses the same
    key. ``SORTKEY(occurred_at)``: queries and the merge's time window prune blocks by time.
    """
    body = _create(schema_name, table_name, redshift_columns(fields, staging=staging), _not_null(fields))
    return f'{body}\nDISTSTYLE KEY\nDISTKEY ("event_id")\nSORTKEY ("occurred_at")'
