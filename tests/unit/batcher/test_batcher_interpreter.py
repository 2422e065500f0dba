"""The batcher's process-wide interpreter settings: a short GIL switch interval and a young
generation that fills to YOUNG_COLLECTION_ALLOCATIONS, never lowered."""

from __future__ import annotations

import dataclasses
import gc
import sys
from collections.abc import Iterator

import pytest

from pipeline.core.settings import WorkerSettings
from workers.batcher.context import YOUNG_COLLECTION_ALLOCATIONS, tune_interpreter


@pytest.fixture
def interpreter() -> Iterator[None]:
    threshold, interval = gc.get_threshold(), sys.getswitchinterval()
    yield
    gc.set_threshold(*threshold)
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("interpreter")
def test_the_young_generation_is_raised_and_the_switch_interval_shortened() -> None:
    gc.set_threshold(700, 10, 10)
    sys.setswitchinterval(0.005)
    tune_interpreter(WorkerSettings())
    assert gc.get_threshold() == (YOUNG_COLLECTION_ALLOCATIONS, 10, 10)
    assert sys.getswitchinterval() == pytest.approx(WorkerSettings().gil_switch_interval_ms / 1000)


@pytest.mark.usefixtures("interpreter")
def test_a_higher_threshold_and_a_zero_interval_setting_are_left_alone() -> None:
    gc.set_threshold(YOUNG_COLLECTION_ALLOCATIONS * 2, 5, 5)
    sys.setswitchinterval(0.005)
    tune_interpreter(dataclasses.replace(WorkerSettings(), gil_switch_interval_ms=0))
    assert gc.get_threshold() == (YOUNG_COLLECTION_ALLOCATIONS * 2, 5, 5)
    assert sys.getswitchinterval() == pytest.approx(0.005)
