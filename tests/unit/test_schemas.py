"""Event registry: decoding valid events, every invalid reason, property tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.field_values import OCCURRED, field_value, text

from schemas import (
    CUSTOMER_ID_PATTERN,
    REASONS,
    Event,
    EventType,
    FieldDef,
    InvalidEvent,
    Registry,
    encode_event,
    event_to_dict,
    is_safe_customer_id,
    load_registry,
)
from schemas.errors import DECODE_REASONS, INTAKE_REASONS

REGISTRY = load_registry()
EVENT_ID = "0190f0e2-8c2b-7a6b-9c3d-1234567890ab"
NOW = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)

FULL_PAYLOADS: dict[tuple[str, int], dict[str, Any]] = {
    ("page_view", 1): {
        "user_id": "user_00001",
        "url": "https://shop.example.com/",
        "title": "Home",
        "duration_ms": 1200,
        "scroll_depth": 0.5,
    },
    ("page_view", 2): {
        "user_id": "user_00001",
        "url": "https://shop.example.com/",
        "title": "Home",
        "duration_ms": 1200,
        "scroll_depth": 0.5,
        "referrer": "https://www.google.com/",
        "session_id": "sess_1",
    },
    ("order_placed", 1): {
        "order_id": "ord_1",
        "user_id": "user_1",
        "status": "placed",
        "currency": "EUR",
        "total_cents": 4900,
        "item_count": 1,
        "items": [{"sku": "sku-1", "qty": 1, "price_cents": 4900}],
        "placed_at": "2024-05-01T11:00:00Z",
    },
    ("order_placed", 2): {
        "order_id": "ord_1",
        "user_id": "user_1",
        "status": "paid",
        "currency": "EUR",
        "total_cents": 4900,
        "item_count": 1,
        "items": [{"sku": "sku-1", "qty": 1, "price_cents": 4900}],
        "placed_at": "2024-05-01T11:00:00Z",
        "coupon_code": "SPRING10",
        "discount_cents": 490,
    },
    ("appointment_booked", 1): {
        "appointment_id": "appt_1",
        "provider_id": "prov_001",
        "patient_id": "pat_1",
        "starts_at": "2024-05-03T09:00:00+02:00",
        "duration_minutes": 30,
        "status": "booked",
        "telehealth": False,
        "fee": "45.00",
        "notes": "first visit",
    },
}


def envelope(type_name: str = "page_view", v: int = 1, payload: Any = None, **fields: Any) -> dict[str, Any]:
    """An event dict with a full payload of ``type_name`` v``v``; ``fields`` override anything."""
    event: dict[str, Any] = {
        "event_id": EVENT_ID,
        "customer_id": "cust_0001",
        "type": type_name,
        "version": v,
        "occurred_at": NOW,
        "payload": FULL_PAYLOADS[(type_name, v)] if payload is None else payload,
    }
    event.update(fields)
    return event


def reason_of(raw: bytes, registry: Registry = REGISTRY) -> str:
    with pytest.raises(InvalidEvent) as info:
        registry.decode(raw)
    assert info.value.reason in REASONS
    return info.value.reason


# -- valid events ----------------------------------------------------------------------------------


def test_builtin_types_and_versions() -> None:
    assert [(et.name, et.version) for et in REGISTRY.types()] == [
        ("appointment_booked", 1),
        ("order_placed", 1),
        ("order_placed", 2),
        ("page_view", 1),
        ("page_view", 2),
    ]
    assert set(FULL_PAYLOADS) == {(et.name, et.version) for et in REGISTRY.types()}
    assert REGISTRY.latest("page_view").version == 2
    assert REGISTRY.latest("appointment_booked").version == 1


@pytest.mark.parametrize("key", sorted(FULL_PAYLOADS))
def test_decode_full_event_of_each_type_and_version(key: tuple[str, int]) -> None:
    type_name, version = key
    ev = REGISTRY.decode(encode_event(envelope(type_name, version)))
    assert isinstance(ev, Event)
    assert (ev.event_id, ev.customer_id, ev.type, ev.version) == (EVENT_ID, "cust_0001", type_name, version)
    assert ev.occurred_at == NOW and ev.occurred_at.tzinfo is UTC
    et = REGISTRY.get(type_name, version)
    assert type(ev.payload) is et.payload_type
    back = event_to_dict(ev)["payload"]
    for name, value in FULL_PAYLOADS[key].items():
        kind = next(f.kind for f in et.fields if f.name == name)
        if kind == "timestamp":
            assert datetime.fromisoformat(back[name]) == datetime.fromisoformat(value)
            assert getattr(ev.payload, name).tzinfo is UTC
        elif kind == "decimal":
            assert Decimal(back[name]) == Decimal(value)
        else:
            assert back[name] == value, name


@pytest.mark.parametrize("key", sorted(FULL_PAYLOADS))
def test_optional_fields_may_be_missing_or_null(key: tuple[str, int]) -> None:
    et = REGISTRY.get(*key)
    required = {f.name: FULL_PAYLOADS[key][f.name] for f in et.fields if f.required}
    ev = REGISTRY.decode(encode_event(envelope(*key, payload=required)))
    nulls = REGISTRY.decode(
        encode_event(
            envelope(
                *key,
                payload={**required, **dict.fromkeys((f.name for f in et.fields if not f.required), None)},
            )
        )
    )
    for f in et.fields:
        if not f.required:
            assert getattr(ev.payload, f.name) is None
            assert getattr(nulls.payload, f.name) is None
    assert ev == nulls


def test_event_is_frozen() -> None:
    ev = REGISTRY.decode(encode_event(envelope()))
    with pytest.raises(AttributeError):
        ev.customer_id = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        ev.payload.url = "x"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "given",
    [
        "0190F0E2-8C2B-7A6B-9C3D-1234567890AB",
        "0190f0e28c2b7a6b9c3d1234567890ab",
        "0190F0E28C2B7A6B9C3D1234567890AB",
    ],
)
def test_event_id_is_canonicalised(given: str) -> None:
    assert REGISTRY.decode(encode_event(envelope(event_id=given))).event_id == EVENT_ID


def test_occurred_at_is_normalised_to_utc() -> None:
    ev = REGISTRY.decode(encode_event(envelope(occurred_at="2024-05-01T14:00:00.123456+02:00")))
    assert ev.occurred_at == datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert ev.occurred_at.tzinfo is UTC


def test_unknown_fields_are_ignored() -> None:
    event = envelope(extra="x")
    event["payload"] = {**FULL_PAYLOADS[("page_view", 1)], "referrer": "only in v2"}
    ev = REGISTRY.decode(encode_event(event))
    assert not hasattr(ev.payload, "referrer")


def test_json_field_keeps_the_producers_json() -> None:
    raw = encode_event(envelope("order_placed", 1)).replace(
        b'"items":[{"sku":"sku-1","qty":1,"price_cents":4900}]', b'"items":[ {"sku":"s","n":1.50e2} ]'
    )
    ev = REGISTRY.decode(raw)
    assert bytes(ev.payload.items) == b'[ {"sku":"s","n":1.50e2} ]'  # type: ignore[attr-defined]
    assert event_to_dict(ev)["payload"]["items"] == [{"sku": "s", "n": 150.0}]


def test_escaped_non_ascii_is_fine() -> None:
    raw = encode_event(envelope()).replace(b'"Home"', b'"caf\\u00e9 \\ud83d\\ude00"')
    ev = REGISTRY.decode(raw)
    assert ev.payload.title == "café 😀"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("45", "45.00"),
        ("45.5", "45.50"),
        (45.5, "45.50"),
        ("45.500", "45.50"),
        ("99999999.99", "99999999.99"),
        ("-0", "0.00"),
        ("0E+99999999999", "0.00"),
        ("4.5E+1", "45.00"),
        ("1E+7", "10000000.00"),
    ],
)
def test_decimal_is_fitted_to_its_scale(given: Any, stored: str) -> None:
    payload = {**FULL_PAYLOADS[("appointment_booked", 1)], "fee": given}
    ev = REGISTRY.decode(encode_event(envelope("appointment_booked", 1, payload)))
    assert str(ev.payload.fee) == stored  # type: ignore[attr-defined]


@pytest.mark.parametrize("given", ["45.555", "100000000.00", "NaN", "Infinity", "1e10", "abc", True])
def test_decimal_that_does_not_fit_is_wrong_type(given: Any) -> None:
    payload = {**FULL_PAYLOADS[("appointment_booked", 1)], "fee": given}
    assert reason_of(encode_event(envelope("appointment_booked", 1, payload))) == "wrong_type"


# -- invalid events: every reason ---------------------------------------------------------------------


def _with_payload(**changes: Any) -> bytes:
    payload = {**FULL_PAYLOADS[("page_view", 1)], **changes}
    return encode_event(envelope(payload={k: v for k, v in payload.items() if v is not _DROP}))


_DROP = object()


def _without(name: str) -> dict[str, Any]:
    return {k: v for k, v in envelope().items() if k != name}


INVALID: list[tuple[str, bytes, str]] = [
    ("invalid utf-8 in a string", encode_event(envelope()).replace(b"Home", b"H\xffme"), "not_utf8"),
    ("latin-1 bytes", encode_event(envelope()).replace(b"Home", b"caf\xe9"), "not_utf8"),
    ("utf-16", encode_event(envelope()).decode().encode("utf-16"), "not_utf8"),
    ("oversize", encode_event(envelope(payload={**FULL_PAYLOADS[("page_view", 1)], "title": "x" * 300_000})),
     "oversize"),
    ("empty", b"", "bad_json"),
    ("whitespace", b"  \n", "bad_json"),
    ("truncated", encode_event(envelope())[:50], "bad_json"),
    ("not json", b"event_id=1&type=page_view", "bad_json"),
    ("trailing garbage", encode_event(envelope()) + b"}", "bad_json"),
    ("two documents", encode_event(envelope()) + b"\n" + encode_event(envelope()), "bad_json"),
    ("NaN literal", encode_event(envelope()).replace(b"0.5", b"NaN"), "bad_json"),
    ("lone surrogate in a string", encode_event(envelope()).replace(b'"Home"', b'"\\ud800"'), "bad_json"),
    ("lone surrogate in a json field",
     encode_event(envelope("order_placed", 1)).replace(b'"sku-1"', b'"\\udc00"'), "bad_json"),
    ("missing event_id", encode_event(_without("event_id")), "missing_field"),
    ("missing payload", encode_event(_without("payload")), "missing_field"),
    ("missing type", encode_event(_without("type")), "missing_field"),
    ("missing required payload field", _with_payload(url=_DROP), "missing_field"),
    ("top level array", b"[1, 2]", "wrong_type"),
    ("top level string", b'"page_view"', "wrong_type"),
    ("version as string", encode_event(envelope(version="1")), "wrong_type"),
    ("version as float", encode_event(envelope(version=1.0)), "wrong_type"),
    ("version as bool", encode_event(envelope(version=True)), "wrong_type"),
    ("type as number", encode_event(envelope(type=7)), "wrong_type"),
    ("event_id as number", encode_event(envelope(event_id=12345)), "wrong_type"),
    ("customer_id as number", encode_event(envelope(customer_id=1)), "wrong_type"),
    ("occurred_at as number", encode_event(envelope(occurred_at=1714560000)), "wrong_type"),
    ("payload as array", encode_event(envelope(payload=[1])), "wrong_type"),
    ("payload as null", encode_event(envelope(payload=None)).replace(b'"payload":{', b'"payload":null,"x":{'),
     "wrong_type"),
    ("payload int as string", _with_payload(duration_ms="1200"), "wrong_type"),
    ("payload int as float", _with_payload(duration_ms=1200.0), "wrong_type"),
    ("payload int too large", _with_payload(duration_ms=2**63), "wrong_type"),
    ("payload float as string", _with_payload(scroll_depth="0.5"), "wrong_type"),
    ("payload float out of range", encode_event(envelope()).replace(b"0.5", b"1e400"), "wrong_type"),
    ("payload required null", _with_payload(url=None), "wrong_type"),
    ("payload string too long", _with_payload(title="x" * 513), "wrong_type"),
    ("payload string with NUL", _with_payload(title="a\x00b"), "wrong_type"),
    ("json field not object/array", encode_event(envelope("order_placed", 1, {
        **FULL_PAYLOADS[("order_placed", 1)], "items": "[]"})), "wrong_type"),
    ("json field with NUL", encode_event(envelope("order_placed", 1, {
        **FULL_PAYLOADS[("order_placed", 1)], "items": [{"sku": "a\x00"}]})), "wrong_type"),
    ("json field too long", encode_event(envelope("order_placed", 1, {
        **FULL_PAYLOADS[("order_placed", 1)], "items": ["x" * 40_000]})), "wrong_type"),
    ("bool as int", encode_event(envelope("appointment_booked", 1, {
        **FULL_PAYLOADS[("appointment_booked", 1)], "telehealth": 1})), "wrong_type"),
    ("event_id not a uuid", encode_event(envelope(event_id="not-a-uuid")), "bad_event_id"),
    ("event_id empty", encode_event(envelope(event_id="")), "bad_event_id"),
    ("event_id with braces", encode_event(envelope(event_id="{" + EVENT_ID + "}")), "bad_event_id"),
    ("event_id urn", encode_event(envelope(event_id="urn:uuid:" + EVENT_ID)), "bad_event_id"),
    ("event_id bad hex", encode_event(envelope(event_id=EVENT_ID[:-2] + "zz")), "bad_event_id"),
    ("event_id trailing newline", encode_event(envelope(event_id=EVENT_ID + "\n")), "bad_event_id"),
    ("occurred_at words", encode_event(envelope(occurred_at="yesterday")), "bad_timestamp"),
    ("occurred_at no timezone", encode_event(envelope(occurred_at="2024-05-01T12:00:00")), "bad_timestamp"),
    ("occurred_at date only", encode_event(envelope(occurred_at="2024-05-01")), "bad_timestamp"),
    ("occurred_at month 13", encode_event(envelope(occurred_at="2024-13-01T00:00:00Z")), "bad_timestamp"),
    ("occurred_at underflows UTC", encode_event(envelope(occurred_at="0001-01-01T00:00:00+01:00")),
     "bad_timestamp"),
    ("payload timestamp underflows UTC", encode_event(envelope("order_placed", 1, {
        **FULL_PAYLOADS[("order_placed", 1)], "placed_at": "0001-01-01T00:00:00+01:00"})), "bad_timestamp"),
    ("payload timestamp overflows UTC", encode_event(envelope("order_placed", 1, {
        **FULL_PAYLOADS[("order_placed", 1)], "placed_at": "9999-12-31T23:00:00-02:00"})), "bad_timestamp"),
    ("payload timestamp naive", encode_event(envelope("order_placed", 1, {
        **FULL_PAYLOADS[("order_placed", 1)], "placed_at": "2024-05-01T11:00:00"})), "bad_timestamp"),
    *[
        (f"customer_id {cid!r}", encode_event(envelope(customer_id=cid)), "unsafe_customer_id")
        for cid in ["../../etc", "a/b", "x'; drop table t;--", "", "c" * 300, "c" * 49, "cüstomer",
                    "Cust_0001", "_cust", "cust-1", "cust 1", "cust_0001\n", "cust.1", "cust\x00"]
    ],
    ("unknown type", encode_event(envelope(type="page_vew")), "unknown_type"),
    ("unknown type, empty", encode_event(envelope(type="")), "unknown_type"),
    ("unknown version", encode_event(envelope(version=99)), "unknown_version"),
    ("version zero", encode_event(envelope(version=0)), "unknown_version"),
    ("version negative", encode_event(envelope(version=-1)), "unknown_version"),
    ("version huge", encode_event(envelope(version=7)).replace(b'"version":7', b'"version":' + b"9" * 30),
     "unknown_version"),
    ("30,000-deep unknown field", encode_event(envelope()).replace(b'{"user_id"', b'{"zz":' + b"[" * 30_000
     + b"]" * 30_000 + b',"user_id"'), "too_deep"),
    ("json field 63 levels deep", encode_event(envelope("order_placed", 1, {
        **FULL_PAYLOADS[("order_placed", 1)], "items": []})).replace(b'"items":[]', b'"items":' + b"[" * 63
     + b"]" * 63), "too_deep"),
    ("occurred_at before 1970", encode_event(envelope(occurred_at="1969-12-31T23:59:59Z")), "bad_timestamp"),
    ("occurred_at in 2200", encode_event(envelope(occurred_at="2200-01-01T00:00:00Z")), "bad_timestamp"),
    ("occurred_at in year 9999", encode_event(envelope(occurred_at="9999-12-31T12:00:00Z")), "bad_timestamp"),
    *[
        (f"decimal {fee}", encode_event(envelope("appointment_booked", 1, {
            **FULL_PAYLOADS[("appointment_booked", 1)], "fee": 0})).replace(b'"fee":0', b'"fee":' + fee),
         "wrong_type")
        for fee in [b"1e26", b'"1e26"', b"1E+999999999", b"1E-10", b"1e-999999999"]
    ],
]  # fmt: skip


@pytest.mark.parametrize(("label", "raw", "reason"), INVALID, ids=[case[0] for case in INVALID])
def test_invalid_event_reason(label: str, raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        REGISTRY.decode(raw)
    assert info.value.reason == reason, info.value.detail
    assert info.value.detail
    assert str(info.value).startswith(f"{reason}: ")


def test_every_reason_is_exercised() -> None:
    """``undecodable`` (an unforeseen error) is tested in test_decode_total.py; intake reasons
    are given before decoding (the consumer, the batcher's tenant gate)."""
    assert {case[2] for case in INVALID} == set(DECODE_REASONS) - {"undecodable"}
    assert set(REASONS) == set(DECODE_REASONS) | set(INTAKE_REASONS)


def test_detail_names_the_field_and_type() -> None:
    with pytest.raises(InvalidEvent) as info:
        REGISTRY.decode(_with_payload(duration_ms="12"))
    assert "page_view v1" in info.value.detail and "duration_ms" in info.value.detail
    with pytest.raises(InvalidEvent) as info:
        REGISTRY.decode(encode_event(envelope(version=7)))
    assert "page_view" in info.value.detail and "7" in info.value.detail and "1, 2" in info.value.detail


def test_max_event_bytes_is_configurable() -> None:
    raw = encode_event(envelope())
    small = load_registry(max_event_bytes=len(raw) - 1)
    assert reason_of(raw, small) == "oversize"
    assert load_registry(max_event_bytes=len(raw)).decode(raw).event_id == EVENT_ID
    assert REGISTRY.max_event_bytes == 256 * 1024


def test_invalid_event_rejects_unknown_reason() -> None:
    with pytest.raises(ValueError, match="unknown InvalidEvent reason"):
        InvalidEvent("nope", "x")


def test_get_raises_invalid_event_not_key_error() -> None:
    with pytest.raises(InvalidEvent) as info:
        REGISTRY.get("nope", 1)
    assert info.value.reason == "unknown_type"
    with pytest.raises(InvalidEvent) as info:
        REGISTRY.get("page_view", 3)
    assert info.value.reason == "unknown_version"
    with pytest.raises(InvalidEvent) as info:
        REGISTRY.latest("nope")
    assert info.value.reason == "unknown_type"
    assert isinstance(REGISTRY.get("page_view", 2), EventType)


def test_decode_accepts_bytes_like() -> None:
    raw = encode_event(envelope())
    assert REGISTRY.decode(memoryview(raw)).event_id == EVENT_ID  # type: ignore[arg-type]
    assert REGISTRY.decode(bytearray(raw)).event_id == EVENT_ID  # type: ignore[arg-type]


def test_entity_id() -> None:
    assert [et.entity_field for et in REGISTRY.types()] == [
        "provider_id", "order_id", "order_id", "user_id", "user_id"
    ]  # fmt: skip
    ev = REGISTRY.decode(encode_event(envelope("order_placed", 2)))
    assert REGISTRY.get("order_placed", 2).entity_id(ev.payload) == "ord_1"


# -- JSON helpers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(FULL_PAYLOADS))
def test_event_to_dict_round_trips(key: tuple[str, int]) -> None:
    ev = REGISTRY.decode(encode_event(envelope(*key)))
    as_dict = ev.to_json_dict()
    assert as_dict == event_to_dict(ev)
    assert orjson.loads(orjson.dumps(as_dict)) == as_dict  # JSON-able
    assert as_dict["occurred_at"] == "2024-05-01T12:00:00.123456Z"
    assert REGISTRY.decode(encode_event(as_dict)) == ev
    assert REGISTRY.decode(encode_event(ev)) == ev


def test_encode_event_writes_utc_as_z_and_decimals_as_strings() -> None:
    data = orjson.loads(encode_event({"at": NOW, "fee": Decimal("1.50"), "naive": datetime(2024, 1, 1)}))
    assert data == {"at": "2024-05-01T12:00:00.123456Z", "fee": "1.50", "naive": "2024-01-01T00:00:00"}


# -- customer ids ----------------------------------------------------------------------------------------


@given(st.from_regex(CUSTOMER_ID_PATTERN.replace("$", r"\Z"), fullmatch=True))
def test_customer_ids_matching_the_pattern_are_accepted(customer_id: str) -> None:
    assert is_safe_customer_id(customer_id)
    assert REGISTRY.decode(encode_event(envelope(customer_id=customer_id))).customer_id == customer_id


_SAFE_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def _should_be_safe(s: str) -> bool:
    return 1 <= len(s) <= 48 and set(s) <= _SAFE_CHARS and s[0] != "_"


@given(st.text(max_size=60) | st.text(alphabet="abcxyz019_-/.\n AZ", max_size=60))
def test_customer_ids_are_accepted_exactly_when_safe(customer_id: str) -> None:
    expected = _should_be_safe(customer_id)
    assert is_safe_customer_id(customer_id) is expected
    try:
        ev = REGISTRY.decode(encode_event(envelope(customer_id=customer_id)))
    except InvalidEvent as exc:
        assert not expected
        assert exc.reason == "unsafe_customer_id"
    else:
        assert expected and ev.customer_id == customer_id


def test_is_safe_customer_id_refuses_non_strings() -> None:
    assert not is_safe_customer_id(None)  # type: ignore[arg-type]
    assert not is_safe_customer_id(b"cust")  # type: ignore[arg-type]


# -- property tests --------------------------------------------------------------------------------------

_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | text(20)
    | st.floats(allow_nan=False, allow_infinity=False)
)
_JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(max_size=8).filter(
                lambda s: "\x00" not in s and not any(0xD800 <= ord(c) <= 0xDFFF for c in s)
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=10,
)


def _value(f: FieldDef) -> st.SearchStrategy[Any]:
    return field_value(f, text_size=40, json=_JSON_VALUES, json_items=4)


@st.composite
def events(draw: st.DrawFn) -> tuple[EventType, dict[str, Any]]:
    et = draw(st.sampled_from(REGISTRY.types()))
    payload: dict[str, Any] = {}
    for f in et.fields:
        if f.required or draw(st.booleans()):
            payload[f.name] = draw(_value(f) if f.required else st.none() | _value(f))
    event = {
        "event_id": str(draw(st.uuids())),
        "customer_id": draw(st.from_regex(r"\A[a-z0-9][a-z0-9_]{0,47}\Z")),
        "type": et.name,
        "version": et.version,
        "occurred_at": draw(OCCURRED),
        "payload": payload,
    }
    return et, event


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_any_event_built_from_its_definition_round_trips(case: tuple[EventType, dict[str, Any]]) -> None:
    et, event = case
    ev = REGISTRY.decode(encode_event(event))
    assert (ev.type, ev.version, ev.customer_id, ev.event_id) == (
        et.name, et.version, event["customer_id"], event["event_id"]
    )  # fmt: skip
    assert ev.occurred_at == event["occurred_at"] and ev.occurred_at.tzinfo is UTC
    for f in et.fields:
        given_value = event["payload"].get(f.name)
        got = getattr(ev.payload, f.name)
        if f.kind == "json" and given_value is not None:
            assert msgspec.json.decode(got) == given_value
        else:
            assert got == given_value, f.name
    # and through the dict form again
    assert REGISTRY.decode(encode_event(event_to_dict(ev))) == ev


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_only_ever_raise_invalid_event(raw: bytes) -> None:
    try:
        REGISTRY.decode(raw)
    except InvalidEvent as exc:
        assert exc.reason in REASONS


_ANY_JSON = _JSON_VALUES | st.text(max_size=10) | st.integers() | st.floats()


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    events(),
    st.sampled_from(["event_id", "customer_id", "type", "version", "occurred_at", "payload", "p"]),
    _ANY_JSON,
)
def test_mutated_events_only_ever_raise_invalid_event(
    case: tuple[EventType, dict[str, Any]], field: str, value: Any
) -> None:
    et, event = case
    if field == "p":
        name = next(iter(f.name for f in et.fields))
        event["payload"][name] = value
    else:
        event[field] = value
    try:
        raw = orjson.dumps(event, option=orjson.OPT_UTC_Z, default=str)
    except TypeError:  # integers beyond 64 bits
        raw = msgspec.json.encode(event)
    try:
        ev = REGISTRY.decode(raw)
    except InvalidEvent as exc:
        assert exc.reason in REASONS
    else:
        assert isinstance(ev, Event) and is_safe_customer_id(ev.customer_id)
        assert str(uuid.UUID(ev.event_id)) == ev.event_id
