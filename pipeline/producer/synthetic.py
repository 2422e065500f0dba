"""Seeded, reproducible synthetic load: realistic events, producer retries and invalid records.

Everything random comes from one ``random.Random(seed)``, so the same config and the same clock
give the same bytes. Entities repeat the way they do in real traffic — a customer's users view
pages again and again, orders move placed → paid → shipped (or cancelled), appointments in a
provider's calendar are booked, rescheduled and cancelled — so read models have state to keep.

The partition key is ``customer_id:entity_id`` (user, order or provider), so one entity's events
stay in order on one shard while a large customer still spreads over shards.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final

import orjson

from pipeline.core.errors import ConfigError

_DUMPS_OPTS: Final = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC
#: How far back a duplicate (producer retry) may reach, in emitted valid records.
_RETRY_WINDOW: Final = 512
#: Random version-4 UUIDs (RFC 4122 variant) from the seeded generator.
_UUID_MASK: Final = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_V4: Final = (0x4000 << 64) | (0x8000 << 48)
_OPEN_LIMIT: Final = 64  # open orders / appointments kept per customer
_USERS_PER_CUSTOMER: Final = 500
_PROVIDERS_PER_CUSTOMER: Final = 12
_DEFAULT_MAX_EVENT_BYTES: Final = 256 * 1024

_PATHS: Final = (
    "/", "/pricing", "/blog/how-we-ship", "/products/sku-1001", "/products/sku-1002",
    "/products/sku-2040", "/cart", "/checkout", "/account/orders", "/help/returns",
    "/search?q=running+shoes", "/appointments/new",
)  # fmt: skip
#: (url, title) per page; titles are not all ASCII, like real ones.
_PAGES: Final = tuple(
    (f"https://shop.example.com{p}", f"Example shop — {p.strip('/').split('?')[0] or 'home'}") for p in _PATHS
)
_REFERRERS: Final = (
    None, None, "https://www.google.com/", "https://news.ycombinator.com/", "https://t.co/x1y2z3",
    "https://shop.example.com/",
)  # fmt: skip
_SKUS: Final = tuple(
    (f"sku-{n}", price) for n, price in ((1001, 1999), (1002, 4900), (2040, 12500), (3100, 350))
)
_CURRENCIES: Final = ("EUR", "EUR", "USD", "GBP")
_NOTES: Final = (None, None, None, "first visit", "follow-up, bring previous results", "prefers mornings")
_FEES: Final = ("45.00", "60.00", "80.50", "120.00")

#: Unsafe customer ids: path traversal, separators, SQL, empty, too long, not ASCII, upper case.
UNSAFE_CUSTOMER_IDS: Final = (
    "../../etc", "a/b", "x'; drop table t;--", "", "c" * 300, "cüstomer_1", "Cust_0001", "cust 1",
    "_cust", "cust_0001\n",
)  # fmt: skip


@dataclass(frozen=True)
class SyntheticConfig:
    """``customers`` share the load unevenly (a few large, many small, like real tenants)."""

    seed: int = 42
    customers: int = 20
    duplicate_ratio: float = 0.02
    invalid_ratio: float = 0.005
    #: The consumer's limit; "oversize" invalid records are generated just above it.
    max_event_bytes: int = _DEFAULT_MAX_EVENT_BYTES

    def __post_init__(self) -> None:
        if not 1 <= self.customers <= 99_999:
            raise ConfigError(f"customers must be 1..99999, got {self.customers}")
        for name in ("duplicate_ratio", "invalid_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {value}")
        if self.duplicate_ratio + self.invalid_ratio > 0.9:
            raise ConfigError("duplicate_ratio + invalid_ratio must leave room for valid events (<= 0.9)")
        if self.max_event_bytes < 1024:
            raise ConfigError(f"max_event_bytes must be at least 1024, got {self.max_event_bytes}")


@dataclass(frozen=True, slots=True)
class SyntheticRecord:
    """One record to put on the stream and what the consumer should make of it.

    ``event_id``/``customer_id`` are None when the record has none that a consumer could use
    (not a UUID, unsafe customer id, unparseable bytes). ``invalid_reason`` is the
    :data:`schemas.REASONS` code the registry must give it.
    """

    data: bytes
    partition_key: str
    event_id: str | None
    customer_id: str | None
    valid: bool
    is_duplicate: bool
    invalid_reason: str | None


_NEW = object.__new__
_SET_DATA, _SET_KEY, _SET_ID, _SET_CUSTOMER, _SET_VALID, _SET_DUP, _SET_REASON = (
    getattr(SyntheticRecord, name).__set__
    for name in (
        "data",
        "partition_key",
        "event_id",
        "customer_id",
        "valid",
        "is_duplicate",
        "invalid_reason",
    )
)


def _record(
    data: bytes,
    key: str,
    event_id: str | None,
    customer_id: str | None,
    valid: bool,
    dup: bool,
    reason: str | None,
) -> SyntheticRecord:
    """``SyntheticRecord(...)`` at about half the cost: a frozen dataclass's ``__init__`` goes
    through ``object.__setattr__`` per field (~0.6 µs a record); the slot descriptors do not."""
    record: SyntheticRecord = _NEW(SyntheticRecord)
    _SET_DATA(record, data)
    _SET_KEY(record, key)
    _SET_ID(record, event_id)
    _SET_CUSTOMER(record, customer_id)
    _SET_VALID(record, valid)
    _SET_DUP(record, dup)
    _SET_REASON(record, reason)
    return record


def generate(
    config: SyntheticConfig, count: int, *, now: Callable[[], datetime] | None = None
) -> Iterator[SyntheticRecord]:
    """``count`` records, duplicates and invalid ones included. ``occurred_at`` is ``now()``
    (wall clock by default, so end-to-end latency can be measured)."""
    if count < 0:
        raise ConfigError(f"count must be >= 0, got {count}")
    return _Generator(config, now or partial(datetime.now, UTC)).run(count)


class _Customer:
    __slots__ = ("appointments", "id", "next_appointment", "next_order", "orders")

    def __init__(self, customer_id: str) -> None:
        self.id = customer_id
        self.orders: list[dict[str, Any]] = []  # open orders: payload dicts, mutated as they advance
        self.appointments: list[dict[str, Any]] = []
        self.next_order = 1
        self.next_appointment = 1


class _Generator:
    def __init__(self, config: SyntheticConfig, now: Callable[[], datetime]) -> None:
        self.config = config
        self.now = now
        self.rng = random.Random(config.seed)
        width = max(4, len(str(config.customers)))  # cust_0001…: the ids of up to 9,999 customers stay
        self.customers = [_Customer(f"cust_{n:0{width}d}") for n in range(1, config.customers + 1)]
        # Zipf-like tenant sizes, sampled once into a power-of-two table (>= 16 slots per
        # customer): picking a customer is then one getrandbits.
        weights = [1.0 / (rank + 1) for rank in range(config.customers)]
        self.customer_bits = max(10, (16 * config.customers).bit_length())
        self.customer_table = self.rng.choices(self.customers, weights=weights, k=1 << self.customer_bits)
        self.recent: list[SyntheticRecord] = []  # ring of recent valid records, for retries
        self.recent_pos = 0
        self.invalid_makers = _invalid_makers()
        self.rng.shuffle(self.invalid_makers)
        self.invalid_next = 0
        self.oversize_filler = b"x" * config.max_event_bytes
        self.customer_ids = frozenset(c.id for c in self.customers)

    def run(self, count: int) -> Iterator[SyntheticRecord]:
        rand = self.rng.random
        dup_ratio = self.config.duplicate_ratio
        bad_ratio = dup_ratio + self.config.invalid_ratio
        for _ in range(count):
            roll = rand()
            if roll < dup_ratio and self.recent:
                yield self._duplicate()
            elif dup_ratio <= roll < bad_ratio:
                yield self._invalid()
            else:
                record = self._valid()
                self._remember(record)
                yield record

    # -- valid events ---------------------------------------------------------------------------

    def _uuid(self) -> str:
        h = f"{self.rng.getrandbits(128) & _UUID_MASK | _UUID_V4:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def _valid(self) -> SyntheticRecord:
        customer = self.customer_table[self.rng.getrandbits(self.customer_bits)]
        event_id = self._uuid()
        occurred_at = self.now()
        roll = self.rng.random()
        if roll < 0.7:
            type_name, version, entity, payload = self._page_view(customer)
        elif roll < 0.9:
            type_name, version, entity, payload = self._order(customer, occurred_at)
        else:
            type_name, version, entity, payload = self._appointment(customer, occurred_at)
        data = orjson.dumps(
            {
                "event_id": event_id,
                "customer_id": customer.id,
                "type": type_name,
                "version": version,
                "occurred_at": occurred_at,
                "payload": payload,
            },
            option=_DUMPS_OPTS,
        )
        return _record(data, f"{customer.id}:{entity}", event_id, customer.id, True, False, None)

    def _page_view(self, customer: _Customer) -> tuple[str, int, str, dict[str, Any]]:
        rng = self.rng
        user = f"user_{int(rng.random() * _USERS_PER_CUSTOMER):05d}"
        url, title = _PAGES[int(rng.random() * len(_PAGES))]
        payload: dict[str, Any] = {
            "user_id": user,
            "url": url,
            "title": title,
            "duration_ms": 200 + int(rng.random() * 119_800),
            "scroll_depth": round(rng.random(), 3),
        }
        if rng.random() < 0.6:
            payload["referrer"] = _REFERRERS[int(rng.random() * len(_REFERRERS))]
            payload["session_id"] = f"sess_{user[5:]}_{int(rng.random() * 8)}"
            return "page_view", 2, user, payload
        return "page_view", 1, user, payload

    def _order(self, customer: _Customer, at: datetime) -> tuple[str, int, str, dict[str, Any]]:
        rng = self.rng
        open_orders = customer.orders
        if open_orders and (rng.random() < 0.55 or len(open_orders) >= _OPEN_LIMIT):
            index = int(rng.random() * len(open_orders))
            order = open_orders[index]
            status = order["status"]
            if status == "placed":
                order["status"] = "cancelled" if rng.random() < 0.1 else "paid"
            else:  # paid
                order["status"] = "shipped"
            if order["status"] in ("shipped", "cancelled"):
                open_orders[index] = open_orders[-1]
                open_orders.pop()
        else:
            lines: list[dict[str, Any]] = []
            total = quantity = 0
            for sku, price in rng.sample(_SKUS, 1 + int(rng.random() * 3)):
                qty = 1 + int(rng.random() * 3)
                lines.append({"sku": sku, "qty": qty, "price_cents": price})
                total += qty * price
                quantity += qty
            order = {
                "order_id": f"ord_{customer.next_order:08d}",
                "user_id": f"user_{int(rng.random() * _USERS_PER_CUSTOMER):05d}",
                "status": "placed",
                "currency": _CURRENCIES[int(rng.random() * len(_CURRENCIES))],
                "total_cents": total,
                "item_count": quantity,
                "items": lines,
                "placed_at": at,
            }
            customer.next_order += 1
            open_orders.append(order)
        if rng.random() < 0.3:
            payload = dict(order, coupon_code="SPRING10", discount_cents=order["total_cents"] // 10)
            return "order_placed", 2, order["order_id"], payload
        return "order_placed", 1, order["order_id"], dict(order)

    def _appointment(self, customer: _Customer, at: datetime) -> tuple[str, int, str, dict[str, Any]]:
        rng = self.rng
        booked = customer.appointments
        if booked and (rng.random() < 0.4 or len(booked) >= _OPEN_LIMIT):
            index = int(rng.random() * len(booked))
            appt = booked[index]
            if rng.random() < 0.5:
                appt["status"] = "rescheduled"
                appt["starts_at"] = appt["starts_at"] + timedelta(days=1 + int(rng.random() * 7))
            else:
                appt["status"] = "cancelled"
                booked[index] = booked[-1]
                booked.pop()
        else:
            day = at.replace(minute=0, second=0, microsecond=0) + timedelta(days=1 + int(rng.random() * 14))
            appt = {
                "appointment_id": f"appt_{customer.next_appointment:07d}",
                "provider_id": f"prov_{int(rng.random() * _PROVIDERS_PER_CUSTOMER):03d}",
                "patient_id": f"pat_{int(rng.random() * 2000):05d}",
                "starts_at": day.replace(hour=8 + int(rng.random() * 9)),
                "duration_minutes": (15, 30, 30, 45, 60)[int(rng.random() * 5)],
                "status": "booked",
                "telehealth": rng.random() < 0.3,
                "fee": _FEES[int(rng.random() * len(_FEES))],
                "notes": _NOTES[int(rng.random() * len(_NOTES))],
            }
            customer.next_appointment += 1
            booked.append(appt)
        return "appointment_booked", 1, appt["provider_id"], dict(appt)

    # -- duplicates (producer retries) ----------------------------------------------------------

    def _remember(self, record: SyntheticRecord) -> None:
        if len(self.recent) < _RETRY_WINDOW:
            self.recent.append(record)
        else:
            self.recent[self.recent_pos] = record
            self.recent_pos = (self.recent_pos + 1) % _RETRY_WINDOW

    def _duplicate(self) -> SyntheticRecord:
        # Mostly very recent (a retry after a timeout), sometimes further back.
        n = len(self.recent)
        back = min(n - 1, int(self.rng.expovariate(1 / 16)))
        original = (
            self.recent[(self.recent_pos - 1 - back) % n] if n == _RETRY_WINDOW else self.recent[n - 1 - back]
        )
        return _record(
            original.data, original.partition_key, original.event_id, original.customer_id, True, True, None
        )

    # -- invalid records ------------------------------------------------------------------------

    def _invalid(self) -> SyntheticRecord:
        maker = self.invalid_makers[self.invalid_next]
        self.invalid_next = (self.invalid_next + 1) % len(self.invalid_makers)
        return maker(self)

    def _base_event(self, customer: _Customer | None = None) -> tuple[_Customer, dict[str, Any]]:
        customer = customer or self.customer_table[self.rng.getrandbits(self.customer_bits)]
        user = f"user_{int(self.rng.random() * _USERS_PER_CUSTOMER):05d}"
        event = {
            "event_id": self._uuid(),
            "customer_id": customer.id,
            "type": "page_view",
            "version": 1,
            "occurred_at": self.now(),
            "payload": {"user_id": user, "url": "https://shop.example.com/"},
        }
        return customer, event

    def _bad(self, event: dict[str, Any], reason: str, *, data: bytes | None = None) -> SyntheticRecord:
        """An invalid record from a (mutated) event dict. Its customer id and event id are
        reported only where a consumer could use them; the partition key keeps a known
        customer's bad records with its traffic and spreads the rest."""
        customer = event.get("customer_id")
        safe_customer = customer if customer in self.customer_ids else None
        event_id = event.get("event_id") if reason != "bad_event_id" else None
        raw = data if data is not None else orjson.dumps(event, option=_DUMPS_OPTS)
        if safe_customer is not None:
            key = f"{safe_customer}:{event['payload'].get('user_id', 'invalid')}"
        else:
            key = f"invalid:{self.rng.getrandbits(32):08x}"
        return SyntheticRecord(raw, key, event_id, safe_customer, False, False, reason)


_Maker = Callable[[_Generator], SyntheticRecord]


def _invalid_makers() -> list[_Maker]:
    """One maker per kind of defect; every :data:`schemas.REASONS` code is covered."""

    def not_utf8(g: _Generator) -> SyntheticRecord:
        _, event = g._base_event()
        event["payload"]["title"] = "@@TITLE@@"
        data = orjson.dumps(event, option=_DUMPS_OPTS).replace(b"@@TITLE@@", b"caf\xe9 \xff\xfe")
        return g._bad(event, "not_utf8", data=data)

    def oversize(g: _Generator) -> SyntheticRecord:
        _, event = g._base_event()
        event["payload"]["title"] = "@@TITLE@@"
        data = orjson.dumps(event, option=_DUMPS_OPTS).replace(b"@@TITLE@@", g.oversize_filler)
        return g._bad(event, "oversize", data=data)

    def truncated_json(g: _Generator) -> SyntheticRecord:
        _, event = g._base_event()
        data = orjson.dumps(event, option=_DUMPS_OPTS)
        return g._bad(event, "bad_json", data=data[: len(data) // 2])

    def not_json(g: _Generator) -> SyntheticRecord:
        _, event = g._base_event()
        return g._bad(event, "bad_json", data=b"event_id=42&type=page_view")

    def too_deep(g: _Generator) -> SyntheticRecord:
        _, event = g._base_event()
        event["payload"]["title"] = "@@TITLE@@"
        deep = b"[" * 3000 + b"]" * 3000  # an unknown field: msgspec would recurse into it
        data = orjson.dumps(event, option=_DUMPS_OPTS).replace(b'"title":"@@TITLE@@"', b'"zz":' + deep)
        return g._bad(event, "too_deep", data=data)

    return [
        not_utf8, oversize, truncated_json, not_json,
        _without("missing_field", "occurred_at"),
        _without("missing_field", "user_id", in_payload=True),
        _setting("wrong_type", "version", "1"),
        _setting("wrong_type", "duration_ms", "1200ms", in_payload=True),
        _setting("bad_event_id", "event_id", "not-a-uuid", "1234", "0190f0e2-8c2b-7a6b-9c3d-1234567890zz"),
        _setting("bad_timestamp", "occurred_at", "yesterday", "2024-13-45T00:00:00Z", "2024-05-01T12:00:00"),
        _setting("unsafe_customer_id", "customer_id", *UNSAFE_CUSTOMER_IDS),
        _setting("unknown_type", "type", "page_vew"),
        _setting("unknown_version", "version", 99),
        too_deep,
    ]  # fmt: skip


def _without(reason: str, name: str, *, in_payload: bool = False) -> _Maker:
    """A maker that drops one field of the envelope (or of the payload)."""

    def maker(g: _Generator) -> SyntheticRecord:
        _, event = g._base_event()
        del (event["payload"] if in_payload else event)[name]
        return g._bad(event, reason)

    return maker


def _setting(reason: str, name: str, *values: Any, in_payload: bool = False) -> _Maker:
    """A maker that gives one field a bad value (picked at random when there are several)."""

    def maker(g: _Generator) -> SyntheticRecord:
        _, event = g._base_event()
        value = values[0] if len(values) == 1 else values[int(g.rng.random() * len(values))]
        (event["payload"] if in_payload else event)[name] = value
        return g._bad(event, reason)

    return maker
