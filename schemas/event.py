"""The decoded event: an immutable envelope around a typed payload, plus JSON helpers."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec
import orjson


class Payload(msgspec.Struct, frozen=True, gc=False):
    """Base of every generated payload Struct (one subclass per event type+version).

    ``json`` fields hold :class:`msgspec.Raw` (the original bytes, validated to be an object or
    array): nothing is decoded or re-encoded on the hot path and the warehouse gets exactly what
    the producer sent.
    """


class Event(msgspec.Struct, frozen=True, gc=False):
    """A valid event. ``event_id`` is the canonical lowercase UUID; ``occurred_at`` is aware UTC."""

    event_id: str
    customer_id: str
    type: str
    version: int
    occurred_at: datetime
    payload: Payload

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-able dict of the whole event (see :func:`event_to_dict`)."""
        return event_to_dict(self)


def _builtins_hook(obj: Any) -> Any:
    if isinstance(obj, msgspec.Raw):
        return msgspec.json.decode(obj)
    raise NotImplementedError(f"cannot convert {type(obj).__name__} to JSON")


def event_to_dict(ev: Event) -> dict[str, Any]:
    """The whole event as plain JSON types, in the envelope's wire shape: timestamps as RFC 3339
    strings, decimals as strings, json fields as objects/lists. Encoding it with
    :func:`encode_event` and decoding it again gives an equal event."""
    out: dict[str, Any] = msgspec.to_builtins(ev, enc_hook=_builtins_hook)
    return out


def _orjson_default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, msgspec.Raw):
        return orjson.Fragment(bytes(obj))
    if isinstance(obj, msgspec.Struct):
        return msgspec.to_builtins(obj, enc_hook=_builtins_hook)
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def encode_event(event: dict[str, Any] | Event) -> bytes:
    """Wire bytes for an event dict (or an :class:`Event`): orjson, datetimes as RFC 3339 with
    ``Z`` for UTC. Used by producers and the synthetic generator."""
    if isinstance(event, Event):
        return msgspec.json.encode(event)
    return orjson.dumps(event, default=_orjson_default, option=orjson.OPT_UTC_Z)
