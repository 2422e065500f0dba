"""Hypothesis strategies for event field values, one per schema field kind — shared by the schema
property tests (tests/unit/test_schemas.py) and the batcher's Arrow-build tests
(tests/unit/batcher/test_batcher_columns.py), which differ only in sizes and JSON shapes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from schemas.definition import FieldDef
from schemas.registry import OCCURRED_AT_MAX, OCCURRED_AT_MIN

#: Aware datetimes in and around UTC over three centuries.
AWARE = st.datetimes(
    min_value=datetime(1900, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
    ),
)

#: ``occurred_at`` values the registry accepts (its documented range), in and around UTC.
OCCURRED = st.datetimes(
    min_value=OCCURRED_AT_MIN.replace(tzinfo=None) + timedelta(days=1),
    max_value=OCCURRED_AT_MAX.replace(tzinfo=None) - timedelta(days=1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
    ),
)


def text(max_size: int) -> st.SearchStrategy[str]:
    """Any text a JSON string can carry except NUL (control and private-use characters too)."""
    return st.text(
        alphabet=st.characters(
            categories=["L", "M", "N", "P", "S", "Z", "Cc", "Cf", "Co"], blacklist_characters="\x00"
        ),
        max_size=max_size,
    )


def field_value(
    f: FieldDef, *, text_size: int, json: st.SearchStrategy[Any], json_items: int
) -> st.SearchStrategy[Any]:
    """A valid value for ``f``: strings up to ``text_size`` (or the field's shorter limit), json
    fields as lists of up to ``json_items`` or small objects of ``json`` values."""
    if f.kind == "string":
        return text(text_size) if f.limit >= text_size else st.text(alphabet="abcXYZ€", max_size=f.limit)
    if f.kind == "int":
        return st.integers(-(2**63), 2**63 - 1)
    if f.kind == "float":
        return st.floats(allow_nan=False, allow_infinity=False)
    if f.kind == "bool":
        return st.booleans()
    if f.kind == "timestamp":
        return AWARE
    if f.kind == "decimal":
        assert f.precision is not None and f.scale is not None
        bound = 10 ** (f.precision - f.scale) - 1
        return st.decimals(
            places=f.scale, min_value=-bound, max_value=bound, allow_nan=False, allow_infinity=False
        )
    return st.lists(json, max_size=json_items) | st.dictionaries(st.sampled_from("abc"), json, max_size=3)
