"""Names, manifest checks and load plans — pure, no servers."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inserter.errors import UnknownEventSchema
from inserter.naming import (
    TableRef,
    UnsafeName,
    customer_schema,
    lock_key,
    reader_role,
    target_table,
)
from inserter.plan import combine_plans, parse_time, plan_load
from pipeline.core.layout import EventObjectKey
from pipeline.core.manifest import BatchManifest, BatchObject, ManifestError
from schemas import CUSTOMER_ID_PATTERN, is_safe_sql_name, load_registry

REGISTRY = load_registry()
BUCKET = "events-bucket"


def key(customer: str, event_type: str = "page_view", version: int = 1, first: str = "1") -> str:
    return str(
        EventObjectKey(customer, event_type, version, date(2024, 5, 1), "shardId-000000000000", first, "9")
    )


def obj(
    customer: str, event_type: str = "page_view", version: int = 1, first: str = "1", **kw: object
) -> BatchObject:
    fields: dict[str, object] = {
        "key": key(customer, event_type, version, first),
        "customer_id": customer,
        "type": event_type,
        "version": version,
        "rows": 3,
        "bytes": 100,
        "min_occurred_at": "2024-05-01T12:00:00.000000Z",
        "max_occurred_at": "2024-05-01T12:00:02.000000Z",
    }
    return BatchObject(**(fields | kw))  # type: ignore[arg-type]


def manifest(*objects: BatchObject, bucket: str = BUCKET) -> BatchManifest:
    return BatchManifest(
        1, "s/shardId-000000000000/1-9", "s", "shardId-000000000000", "1", "9", bucket, objects
    )


# -- names -----------------------------------------------------------------------------------------


@given(st.from_regex(CUSTOMER_ID_PATTERN, fullmatch=True))
def test_every_safe_customer_id_gives_safe_names(customer: str) -> None:
    schema, role = customer_schema(customer), reader_role(customer)
    assert schema == f"c_{customer}" and role == f"c_{customer}_reader"
    assert is_safe_sql_name(schema) and is_safe_sql_name(role) and len(role) <= 63
    assert target_table(customer, "order_placed") == TableRef(schema, "order_placed")


@pytest.mark.parametrize("bad", ["", "Acme", "a-b", 'x"; DROP TABLE t; --', "a" * 49, "acme\n", "é"])
def test_unsafe_customer_ids_never_become_names(bad: str) -> None:
    with pytest.raises(UnsafeName):
        customer_schema(bad)
    with pytest.raises(UnsafeName):
        target_table("acme", bad or "X")


def test_lock_keys_are_stable_signed_64_bit_and_distinct() -> None:
    assert lock_key("table:c_acme.page_view") == lock_key("table:c_acme.page_view")
    assert (
        lock_key("table:c_acme.page_view") == 81_857_449_709_269_765
    )  # pinned: every inserter version must agree
    keys = {lock_key(f"table:c_{i}.page_view") for i in range(1000)}
    assert len(keys) == 1000 and all(-(2**63) <= k < 2**63 for k in keys)


def test_table_refs_sort_in_lock_order() -> None:
    refs = [TableRef("c_b", "a"), TableRef("c_a", "z"), TableRef("c_a", "b")]
    assert sorted(refs) == [TableRef("c_a", "b"), TableRef("c_a", "z"), TableRef("c_b", "a")]
    assert str(refs[0]) == "c_b.a"


# -- plans -----------------------------------------------------------------------------------------


def test_plan_groups_per_table_in_lock_order_with_manifest_ordinals() -> None:
    plan = plan_load(
        manifest(
            obj("zeta", "order_placed", 2),
            obj("acme", "page_view", 2),
            obj("acme", "page_view", 1),
            obj("acme", "page_view", 1),  # listed twice: loaded once
            obj("acme", "order_placed", 1),
        ),
        REGISTRY,
        bucket=BUCKET,
    )
    assert [str(t.target) for t in plan.tables] == [
        "c_acme.order_placed",
        "c_acme.page_view",
        "c_zeta.order_placed",
    ]
    assert [[o.ordinal for o in t.objects] for t in plan.tables] == [[4], [2, 3], [1]]
    assert plan.tables[1].versions() == (1, 2)
    assert [o.ordinal for o in plan.objects] == [1, 2, 3, 4]
    first = plan.objects[0]
    assert first.min_occurred_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    rest = plan.without({key("acme", "page_view", 2)})
    assert [[o.version for o in t.objects] for t in rest.tables] == [[1], [1], [2]]
    assert plan.without(set(plan.keys)).tables == ()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (obj("acme", key="events/../../secrets.parquet"), "not an event object key"),
        (obj("acme", customer_id="other"), "claims customer/type/version"),
        (obj("acme", type="order_placed"), "claims customer/type/version"),
        (obj("acme", key=key("acme", version=2)), "claims customer/type/version"),
        (obj("acme", rows=-1), "negative size"),
        (obj("acme", min_occurred_at="yesterday"), "bad timestamp"),
        (obj("acme", max_occurred_at="2024-05-01T12:00:00"), "no offset"),
    ],
)
def test_malformed_manifests_are_refused(bad: BatchObject, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        plan_load(manifest(bad), REGISTRY, bucket=BUCKET)


def test_a_manifest_for_another_bucket_is_refused() -> None:
    with pytest.raises(ManifestError, match="this inserter loads"):
        plan_load(manifest(obj("acme"), bucket="elsewhere"), REGISTRY, bucket=BUCKET)


def test_unknown_versions_need_newer_definitions_not_the_dlq() -> None:
    with pytest.raises(UnknownEventSchema, match="unknown version 9"):
        plan_load(manifest(obj("acme", "page_view", 9)), REGISTRY, bucket=BUCKET)
    with pytest.raises(UnknownEventSchema, match="unknown event type"):
        plan_load(manifest(obj("acme", "page_zoom", 1)), REGISTRY, bucket=BUCKET)


def test_timestamps_parse_to_utc() -> None:
    assert parse_time("") is None
    assert parse_time("2024-05-01T14:00:00+02:00") == datetime(2024, 5, 1, 12, tzinfo=UTC)


# -- several batches in one load ------------------------------------------------------------------


def batch(batch_id: str, *objects: BatchObject) -> BatchManifest:
    return BatchManifest(1, batch_id, "s", "shardId-000000000000", "1", "9", BUCKET, objects)


def test_combined_plans_merge_per_table_and_keep_each_objects_batch() -> None:
    a = plan_load(batch("s/a", obj("acme", first="1"), obj("beta", first="1")), REGISTRY, bucket=BUCKET)
    b = plan_load(batch("s/b", obj("acme", first="2"), obj("acme", "order_placed", first="2")), REGISTRY,
                  bucket=BUCKET)  # fmt: skip
    combined = combine_plans([a, b])
    assert combined.batch_id == "s/a+s/b"
    assert [t.target for t in combined.tables] == sorted(t.target for t in combined.tables)
    acme_views = next(t for t in combined.tables if t.customer_id == "acme" and t.event_type == "page_view")
    assert [(o.key, o.batch_id) for o in acme_views.objects] == [(key("acme", first="1"), "s/a"),
                                                                 (key("acme", first="2"), "s/b")]  # fmt: skip
    assert sorted(o.ordinal for o in combined.objects) == [1, 2, 3, 4]


@given(
    st.lists(
        st.lists(st.sampled_from(["acme", "beta", "gamma"]), min_size=1, max_size=4), min_size=1, max_size=5
    )
)
def test_combining_loads_every_distinct_object_once(batches: list[list[str]]) -> None:
    plans = [
        plan_load(
            batch(f"s/{i}", *(obj(c, first=str(j)) for j, c in enumerate(customers))), REGISTRY, bucket=BUCKET
        )
        for i, customers in enumerate(batches)
    ]
    combined = combine_plans(plans)
    keys = [o.key for o in combined.objects]
    assert sorted(keys) == sorted({k for p in plans for k in p.keys})
    assert sorted(o.ordinal for o in combined.objects) == list(range(1, len(keys) + 1))
    first_batch = {}
    for p in plans:
        for o in p.objects:
            first_batch.setdefault(o.key, o.batch_id)
    assert {o.key: o.batch_id for o in combined.objects} == first_batch


def test_plans_of_different_buckets_do_not_combine() -> None:
    a = plan_load(batch("s/a", obj("acme")), REGISTRY, bucket=BUCKET)
    other = BatchManifest(1, "s/b", "s", "shardId-000000000000", "1", "9", "other", (obj("acme"),))
    with pytest.raises(ValueError, match="different buckets"):
        combine_plans([a, plan_load(other, REGISTRY, bucket="other")])
