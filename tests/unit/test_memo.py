"""IdentityMemo: one value per combination of objects, by identity, never by equality."""

from __future__ import annotations

import threading

from pipeline.core.memo import IdentityMemo


class Key:
    def __eq__(self, other: object) -> bool:  # equal to everything: identity must decide
        return True

    __hash__ = None  # type: ignore[assignment]  # unhashable, like Settings with a mapping


def test_the_same_objects_get_the_same_value_built_once() -> None:
    built: list[tuple[object, ...]] = []
    memo: IdentityMemo[list[int]] = IdentityMemo(lambda *objs: built.append(objs) or [len(built)])
    a, b = Key(), Key()
    assert memo.get(a, b) is memo.get(a, b)
    assert len(built) == 1


def test_equal_but_distinct_objects_get_their_own_value() -> None:
    memo: IdentityMemo[object] = IdentityMemo(lambda *objs: object())
    a, b = Key(), Key()
    assert memo.get(a) is not memo.get(b)
    assert memo.get(a, b) is not memo.get(b, a)


def test_concurrent_first_use_builds_one_value() -> None:
    calls = 0
    gate = threading.Barrier(8)

    def build(_: object) -> int:
        nonlocal calls
        calls += 1
        return calls

    memo: IdentityMemo[int] = IdentityMemo(build)
    key = Key()
    results: list[int] = []

    def worker() -> None:
        gate.wait()
        results.append(memo.get(key))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == 1 and set(results) == {1}
