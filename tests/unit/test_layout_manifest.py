from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.layout import EventObjectKey, UnsafeKeyComponent, dead_letter_key, parse_event_key
from pipeline.core.manifest import (
    FORMAT,
    BatchManifest,
    BatchObject,
    ManifestError,
    decode_manifest,
    encode_manifest,
)

safe = st.from_regex(r"[a-z0-9][a-z0-9_]{0,47}", fullmatch=True)
seq = st.from_regex(r"[0-9]{1,56}", fullmatch=True)
shard = st.integers(0, 10**12 - 1).map(lambda n: f"shardId-{n:012d}")


@given(safe, safe, st.integers(1, 9999), st.dates(), shard, seq, seq)
def test_event_key_round_trips(c: str, t: str, v: int, d: date, s: str, a: str, b: str) -> None:
    key = EventObjectKey(c, t, v, d, s, a, b)
    assert parse_event_key(str(key)) == key
    assert str(key).startswith(f"events/customer={c}/type={t}/v={v}/dt=")


@pytest.mark.parametrize("bad", ["../../etc", "a/b", "x'; drop table t;--", "", "a" * 300, "café", "A"])
def test_unsafe_customer_never_becomes_a_key(bad: str) -> None:
    with pytest.raises(UnsafeKeyComponent):
        str(EventObjectKey(bad, "page_view", 1, date(2026, 1, 1), "shardId-000000000000", "1", "2"))


@given(st.text())
def test_parse_rejects_anything_not_a_key(text: str) -> None:
    try:
        parsed = parse_event_key(text)
    except UnsafeKeyComponent:
        return
    assert str(parsed) == text


def test_dead_letter_key() -> None:
    key = dead_letter_key("my stream/../x", "shardId-000000000001", date(2026, 11, 22), "10", "20")
    assert key == "dead-letter/stream=my_stream_.._x/dt=2026-11-22/shardId-000000000001-10-20.jsonl"


def _manifest() -> BatchManifest:
    obj = BatchObject(
        "events/k.parquet", "c1", "page_view", 1, 10, 999, "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"
    )
    return BatchManifest(
        FORMAT, "s/shardId-000000000000/1-2", "s", "shardId-000000000000", "1", "2", "b", (obj,)
    )


def test_manifest_round_trip() -> None:
    m = _manifest()
    assert decode_manifest(encode_manifest(m)) == m


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json", "malformed batch manifest"),
        ('{"format": 1}', "malformed batch manifest"),
        (encode_manifest(_manifest()).replace('"format":2', '"format":9'), "unsupported manifest format 9"),
    ],
)
def test_bad_manifests_are_poison(body: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        decode_manifest(body)
