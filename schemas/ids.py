"""Identifier safety: customer ids (S3 key component, SQL identifier part) and SQL names."""

from __future__ import annotations

import re
from typing import Final

#: A customer id is safe as an S3 key component and as part of a SQL identifier.
CUSTOMER_ID_PATTERN: Final = r"^[a-z0-9][a-z0-9_]{0,47}$"
# ``$`` also matches before a trailing newline; ``fullmatch`` (and ``\Z`` for msgspec, which
# uses ``re.search``) do not, so "abc\n" is refused.
_CUSTOMER_ID_RE: Final = re.compile(CUSTOMER_ID_PATTERN)
CUSTOMER_ID_STRICT_PATTERN: Final = r"^[a-z0-9][a-z0-9_]{0,47}\Z"

#: Schema, table and column names that DDL builders accept (lowercase, PostgreSQL's 63-byte limit).
SQL_NAME_PATTERN: Final = r"^[a-z_][a-z0-9_]{0,62}$"
_SQL_NAME_RE: Final = re.compile(SQL_NAME_PATTERN)


def is_safe_customer_id(s: str) -> bool:
    """True when ``s`` may be used as a customer id (matches :data:`CUSTOMER_ID_PATTERN` in full)."""
    return isinstance(s, str) and _CUSTOMER_ID_RE.fullmatch(s) is not None


def is_safe_sql_name(s: str) -> bool:
    """True when ``s`` may be used as a schema/table/column name (matches :data:`SQL_NAME_PATTERN`)."""
    return isinstance(s, str) and _SQL_NAME_RE.fullmatch(s) is not None


def quote_ident(name: str) -> str:
    """``"name"`` after checking ``name`` against :data:`SQL_NAME_PATTERN`; raises ValueError.

    The check makes quoting a formality (no quotes can occur), and the quotes keep reserved words
    such as ``type`` or ``order`` usable as column names in both PostgreSQL and Redshift.
    """
    if not is_safe_sql_name(name):
        raise ValueError(f"unsafe SQL identifier {name!r}: must match {SQL_NAME_PATTERN}")
    return f'"{name}"'
