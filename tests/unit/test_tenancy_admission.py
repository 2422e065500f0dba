"""The pure part of new-customer admission: the allow-list and its parsing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.tenancy.admission import (
    CUSTOMER_NOT_ALLOWED,
    Admission,
    AdmissionPolicy,
    refusal,
)

ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=12)


def test_no_allow_list_and_no_limit_admits_everyone_without_redis() -> None:
    assert Admission.everyone().check("anyone", 0) is None
    assert Admission.everyone().admits_everyone  # the batcher then skips the check per record


@given(st.frozensets(ids, max_size=8), ids)
def test_the_allow_list_refuses_exactly_the_customers_not_on_it(
    allowed: frozenset[str], customer: str
) -> None:
    policy = AdmissionPolicy.parse(",".join(sorted(allowed)), 0, 60)
    assert policy.allowed == allowed
    assert Admission(policy).admits_everyone is not bool(allowed)
    out = refusal(policy, customer)
    if not allowed or customer in allowed:
        assert out is None and Admission(policy).check(customer, 0) is None
    else:
        assert out is not None and out[0] == CUSTOMER_NOT_ALLOWED and customer in out[1]


def test_the_allow_list_may_come_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "allowed.txt"
    path.write_text("c1\n\n c2 \n")
    assert AdmissionPolicy.parse(f"@{path}", 0, 60).allowed == {"c1", "c2"}


def test_a_limit_needs_redis_and_a_negative_one_is_refused() -> None:
    with pytest.raises(ValueError, match="needs Redis"):
        Admission(AdmissionPolicy(new_per_hour=3))
    with pytest.raises(ValueError, match="≥ 0"):
        AdmissionPolicy.parse("", -1, 60)
