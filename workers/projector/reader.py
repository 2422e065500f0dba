"""Queries over the read models: one ``read.lua`` round trip each, plain JSON-able results.

Used by ``shardhouse query`` and the HTTP read API (workers/projector/readapi.py). Input is checked
here (safe customer id, known type/kind/measure, bounded ranges), so both front ends refuse the
same things with the same message.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
import redis

from pipeline.core.clients import ClientFactory
from pipeline.core.errors import TerminalError
from pipeline.core.settings import Settings
from schemas import Registry, is_safe_customer_id, load_registry
from schemas.read_models import (
    ENTITY_KINDS,
    ENTITY_MODELS,
    MEASURE_PATTERN,
    epoch_seconds,
    hour_bucket,
    hour_of,
    parse_version,
)
from schemas.registry import OCCURRED_AT_MAX, OCCURRED_AT_MIN
from workers.projector import keys
from workers.projector.store import ProjectionStore, parse_entity

MAX_HOURS: Final = 31 * 24
MAX_DAYS: Final = 400
MAX_TOP: Final = 1000
MAX_RANGE_ITEMS: Final = 1000
MAX_ID_LENGTH: Final = 256
CALENDAR: Final = "calendar"


class QueryError(TerminalError):
    """The query is malformed (HTTP 400); the message says what to change."""


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


#: Query times must fall in the range events may have (schemas: 1970..2200), so no default
#: span, bucket or window computed from them can leave what ``datetime`` holds (HTTP 400, not 500).
TIME_MIN: Final = OCCURRED_AT_MIN
TIME_MAX: Final = OCCURRED_AT_MAX


def parse_time(text: str, what: str) -> datetime:
    """An ISO 8601 date or date-time (UTC when no offset is given) in [TIME_MIN, TIME_MAX)."""
    try:
        ts = _utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except (ValueError, OverflowError):
        raise QueryError(f"{what}: {text[:64]!r} is not an ISO 8601 date or date-time") from None
    if not TIME_MIN <= ts < TIME_MAX:
        raise QueryError(f"{what}: {text[:64]!r} is outside [{TIME_MIN:%Y-%m-%d}, {TIME_MAX:%Y-%m-%d})")
    return ts


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ReadModelReader:
    def __init__(
        self,
        client: redis.Redis,
        namespace: keys.Namespace,
        event_types: Collection[str],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = ProjectionStore(client, namespace)
        self.namespace = namespace
        self.event_types = frozenset(event_types)
        self.clock = clock
        self._call = self.store.read

    # -- checks ---------------------------------------------------------------------------------

    @staticmethod
    def _customer(customer: str) -> str:
        if not is_safe_customer_id(customer):
            raise QueryError(f"customer {customer!r} is not a valid customer id ([a-z0-9_], at most 48)")
        return customer

    @staticmethod
    def _free_text(value: str, what: str) -> str:
        if not 0 < len(value) <= MAX_ID_LENGTH:
            raise QueryError(f"{what} must be 1..{MAX_ID_LENGTH} characters")
        return value

    # -- queries --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        s = self.store.status()
        return {
            "namespace": self.namespace.prefix,
            "generation": s.current,
            "building": s.building,
            "origin": describe_origin(s.origin),
            "positions": s.positions,
        }

    def counts(
        self,
        customer: str,
        event_type: str,
        by: str = "hour",
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> dict[str, Any]:
        """Events of one type per hour or per day, zeros included, ``start``..``end`` inclusive
        (default: the last 24 hours / 30 days)."""
        self._customer(customer)
        if event_type not in self.event_types:
            known = ", ".join(sorted(self.event_types))
            raise QueryError(f"unknown event type {event_type!r}; known: {known}")
        if by not in ("hour", "day"):
            raise QueryError(f"by must be hour or day, not {by!r}")
        now = _utc(self.clock())
        step = timedelta(hours=1) if by == "hour" else timedelta(days=1)
        last = _utc(end) if end is not None else now
        first = _utc(start) if start is not None else last - (23 * step if by == "hour" else 29 * step)
        if first > last:
            raise QueryError("from is after to")
        first_hour, last_hour = hour_of(first), hour_of(last)
        if by == "day":
            first_hour -= first_hour % 24
            last_hour -= last_hour % 24
            points = (last_hour - first_hour) // 24 + 1
            if points > MAX_DAYS:
                raise QueryError(f"at most {MAX_DAYS} days per query")
        else:
            points = last_hour - first_hour + 1
            if points > MAX_HOURS:
                raise QueryError(f"at most {MAX_HOURS} hours per query")
        buckets = [hour_bucket(first_hour + i * (24 if by == "day" else 1)) for i in range(points)]
        groups: dict[str, list[str]] = {}
        for b in buckets:
            if by == "hour":
                groups.setdefault(keys.hourly_key(customer, b.day), []).append(f"{event_type}:{b.hh}")
            else:
                groups.setdefault(keys.daily_key(customer, b.month), []).append(f"{event_type}:{b.dd}")
        args: list[str | int] = [len(groups)]
        for key, fields in groups.items():
            args.extend((key, len(fields), *fields))
        gen, data = self._call("hmget", *args)
        values = [v for group in data for v in group] if gen is not None else [None] * points
        out = []
        for b, value in zip(buckets, values, strict=True):
            label = f"{b.hour_label}:00:00Z" if by == "hour" else f"{b.day_label}"
            out.append({"start": label, "count": int(value) if value else 0})
        return {
            "customer": customer,
            "type": event_type,
            "by": by,
            "generation": gen,
            "buckets": out,
            "total": sum(p["count"] for p in out),
        }

    def entity(self, customer: str, kind: str, entity_id: str) -> dict[str, Any] | None:
        """The latest state of one entity, or None."""
        self._customer(customer)
        if kind not in ENTITY_KINDS:
            raise QueryError(f"unknown entity kind {kind!r}; known: {', '.join(sorted(ENTITY_KINDS))}")
        self._free_text(entity_id, "entity id")
        gen, value = self._call("get", keys.entity_key(customer, kind, entity_id))
        if gen is None or value is None:
            return None
        return {"customer": customer, "kind": kind, "id": entity_id, "generation": gen, **entity_view(value)}

    def top(self, customer: str, measure: str, n: int = 10) -> dict[str, Any]:
        """The ``n`` largest members of a ranking (page_views, bookings, revenue.<CUR>)."""
        self._customer(customer)
        if MEASURE_PATTERN.fullmatch(measure) is None:
            raise QueryError(
                f"unknown measure {measure!r}; known: page_views, bookings, revenue.<ISO currency>"
            )
        if not 1 <= n <= MAX_TOP:
            raise QueryError(f"n must be 1..{MAX_TOP}")
        gen, data = self._call("top", keys.top_key(customer, measure), n)
        pairs, total = (data[0], data[1]) if gen is not None else ([], 0)
        members = [
            {"member": _text(pairs[i]), "score": int(float(pairs[i + 1]))} for i in range(0, len(pairs), 2)
        ]
        return {
            "customer": customer,
            "measure": measure,
            "generation": gen,
            "members": members,
            "total_members": int(total),
        }

    def calendar(
        self,
        customer: str,
        provider: str,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """A provider's appointments (not cancelled) by start time, ``start``..``end`` (default:
        from now, 14 days), each with its latest state."""
        self._customer(customer)
        self._free_text(provider, "provider id")
        if not 1 <= limit <= MAX_RANGE_ITEMS:
            raise QueryError(f"limit must be 1..{MAX_RANGE_ITEMS}")
        first = _utc(start) if start is not None else _utc(self.clock())
        last = _utc(end) if end is not None else first + timedelta(days=14)
        if first > last:
            raise QueryError("from is after to")
        kind = ENTITY_MODELS["appointment_booked"].kind
        gen, data = self._call(
            "range",
            keys.index_key(customer, CALENDAR, provider),
            epoch_seconds(first),
            epoch_seconds(last),
            0,
            limit,
            keys.entity_key(customer, kind, ""),
        )
        hits, values = (data[0], data[1]) if gen is not None else ([], [])
        items = []
        for i in range(0, len(hits), 2):
            value = values[i // 2]
            item: dict[str, Any] = {
                "appointment_id": _text(hits[i]),
                "starts_at": _iso(datetime.fromtimestamp(int(float(hits[i + 1])), UTC)),
            }
            if value is not None:
                item.update(entity_view(value))
            items.append(item)
        return {
            "customer": customer,
            "provider": provider,
            "from": _iso(first),
            "to": _iso(last),
            "generation": gen,
            "appointments": items,
        }


def describe_origin(origin: str | None) -> dict[str, str] | None:
    """``live:<epoch>`` (the projector started the generation: it holds only what it applied
    since, e.g. after Redis lost everything) or ``rebuild:<epoch>`` (rebuilt from the archive)."""
    if origin is None:
        return None
    kind, _, stamp = origin.partition(":")
    since = _iso(datetime.fromtimestamp(int(stamp), UTC)) if stamp.isdigit() else stamp
    return {"kind": kind, "since": since}


def entity_view(value: bytes) -> dict[str, Any]:
    """The public shape of a stored entity value."""
    state, _index = parse_entity(value)
    occurred_at, event_id = parse_version(state.version)
    first_seen, _ = parse_version(state.first_seen + "0" * 32)
    event_type, _, version = state.type_tag.rpartition("/")
    return {
        "type": event_type,
        "schema_version": int(version),
        "event_id": event_id,
        "occurred_at": _iso(occurred_at),
        "first_seen": _iso(first_seen),
        "events": state.events,
        "state": orjson.loads(state.state),
    }


def reader_for(
    clients: ClientFactory, settings: Settings, registry: Registry | None = None
) -> ReadModelReader:
    """The reader of this deployment's namespace (``rm:<stream>:``)."""
    types = (registry or load_registry()).type_names()
    return ReadModelReader(clients.redis(), keys.Namespace.for_stream(settings.resources.stream), types)
