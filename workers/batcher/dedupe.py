"""(customer_id, event_id) dedupe in Redis at 16-26 bytes per remembered id (a plain key per id: 133).

Layout (pure, below) — each event lives as its 16-byte identity (BLAKE2b-128 of customer and
event id, workers/idset/identity.py) packed into plain string values:

    <prefix><hour>:<level>:<slot>      prefix = "seen:<stream>:", hour = occurred_at // 3600

* **Hour bucket of the event's own ``occurred_at``**: a retried or replayed event carries the same
  ``occurred_at``, so one path finds it; each write refreshes the TTL of every key on its path
  to the window, so an id is remembered for at least the window and a parent never expires
  before its children.
* **Levels**: level 0 has ``2**base_bits`` (4,096) slots per hour; a key holds ``ids_per_key``
  (511) ids and is then full: its ids continue in its 16 children one level down (slot = the
  identity's first 4 bytes mod ``2**(base_bits + level*level_bits)``). A lookup walks down
  only while the key it searched is full, so the structure sizes itself to the hour's volume
  (one level up to 2 M ids an hour).
* **Strings, not hashes**: a lookup is a ``memchr``-driven search of at most 8 KB inside the
  script, after one ``MGET`` per level (a hash's listpack compares field by field); a mark
  ``APPEND``s, and a key that fills is rewritten once at its exact size: 511 ids (8,176 bytes +
  header) in an 8 KiB jemalloc size class. Strings have no encoding thresholds to tune
  (ElastiCache refuses CONFIG).
* The slot hash comes from the digest, not from the UUID: time-ordered UUIDs (v7) share prefixes.

Exact up to a 128-bit collision (≈ 2⁻¹¹⁷ per lookup, identity.py): an event is "seen" only if its
identity sits at a 16-byte boundary of a key on its path, so customer B's event that reuses
customer A's id is new to B. Anything that makes Redis forget (restart, FLUSHALL, eviction, a producer that
changes ``occurred_at`` on retry) can only produce a *missed* duplicate, which the inserter's
merge on (customer_id, event_id) removes — never a false "seen". The batch marker ``<prefix>b:<batch_id>`` is
set in the same script, after the batch was announced, so a new owner replaying the same records
skips straight to the checkpoint. Measurements: docs/batcher.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from importlib import resources
from typing import TYPE_CHECKING

import redis

from pipeline.core.errors import TerminalError
from pipeline.core.redis_errors import classify_redis
from workers.batcher.buffer import CUSTOMER_ID, EVENT_ID, OCCURRED_AT
from workers.idset.identity import IDENTITIES
from workers.idset.layout import BUCKET, U32, DedupeLayout, with_walk

if TYPE_CHECKING:
    from workers.batcher.buffer import TypeRows

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def pack_batch(layout: DedupeLayout, types: Sequence[TypeRows]) -> list[bytes]:
    """The dedupe ids of a batch's valid rows, type by type in arrival order (``Batch.rows()``
    order)."""
    out: list[bytes] = []
    for group in types:
        out += pack_columns(
            layout, group.column(EVENT_ID), group.column(CUSTOMER_ID), group.column(OCCURRED_AT)
        )
    return out


def pack_columns(
    layout: DedupeLayout, event_ids: Sequence[str], customers: Sequence[str], occurred: Sequence[datetime]
) -> list[bytes]:
    """:meth:`DedupeLayout.pack` for every (event_id, customer_id, occurred_at) of the columns.

    The UUIDs are decoded in one ``bytes.fromhex`` call (schemas guarantees the canonical
    36-character form), and with hour buckets the hour comes from integer date arithmetic on
    the aware UTC datetime instead of a float ``timestamp()`` (same value: both floor whole
    hours since the epoch, and the float only differs near an hour's end after year 2200)."""
    bucket_pack, cache, prefix = BUCKET.pack, IDENTITIES.cache, IDENTITIES.prefix
    raws = bytes.fromhex("".join(event_ids).replace("-", ""))
    if (
        len(raws) != 16 * len(event_ids)
        or len(customers) != len(event_ids)
        or len(occurred) != len(event_ids)
    ):
        raise ValueError("not canonical UUIDs, or columns of different lengths")
    out = []
    start = 0
    hourly = layout.bucket_seconds == 3600
    bucket = layout.bucket_seconds
    for customer, at in zip(customers, occurred, strict=True):
        h = (cache.get(customer) or prefix(customer)).copy()  # IDENTITIES(customer, raw), inlined
        h.update(raws[start : start + 16])
        d = h.digest()
        start += 16
        hour = (at.toordinal() - _EPOCH_ORDINAL) * 24 + at.hour if hourly else int(at.timestamp()) // bucket
        out.append(bucket_pack(hour if 0 <= hour <= U32 else min(max(hour, 0), U32)) + d[:4] + d)
    return out


@dataclass(frozen=True, slots=True)
class DedupeCheck:
    batch_committed: bool
    seen: list[bool]  # one per id asked, in order; empty when batch_committed


def parse_check_reply(reply: bytes | str, count: int) -> DedupeCheck:
    text = reply.decode() if isinstance(reply, bytes) else reply
    if text == "1":
        return DedupeCheck(batch_committed=True, seen=[])
    if len(text) != count + 1 or text[0] != "0":
        raise TerminalError(f"dedupe check: malformed reply for {count} ids: {text[:40]!r}")
    return DedupeCheck(batch_committed=False, seen=[c == "1" for c in text[1:]])


def _script(name: str) -> str:
    return with_walk(resources.files("workers.batcher").joinpath(name).read_text())


# A script call blocks Redis while it runs (~1-3 µs per id): batches beyond this many ids are sent
# in several calls, so no call holds the server for more than a few tenths of a second.
MAX_IDS_PER_CALL = 100_000


class RedisDedupeStore:
    """The Redis adapter: one round trip to check a batch, one to mark it committed (more only
    for batches over MAX_IDS_PER_CALL ids)."""

    def __init__(self, client: redis.Redis, layout: DedupeLayout) -> None:
        self.layout = layout
        self._client = client
        self._check = client.register_script(_script("dedupe_check.lua"))
        self._mark = client.register_script(_script("dedupe_mark.lua"))

    def _args(self) -> list[str | int]:
        lay = self.layout
        return [lay.prefix, lay.ids_per_key, lay.base_slots, lay.fanout, lay.max_level]

    def check(self, batch_id: str | None, ids: Sequence[bytes]) -> DedupeCheck:
        """Batch marker first (asked with the first chunk), then one flag per id."""
        batch_key = self.layout.batch_key(batch_id) if batch_id else ""
        seen: list[bool] = []
        for start in range(0, max(len(ids), 1), MAX_IDS_PER_CALL):
            chunk = ids[start : start + MAX_IDS_PER_CALL]
            try:
                reply = self._check(keys=[], args=[*self._args(), batch_key, b"".join(chunk)])
            except redis.RedisError as exc:
                raise classify_redis(exc, "dedupe check") from exc
            answer = parse_check_reply(reply, len(chunk))
            if answer.batch_committed:
                return answer
            seen.extend(answer.seen)
            batch_key = ""
        return DedupeCheck(batch_committed=False, seen=seen)

    def mark(self, batch_id: str | None, ids: Sequence[bytes]) -> int:
        """Ids first; the batch marker goes with the last chunk, once every id is stored."""
        batch_key = self.layout.batch_key(batch_id) if batch_id else ""
        added = 0
        starts = range(0, max(len(ids), 1), MAX_IDS_PER_CALL)
        for start in starts:
            chunk = ids[start : start + MAX_IDS_PER_CALL]
            key = batch_key if start == starts[-1] else ""
            try:
                added += int(
                    self._mark(
                        keys=[], args=[*self._args(), self.layout.window_seconds, key, b"".join(chunk)]
                    )
                )
            except redis.RedisError as exc:
                raise classify_redis(exc, "dedupe mark") from exc
        return added
