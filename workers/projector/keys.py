"""Redis key layout of the read models (pure). docs/projector.md has the full table.

Everything lives under one namespace per stream, ``rm:<stream>:``:

* ``<ns>current`` — the generation readers and the projector use; ``<ns>building`` — the one a
  rebuild is filling (the projector writes both while it exists); ``<ns>genseq`` — generation
  counter; ``<ns>origin`` — how the current generation came to be; ``<ns>pos`` — per shard, the
  highest sequence number the projector applied (a rebuild's catch-up target); ``<ns>gatev3`` —
  when the first projector with the identity-only gate started (epoch seconds; 0 = on an empty
  namespace), which bounds the upgrade's check of the old layout (docs/projector.md).
* ``<ns><gen>:`` — one generation of the models; every key below is relative to it:

  ======================================  ===========================================
  ``ap:w<window>:<level>:<slot>``         applied events (string of 16-byte identities)
  ``ch:<customer>:<YYYYMMDD>``            hourly counts, field ``<type>:<HH>``
  ``cd:<customer>:<YYYYMM>``              daily counts, field ``<type>:<DD>``
  ``e:<customer>:<kind>:<id>``            entity (string): version, first seen, event
                                          count, type/version, index key, state JSON
  ``t:<customer>:<measure>``              top-N sorted set (member → amount)
  ``x:<customer>:<index>:<owner>``        index sorted set (entity id → score)
  ======================================  ===========================================

Customer ids are safe identifiers (no ``:``) and every free-form part (entity id, owner,
measure) comes last, so a key parses back unambiguously.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

#: The applied set: ``ap:w<window>:…`` (filed by processing window, plan.GateConfig); ``ap:<second>:…``
#: is the layout before 2026-12-08 (by second of event time), read during an upgrade.
GATE: Final = "ap:"
GATE_BY_WINDOW: Final = "ap:w"
_GLOB_SPECIAL: Final = re.compile(r"([*?\[\]\\])")


def glob_escape(text: str) -> str:
    """``text`` as a literal inside a SCAN MATCH pattern."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


@dataclass(frozen=True, slots=True)
class Namespace:
    prefix: str

    @classmethod
    def for_stream(cls, stream: str) -> Namespace:
        return cls(f"rm:{stream}:")

    @property
    def current(self) -> str:
        return f"{self.prefix}current"

    @property
    def building(self) -> str:
        return f"{self.prefix}building"

    @property
    def genseq(self) -> str:
        return f"{self.prefix}genseq"

    @property
    def origin(self) -> str:
        return f"{self.prefix}origin"

    @property
    def gate_marker(self) -> str:
        return f"{self.prefix}gatev3"

    @property
    def positions(self) -> str:
        return f"{self.prefix}pos"

    def generation(self, gen: int | str) -> str:
        """Prefix of one generation's keys."""
        return f"{self.prefix}{gen}:"

    def generation_pattern(self, gen: int | str) -> str:
        return f"{glob_escape(self.generation(gen))}*"

    def all_generations_pattern(self) -> str:
        return f"{glob_escape(self.prefix)}[0-9]*"


def hourly_key(customer: str, day: str) -> str:
    return f"ch:{customer}:{day}"


def daily_key(customer: str, month: str) -> str:
    return f"cd:{customer}:{month}"


def entity_key(customer: str, kind: str, entity_id: str) -> str:
    return f"e:{customer}:{kind}:{entity_id}"


def top_key(customer: str, measure: str) -> str:
    return f"t:{customer}:{measure}"


def index_key(customer: str, index: str, owner: str) -> str:
    return f"x:{customer}:{index}:{owner}"


@dataclass(frozen=True, slots=True)
class ParsedKey:
    family: str  # ch, cd, e, t, x, ap
    customer: str
    rest: tuple[str, ...]


def parse_key(suffix: str) -> ParsedKey | None:
    """Inverse of the builders above for a key relative to its generation; None if unknown."""
    family, sep, tail = suffix.partition(":")
    if not sep:
        return None
    if family == "ap":
        return ParsedKey("ap", "", (tail,))
    customer, sep, rest = tail.partition(":")
    if not sep:
        return None
    if family in ("ch", "cd", "t"):
        return ParsedKey(family, customer, (rest,))
    if family in ("e", "x"):
        head, sep, last = rest.partition(":")
        if not sep:
            return None
        return ParsedKey(family, customer, (head, last))
    return None
