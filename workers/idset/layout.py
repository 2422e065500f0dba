"""The id-set layout shared by the batcher's dedupe and the projector's gate: 24-byte id records
(bucket | slot hash | 16-byte identity of (customer, event id), workers/idset/identity.py) packed
into plain Redis strings or hash fields, walked level by level by ``walk.lua``. How and why:
docs/batcher.md ("Dedupe memory layout")."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Final

from workers.idset.identity import IDENTITIES

ID_BLOB_BYTES: Final = 24
U32: Final = 0xFFFFFFFF
#: bucket (u32) | slot hash (u32), in front of the 16 identity bytes.
HEADER: Final = struct.Struct(">II")
BUCKET: Final = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class DedupeLayout:
    prefix: str
    window_seconds: int = 24 * 3600
    bucket_seconds: int = 3600
    ids_per_key: int = 511
    base_bits: int = 12
    level_bits: int = 4
    max_level: int = 5

    def __post_init__(self) -> None:
        if self.base_bits + self.level_bits * self.max_level > 32:
            raise ValueError("slot space beyond the 32-bit id hash")
        if not 1 <= self.ids_per_key <= 65_535:
            raise ValueError(f"ids_per_key {self.ids_per_key} outside 1..65535")
        if self.window_seconds <= 0 or self.bucket_seconds <= 0:
            raise ValueError("window and bucket must be positive")

    @classmethod
    def for_stream(cls, stream: str, window_seconds: int) -> DedupeLayout:
        return cls(prefix=f"seen:{stream}:", window_seconds=window_seconds)

    @property
    def base_slots(self) -> int:
        return 1 << self.base_bits

    @property
    def fanout(self) -> int:
        return 1 << self.level_bits

    def bucket(self, occurred_at: datetime) -> int:
        return min(max(int(occurred_at.timestamp()) // self.bucket_seconds, 0), U32)

    def pack(self, customer_id: str, event_id: str, occurred_at: datetime) -> bytes:
        """The 24-byte lookup record of one event: bucket | slot hash | identity (the slot hash is
        the identity's first four bytes: a digest is already well mixed)."""
        return record(self.bucket(occurred_at), IDENTITIES(customer_id, uuid_bytes(event_id)))

    def batch_key(self, batch_id: str) -> str:
        return f"{self.prefix}b:{batch_id}"

    def key_of(self, hour: int, level: int, id_hash: int) -> str:
        """The key a Lua walk visits at ``level`` (mirror of the scripts, for tests and docs)."""
        slots = self.base_slots * self.fanout**level
        return f"{self.prefix}{hour}:{level}:{id_hash % slots}"

    def path(self, blob: bytes) -> list[str]:
        """Every key on an id's walk, level 0 first."""
        hour, id_hash = HEADER.unpack_from(blob)
        return [self.key_of(hour, level, id_hash) for level in range(self.max_level + 1)]


def record(bucket: int, ident: bytes) -> bytes:
    """bucket | first four identity bytes | identity."""
    return BUCKET.pack(bucket) + ident[:4] + ident


def uuid_bytes(event_id: str) -> bytes:
    """16 bytes of a canonical UUID string (schemas guarantees the canonical form)."""
    raw = bytes.fromhex(event_id.replace("-", ""))
    if len(raw) != 16:
        raise ValueError(f"not a UUID: {event_id!r}")
    return raw


def with_walk(source: str) -> str:
    """A Lua script with the shared id-set walk (walk.lua) in front of it."""
    return resources.files("workers.idset").joinpath("walk.lua").read_text() + source
