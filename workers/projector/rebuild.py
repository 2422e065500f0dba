"""``rebuild-projections``: recompute the read models from the S3 archive into a fresh
generation, then switch to it atomically.

Why the archive and not the warehouse: the archive is what the batcher writes *before* it
checkpoints, so it is complete up to the batcher's checkpoints and needs
nothing else running; the warehouse lags behind it by the inserter and is one more system to be
up. Duplicates the archive may hold (when Redis forgot what the batcher had seen) and its lack of
order do not matter: the models are built through the same idempotent, order-safe apply as live.

The protocol (docs/projector.md):

1. **begin** — a new generation ``G`` is claimed and marked *building* (a marker with a TTL,
   refreshed by a heartbeat). From then on every live apply writes both the current generation
   and ``G`` (apply.lua reads the markers inside the script, atomically). The same call returns
   the projector's applied positions per shard.
2. **load** every archived object into ``G`` only.
3. **catch up** — events the projector applied before step 1 but that were not yet archived must
   still reach ``G``: wait until the batcher's checkpoints (its lease table) pass the projector's
   positions (and its own checkpoints), then load the objects that appeared meanwhile. The gate
   of ``G`` makes the overlap between live writes and the archive harmless.
4. **switch** — ``current = G`` and the marker is dropped, in one script; readers (read.lua)
   resolve the generation per query, so none sees a mix. Older generations are then deleted.

Any failure before the switch abandons ``G`` (marker dropped, keys deleted): the current models
are untouched.
"""

from __future__ import annotations

import io
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import orjson
import pyarrow.parquet as pq
from botocore.exceptions import BotoCoreError, ClientError

from pipeline.consumer.lease_store import LeaseStore
from pipeline.consumer.leases import Lease
from pipeline.consumer.sequence import ExtendedSequenceNumber
from pipeline.core.aws_errors import classify_aws, is_transient_aws
from pipeline.core.errors import TerminalError
from pipeline.core.layout import EVENTS_PREFIX, UnsafeKeyComponent, parse_event_key
from pipeline.core.retry import Backoff, call_with_retry
from schemas import Event, InvalidEvent, Registry, encode_event
from workers.projector.plan import Planner
from workers.projector.store import GenerationLost, ProjectionStore

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("shardhouse.projector.rebuild")

BUILD_TTL_SECONDS: Final = 300
_BACKOFF: Final = Backoff(base=0.2, cap=5.0, max_attempts=6)
_ENVELOPE: Final = frozenset(("event_id", "customer_id", "event_type", "event_version", "occurred_at"))


# -- the archive --------------------------------------------------------------------------------


class Archive:
    """The batcher's Parquet objects under ``events/`` (pipeline/core/layout.py)."""

    def __init__(self, s3: S3Client, bucket: str, registry: Registry) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.registry = registry

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        def attempt() -> Any:
            try:
                return fn()
            except (ClientError, BotoCoreError) as exc:
                raise classify_aws(exc, what) from exc

        return call_with_retry(attempt, what=what, backoff=_BACKOFF)

    def object_keys(self) -> list[str]:
        """Every event object's key (anything else under the prefix is ignored)."""
        out: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": EVENTS_PREFIX}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(
                f"list s3://{self.bucket}/{EVENTS_PREFIX}", partial(self.s3.list_objects_v2, **kwargs)
            )
            for item in page.get("Contents", []):
                try:
                    parse_event_key(item["Key"])
                except UnsafeKeyComponent:
                    continue
                out.append(item["Key"])
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    def download(self, key: str) -> bytes:
        body: bytes = self._call(
            f"get s3://{self.bucket}/{key}",
            lambda: self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read(),
        )
        return body

    def events(self, key: str, data: bytes, invalid: Callable[[str], None]) -> Iterator[Event]:
        """The events of one object, through the same decoder as live records (so the states the
        two paths store are byte-identical); rows it refuses are reported to ``invalid``."""
        table = pq.read_table(io.BytesIO(data))
        et = (
            self.registry.get(
                table.column("event_type")[0].as_py(), int(table.column("event_version")[0].as_py())
            )
            if table.num_rows
            else None
        )
        json_fields = {f.name for f in et.fields if f.kind == "json"} if et is not None else set()
        payload_names = [n for n in table.column_names if n not in _ENVELOPE and not n.startswith("_")]
        for row in table.to_pylist():
            payload = {}
            for name in payload_names:
                value = row[name]
                if value is not None and name in json_fields:
                    value = orjson.Fragment(value)
                payload[name] = value
            wire = {
                "event_id": row["event_id"],
                "customer_id": row["customer_id"],
                "type": row["event_type"],
                "version": row["event_version"],
                "occurred_at": row["occurred_at"],
                "payload": payload,
            }
            try:
                yield self.registry.decode(encode_event(wire))
            except InvalidEvent as exc:
                invalid(f"{key}: {exc.reason}")


# -- catching up with the batcher -----------------------------------------------------------------


def unarchived(targets: Mapping[str, ExtendedSequenceNumber], batcher: Sequence[Lease]) -> list[str]:
    """Shards whose target position the batcher has not yet checkpointed past (pure).

    A shard without a batcher lease counts as archived only if a child lease names it as parent
    (the runtime deletes a finished parent's lease after its children started)."""
    by_key = {lease.lease_key: lease for lease in batcher}
    parents = {p for lease in batcher for p in lease.parent_shard_ids}
    behind = []
    for shard, target in sorted(targets.items()):
        lease = by_key.get(shard)
        if lease is None:
            if shard not in parents:
                behind.append(shard)
            continue
        cp = lease.checkpoint
        if cp.is_shard_end:
            continue
        if cp.is_sentinel or cp < target:
            behind.append(shard)
    return behind


def merge_targets(
    positions: Mapping[str, str], projector_leases: Iterable[Lease]
) -> dict[str, ExtendedSequenceNumber]:
    """Per shard, the furthest the projector may have applied: the positions apply.lua recorded,
    or its checkpoint (after a Redis restart the positions are gone but checkpoints are not)."""
    out = {shard: ExtendedSequenceNumber(seq) for shard, seq in positions.items() if seq.isdigit()}
    for lease in projector_leases:
        cp = lease.checkpoint
        if cp.is_sentinel:
            continue
        current = out.get(lease.lease_key)
        if current is None or current < cp:
            out[lease.lease_key] = cp
    return out


class CatchUp:
    """Waits until the batcher has archived everything the projector may have applied."""

    def __init__(
        self,
        batcher: LeaseStore,
        projector: LeaseStore | None,
        *,
        timeout: float = 600.0,
        poll: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.batcher = batcher
        self.projector = projector
        self.timeout = timeout
        self.poll = poll
        self.sleep = sleep

    @staticmethod
    def _leases(store: LeaseStore, role: str) -> list[Lease]:
        try:
            return store.list_leases()
        except ClientError as exc:
            if is_transient_aws(exc):
                raise classify_aws(exc, f"read the {role} lease table {store.table}") from exc
            raise TerminalError(
                f"cannot read the {role} lease table {store.table!r} ({exc}); "
                "without it the rebuild cannot know what is archived (--no-catch-up skips this)"
            ) from exc

    def wait(self, positions: Mapping[str, str], heartbeat: Callable[[], None]) -> float:
        """Block until caught up; returns the seconds waited. Raises TerminalError on timeout."""
        started = time.monotonic()
        projector_leases = self._leases(self.projector, "projector") if self.projector is not None else []
        targets = merge_targets(positions, projector_leases)
        while True:
            behind = unarchived(targets, self._leases(self.batcher, "batcher"))
            if not behind:
                return time.monotonic() - started
            if time.monotonic() - started > self.timeout:
                raise TerminalError(
                    f"the batcher has not archived shards {', '.join(behind)} up to what the projector "
                    f"applied within {self.timeout:.0f}s; is it running?"
                )
            heartbeat()
            self.sleep(self.poll)


# -- the rebuild ------------------------------------------------------------------------------


@dataclass
class RebuildReport:
    generation: str = ""
    previous: str | None = None
    objects: int = 0
    events: int = 0
    applied: int = 0
    duplicates: int = 0
    invalid: list[str] = field(default_factory=list)
    waited_seconds: float = 0.0
    deleted_keys: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["invalid"] = len(self.invalid)
        return out


class Rebuild:
    def __init__(
        self,
        store: ProjectionStore,
        planner: Planner,
        archive: Archive,
        *,
        catch_up: CatchUp | None,
        ttl_seconds: int = BUILD_TTL_SECONDS,
        download_threads: int = 4,
        clock: Callable[[], float] = time.time,
        progress: Callable[[RebuildReport], None] = lambda _r: None,
    ) -> None:
        self.store = store
        self.planner = planner
        self.archive = archive
        self.catch_up = catch_up
        self.ttl = ttl_seconds
        self.threads = download_threads
        self.clock = clock
        self.progress = progress
        self._beat = 0.0

    def run(self, *, force: bool = False) -> RebuildReport:
        started = time.monotonic()
        gen, positions, previous = self.store.begin_build(self.ttl, force=force)
        report = RebuildReport(generation=gen, previous=previous)
        log.info("rebuild started", extra={"generation": gen, "previous": previous})
        self._beat = time.monotonic()
        try:
            loaded: set[str] = set()
            self._load(gen, loaded, report)
            if self.catch_up is not None:
                report.waited_seconds = self.catch_up.wait(
                    positions, lambda: self._heartbeat(gen, force=True)
                )
                self._load(gen, loaded, report)
            self.store.switch(gen, f"rebuild:{int(self.clock())}")
        except BaseException:
            self.store.abort(gen)
            self.store.delete_generation(gen)
            log.error("rebuild abandoned; the current read models are untouched", extra={"generation": gen})
            raise
        report.deleted_keys = self.store.delete_older_generations(int(gen))
        report.seconds = time.monotonic() - started
        log.info("rebuild switched", extra=report.as_dict())
        return report

    def _heartbeat(self, gen: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._beat > self.ttl / 5:
            if not self.store.heartbeat(gen, self.ttl):
                raise GenerationLost(f"generation {gen} is no longer the one being built (marker expired?)")
            self._beat = now

    def _load(self, gen: str, loaded: set[str], report: RebuildReport) -> None:
        """Load the objects not loaded yet; downloads run ahead of the apply by at most
        ``2 * download_threads`` objects, so memory stays bounded however big the archive."""
        todo = [k for k in self.archive.object_keys() if k not in loaded]
        with ThreadPoolExecutor(self.threads, thread_name_prefix="rebuild-s3") as pool:
            ahead: deque[tuple[str, Future[bytes]]] = deque()
            keys = iter(todo)
            while True:
                while len(ahead) < 2 * self.threads and (key := next(keys, None)) is not None:
                    ahead.append((key, pool.submit(self.archive.download, key)))
                if not ahead:
                    return
                key, future = ahead.popleft()
                events = self.archive.events(key, future.result(), report.invalid.append)
                plan = self.planner.plan_events(events, now=int(self.clock()), target=gen)
                results = self.store.apply(plan.messages)
                new = sum(r.new for r in results)
                report.objects += 1
                report.events += plan.events
                report.applied += new
                report.duplicates += plan.events - new + plan.in_batch_duplicates
                loaded.add(key)
                self._heartbeat(gen)
                self.progress(report)
