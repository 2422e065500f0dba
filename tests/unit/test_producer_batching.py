"""PutRecords batching limits and partition keys (pure, property-tested)."""

from __future__ import annotations

import itertools

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.producer.batching import (
    MAX_PARTITION_KEY_CHARS,
    MAX_RECORD_BYTES,
    MAX_RECORDS_PER_REQUEST,
    MAX_REQUEST_BYTES,
    InvalidPartitionKey,
    RecordTooLarge,
    batches,
    hash_partition_key,
    partition_key_for_event,
    partition_key_for_line,
    record_size,
)

keys = st.text(min_size=1, max_size=MAX_PARTITION_KEY_CHARS)


@st.composite
def records(draw: st.DrawFn) -> list[tuple[bytes, str]]:
    """Mostly small records, some near the 1 MiB limit, so both limits get exercised."""
    size = st.one_of(
        st.integers(0, 300),
        st.integers(MAX_RECORD_BYTES - 2048, MAX_RECORD_BYTES - 1024),
        st.integers(200_000, 600_000),
    )
    n = draw(st.integers(0, 1200))
    # At most 16 large records per example keeps memory small; clustering them near the start
    # often puts more than 5 MiB into one 500-record window.
    anywhere = st.integers(0, max(n - 1, 0))
    position = st.one_of(anywhere, st.integers(0, min(max(n - 1, 0), 40)))
    bigs = draw(st.lists(st.tuples(position, size), max_size=16 if n else 0))
    out = [(b"r%d" % i, f"k{i % 7}") for i in range(n)]
    for index, length in bigs:
        key = draw(keys)
        out[index] = (bytes([index % 256]) * max(0, length - len(key.encode())), key)
    return out


@settings(max_examples=60, deadline=None)
@given(records(), st.integers(1, MAX_RECORDS_PER_REQUEST))
def test_batches_respect_limits_and_keep_everything_in_order(
    items: list[tuple[bytes, str]], max_records: int
) -> None:
    out = list(batches(items, max_records=max_records))
    assert all(out), "no empty batches"
    assert list(itertools.chain.from_iterable(out)) == items  # nothing lost, order kept
    for batch in out:
        assert len(batch) <= max_records
        assert sum(record_size(d, k) for d, k in batch) <= MAX_REQUEST_BYTES
    for batch, following in itertools.pairwise(out):  # greedy: a batch closes only when full
        size = sum(record_size(d, k) for d, k in batch) + record_size(*following[0])
        assert len(batch) == max_records or size > MAX_REQUEST_BYTES


def test_five_megabytes_is_the_request_limit_counting_partition_keys() -> None:
    key = "k" * 24
    record = (b"x" * (MAX_RECORD_BYTES - len(key)), key)  # exactly 1 MiB with its key
    out = list(batches([record] * 11))
    assert [len(b) for b in out] == [5, 5, 1]
    assert sum(record_size(*r) for r in out[0]) == MAX_REQUEST_BYTES


def test_count_limit_is_500() -> None:
    out = list(batches((b"x", "k") for _ in range(1201)))
    assert [len(b) for b in out] == [500, 500, 201]


def test_record_over_one_mebibyte_is_rejected_before_its_batch_is_sent() -> None:
    key = "customer-1"
    ok = (b"a", key)
    too_big = (b"x" * (MAX_RECORD_BYTES - len(key) + 1), key)
    gen = batches([ok] * 500 + [ok, too_big])
    assert next(gen) == [ok] * 500
    with pytest.raises(RecordTooLarge) as info:
        next(gen)
    assert info.value.index == 501
    assert info.value.size == MAX_RECORD_BYTES + 1
    assert "record #501 is 1,048,577 bytes" in str(info.value)
    assert "at most 1,048,576" in str(info.value)


@pytest.mark.parametrize("key", ["", "k" * (MAX_PARTITION_KEY_CHARS + 1)])
def test_partition_key_length_is_checked(key: str) -> None:
    with pytest.raises(InvalidPartitionKey, match="partition key must be 1-256 characters"):
        list(batches([(b"x", key)]))


def test_partition_key_limit_is_in_characters_but_bytes_count_toward_size() -> None:
    key = "é" * MAX_PARTITION_KEY_CHARS  # 256 characters, 512 bytes
    assert record_size(b"", key) == 512
    assert list(batches([(b"", key)])) == [[(b"", key)]]


def test_max_age_closes_a_batch_when_records_arrive_slowly() -> None:
    now = [0.0]

    def slow() -> object:
        for i in range(10):
            now[0] = i * 0.1  # one record every 100 ms
            yield (b"%d" % i, "k")

    out = list(batches(slow(), max_age=0.25, clock=lambda: now[0]))  # type: ignore[arg-type]
    assert [len(b) for b in out] == [3, 3, 3, 1]


def test_limits_of_the_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        list(batches([], max_records=501))
    with pytest.raises(ValueError):
        list(batches([], max_bytes=MAX_REQUEST_BYTES + 1))


# --- partition keys ---------------------------------------------------------------------------

customer_ids = st.text(min_size=1, max_size=300)
entity_ids = st.one_of(st.none(), st.text(max_size=40), st.integers())


@given(customer_ids, entity_ids, st.booleans())
def test_event_partition_key_is_valid_and_deterministic(
    customer: str, entity: object, in_payload: bool
) -> None:
    event: dict[str, object] = {"customer_id": customer, "payload": {}}
    if entity is not None:
        if in_payload:
            event["payload"] = {"entity_id": entity}
        else:
            event["entity_id"] = entity
    key = partition_key_for_event(event)
    assert key is not None
    assert 1 <= len(key) <= MAX_PARTITION_KEY_CHARS
    assert key == partition_key_for_event(dict(event))
    expected = f"{customer}:{entity}" if entity not in (None, "") else customer
    if len(expected) <= MAX_PARTITION_KEY_CHARS:
        assert key == expected
    else:
        assert key == hash_partition_key(expected.encode())


@pytest.mark.parametrize(
    "event",
    [{}, {"customer_id": ""}, {"customer_id": 7}, {"customer_id": None}, {"type": "x"}],
)
def test_event_without_a_usable_customer_has_no_key(event: dict[str, object]) -> None:
    assert partition_key_for_event(event) is None


def test_boolean_entity_is_not_an_entity() -> None:
    assert partition_key_for_event({"customer_id": "c1", "entity_id": True}) == "c1"


@given(st.binary(max_size=200))
def test_line_partition_key_is_always_valid(line: bytes) -> None:
    key, _ = partition_key_for_line(line)
    assert 1 <= len(key) <= MAX_PARTITION_KEY_CHARS
    assert partition_key_for_line(line) == partition_key_for_line(bytes(line))


def test_line_keys_match_the_synthetic_generators_keys() -> None:
    from pipeline.producer.synthetic import SyntheticConfig, generate

    records = [r for r in generate(SyntheticConfig(seed=3), 3_000) if r.valid]
    assert {r.partition_key.split(":")[1][:4] for r in records} == {"user", "ord_", "prov"}
    assert [partition_key_for_line(r.data)[0] for r in records] == [r.partition_key for r in records]


def test_entity_field_priority() -> None:
    payload = {"order_id": "o1", "user_id": "u1"}
    assert partition_key_for_event({"customer_id": "c", "payload": payload}) == "c:o1"
    assert partition_key_for_event({"customer_id": "c", "entity_id": "e", "payload": payload}) == "c:e"


def test_line_partition_keys() -> None:
    event = {"customer_id": "acme", "entity_id": "order-9", "type": "t"}
    assert partition_key_for_line(orjson.dumps(event)) == ("acme:order-9", True)
    assert partition_key_for_line(b'{"customer_id": "acme"}') == ("acme", True)
    assert partition_key_for_line(b"[1, 2]") == (hash_partition_key(b"[1, 2]"), True)
    assert partition_key_for_line(b"{not json") == (hash_partition_key(b"{not json"), False)
    assert partition_key_for_line(b"\xff\xfe") == (hash_partition_key(b"\xff\xfe"), False)
