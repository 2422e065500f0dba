"""Warehouse names for a customer's data. Values are re-validated here even though the batcher
validated them: a name built from an unchecked value is an injection bug."""

from __future__ import annotations

import re

from schemas import is_safe_customer_id

SAFE_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
LEDGER_SCHEMA = "shardhouse"
ADMIN_ROLE = "shardhouse_admin"


class UnsafeName(ValueError):
    pass


def customer_schema(customer_id: str) -> str:
    if not is_safe_customer_id(customer_id):
        raise UnsafeName(f"unsafe customer id: {customer_id!r}")
    return f"c_{customer_id}"


def customer_role(customer_id: str) -> str:
    return f"{customer_schema(customer_id)}_reader"


def event_table(event_type: str) -> str:
    if not SAFE_TYPE.fullmatch(event_type):
        raise UnsafeName(f"unsafe event type: {event_type!r}")
    return event_type
