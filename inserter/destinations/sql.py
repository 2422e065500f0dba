"""What both warehouse dialects share: statement types, the staging and ledger shapes, and the
quoting helpers. Statements are ``psycopg.sql.Composed``: identifiers pass
:mod:`inserter.naming` checks and are quoted by ``sql.Identifier``; values travel as parameters
or ``sql.Literal``; type names come from :mod:`schemas` (derived from definitions, never from
events). Nothing from an event is ever spliced into SQL text — rows travel by COPY."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from psycopg import sql

from inserter.naming import TableRef

Statement = sql.Composed
Params = tuple[Any, ...]

#: Staging-only column: the object (ordinal within the load) a row came from.
OBJ: Final = "_obj"
#: Dedupe tie-break among copies of one (customer_id, event_id): first object of the load, then
#: stream position.
TIE_BREAK: Final = (OBJ, "_shard_id", "_sequence_number", "_sub_sequence_number")

LEDGER_COLUMNS: Final = (
    "object_key",
    "batch_id",
    "load_id",
    "customer_id",
    "event_type",
    "event_version",
    "target_table",
    "rows_loaded",
    "rows_skipped",
    "min_occurred_at",
    "max_occurred_at",
    "loaded_at",
    "duration_ms",
)


@dataclass(frozen=True, slots=True)
class WarehouseColumn:
    """A target column: its name, its type in the target, its type in staging."""

    name: str
    target_type: str
    staging_type: str


def _id(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def _table(ref: TableRef) -> sql.Composed:
    return sql.SQL("{}.{}").format(_id(ref.schema), _id(ref.table))


def _ids(names: Sequence[str], prefix: str = "") -> sql.Composed:
    if prefix:
        return sql.SQL(", ").join(sql.SQL("{}.{}").format(_id(prefix), _id(n)) for n in names)
    return sql.SQL(", ").join(_id(n) for n in names)


def _placeholders(n: int) -> sql.Composed:
    return sql.SQL(", ").join(sql.Placeholder() for _ in range(n))


def render(stmt: Statement) -> str:
    """SQL text of a statement without a connection (tests, ``--dry-run``, logs)."""
    return stmt.as_string(None)
