"""Decode + validate throughput, one core: the registry (msgspec) against orjson → dict.

    .venv/bin/python benchmarks/bench_validate.py [--events 1000000] [--unique 200000]

Inputs are synthetic valid events (seeded). Contenders, all doing the same job (bytes in,
validated event out, or a rejection):

- ``registry.decode``: what the batcher runs (two-stage msgspec: envelope with Raw payload,
  then the payload Struct of that type+version; Python fast paths for event_id/customer_id).
- ``msgspec, all checks in msgspec``: the same two stages with msgspec's UUID type and regex
  constraint for event_id/customer_id; shows why those two checks moved to Python.
- ``orjson → dict + Python checks``: parse into dicts, then check every field of the same
  definitions in Python (the alternative the issue measured at ~180k/s).
- ``orjson.loads only`` and ``msgspec envelope only``: parse without validation, for scale.

A tagged union is not a contender: msgspec tags on one field, and an event is keyed by two
(``type`` and ``version``).
"""

from __future__ import annotations

import argparse
import gc
import re
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
import orjson

from pipeline.producer.synthetic import SyntheticConfig, generate
from schemas import CUSTOMER_ID_PATTERN, InvalidEvent, Registry, load_registry
from schemas.definition import FieldDef


def make_inputs(unique: int, only_type: str | None) -> list[bytes]:
    out: list[bytes] = []
    config = SyntheticConfig(seed=1, duplicate_ratio=0.0, invalid_ratio=0.0)
    for record in generate(config, unique * (4 if only_type else 1)):
        if only_type is None or f'"type":"{only_type}"'.encode() in record.data:
            out.append(record.data)
    return out[:unique]


# -- contender: every check inside msgspec --------------------------------------------------------


def all_msgspec(registry: Registry) -> Callable[[bytes], Any]:
    class Envelope(msgspec.Struct, gc=False):
        event_id: uuid.UUID
        customer_id: Annotated[str, msgspec.Meta(pattern=CUSTOMER_ID_PATTERN.replace("$", r"\Z"))]
        type: str
        version: int
        occurred_at: Annotated[datetime, msgspec.Meta(tz=True)]
        payload: msgspec.Raw

    envelope = msgspec.json.Decoder(Envelope)
    decoders = {(et.name, et.version): msgspec.json.Decoder(et.payload_type) for et in registry.types()}

    def decode(raw: bytes) -> Any:
        env = envelope.decode(raw)
        payload = decoders[(env.type, env.version)].decode(env.payload)
        return (str(env.event_id), env.customer_id, env.type, env.version, env.occurred_at, payload)

    return decode


# -- contender: orjson into dicts, checks in Python ------------------------------------------------

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_CUSTOMER = re.compile(CUSTOMER_ID_PATTERN)


def _check_field(f: FieldDef, value: Any) -> Any:
    if f.kind == "string":
        if type(value) is not str or len(value) > f.limit:
            raise InvalidEvent("wrong_type", f.name)
    elif f.kind == "int":
        if type(value) is not int or not -(2**63) <= value < 2**63:
            raise InvalidEvent("wrong_type", f.name)
    elif f.kind == "float":
        if type(value) not in (float, int):
            raise InvalidEvent("wrong_type", f.name)
    elif f.kind == "bool":
        if type(value) is not bool:
            raise InvalidEvent("wrong_type", f.name)
    elif f.kind == "timestamp":
        if type(value) is not str:
            raise InvalidEvent("wrong_type", f.name)
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise InvalidEvent("bad_timestamp", f.name)
        return parsed
    elif f.kind == "json" and type(value) not in (dict, list):
        raise InvalidEvent("wrong_type", f.name)
    return value


def orjson_dicts(registry: Registry) -> Callable[[bytes], Any]:
    fields = {(et.name, et.version): et.fields for et in registry.types()}

    def decode(raw: bytes) -> Any:
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent("bad_json", str(exc)) from None
        if type(event) is not dict:
            raise InvalidEvent("wrong_type", "$")
        try:
            event_id = event["event_id"]
            customer_id = event["customer_id"]
            key = (event["type"], event["version"])
            occurred = event["occurred_at"]
            payload = event["payload"]
        except KeyError as exc:
            raise InvalidEvent("missing_field", str(exc)) from None
        if type(event_id) is not str or _UUID.fullmatch(event_id) is None:
            raise InvalidEvent("bad_event_id", "event_id")
        if type(customer_id) is not str or _CUSTOMER.fullmatch(customer_id) is None:
            raise InvalidEvent("unsafe_customer_id", "customer_id")
        if type(occurred) is not str:
            raise InvalidEvent("wrong_type", "occurred_at")
        try:
            at = datetime.fromisoformat(occurred)
        except ValueError:
            raise InvalidEvent("bad_timestamp", "occurred_at") from None
        if at.tzinfo is None:
            raise InvalidEvent("bad_timestamp", "occurred_at")
        defs = fields.get(key)
        if defs is None:
            raise InvalidEvent("unknown_type", str(key))
        if type(payload) is not dict:
            raise InvalidEvent("wrong_type", "payload")
        out: dict[str, Any] = {}
        for f in defs:
            value = payload.get(f.name)
            if value is None:
                if f.required:
                    raise InvalidEvent("missing_field", f.name)
                out[f.name] = None
            else:
                out[f.name] = _check_field(f, value)
        return (event_id.lower(), customer_id, key, at.astimezone(UTC), out)

    return decode


def run(fn: Callable[[bytes], Any], inputs: Sequence[bytes], total: int, repeats: int) -> float:
    """Events per second (median of ``repeats`` runs of ``total`` decodes)."""
    passes, rest = divmod(total, len(inputs))
    rates = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        for _ in range(passes):
            for raw in inputs:
                fn(raw)
        for raw in inputs[:rest]:
            fn(raw)
        rates.append(total / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="decodes per contender and run")
    parser.add_argument("--unique", type=int, default=200_000, help="distinct events (cycled)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    registry = load_registry()
    names = ("event_id", "customer_id", "type", "version", "occurred_at", "payload")
    kinds = (str, str, str, int, str, msgspec.Raw)
    envelope_only = msgspec.json.Decoder(msgspec.defstruct("E", list(zip(names, kinds, strict=True))))
    contenders: list[tuple[str, Callable[[bytes], Any]]] = [
        ("registry.decode (msgspec, shipped)", registry.decode),
        ("msgspec, all checks in msgspec", all_msgspec(registry)),
        ("orjson -> dict + Python checks", orjson_dicts(registry)),
        ("orjson.loads only (no checks)", orjson.loads),
        ("msgspec envelope only (no checks)", envelope_only.decode),
    ]
    for label, only in (("page_view v1+v2", "page_view"), ("synthetic mix (all types)", None)):
        inputs = make_inputs(args.unique, only)
        for raw in inputs[:1000]:  # every contender accepts every input
            for _, fn in contenders:
                fn(raw)
        size = sum(map(len, inputs)) / len(inputs)
        print(f"\n{label}: {len(inputs):,} distinct events, mean {size:.0f} bytes, {args.events:,} decodes")
        for name, fn in contenders:
            rate = run(fn, inputs, args.events, args.repeats)
            print(f"  {name:38s} {rate:>12,.0f} events/s   {1e9 / rate:6.0f} ns/event")


if __name__ == "__main__":
    main()
