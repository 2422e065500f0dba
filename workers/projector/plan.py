"""Batch → apply messages for ``apply.lua`` (pure: no I/O, the clock passed in).

A message is two script arguments: a msgpack array the script unpacks with cmsgpack in C,

``[header, events, effects, entities]``

and the gate records, raw (Redis' cmsgpack has no binary type, so bytes travel apart):

* ``header``: ``[namespace, target generation ("" = live), shard, last sequence, window, ids
  per gate key, base slots, fanout, max level, entity ttl, old layout (0/1), its ids per hash,
  base slots, fanout, max level]``
* gate: 24 bytes per event (second bucket | slot hash | identity of (customer_id, event_id)):
  ``DedupeLayout.pack`` with one-second buckets. The script files each identity under the
  *processing* window it is applied in (:class:`GateConfig`), so it reads only the slot hash and
  the identity; the second of ``occurred_at`` locates the event in the old layout (one bucket per
  second of event time), which the script consults read-only until ``Planner.legacy_until``
  (docs/projector.md, "Upgrading to the identity-only gate");
* ``events``: 5 integers per event: hourly-count effect, daily-count effect, top effect (effect
  indexes, 0 = none), top amount, entity index;
* ``effects``: 4 values per distinct increment target: op (1 HINCRBY, 2 ZINCRBY), key, field or
  member, EXPIREAT (0 = none);
* ``entities``: 7 values per distinct entity: key, version, first seen, tail, index key ("" = in
  no index), index score, entity id. The tail is the stored value after its fixed-width counters
  (``len(type tag) len(index key) type-tag index-key state``), so the script stores it as it is.
  Only the highest version of the chunk is sent (a max is a max); the script compares it with the
  stored one.

Increments are sent per event and summed in Lua *after* the applied-set gate decided which events
are new; the entity's event count is summed the same way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import msgspec

from pipeline.consumer.processor import Record
from schemas import Event, InvalidEvent, Registry
from schemas.read_models import HourBucket, Projection, hour_bucket, project
from workers.idset.identity import IDENTITIES
from workers.idset.layout import BUCKET, DedupeLayout
from workers.projector import keys
from workers.tenancy.admission import Admission

#: Events per script call: a whole GetRecords batch (at most 10,000 records), so one batch is one
#: round trip. Bigger calls coalesce more: an entity touched twice in a call is read and written
#: once (0.61 entity writes per event at 10,000 against 0.76 at 4,096 on the benchmark's load),
#: at the price of holding Redis longer per call (≈ 60 ms for 10,000 events, see docs/projector.md).
DEFAULT_CHUNK_EVENTS: Final = 10_000
HINCRBY: Final = 1
ZINCRBY: Final = 2
_ENCODER: Final = msgspec.msgpack.Encoder()
_U32: Final = 0xFFFFFFFF
_US_PER_HOUR: Final = 3_600_000_000
#: µs from 0001-01-01 to 1970-01-01 (Projection.micros counts from year 1).
_EPOCH_US: Final = 62_135_596_800_000_000


@dataclass(frozen=True, slots=True)
class GateConfig:
    """The applied-event set: the batcher's self-sizing layout of strings of 16-byte ids
    (workers/batcher/dedupe.py) keyed by the identity of (customer_id, event_id) alone, so a
    copy whose ``occurred_at`` was re-stamped is found like any other (the warehouse's merge
    dedupes the same pair; a set bucketed by event time could not find it).

    Buckets are *processing* windows: ``now // window_seconds`` on the server's clock. An event
    is looked up in the current window's set and the previous one's and filed in the current one;
    a window's keys expire when the window after it ends, so every event is remembered for at
    least one window after it was applied and at most two windows of ids are held. 4,096 keys
    at level 0 (≈ 516,000 ids) and a fanout of 16 (8.8 M ids by level 1, 140 M by level 2, 2.2 G
    by level 3) keep a walk to one or two levels up to ten million events a window. A key holds
    126 ids: 2,016 bytes, rewritten at its exact size when full (jemalloc's 2 KiB class).
    ``old_ids_per_hash``: what the old layout's hashes held on this server (its listpack limit
    less the count field)."""

    window_seconds: int = 24 * 3600
    ids_per_key: int = 126
    old_ids_per_hash: int = 126
    base_bits: int = 12
    level_bits: int = 4
    max_level: int = 3

    def __post_init__(self) -> None:
        # apply.lua groups ids by window * slots + slot in a double: exact below 2^53 only, so
        # at most 2^24 slots and windows of a minute or more (window numbers < 2^27 to 2225).
        if self.base_bits + self.level_bits * self.max_level > 24:
            raise ValueError("gate: at most 2**24 slots per level (base_bits + level_bits * max_level <= 24)")
        if self.window_seconds < 60:
            raise ValueError(f"gate: a window of at least 60 s, not {self.window_seconds}")

    def layout(self, prefix: str = keys.GATE_BY_WINDOW) -> DedupeLayout:
        """The layout of one window's set; its bucket is the window number (``now // window``)."""
        return DedupeLayout(
            prefix=prefix,
            window_seconds=self.window_seconds,
            bucket_seconds=self.window_seconds,
            ids_per_key=self.ids_per_key,
            base_bits=self.base_bits,
            level_bits=self.level_bits,
            max_level=self.max_level,
        )

    def old_layout(self, prefix: str = keys.GATE) -> DedupeLayout:
        """How versions before 2026-12-08 filed ids: one bucket per second of ``occurred_at``, 16
        slots at level 0, fanout 4 (consulted read-only while an upgrade's window lasts)."""
        return DedupeLayout(
            prefix=prefix,
            window_seconds=self.window_seconds,
            bucket_seconds=1,
            ids_per_key=self.old_ids_per_hash,
            base_bits=OLD_BASE_BITS,
            level_bits=OLD_LEVEL_BITS,
            max_level=OLD_MAX_LEVEL,
        )


#: The layout before the identity-only gate (GateConfig.old_layout).
OLD_BASE_BITS: Final = 4
OLD_LEVEL_BITS: Final = 2
OLD_MAX_LEVEL: Final = 6


class Message(NamedTuple):
    """The two arguments of one ``apply.lua`` call."""

    body: bytes
    gate: bytes


@dataclass
class Chunk:
    """A message under construction; :meth:`encode` gives the bytes for the script."""

    gate: list[bytes] = field(default_factory=list)
    events: list[int] = field(default_factory=list)
    effects: dict[tuple[int, str, str], int] = field(default_factory=dict)
    effect_args: list[Any] = field(default_factory=list)
    entities: dict[str, int] = field(default_factory=dict)
    entity_args: list[Any] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.gate)

    def effect(self, op: int, key: str, member: str, expires: int) -> int:
        ident = (op, key, member)
        index = self.effects.get(ident)
        if index is None:
            index = self.effects[ident] = len(self.effects) + 1
            self.effect_args.extend((op, key, member, expires))
        return index

    def counts(self, customer: str, etype: str, b: HourBucket, now: int) -> tuple[int, int]:
        """The hourly and daily count effects of one (customer, type, hour); 0 = past retention."""
        h = d = 0
        if b.hourly_expires > now:
            h = self.effect(HINCRBY, keys.hourly_key(customer, b.day), f"{etype}:{b.hh}", b.hourly_expires)
        if b.daily_expires > now:
            d = self.effect(HINCRBY, keys.daily_key(customer, b.month), f"{etype}:{b.dd}", b.daily_expires)
        return h, d

    def entity(self, p: Projection) -> int:
        """The entity's index in this chunk; its entry keeps the highest version and the lowest
        first-seen of the chunk's events."""
        key = keys.entity_key(p.customer_id, p.kind, p.entity_id)
        index = self.entities.get(key)
        version = p.version
        if index is None:
            index = self.entities[key] = len(self.entities) + 1
            self.entity_args.extend((key, version, version[:18], *_state_args(p), p.entity_id))
            return index
        o = (index - 1) * 7
        args = self.entity_args
        if version > args[o + 1]:
            args[o + 1] = version
            args[o + 3 : o + 6] = _state_args(p)
        if version[:18] < args[o + 2]:
            args[o + 2] = version[:18]
        return index

    def encode(self, header: Sequence[Any]) -> Message:
        return Message(
            _ENCODER.encode([header, self.events, self.effect_args, self.entity_args]),
            b"".join(self.gate),
        )


def _state_args(p: Projection) -> tuple[msgspec.Raw, str, int]:
    """``(tail, index key, index score)`` of the state ``p`` writes."""
    ix = p.indexed
    if ix is None:
        return _tail(p.type_tag, "", p.state), "", 0
    index = keys.index_key(p.customer_id, ix[0], ix[1])
    return _tail(p.type_tag, index, p.state), index, ix[2]


def _tail(tag: str, index: str, state: bytes) -> msgspec.Raw:
    """The entity value after version, first-seen and count (layout in apply.lua), which the
    script stores as it is: ``len(tag)(3) len(index key)(5) tag index-key state``. It goes into
    the message as a pre-encoded msgpack string, so the state JSON is never decoded to ``str``."""
    prefix = _PREFIXES.get((tag, index)) or _prefix(tag, index)
    size = len(prefix) + len(state)
    if size < 256:
        head = b"\xd9" + size.to_bytes(1, "big")
    elif size < 65536:
        head = b"\xda" + size.to_bytes(2, "big")
    else:
        head = b"\xdb" + size.to_bytes(4, "big")
    return msgspec.Raw(b"".join((head, prefix, state)))


_PREFIXES: dict[tuple[str, str], bytes] = {}


def _prefix(tag: str, index: str) -> bytes:
    """``len(tag)(3) len(index key)(5) tag index key`` (memoised: few distinct pairs)."""
    t, x = tag.encode(), index.encode()
    if len(_PREFIXES) > 65536:
        _PREFIXES.clear()
    prefix = _PREFIXES[(tag, index)] = b"%03d%05d%s%s" % (len(t), len(x), t, x)
    return prefix


Emit = Callable[[Message], None]


@dataclass
class BatchPlan:
    """One batch of records, decoded and cut into apply messages."""

    messages: list[Message]
    records: int
    events: int  # distinct valid events sent to Redis
    in_batch_duplicates: int
    invalid: Counter[str]
    unprojected: int  # valid events of types no read model follows
    last_sequence: str | None
    last_sub_sequence: int | None


class Planner:
    """Decodes records and builds apply messages; one per processor (not thread-safe)."""

    def __init__(
        self,
        registry: Registry,
        namespace: keys.Namespace,
        gate: GateConfig,
        *,
        entity_ttl: int,
        chunk_events: int = DEFAULT_CHUNK_EVENTS,
        legacy_until: int = 0,
        admission: Admission | None = None,
    ) -> None:
        self.registry = registry
        self.admission = admission or Admission.everyone()
        self.namespace = namespace
        self.gate = gate
        self.layout = gate.layout()  # checks the parameters; plan_events inlines its pack()
        self.old_layout = gate.old_layout()  # what the script walks during an upgrade's window
        self.entity_ttl = entity_ttl
        self.chunk_events = chunk_events
        #: epoch seconds until which the script also consults the old gate layout
        self.legacy_until = legacy_until
        self._buckets: dict[int, HourBucket] = {}

    def header(self, target: str, shard_id: str, last_sequence: str, now: int) -> list[Any]:
        new, old = self.layout, self.old_layout
        return [
            self.namespace.prefix,
            target,
            shard_id,
            last_sequence,
            self.gate.window_seconds,
            new.ids_per_key,
            new.base_slots,
            new.fanout,
            new.max_level,
            self.entity_ttl,
            1 if now < self.legacy_until else 0,
            old.ids_per_key,
            old.base_slots,
            old.fanout,
            old.max_level,
        ]

    def plan_records(
        self, records: Sequence[Record], shard_id: str, now: int, *, emit: Emit | None = None
    ) -> BatchPlan:
        """Decode ``records`` (invalid ones are counted and skipped) and plan the valid ones."""
        decode = self.registry.decode
        admit = self.admission.check  # the batcher's decision: it dead-letters what is refused here
        invalid: Counter[str] = Counter()
        events: list[Event] = []
        for record in records:
            try:
                event = decode(record.binary_data)
            except InvalidEvent as exc:
                invalid[exc.reason] += 1
                continue
            refused = admit(event.customer_id, record.approximate_arrival_timestamp)
            if refused is None:
                events.append(event)
            else:
                invalid[refused[0]] += 1
        last = records[-1] if records else None
        plan = self.plan_events(
            events,
            now=now,
            target="",
            shard_id=shard_id,
            last_sequence=last.sequence_number if last is not None else "",
            emit=emit,
        )
        plan.records = len(records)
        plan.invalid = invalid
        plan.last_sequence = last.sequence_number if last is not None else None
        plan.last_sub_sequence = last.sub_sequence_number if last is not None else None
        return plan

    def plan_events(
        self,
        events: Iterable[Event],
        *,
        now: int,
        target: str,
        shard_id: str = "",
        last_sequence: str = "",
        emit: Emit | None = None,
    ) -> BatchPlan:
        """Messages for ``events`` (``now``: epoch seconds; count buckets past retention are left
        out). ``target`` "" writes the live generation(s), else exactly that generation.
        ``emit`` is handed each message as soon as it is encoded, so it can be applied while the
        next one is built."""
        header = self.header(target, shard_id, last_sequence, now)
        seen: set[tuple[str, str]] = set()
        messages: list[Message] = []
        chunk = Chunk()
        counts: dict[tuple[str, str, int], tuple[int, int]] = {}
        total = duplicates = unprojected = 0
        buckets = self._buckets
        bucket_pack, fromhex = BUCKET.pack, bytes.fromhex
        cache, prefix = IDENTITIES.cache, IDENTITIES.prefix
        chunk_events = self.chunk_events
        for ev in events:
            pair = (ev.customer_id, ev.event_id)
            if pair in seen:
                duplicates += 1
                continue
            seen.add(pair)
            p = project(ev)
            if p is None:
                unprojected += 1
                continue
            customer, etype, micros = p.customer_id, p.event_type, p.micros
            hour = micros // _US_PER_HOUR
            effects = counts.get((customer, etype, hour))
            if effects is None:
                b = buckets.get(hour)
                if b is None:
                    if len(buckets) > 4096:
                        buckets.clear()
                    b = buckets[hour] = hour_bucket(hour)
                effects = counts[(customer, etype, hour)] = chunk.counts(customer, etype, b, now)
            top = p.top
            if top is None:
                t = amount = 0
            else:
                measure, member, amount = top
                t = chunk.effect(ZINCRBY, keys.top_key(customer, measure), member, 0)
            raw = fromhex(p.version[18:])
            second = (micros - _EPOCH_US) // 1_000_000
            if not 0 <= second <= _U32:
                second = min(max(second, 0), _U32)
            h = (cache.get(customer) or prefix(customer)).copy()  # IDENTITIES(customer, raw), inlined
            h.update(raw)
            d = h.digest()
            chunk.gate.append(bucket_pack(second) + d[:4] + d)
            chunk.events.extend((effects[0], effects[1], t, amount, chunk.entity(p)))
            total += 1
            if len(chunk.gate) >= chunk_events:
                messages.append(message := chunk.encode(header))
                if emit is not None:
                    emit(message)
                chunk = Chunk()
                counts.clear()
        if chunk.gate:
            messages.append(message := chunk.encode(header))
            if emit is not None:
                emit(message)
        return BatchPlan(
            messages=messages,
            records=0,
            events=total,
            in_batch_duplicates=duplicates,
            invalid=Counter(),
            unprojected=unprojected,
            last_sequence=None,
            last_sub_sequence=None,
        )
