"""Definitions: the evolution rule and definition checks, at registry load."""

from __future__ import annotations

import msgspec
import pytest

from schemas import (
    FieldDef,
    SchemaDefinitionError,
    SchemaEvolutionError,
    TypeDefinition,
    builtin_definitions,
    load_registry,
    parse_definition,
)

V1 = TypeDefinition(
    type="thing",
    version=1,
    fields=(
        FieldDef("thing_id", "string", True, "id", max_length=64),
        FieldDef("count", "int", True),
        FieldDef("note", "string", False, max_length=100),
        FieldDef("price", "decimal", False, precision=10, scale=2),
    ),
    entity_field="thing_id",
)


def v2(*fields: FieldDef, drop: str | None = None, replace: FieldDef | None = None) -> TypeDefinition:
    kept = tuple(
        replace if replace is not None and f.name == replace.name else f for f in V1.fields if f.name != drop
    )
    return msgspec.structs.replace(V1, version=2, fields=kept + fields)


def test_adding_optional_fields_is_allowed() -> None:
    registry = load_registry(definitions=[V1, v2(FieldDef("colour", "string"), FieldDef("extra", "json"))])
    assert [f.name for f in registry.latest("thing").fields] == [
        "thing_id",
        "count",
        "note",
        "price",
        "colour",
        "extra",
    ]


def test_widening_a_string_is_allowed() -> None:
    load_registry(definitions=[V1, v2(replace=FieldDef("note", "string", False, max_length=200))])


@pytest.mark.parametrize(
    ("new", "words"),
    [
        (v2(drop="note"), ["thing v2", "'note'", "removed", "v1"]),
        (
            v2(replace=FieldDef("count", "float", True)),
            ["thing v2", "'count'", "changed type", "int", "float"],
        ),
        (v2(replace=FieldDef("count", "string", True)), ["thing v2", "'count'", "changed type"]),
        (
            v2(replace=FieldDef("price", "decimal", precision=12, scale=2)),
            ["'price'", "decimal(10,2)", "decimal(12,2)"],
        ),
        (v2(FieldDef("colour", "string", True)), ["thing v2", "new field 'colour'", "required"]),
        (
            v2(replace=FieldDef("note", "string", True, max_length=100)),
            ["thing v2", "'note'", "became required"],
        ),
        (v2(replace=FieldDef("count", "int", False)), ["thing v2", "'count'", "became optional"]),
        (v2(replace=FieldDef("note", "string", False, max_length=10)), ["thing v2", "'note'", "shrank"]),
    ],
)
def test_breaking_the_rule_names_type_version_and_field(new: TypeDefinition, words: list[str]) -> None:
    with pytest.raises(SchemaEvolutionError) as info:
        load_registry(definitions=[V1, new])
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert "may only add optional fields" in message


def test_rule_is_checked_between_every_pair_of_versions() -> None:
    v3 = msgspec.structs.replace(
        v2(FieldDef("colour", "string")), version=3, fields=V1.fields
    )  # drops colour
    with pytest.raises(SchemaEvolutionError, match=r"thing v3: field 'colour' \(present in v2\) was removed"):
        load_registry(definitions=[v3, V1, v2(FieldDef("colour", "string"))])


@pytest.mark.parametrize("versions", [[2], [1, 3], [1, 1]])
def test_versions_must_be_contiguous_from_one(versions: list[int]) -> None:
    defs = [msgspec.structs.replace(V1, version=n) for n in versions]
    with pytest.raises(SchemaEvolutionError, match=r"thing: versions must be 1\.\.n"):
        load_registry(definitions=defs)


@pytest.mark.parametrize(
    ("definition", "match"),
    [
        (msgspec.structs.replace(V1, type="Thing"), "type name 'Thing'"),
        (msgspec.structs.replace(V1, type="thing;drop"), "type name"),
        (msgspec.structs.replace(V1, fields=(*V1.fields, FieldDef("event_id", "string"))), "reserved"),
        (msgspec.structs.replace(V1, fields=(*V1.fields, FieldDef("_shard_id", "string"))), "'_shard_id'"),
        (msgspec.structs.replace(V1, fields=(*V1.fields, FieldDef("occurred_at", "timestamp"))), "reserved"),
        (msgspec.structs.replace(V1, fields=(*V1.fields, FieldDef('x"y', "string"))), "field name"),
        (msgspec.structs.replace(V1, fields=(*V1.fields, FieldDef("Note", "string"))), "field name 'Note'"),
        (msgspec.structs.replace(V1, fields=(*V1.fields, FieldDef("count", "int"))), "'count' defined twice"),
        (msgspec.structs.replace(V1, fields=(FieldDef("d", "decimal"),)), "decimal field 'd'"),
        (msgspec.structs.replace(V1, fields=(FieldDef("d", "decimal", precision=40, scale=2),)), "decimal"),
        (
            msgspec.structs.replace(V1, fields=(FieldDef("n", "int", precision=4, scale=0),)),
            "only apply to decimal",
        ),
        (
            msgspec.structs.replace(V1, fields=(FieldDef("n", "int", max_length=4),)),
            "max_length only applies",
        ),
        (
            msgspec.structs.replace(V1, fields=(FieldDef("s", "string", max_length=20000),)),
            "max_length must be",
        ),
        (msgspec.structs.replace(V1, entity_field="count"), "entity_field 'count'"),
        (msgspec.structs.replace(V1, entity_field="nope"), "entity_field 'nope'"),
        (msgspec.structs.replace(V1, version=0), "version must be"),
    ],
)
def test_malformed_definitions_are_refused(definition: TypeDefinition, match: str) -> None:
    with pytest.raises(SchemaDefinitionError, match=match):
        load_registry(definitions=[definition])


def test_definition_files_are_strict_json() -> None:
    good = b'{"type": "t", "version": 1, "fields": [{"name": "a", "kind": "int", "required": true}]}'
    assert parse_definition(good).fields == (FieldDef("a", "int", True),)
    with pytest.raises(SchemaDefinitionError, match=r"x\.json: .*kind"):
        parse_definition(good.replace(b'"int"', b'"integer"'), "x.json")
    with pytest.raises(SchemaDefinitionError, match="unknown field"):
        parse_definition(good.replace(b'"required": true', b'"requried": true'))
    with pytest.raises(SchemaDefinitionError, match="not valid JSON"):
        parse_definition(b"{", "x.json")


def test_builtin_definitions_satisfy_the_rule() -> None:
    defs = builtin_definitions()
    assert {(d.type, d.version) for d in defs} == {
        ("page_view", 1), ("page_view", 2), ("order_placed", 1), ("order_placed", 2),
        ("appointment_booked", 1),
    }  # fmt: skip
    v2_fields = {f.name: f for f in next(d for d in defs if (d.type, d.version) == ("page_view", 2)).fields}
    assert not v2_fields["referrer"].required and not v2_fields["session_id"].required
    load_registry(definitions=defs)
