"""The Redis adapter of the read models: apply messages, move generation pointers, dump a
generation, delete old ones. Every call is bounded (socket timeouts from the client factory)
and retried with backoff when transient; applying is idempotent, so a retry after a lost reply
is safe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, TypeVar

import redis

from pipeline.core.errors import TerminalError
from pipeline.core.redis_errors import classify_redis
from pipeline.core.retry import Backoff, call_with_retry
from workers.idset.layout import with_walk
from workers.projector import keys
from workers.projector.fold import EntityState, ReadModels
from workers.projector.plan import Message

T = TypeVar("T")
_BACKOFF: Final = Backoff(base=0.05, cap=2.0, max_attempts=6)
SCAN_COUNT: Final = 1000


def listpack_cap(client: redis.Redis, default: int = 127) -> int:
    """Entries per hash of the gate's old layout (ids + the count field), as versions before
    2026-12-08 sized them: 127, or fewer if the server converts hashes to hashtables sooner.
    ElastiCache refuses CONFIG; then at least 128 is assumed (both Redis' built-in default and
    ElastiCache's parameter group say 512)."""
    try:
        reply: Any = client.config_get("hash-max-listpack-entries")
        entries = int(reply.get("hash-max-listpack-entries", 128))
        value: Any = client.config_get("hash-max-listpack-value")
        if int(value.get("hash-max-listpack-value", 64)) < 16:
            return default  # fields of 16 bytes will not be listpack anyway; keep the layout
    except (redis.RedisError, ValueError, TypeError):
        return default  # ElastiCache (no CONFIG), or not reachable yet: Redis' own default
    return max(1, min(default, entries))


def _script(name: str) -> str:
    return resources.files("workers.projector").joinpath(name).read_text()


@dataclass(frozen=True, slots=True)
class ApplyResult:
    new: int  # events new to the (first) target generation
    events: int
    generations: tuple[str, ...]


class GenerationLost(TerminalError):
    """The generation a rebuild was filling is no longer the one being built."""


@dataclass(frozen=True, slots=True)
class Status:
    current: str | None
    building: str | None
    origin: str | None
    positions: dict[str, str]


class ProjectionStore:
    def __init__(
        self, client: redis.Redis, namespace: keys.Namespace, *, backoff: Backoff = _BACKOFF
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.backoff = backoff
        self._apply = client.register_script(with_walk(_script("apply.lua")))
        self._admin = client.register_script(_script("admin.lua"))
        self._read = client.register_script(_script("read.lua"))

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        def attempt() -> T:
            try:
                return fn()
            except redis.RedisError as exc:
                raise classify_redis(exc, what) from exc

        return call_with_retry(attempt, what=what, backoff=self.backoff)

    # -- applying -------------------------------------------------------------------------------

    def apply(self, messages: Sequence[Message]) -> list[ApplyResult]:
        """Apply messages in order, in one round trip (a pipeline of EVALSHAs)."""
        if not messages:
            return []
        if len(messages) == 1:
            replies = [self._retry("apply read models", lambda: self._apply(keys=[], args=list(messages[0])))]
        else:
            replies = self._retry("apply read models", lambda: self._pipeline(messages))
        return [self._result(reply) for reply in replies]

    def _pipeline(self, messages: Sequence[Message]) -> list[Any]:
        sha = self._apply.sha
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for message in messages:
                pipe.evalsha(sha, 0, message.body, message.gate)
            replies: list[Any] = pipe.execute(raise_on_error=False)
            errors = [r for r in replies if isinstance(r, Exception)]
            if not errors:
                return replies
            if attempt == 0 and all(isinstance(e, redis.exceptions.NoScriptError) for e in errors):
                self.client.script_load(self._apply.script)  # a restarted or flushed server
                continue
            raise errors[0]
        raise AssertionError("unreachable")

    @staticmethod
    def _result(reply: Any) -> ApplyResult:
        if not isinstance(reply, list) or not reply:
            raise TerminalError(f"apply read models: malformed reply {reply!r:.80}")
        if reply[0] == -1:
            raise GenerationLost("the generation being rebuilt was abandoned (building marker gone)")
        gens = tuple(g.decode() if isinstance(g, bytes) else str(g) for g in reply[2:])
        return ApplyResult(new=int(reply[0]), events=int(reply[1]), generations=gens)

    def gate_since(self) -> int:
        """When (server epoch seconds) the first projector with the identity-only gate met this
        namespace: set once, read by every later one. 0 when it found no read models at all
        (nothing can have been marked the old way)."""
        ns = self.namespace

        def since() -> int:
            now = int(self.client.time()[0])
            first = 0 if not self.client.exists(ns.current) else now
            self.client.set(ns.gate_marker, first, nx=True)
            return int(self.client.get(ns.gate_marker) or first)

        return self._retry("read model gate marker", since)

    def read(self, op: str, *args: str | int) -> tuple[str | None, Any]:
        """One ``read.lua`` query against the current generation: ``(generation, data)``;
        generation None when there are no read models at all."""
        reply = self._retry(
            "read model query", lambda: self._read(keys=[], args=[self.namespace.prefix, op, *args])
        )
        return _text(reply[0]), reply[1]

    # -- generations ----------------------------------------------------------------------------

    def status(self) -> Status:
        ns = self.namespace

        def read() -> Status:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(ns.current)
            pipe.get(ns.building)
            pipe.get(ns.origin)
            pipe.hgetall(ns.positions)
            cur, building, origin, pos = pipe.execute()
            return Status(
                current=_text(cur),
                building=_text(building),
                origin=_text(origin),
                positions={_str(k): _str(v) for k, v in pos.items()},
            )

        return self._retry("read model status", read)

    def _admin_call(self, *args: str | int) -> Any:
        return self._retry(
            f"read model {args[0]}", lambda: self._admin(keys=[], args=[self.namespace.prefix, *args])
        )

    def begin_build(self, ttl_seconds: int, *, force: bool = False) -> tuple[str, dict[str, str], str | None]:
        """Claim a new generation for a rebuild: ``(gen, applied positions, current)``.

        Raises TerminalError if another rebuild holds the building marker (unless ``force``)."""
        reply = self._admin_call("begin", ttl_seconds, "1" if force else "0")
        if int(reply[0]) != 1:
            raise TerminalError(
                f"a rebuild is already filling generation {_str(reply[1])} of {self.namespace.prefix!r}; "
                "wait for it, or pass --force if it died (its marker expires by itself)"
            )
        flat = [_str(x) for x in reply[2]]
        positions = dict(zip(flat[0::2], flat[1::2], strict=True))
        return _str(reply[1]), positions, _text(reply[3])

    def heartbeat(self, gen: str, ttl_seconds: int) -> bool:
        return int(self._admin_call("heartbeat", gen, ttl_seconds)) == 1

    def switch(self, gen: str, origin: str) -> str | None:
        """Make ``gen`` current; returns the previous current generation."""
        reply = self._admin_call("switch", gen, origin)
        if int(reply[0]) != 1:
            raise GenerationLost(f"cannot switch to generation {gen}: it is no longer the one being built")
        return _text(reply[1])

    def abort(self, gen: str) -> bool:
        return int(self._admin_call("abort", gen)) == 1

    def delete_generation(self, gen: str) -> int:
        """UNLINK every key of one generation (SCAN in pages, so Redis never blocks long)."""
        return self._delete_matching(self.namespace.generation_pattern(gen), lambda _k: True)

    def delete_older_generations(self, than: int) -> int:
        """UNLINK the keys of every generation numbered below ``than`` (left-overs included)."""
        prefix = self.namespace.prefix

        def older(key: str) -> bool:
            gen, sep, _ = key[len(prefix) :].partition(":")
            return bool(sep) and gen.isdigit() and int(gen) < than

        return self._delete_matching(self.namespace.all_generations_pattern(), older)

    def _delete_matching(self, pattern: str, wanted: Callable[[str], bool]) -> int:
        deleted = 0
        cursor = 0
        while True:
            cursor, batch = self._retry(
                "scan read models",
                lambda c=cursor: self.client.scan(cursor=c, match=pattern, count=SCAN_COUNT),  # type: ignore[misc]
            )
            doomed = [k for k in batch if wanted(_str(k))]
            if doomed:
                deleted += int(self._retry("delete read models", lambda d=doomed: self.client.unlink(*d)))  # type: ignore[misc]
            if cursor == 0:
                return deleted

    # -- dumping --------------------------------------------------------------------------------

    def snapshot(self, gen: str | None = None) -> ReadModels:
        """Every model of a generation (the current one by default), for tests and audits.
        Not atomic: dump a generation that is not being written to."""
        if gen is None:
            gen = self.status().current
            if gen is None:
                return ReadModels()
        base = self.namespace.generation(gen)
        models = ReadModels()
        cursor = 0
        while True:
            cursor, batch = self.client.scan(
                cursor=cursor, match=self.namespace.generation_pattern(gen), count=SCAN_COUNT
            )
            names = [_str(k) for k in batch]
            parsed = [(name, keys.parse_key(name[len(base) :])) for name in names]
            wanted = [(name, p) for name, p in parsed if p is not None and p.family != "ap"]
            pipe = self.client.pipeline(transaction=False)
            for name, p in wanted:
                if p.family in ("t", "x"):
                    pipe.zrange(name, 0, -1, withscores=True)
                elif p.family == "e":
                    pipe.get(name)
                else:
                    pipe.hgetall(name)
            for (_, p), value in zip(wanted, pipe.execute(), strict=True):
                _absorb(models, p, value)
            if cursor == 0:
                return models


def _absorb(models: ReadModels, p: keys.ParsedKey, value: Any) -> None:
    c = p.customer
    if p.family == "ch":
        day = p.rest[0]
        for f, v in value.items():
            etype, _, hh = _str(f).rpartition(":")
            models.hourly[(c, etype, f"{day[:4]}-{day[4:6]}-{day[6:]}T{hh}")] = int(v)
    elif p.family == "cd":
        month = p.rest[0]
        for f, v in value.items():
            etype, _, dd = _str(f).rpartition(":")
            models.daily[(c, etype, f"{month[:4]}-{month[4:]}-{dd}")] = int(v)
    elif p.family == "e":
        if value is not None:
            models.entities[(c, p.rest[0], p.rest[1])] = parse_entity(value)[0]
    elif p.family == "t":
        models.top[(c, p.rest[0])] = {_str(m): int(s) for m, s in value}
    elif p.family == "x":
        models.indexes[(c, p.rest[0], p.rest[1])] = {_str(m): int(s) for m, s in value}


def parse_entity(value: bytes) -> tuple[EntityState, str]:
    """An entity value (layout in apply.lua) → its state and the index key it is filed under."""
    try:
        ylen, xlen = int(value[78:81]), int(value[81:86])
        tag_end = 86 + ylen
        return (
            EntityState(
                version=value[:50].decode(),
                type_tag=value[86:tag_end].decode(),
                state=value[tag_end + xlen :],
                first_seen=value[50:68].decode(),
                events=int(value[68:78]),
            ),
            value[tag_end : tag_end + xlen].decode(),
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise TerminalError(f"malformed entity value {value[:90]!r}") from exc


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _text(value: Any) -> str | None:
    return None if value is None else _str(value)
