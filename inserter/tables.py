"""Which DDL a load's tables need, decided from one catalog answer — pure, no I/O.

Each event type has one pool (``shardhouse.events_<type>``) and each customer one *part* of it,
``c_<customer>.<type>``: a partition on PostgreSQL, a view on Redshift. The loader asks the
catalog about every pool and part of a load in one round trip, and runs DDL only for what this
module says is missing; a load of customers already seen runs none.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from inserter.naming import TableRef


@dataclass(frozen=True, slots=True)
class Relation:
    """An existing table or view: its columns in their order, and whether it is a part of its
    type's pool."""

    columns: tuple[str, ...]
    part: bool


class PartAction(StrEnum):
    READY = "ready"  # a part with every column: nothing to do
    CREATE = "create"  # no relation of that name: make the part
    ADOPT = "adopt"  # a customer table made before pools: make it a part
    REFRESH = "refresh"  # a part missing columns the pool has: replace the view (Redshift: make it again)


def catalog(rows: Iterable[Sequence[Any]]) -> dict[TableRef, Relation]:
    """The ``relations`` statement's rows (schema, table, column, is a part; in column order)
    per relation."""
    columns: dict[TableRef, list[str]] = defaultdict(list)
    part: dict[TableRef, bool] = {}
    for schema, table, column, is_part in rows:
        ref = TableRef(str(schema), str(table))
        columns[ref].append(str(column))
        part[ref] = bool(is_part)
    return {ref: Relation(tuple(cols), part[ref]) for ref, cols in columns.items()}


def missing_columns(existing: Relation | None, wanted: Sequence[str]) -> list[str]:
    """The wanted columns a relation lacks, in the wanted order (all of them if it is absent)."""
    have = set(existing.columns) if existing is not None else set()
    return [c for c in wanted if c not in have]


def part_action(existing: Relation | None, wanted: Sequence[str]) -> PartAction:
    if existing is None:
        return PartAction.CREATE
    if not existing.part:
        return PartAction.ADOPT
    return PartAction.REFRESH if missing_columns(existing, wanted) else PartAction.READY
