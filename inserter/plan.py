"""What a batch manifest asks the warehouse to do — pure, no I/O.

A manifest comes off a queue anyone with send rights can write to, so nothing in it is trusted:
every object key must parse as an event key (:func:`pipeline.core.layout.parse_event_key`) and agree
with the customer, type and version the manifest claims; the bucket must be the configured one.
A shared object (``events/shared/…``) lists its customers; it becomes one *slice* per customer
(:class:`ObjectLoad` with the same key and ordinal), each loaded into that customer's table and
recorded in the ledger as its own unit (``<key>#<customer>``), and the loader refuses a row whose
customer the entry does not list.
A manifest that fails these checks is *malformed* (:class:`~pipeline.core.manifest.ManifestError`:
dead-lettered at once). A well-formed manifest naming a type or version this inserter does not
know is not malformed — it needs newer definitions — and raises
:class:`~inserter.errors.UnknownEventSchema` instead.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from inserter.errors import UnknownEventSchema
from inserter.naming import TableRef, UnsafeName, pool_table, target_table
from pipeline.core.layout import UnsafeKeyComponent, parse_event_key
from pipeline.core.manifest import BatchManifest, BatchObject, ManifestError
from schemas import InvalidEvent, Registry

#: The ends of what an aware datetime can hold: the merge window is clamped to them.
_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


def merge_window(lo: datetime, hi: datetime, window: timedelta) -> tuple[datetime, datetime]:
    """The occurred_at range a merge compares against: the staged rows' ``[lo, hi]`` widened by
    the dedupe window on both sides, clamped to what ``datetime`` holds, so no event time (the
    registry accepts 1970..2200) and no configured window can overflow and fail a manifest."""
    try:
        start = lo - window
    except OverflowError:
        start = _EARLIEST
    try:
        end = hi + window
    except OverflowError:
        end = _LATEST
    return start, end


@dataclass(frozen=True, slots=True)
class ObjectLoad:
    """One customer's rows of one Parquet object: the whole object, or a slice of a shared one.
    ``ordinal`` (1-based, one per S3 object within the load) tags the object's rows in staging
    so the ledger can say how many of *its* rows were new; ``unit`` is the ledger's key."""

    ordinal: int
    key: str
    customer_id: str
    event_type: str
    version: int
    rows: int
    bytes: int
    min_occurred_at: datetime | None
    max_occurred_at: datetime | None
    #: The batch that announced it (the ledger records it; a combined load holds several).
    batch_id: str = ""
    shared: bool = False

    @property
    def unit(self) -> str:
        """What the ledger records as loaded: the key, or ``<key>#<customer>`` for a slice."""
        return f"{self.key}#{self.customer_id}" if self.shared else self.key


@dataclass(frozen=True, slots=True)
class TableLoad:
    """The objects of one load that go into one customer table."""

    target: TableRef
    customer_id: str
    event_type: str
    objects: tuple[ObjectLoad, ...]

    def versions(self) -> tuple[int, ...]:
        return tuple(sorted({o.version for o in self.objects}))


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """A manifest, checked and grouped: tables in lock order (sorted), objects in manifest order."""

    batch_id: str
    bucket: str
    tables: tuple[TableLoad, ...]

    @property
    def objects(self) -> tuple[ObjectLoad, ...]:
        """Every unit (object or slice), by ordinal then customer."""
        units = (o for t in self.tables for o in t.objects)
        return tuple(sorted(units, key=lambda o: (o.ordinal, o.customer_id)))

    @property
    def keys(self) -> tuple[str, ...]:
        """The ledger units of the load."""
        return tuple(o.unit for o in self.objects)

    @property
    def pools(self) -> tuple[TableRef, ...]:
        """The pools the load writes to, sorted (the lock order): one per event type."""
        return tuple(sorted({pool_table(t.event_type) for t in self.tables}))

    def stages(self) -> tuple[tuple[str, tuple[ObjectLoad, ...]], ...]:
        """Per event type (sorted): its distinct S3 objects, by ordinal — what one staging table
        holds (a shared object is staged once, whatever the number of its customers)."""
        by_type: dict[str, dict[int, ObjectLoad]] = defaultdict(dict)
        for obj in self.objects:
            by_type[obj.event_type].setdefault(obj.ordinal, obj)
        return tuple((t, tuple(by_type[t][o] for o in sorted(by_type[t]))) for t in sorted(by_type))

    def without(self, keys: set[str] | frozenset[str]) -> LoadPlan:
        """The plan minus units already loaded (tables left empty are dropped)."""
        tables = []
        for t in self.tables:
            kept = tuple(o for o in t.objects if o.unit not in keys)
            if kept:
                tables.append(TableLoad(t.target, t.customer_id, t.event_type, kept))
        return LoadPlan(self.batch_id, self.bucket, tuple(tables))


def parse_time(value: str) -> datetime | None:
    """A manifest timestamp (RFC 3339, ``Z``); '' → None. Raises ManifestError if malformed."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ManifestError(f"bad timestamp {value[:40]!r} in manifest") from exc
    if parsed.tzinfo is None:
        raise ManifestError(f"timestamp {value[:40]!r} in manifest has no offset")
    return parsed.astimezone(UTC)


def plan_load(manifest: BatchManifest, registry: Registry, *, bucket: str) -> LoadPlan:
    """Check ``manifest`` and group its objects per target table (sorted: the lock order).

    The same key listed twice is loaded once. Raises ManifestError (malformed) or
    UnknownEventSchema (valid, but newer than this inserter's definitions)."""
    if manifest.bucket != bucket:
        raise ManifestError(f"manifest names bucket {manifest.bucket[:80]!r}; this inserter loads {bucket!r}")
    seen: set[str] = set()
    grouped: dict[TableRef, list[ObjectLoad]] = defaultdict(list)
    owners: dict[TableRef, tuple[str, str]] = {}
    for obj in manifest.objects:
        if obj.key in seen:
            continue
        seen.add(obj.key)
        lo, hi = parse_time(obj.min_occurred_at), parse_time(obj.max_occurred_at)
        for customer_id, rows in _owners(obj):
            try:
                ref = target_table(customer_id, obj.type)
            except UnsafeName as exc:
                raise ManifestError(str(exc)) from exc
            owners[ref] = (customer_id, obj.type)
            grouped[ref].append(
                ObjectLoad(
                    ordinal=len(seen),
                    key=obj.key,
                    customer_id=customer_id,
                    event_type=obj.type,
                    version=obj.version,
                    rows=rows,
                    bytes=obj.bytes,
                    min_occurred_at=lo,
                    max_occurred_at=hi,
                    batch_id=manifest.batch_id,
                    shared=not obj.customer_id,
                )
            )
        try:
            registry.get(obj.type, obj.version)
        except InvalidEvent as exc:
            raise UnknownEventSchema(f"object {obj.key}: {exc.detail}") from exc
    tables = tuple(
        TableLoad(ref, owners[ref][0], owners[ref][1], tuple(objs)) for ref, objs in sorted(grouped.items())
    )
    return LoadPlan(manifest.batch_id, manifest.bucket, tables)


def _owners(obj: BatchObject) -> list[tuple[str, int]]:
    """(customer, rows) the entry claims, checked against its key: a customer's own object names
    that customer in key and entry; a shared object's entry lists distinct customers."""
    try:
        parsed = parse_event_key(obj.key)
    except UnsafeKeyComponent as exc:
        raise ManifestError(str(exc)) from exc
    actual = (parsed.customer_id or "", parsed.event_type, parsed.version)
    claimed = (obj.customer_id, obj.type, obj.version)
    if claimed != actual:
        raise ManifestError(
            f"object {obj.key!r} claims customer/type/version {claimed}, its key says {actual}"
        )
    if obj.rows < 0 or obj.bytes < 0:
        raise ManifestError(f"object {obj.key!r} has a negative size")
    if not parsed.shared:
        if obj.customers:
            raise ManifestError(f"object {obj.key!r} is one customer's but lists customers")
        return [(obj.customer_id, obj.rows)]
    listed = [(c.customer_id, c.rows) for c in obj.customers]
    if not listed:
        raise ManifestError(f"shared object {obj.key!r} lists no customers")
    if len({c for c, _ in listed}) != len(listed):
        raise ManifestError(f"shared object {obj.key!r} lists a customer twice")
    if any(n < 0 for _, n in listed) or sum(n for _, n in listed) != obj.rows:
        raise ManifestError(f"shared object {obj.key!r}: its customers' rows do not add up to {obj.rows}")
    return listed


def combine_plans(plans: Sequence[LoadPlan]) -> LoadPlan:
    """Several batches as one load: one merge per target table instead of one per batch and
    table, which is what keeps a busy inserter ahead of many small batches. Ordinals are
    renumbered across the whole load; a key announced twice is loaded once; tables stay sorted
    (the lock order). The combined ``batch_id`` names every batch, for logs."""
    if not plans:
        raise ValueError("combine_plans needs at least one plan")
    if len({p.bucket for p in plans}) > 1:
        raise ValueError("plans of different buckets cannot share a load")
    if len(plans) == 1:
        return plans[0]
    ordinals: dict[str, int] = {}  # S3 key → its ordinal in the combined load
    units: set[str] = set()
    grouped: dict[TableRef, list[ObjectLoad]] = defaultdict(list)
    owners: dict[TableRef, tuple[str, str]] = {}
    for plan in plans:
        for table in plan.tables:
            owners[table.target] = (table.customer_id, table.event_type)
            for obj in table.objects:
                if obj.unit not in units:
                    units.add(obj.unit)
                    ordinal = ordinals.setdefault(obj.key, len(ordinals) + 1)
                    grouped[table.target].append(replace(obj, ordinal=ordinal))
    tables = tuple(
        TableLoad(ref, owners[ref][0], owners[ref][1], tuple(objs)) for ref, objs in sorted(grouped.items())
    )
    return LoadPlan("+".join(p.batch_id for p in plans), plans[0].bucket, tables)
