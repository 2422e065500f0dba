"""Declarative event definitions (one per type+version) and the evolution rule between versions.

A definition is plain data (JSON files in ``schemas/definitions/``); everything else — the msgspec
validator, the Arrow schema, PostgreSQL and Redshift DDL — is derived from it, so the four can
never disagree.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Final, Literal

import msgspec

from schemas.errors import SchemaError, SchemaEvolutionError
from schemas.ids import SQL_NAME_PATTERN, is_safe_sql_name

Kind = Literal["string", "int", "float", "bool", "timestamp", "decimal", "json"]
KINDS: Final[tuple[Kind, ...]] = ("string", "int", "float", "bool", "timestamp", "decimal", "json")

#: Columns every warehouse row has besides payload fields; a payload field may not reuse them.
ENVELOPE_COLUMNS: Final = ("event_id", "customer_id", "event_type", "event_version", "occurred_at")
METADATA_COLUMNS: Final = ("_shard_id", "_sequence_number", "_sub_sequence_number")
RESERVED_NAMES: Final = frozenset(ENVELOPE_COLUMNS + METADATA_COLUMNS)

#: Redshift VARCHAR holds at most 65535 *bytes*; a UTF-8 character takes up to 4, so a string
#: field holds at most 16383 characters unless its definition says less.
MAX_STRING_CHARS: Final = 65535 // 4
#: A json field's serialized size limit (bytes): Redshift loads it through VARCHAR(65535).
MAX_JSON_BYTES: Final = 65535
MAX_DECIMAL_PRECISION: Final = 38


class SchemaDefinitionError(SchemaError):
    """A definition is malformed (bad kind, unsafe name, duplicate field...)."""


class FieldDef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One payload field. ``max_length``: characters for ``string``, bytes for ``json``;
    ``precision``/``scale`` only for ``decimal``."""

    name: str
    kind: Kind
    required: bool = False
    doc: str = ""
    max_length: int | None = None
    precision: int | None = None
    scale: int | None = None

    @property
    def limit(self) -> int:
        """The effective size limit of a string (characters) or json (bytes) field."""
        if self.kind == "json":
            return self.max_length or MAX_JSON_BYTES
        return self.max_length or MAX_STRING_CHARS


class TypeDefinition(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One event type at one version. ``entity_field`` names the payload field that identifies
    the entity the event is about (partition key suffix, read-model key)."""

    type: str
    version: int
    fields: tuple[FieldDef, ...]
    doc: str = ""
    entity_field: str | None = None


def _check_definition(d: TypeDefinition) -> None:
    where = f"{d.type} v{d.version}"
    if not is_safe_sql_name(d.type) or len(d.type) > 48:
        raise SchemaDefinitionError(f"type name {d.type!r} must match {SQL_NAME_PATTERN} (at most 48 chars)")
    if not 1 <= d.version <= 32767:
        raise SchemaDefinitionError(f"{where}: version must be 1..32767 (stored as int16)")
    seen: set[str] = set()
    for f in d.fields:
        if not is_safe_sql_name(f.name) or f.name.startswith("_"):
            raise SchemaDefinitionError(
                f"{where}: field name {f.name!r} must match {SQL_NAME_PATTERN} and not start with '_'"
            )
        if f.name in RESERVED_NAMES:
            raise SchemaDefinitionError(f"{where}: field name {f.name!r} is reserved for the envelope")
        if f.name in seen:
            raise SchemaDefinitionError(f"{where}: field {f.name!r} defined twice")
        seen.add(f.name)
        if f.max_length is not None:
            if f.kind not in ("string", "json"):
                raise SchemaDefinitionError(
                    f"{where}: field {f.name!r}: max_length only applies to string/json"
                )
            cap = MAX_JSON_BYTES if f.kind == "json" else MAX_STRING_CHARS
            if not 1 <= f.max_length <= cap:
                raise SchemaDefinitionError(f"{where}: field {f.name!r}: max_length must be 1..{cap}")
        if f.kind == "decimal":
            p, s = f.precision, f.scale
            if p is None or s is None or not (1 <= p <= MAX_DECIMAL_PRECISION and 0 <= s <= p):
                raise SchemaDefinitionError(
                    f"{where}: decimal field {f.name!r} needs precision 1..{MAX_DECIMAL_PRECISION} "
                    "and scale 0..precision"
                )
        elif f.precision is not None or f.scale is not None:
            raise SchemaDefinitionError(f"{where}: field {f.name!r}: precision/scale only apply to decimal")
    if d.entity_field is not None:
        ent = next((f for f in d.fields if f.name == d.entity_field), None)
        if ent is None or ent.kind != "string" or not ent.required:
            raise SchemaDefinitionError(
                f"{where}: entity_field {d.entity_field!r} must name a required string field"
            )


def _check_step(prev: TypeDefinition, cur: TypeDefinition) -> None:
    """The evolution rule: ``cur`` keeps every field of ``prev`` unchanged and adds only optional ones."""
    where = f"{cur.type} v{cur.version}"
    rule = "a new version may only add optional fields"
    cur_fields = {f.name: f for f in cur.fields}
    for old in prev.fields:
        new = cur_fields.get(old.name)
        if new is None:
            raise SchemaEvolutionError(
                f"{where}: field {old.name!r} (present in v{prev.version}) was removed; {rule}"
            )
        if new.kind != old.kind or (new.precision, new.scale) != (old.precision, old.scale):
            raise SchemaEvolutionError(
                f"{where}: field {old.name!r} changed type from {_type_text(old)} (v{prev.version}) "
                f"to {_type_text(new)}; {rule}"
            )
        if new.required != old.required:
            change = "became required" if new.required else "became optional"
            raise SchemaEvolutionError(f"{where}: field {old.name!r} {change} (v{prev.version}); {rule}")
        if old.kind in ("string", "json") and new.limit < old.limit:
            raise SchemaEvolutionError(
                f"{where}: field {old.name!r} max_length shrank from {old.limit} to {new.limit} "
                f"(v{prev.version}); {rule}"
            )
    old_names = {f.name for f in prev.fields}
    for f in cur.fields:
        if f.name not in old_names and f.required:
            raise SchemaEvolutionError(
                f"{where}: new field {f.name!r} is required (not in v{prev.version}); {rule}"
            )


def _type_text(f: FieldDef) -> str:
    return f"decimal({f.precision},{f.scale})" if f.kind == "decimal" else f.kind


def check_definitions(definitions: Iterable[TypeDefinition]) -> dict[str, list[TypeDefinition]]:
    """Validate each definition and the evolution rule; return versions per type, ascending.

    Versions of a type must be 1..n without gaps, so a deleted definition file is noticed.
    """
    by_type: dict[str, list[TypeDefinition]] = defaultdict(list)
    for d in definitions:
        _check_definition(d)
        by_type[d.type].append(d)
    for name, versions in by_type.items():
        versions.sort(key=lambda d: d.version)
        numbers = [d.version for d in versions]
        if numbers != list(range(1, len(numbers) + 1)):
            raise SchemaEvolutionError(
                f"{name}: versions must be 1..n without gaps or duplicates, found {numbers}"
            )
        for prev, cur in itertools.pairwise(versions):
            _check_step(prev, cur)
    return dict(by_type)


_DEFINITION_DECODER: Final = msgspec.json.Decoder(TypeDefinition)


def parse_definition(data: bytes, origin: str = "<bytes>") -> TypeDefinition:
    """One definition from its JSON text; raises SchemaDefinitionError naming ``origin``."""
    try:
        return _DEFINITION_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise SchemaDefinitionError(f"{origin}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise SchemaDefinitionError(f"{origin}: not valid JSON: {exc}") from exc


def builtin_definitions() -> list[TypeDefinition]:
    """Every ``*.json`` definition shipped in ``schemas/definitions``, sorted by file name."""
    root = resources.files("schemas.definitions")
    files = sorted((p for p in root.iterdir() if p.name.endswith(".json")), key=lambda p: p.name)
    return [parse_definition(p.read_bytes(), f"schemas/definitions/{p.name}") for p in files]


def sorted_fields(versions: Sequence[TypeDefinition]) -> list[FieldDef]:
    """Fields of all versions, in the latest version's order; fields only older versions have
    (impossible under the evolution rule) would follow."""
    out: dict[str, FieldDef] = {}
    for d in reversed(versions):
        for f in d.fields:
            out.setdefault(f.name, f)
    return list(out.values())
