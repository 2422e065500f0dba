"""Warehouse names for a customer's data, the pooled tables behind them, and lock keys.

Values are re-validated here even though the batcher validated them: a name built from an
unchecked value is an injection bug. Every name this module returns matches
:data:`schemas.ids.SQL_NAME_PATTERN`, and is still quoted (``psycopg.sql.Identifier``) wherever
it is used.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from schemas import is_safe_customer_id, is_safe_sql_name

LEDGER_SCHEMA: Final = "shardhouse"
LEDGER_TABLE: Final = "load_ledger"
ADMIN_ROLE: Final = "shardhouse_admin"
CUSTOMER_PREFIX: Final = "c_"
READER_SUFFIX: Final = "_reader"


class UnsafeName(ValueError):
    """A customer id or event type that cannot become a SQL name."""


@dataclass(frozen=True, order=True, slots=True)
class TableRef:
    """A schema-qualified table. Ordered, so lock order is the sort order."""

    schema: str
    table: str

    def __post_init__(self) -> None:
        for part in (self.schema, self.table):
            if not is_safe_sql_name(part):
                raise UnsafeName(f"unsafe SQL name {part!r}")

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}"


def customer_schema(customer_id: str) -> str:
    """``c_<customer_id>``: at most 50 characters (ids are at most 48)."""
    if not is_safe_customer_id(customer_id):
        raise UnsafeName(f"unsafe customer id: {customer_id!r}")
    return f"{CUSTOMER_PREFIX}{customer_id}"


def reader_role(customer_id: str) -> str:
    """``c_<customer_id>_reader``: the NOLOGIN role that may read this customer's schema."""
    return f"{customer_schema(customer_id)}{READER_SUFFIX}"


def target_table(customer_id: str, event_type: str) -> TableRef:
    """One table per customer and event type: ``c_<customer>.<type>`` (every version in it)."""
    return TableRef(customer_schema(customer_id), _checked_type(event_type))


def pool_table(event_type: str) -> TableRef:
    """``shardhouse.events_<type>``: every customer's rows of a type, the one target of a load's
    insert; each customer reads its own rows through its view (``c_<customer>.<type>``)."""
    return TableRef(LEDGER_SCHEMA, f"events_{_checked_type(event_type)}")


def identity_table(event_type: str) -> TableRef:
    """``shardhouse.ids_<type>``: (customer_id, event_id, occurred_at) of every row of a type, one
    btree for the dedupe probe whatever the number of customers (PostgreSQL only)."""
    return TableRef(LEDGER_SCHEMA, f"ids_{_checked_type(event_type)}")


def _checked_type(event_type: str) -> str:
    if not is_safe_sql_name(event_type) or len(event_type) > 48:
        raise UnsafeName(f"unsafe event type: {event_type!r}")
    return event_type


def ledger_table() -> TableRef:
    return TableRef(LEDGER_SCHEMA, LEDGER_TABLE)


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name (same in every process and version:
    a blake2b digest, not Python's randomized ``hash``)."""
    digest = hashlib.blake2b(f"shardhouse:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
