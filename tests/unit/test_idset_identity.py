"""The id sets' key builder: (customer_id, event_id) → 16-byte identity → 24-byte record."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.ids import CUSTOMER_ID_PATTERN
from workers.idset.identity import PERSON, Identities, identity, identity_input
from workers.idset.layout import DedupeLayout

customers = st.from_regex(CUSTOMER_ID_PATTERN, fullmatch=True)
ids = st.uuids()
T = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
LAYOUT = DedupeLayout.for_stream("s", 86400)


@given(customers, ids, customers, ids)
def test_distinct_pairs_have_distinct_inputs_and_identities(
    c1: str, u1: uuid.UUID, c2: str, u2: uuid.UUID
) -> None:
    """The hashed bytes are injective, so distinct pairs differ but for a 128-bit collision
    (none is expected in any test run: ≈ 2⁻¹²⁸ per pair)."""
    same = (c1, u1) == (c2, u2)
    assert (identity_input(c1, u1.bytes) == identity_input(c2, u2.bytes)) is same
    assert (identity(c1, u1.bytes) == identity(c2, u2.bytes)) is same
    assert (LAYOUT.pack(c1, str(u1), T) == LAYOUT.pack(c2, str(u2), T)) is same


@given(customers, ids)
def test_same_pair_same_identity_whatever_the_cache(c: str, u: uuid.UUID) -> None:
    fresh = Identities()
    assert fresh(c, u.bytes) == fresh(c, u.bytes) == identity(c, u.bytes)
    assert LAYOUT.pack(c, str(u), T) == LAYOUT.pack(c, str(u).upper(), T)  # same 16 bytes


@given(customers, st.text("abcz_019", min_size=1, max_size=16), ids)
def test_the_customer_id_boundary_cannot_move(a: str, b: str, u: uuid.UUID) -> None:
    """("ab", x) vs ("a", "b" + x…): moving bytes across the boundary gives another identity,
    because the length byte says where the customer ends and the id is always 16 bytes."""
    x = u.bytes
    y = (b.encode() + x)[:16]
    assert identity_input(a + b, x) != identity_input(a, y)
    assert identity(a + b, x) != identity(a, y)
    assert identity(a + b, x) != identity(a, x)


def test_boundary_example() -> None:
    c = uuid.UUID(int=0x63).bytes
    assert identity_input("ab", c) == b"\x02ab" + c
    assert identity("ab", c) != identity("a", b"b" + c[:15])


def test_identity_is_the_documented_digest() -> None:
    """Pinned: the stored format must not drift between releases (workers of two versions share Redis)."""
    raw = uuid.UUID("0190f0e2-8c2b-7a6b-9c3d-1234567890ab").bytes
    want = hashlib.blake2b(b"\x04acme" + raw, digest_size=16, person=PERSON).digest()
    assert identity("acme", raw) == want
    assert want.hex() == identity("acme", raw).hex()


def test_refuses_what_is_not_an_event_identity() -> None:
    with pytest.raises(ValueError):
        identity("acme", b"short")
    with pytest.raises(ValueError):
        Identities()("acme", b"x" * 17)
    with pytest.raises(ValueError):
        identity("a" * 256, bytes(16))


@given(st.lists(st.tuples(customers, ids), min_size=2, max_size=200, unique=True))
def test_slot_hash_is_the_identity_prefix_and_slots_spread(pairs: list[tuple[str, uuid.UUID]]) -> None:
    blobs = [LAYOUT.pack(c, str(u), T) for c, u in pairs]
    assert all(b[4:8] == b[8:12] for b in blobs)
    assert len(set(blobs)) == len(pairs)


def test_one_customers_sequential_ids_spread_over_slots() -> None:
    """Time-ordered ids of one customer (shared prefixes) still use the whole slot space."""
    base = uuid.UUID("0190f0e2-8c2b-7a6b-9c3d-000000000000").int
    slots = {LAYOUT.path(LAYOUT.pack("acme", str(uuid.UUID(int=base + i)), T))[0] for i in range(20_000)}
    assert len(slots) > 0.99 * LAYOUT.base_slots
