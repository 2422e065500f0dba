"""How a table's objects get into its staging table — the one step where the dialects do
different I/O (PostgreSQL: binary COPY from the inserter; Redshift: the cluster reads S3). Both
fill the same staging shape (the target's columns + ``_obj``), so everything after staging is one
code path (:mod:`inserter.loader`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from inserter.destinations.sql import WarehouseColumn
from inserter.errors import LoadError
from inserter.plan import ObjectLoad
from schemas.definition import ENVELOPE_COLUMNS, METADATA_COLUMNS

REQUIRED_COLUMNS = (*ENVELOPE_COLUMNS, *METADATA_COLUMNS)


#: One (object, customer) slice's statistics in the order of the dialects' ``stage_stats``
#: rows: (ordinal, customer_id, rows, min/max occurred_at, min/max event_type, min/max
#: event_version).
SliceRow = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Staged:
    """What a stager learnt of the rows while staging them (nothing, if the warehouse read them
    itself)."""

    #: Whether an event_id may occur twice among the rows, being worked out meanwhile.
    repeats: Future[bool] | None = None
    #: Each batch's (object, customer) slices, in the dialects' ``stage_stats`` row shape.
    slices: Sequence[Future[list[SliceRow]]] | None = None

    def repeated_ids(self) -> bool | None:
        """Whether an event_id may occur twice among the staged rows; None: not known."""
        return None if self.repeats is None else self.repeats.result()

    def slice_stats(self) -> list[SliceRow] | None:
        """Rows and ranges per (object, customer), as ``stage_stats`` would return them; None:
        not known (ask the warehouse)."""
        return None if self.slices is None else merge_slices(f.result() for f in self.slices)


def merge_slices(parts: Iterable[Iterable[SliceRow]]) -> list[SliceRow]:
    """The slices of several batches as one answer per (ordinal, customer)."""
    out: dict[tuple[int, str | None], list[Any]] = {}
    for part in parts:
        for ordinal, customer, rows, *ranges in part:
            acc = out.get((ordinal, customer))
            if acc is None:
                out[(ordinal, customer)] = [rows, *ranges]
                continue
            acc[0] += rows
            for i in range(1, 7, 2):
                acc[i] = _pick(min, acc[i], ranges[i - 1])
                acc[i + 1] = _pick(max, acc[i + 1], ranges[i])
    return [(o, c, *acc) for (o, c), acc in out.items()]


def _pick(f: Any, a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else f(a, b)


class Stager(Protocol):
    def begin(self, bucket: str, objects: Sequence[ObjectLoad]) -> None:
        """The objects the next ``stage`` calls will stage, in that order (to read ahead)."""
        ...

    def end(self) -> None:
        """The load's staging is over (or failed): drop anything read ahead."""
        ...

    def stage(
        self,
        cur: psycopg.Cursor[Any],
        stage: str,
        event_type: str,
        objects: Sequence[ObjectLoad],
        columns: Sequence[WarehouseColumn],
        bucket: str,
    ) -> Staged:
        """Fill ``stage`` with every row of ``objects`` (distinct S3 objects of ``event_type``,
        shared ones included), each row tagged with its object's ordinal."""
        ...


def file_columns(schema: Any, columns: Sequence[WarehouseColumn], key: str) -> list[str]:
    """The object's columns, by name, that the table has; refuses a file with a column the
    table does not know (newer definitions are needed) or without the envelope columns."""
    known = {c.name for c in columns}
    names = list(schema.names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise LoadError(f"{key}: columns {unknown} are not in the table's definitions")
    missing = [n for n in REQUIRED_COLUMNS if n not in names]
    if missing:
        raise LoadError(f"{key}: required columns {missing} missing")
    if len(set(names)) != len(names):
        raise LoadError(f"{key}: duplicate column names")
    return names
