"""Reading a load's objects ahead: bounded, in order, errors where the object is used."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from inserter.plan import ObjectLoad
from inserter.prefetch import Prefetcher


def objects(*sizes: int) -> list[ObjectLoad]:
    return [ObjectLoad(i + 1, f"k{i}", "c", "t", 1, 1, size, None, None) for i, size in enumerate(sizes)]


class Reads:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, key: str) -> bytes:
        with self.lock:
            self.started.append(key)
        if key == "bad":
            raise OSError("gone")
        return key.encode()


def test_objects_come_back_in_order_with_a_bounded_window() -> None:
    reads = Reads()
    with ThreadPoolExecutor(4) as pool:
        ahead = Prefetcher(reads, pool, objects(*[10] * 6), max_objects=2)
        assert sorted(reads.started) in (["k0", "k1"], ["k0"], ["k1"], [])  # at most two submitted
        assert len(ahead._inflight) == 2
        assert [ahead.get(f"k{i}") for i in range(6)] == [f"k{i}".encode() for i in range(6)]
    assert sorted(reads.started) == [f"k{i}" for i in range(6)]


def test_the_byte_window_holds_back_large_objects_but_always_reads_one() -> None:
    with ThreadPoolExecutor(4) as pool:
        ahead = Prefetcher(Reads(), pool, objects(60, 60, 60), max_objects=8, max_bytes=100)
        assert list(ahead._inflight) == ["k0"]
        assert ahead.get("k0") == b"k0"
        assert list(ahead._inflight) == ["k1"]


def test_a_failed_read_surfaces_when_its_object_is_staged() -> None:
    bad = [*objects(1), ObjectLoad(2, "bad", "c", "t", 1, 1, 1, None, None)]
    with ThreadPoolExecutor(2) as pool:
        ahead = Prefetcher(Reads(), pool, bad)
        assert ahead.get("k0") == b"k0"
        with pytest.raises(OSError, match="gone"):
            ahead.get("bad")


def test_an_object_not_announced_is_read_on_demand_and_close_drops_the_rest() -> None:
    reads = Reads()
    with ThreadPoolExecutor(2) as pool:
        ahead = Prefetcher(reads, pool, objects(1, 1, 1), max_objects=1)
        assert ahead.get("other") == b"other"
        ahead.close()
        assert ahead._inflight == {} and not ahead._queue
