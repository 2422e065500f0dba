"""CQRS read models, defined next to the event schemas they are folded from.

Three families (docs/projector.md):

* **counts** — per customer and event type, events per hour and per day (UTC, of ``occurred_at``);
* **entities** — per entity (a user, an order, an appointment) the latest state, i.e. the payload
  of its event with the highest *version* ``(occurred_at, event_id)``, plus two commutative folds:
  when it was first seen and how many distinct events it has had. An entity model may also
  maintain an **index** over the latest states, e.g. a provider's calendar (appointments by start
  time, cancelled ones dropped);
* **top** — per customer, a sorted set of a measure: page views per path, paid revenue per user
  (one ranking per currency), bookings per provider.

:func:`project` says what one valid event contributes; it is pure and is the only place event
semantics live. Both the Redis fast path (workers/projector, Lua) and the reference fold
(:func:`workers.projector.fold.fold`) are built on it, so they can only differ in *how* they
apply contributions (gating duplicates, comparing versions), which is what the tests check.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple
from urllib.parse import urlsplit

import msgspec

from schemas.event import Event

#: Hourly counts are kept this long after their day ends; daily counts after their month ends.
HOURLY_RETENTION: Final = timedelta(days=35)
DAILY_RETENTION: Final = timedelta(days=400)
#: Entity states and index entries expire this long after they were last touched.
ENTITY_RETENTION: Final = timedelta(days=30)

#: Versions are fixed-width strings whose byte order is the order of (occurred_at, event_id):
#: 18 decimal digits of microseconds since 0001-01-01T00:00Z, then the 32 hex digits of the
#: event id. Digits and lowercase hex only, so Lua's (locale-collated) ``<`` agrees with bytes.
VERSION_LENGTH: Final = 50
_YEAR1: Final = datetime(1, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)
_US_PER_HOUR: Final = 3_600_000_000
_EPOCH_US: Final = (datetime(1970, 1, 1, tzinfo=UTC) - _YEAR1) // _US


@dataclass(frozen=True, slots=True)
class IndexModel:
    """A secondary index over an entity model's latest states: entity ``owner_field`` → entity id,
    scored by ``score_field`` (a timestamp, as epoch seconds). An entity whose latest state has
    ``drop_field`` in ``drop_values`` is in no index."""

    name: str
    owner_field: str
    score_field: str
    drop_field: str
    drop_values: frozenset[str]


@dataclass(frozen=True, slots=True)
class EntityModel:
    kind: str
    event_type: str
    id_field: str
    index: IndexModel | None = None


Contribution = tuple[str, str, int]  # (measure, member, amount)


@dataclass(frozen=True, slots=True)
class TopModel:
    """``contribution(event)`` is ``(measure, member, amount)``: ``member`` gains ``amount`` in the
    ranking ``measure``; None when the event does not count (e.g. an order not being paid)."""

    name: str
    event_type: str
    doc: str
    contribution: Callable[[Event], Contribution | None]


_PATHS: dict[str, str] = {}


def _page_path(url: str) -> str:
    """The path of a URL (no query, no fragment), "/" for an empty one; memoised, since a site
    has far fewer pages than views."""
    path = _PATHS.get(url)
    if path is None:
        try:
            path = urlsplit(url).path or "/"
        except ValueError:
            path = url[:256]
        if len(_PATHS) > 65536:
            _PATHS.clear()
        _PATHS[url] = path
    return path


def _page_views(ev: Event) -> Contribution:
    return ("page_views", _page_path(ev.payload.url), 1)  # type: ignore[attr-defined]


_CURRENCY: Final = re.compile(r"[A-Z]{3}")
#: A ranking score is a double in Redis (ZINCRBY): amounts are clamped to what it holds exactly,
#: so int64 edges (total - discount can leave int64) never reach the msgpack encoder or Lua.
MAX_AMOUNT: Final = 2**53


def _revenue(ev: Event) -> Contribution | None:
    p: Any = ev.payload
    if p.status != "paid":  # each order is paid once; placed/shipped/cancelled do not move money
        return None
    currency = p.currency if _CURRENCY.fullmatch(p.currency) else "XXX"  # ISO 4217 "no currency"
    discount: int = getattr(p, "discount_cents", None) or 0
    amount = int(p.total_cents) - discount
    return (f"revenue.{currency}", p.user_id, min(max(amount, -MAX_AMOUNT), MAX_AMOUNT))


def _bookings(ev: Event) -> Contribution | None:
    p: Any = ev.payload
    return ("bookings", p.provider_id, 1) if p.status == "booked" else None


ENTITY_MODELS: Final[Mapping[str, EntityModel]] = {
    "page_view": EntityModel("user", "page_view", "user_id"),
    "order_placed": EntityModel("order", "order_placed", "order_id"),
    "appointment_booked": EntityModel(
        "appointment",
        "appointment_booked",
        "appointment_id",
        IndexModel("calendar", "provider_id", "starts_at", "status", frozenset({"cancelled"})),
    ),
}
ENTITY_KINDS: Final = frozenset(m.kind for m in ENTITY_MODELS.values())
INDEX_NAMES: Final = frozenset(m.index.name for m in ENTITY_MODELS.values() if m.index is not None)

TOP_MODELS: Final[Mapping[str, TopModel]] = {
    "page_view": TopModel("page_views", "page_view", "page views per URL path", _page_views),
    "order_placed": TopModel(
        "revenue",
        "order_placed",
        "paid revenue per user in minor units, net of discounts, one ranking per currency (revenue.EUR…)",
        _revenue,
    ),
    "appointment_booked": TopModel("bookings", "appointment_booked", "new bookings per provider", _bookings),
}
#: Measure names a query may ask for: the plain ones and ``revenue.<ISO 4217 code>``.
MEASURE_PATTERN: Final = re.compile(r"page_views|bookings|revenue\.[A-Z]{3}")


class Projection(NamedTuple):
    """Everything one valid event contributes to the read models (a tuple: one is built per
    event on the projector's hot path)."""

    customer_id: str
    event_type: str
    event_id: str
    micros: int  # occurred_at as µs since 0001-01-01 UTC
    version: str  # VERSION_LENGTH chars, ordered like (occurred_at, event_id)
    kind: str  # entity kind
    entity_id: str
    type_tag: str  # "<type>/<schema version>" of the event that wrote the state
    state: bytes  # the payload as JSON: the entity's latest state when this event wins
    indexed: tuple[str, str, int] | None  # (index name, owner, score) of this state, None = not indexed
    top: tuple[str, str, int] | None  # (measure, member, amount)

    @property
    def hour(self) -> int:
        """Hours since 0001-01-01 UTC: the hourly count bucket."""
        return self.micros // _US_PER_HOUR


def micros_of(ts: datetime) -> int:
    """µs since 0001-01-01 UTC of an aware datetime (exact, unlike ``timestamp()``)."""
    return (ts - _YEAR1) // _US


def version_of(micros: int, event_id: str) -> str:
    return f"{micros:018d}{event_id.replace('-', '')}"


def parse_version(version: str) -> tuple[datetime, str]:
    """``(occurred_at, event_id)`` back from a version string."""
    if len(version) != VERSION_LENGTH:
        raise ValueError(f"not a read-model version: {version!r}")
    h = version[18:]
    return _YEAR1 + int(version[:18]) * _US, f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def epoch_seconds(ts: datetime) -> int:
    return (micros_of(ts) - _EPOCH_US) // 1_000_000


_STATE_ENCODER: Final = msgspec.json.Encoder(decimal_format="string")
#: ``tuple.__new__``: builds a Projection without NamedTuple's Python-level ``__new__`` (one
#: Projection per event on the projector's hot path).
_NEW_PROJECTION: Final = tuple.__new__


_Spec = tuple[EntityModel, "TopModel | None", str]
_SPECS: dict[tuple[str, int], _Spec | None] = {}


def _spec(etype: str, version: int) -> _Spec | None:
    entity = ENTITY_MODELS.get(etype)
    spec = None if entity is None else (entity, TOP_MODELS.get(etype), f"{etype}/{version}")
    _SPECS[(etype, version)] = spec
    return spec


def project(ev: Event) -> Projection | None:
    """What ``ev`` contributes; None for an event type no read model follows."""
    key = (ev.type, ev.version)
    spec = _SPECS[key] if key in _SPECS else _spec(*key)
    if spec is None:
        return None
    entity, model, tag = spec
    payload: Any = ev.payload
    micros = (ev.occurred_at - _YEAR1) // _US
    index = None
    ix = entity.index
    if ix is not None and getattr(payload, ix.drop_field) not in ix.drop_values:
        owner = str(getattr(payload, ix.owner_field))
        index = (ix.name, owner, epoch_seconds(getattr(payload, ix.score_field)))
    top = None if model is None else model.contribution(ev)
    event_id = ev.event_id
    return _NEW_PROJECTION(
        Projection,
        (
            ev.customer_id,
            ev.type,
            event_id,
            micros,
            f"{micros:018d}{event_id.replace('-', '')}",
            entity.kind,
            str(getattr(payload, entity.id_field)),
            tag,
            _STATE_ENCODER.encode(payload),
            index,
            top,
        ),
    )


# -- count buckets ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HourBucket:
    """Names and lifetimes of the count buckets one hour falls into."""

    hour_label: str  # "2024-05-01T13"
    day_label: str  # "2024-05-01"
    day: str  # "20240501": key of the hourly-count hash
    hh: str  # "13": field suffix in it
    month: str  # "202405": key of the daily-count hash
    dd: str  # "01"
    hourly_expires: int  # epoch seconds at which the day's hourly counts go
    daily_expires: int  # epoch seconds at which the month's daily counts go


def hour_bucket(hour: int) -> HourBucket:
    start = _YEAR1 + timedelta(hours=hour)
    day_end = (start + timedelta(days=1)).replace(hour=0)
    month_end = (start.replace(day=28) + timedelta(days=4)).replace(day=1, hour=0)
    return HourBucket(
        hour_label=f"{start:%Y-%m-%dT%H}",
        day_label=f"{start:%Y-%m-%d}",
        day=f"{start:%Y%m%d}",
        hh=f"{start:%H}",
        month=f"{start:%Y%m}",
        dd=f"{start:%d}",
        hourly_expires=epoch_seconds(day_end + HOURLY_RETENTION),
        daily_expires=epoch_seconds(month_end + DAILY_RETENTION),
    )


def hour_of(ts: datetime) -> int:
    return micros_of(ts) // _US_PER_HOUR
