"""pytest imports test modules by basename (rootdir mode, no packages): two files with one name
fail collection of the whole suite, so a duplicate is caught here, in the unit run, first."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
