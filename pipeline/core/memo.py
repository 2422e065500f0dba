"""One value per combination of objects, by identity: a process builds one worker context per
(client factory, settings) pair and one metrics set per Prometheus registry, however many shard
processors ask. Keys are identities, not values (Settings holds mappings: unhashable), and the
objects are kept with the value so a recycled ``id()`` can never return another object's value.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class IdentityMemo(Generic[T]):
    def __init__(self, build: Callable[..., T]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._entries: dict[tuple[int, ...], tuple[tuple[object, ...], T]] = {}

    def get(self, *objects: object) -> T:
        """The value built for exactly these objects, building it on first use."""
        key = tuple(id(o) for o in objects)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or any(a is not b for a, b in zip(entry[0], objects, strict=True)):
                entry = (objects, self._build(*objects))
                self._entries[key] = entry
            return entry[1]
