"""The demo's pure checks: histogram quantiles, expected ids, and the exactly-once verdict."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.app.demo.metrics_scrape import bucket_quantile
from pipeline.app.demo.run import DeadLetters
from pipeline.app.demo.verify import Verdict, expected_ids
from pipeline.producer.synthetic import SyntheticConfig, generate

INF = float("inf")


def test_quantile_interpolates_inside_its_bucket_like_promql() -> None:
    buckets = {0.5: 0.0, 1.0: 50.0, 2.0: 100.0, INF: 100.0}
    assert bucket_quantile(buckets, 0.5) == pytest.approx(1.0)
    assert bucket_quantile(buckets, 0.25) == pytest.approx(0.75)
    assert bucket_quantile(buckets, 0.99) == pytest.approx(1.98)


def test_quantile_of_nothing_is_unknown_and_overflow_reports_the_last_bound() -> None:
    assert bucket_quantile({}, 0.5) is None
    assert bucket_quantile({1.0: 0.0, INF: 0.0}, 0.5) is None
    assert bucket_quantile({1.0: 1.0, 5.0: 1.0, INF: 10.0}, 0.99) == 5.0


@given(st.lists(st.integers(0, 50), min_size=3, max_size=8), st.floats(0.01, 0.99))
def test_quantiles_stay_within_the_bounds_and_grow_with_q(counts: list[int], q: float) -> None:
    bounds = [0.1 * 2**i for i in range(len(counts))]
    cumulative: dict[float, float] = {}
    total = 0
    for bound, n in zip(bounds, counts, strict=True):
        total += n
        cumulative[bound] = float(total)
    cumulative[INF] = float(total)
    value = bucket_quantile(cumulative, q)
    if total == 0:
        assert value is None
        return
    assert value is not None and 0.0 <= value <= bounds[-1]
    higher = bucket_quantile(cumulative, min(0.999, q + 0.2))
    assert higher is not None and higher >= value - 1e-9


def test_expected_ids_count_each_valid_event_once_per_customer() -> None:
    records = list(
        generate(SyntheticConfig(seed=3, customers=3, duplicate_ratio=0.2, invalid_ratio=0.1), 2000)
    )
    ids = expected_ids(records)
    valid = {r.event_id for r in records if r.valid}
    assert set().union(*ids.values()) == valid
    assert sum(len(v) for v in ids.values()) == len(valid)  # no id under two customers


def verdict(**kw: object) -> Verdict:
    base: dict[str, object] = {
        "rows_per_customer": {"a": 3},
        "missing": {},
        "unexpected": 0,
        "duplicate_rows": 0,
        "dead": DeadLetters(lines=2, records=2),
        "invalid_sent": 2,
        "model_diff": [],
    }
    return Verdict(**(base | kw))  # type: ignore[arg-type]


def test_the_verdict_holds_only_when_every_check_does() -> None:
    assert verdict().ok and verdict().problems() == []
    assert verdict(dead=DeadLetters(lines=3, records=2)).ok  # a record dead-lettered twice is one record
    bad = [
        verdict(missing={"a": 1}),
        verdict(unexpected=1),
        verdict(duplicate_rows=1),
        verdict(dead=DeadLetters(lines=1, records=1)),
        verdict(model_diff=["hourly[...]: 1 != 2"]),
    ]
    assert not any(v.ok for v in bad)
    assert [len(v.problems()) for v in bad] == [1, 1, 1, 1, 1]
    assert "missing events per customer: {'a': 1}" in bad[0].problems()[0]
