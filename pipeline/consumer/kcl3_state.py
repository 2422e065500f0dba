"""KCL 3.x coordination state as pure data and decisions: the table's mode (``Migration3.0``),
the leader lock (amazon-dynamodb-lock-client semantics), WorkerMetricStats items, and the
per-lease throughput a 3.x worker reports on renewal. The adapters are in
:mod:`pipeline.consumer.kcl3_tables`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.consumer.kcl3_assignment import WorkerStats

MIGRATION_KEY = "Migration3.0"
LEADER_KEY = "Leader"
LOCK_DURATION_S = 120.0  # DynamoDBLockBasedLeaderDecider's lease duration
LOCK_HEARTBEAT_S = 30.0  # … and heartbeat period


class ClientVersion(enum.Enum):
    """``cv`` of the ``Migration3.0`` item (KCL ``ClientVersion``); absent = never written."""

    INIT = "CLIENT_VERSION_INIT"
    UPGRADE_FROM_2X = "CLIENT_VERSION_UPGRADE_FROM_2X"
    V2X = "CLIENT_VERSION_2X"
    V3X_WITH_ROLLBACK = "CLIENT_VERSION_3X_WITH_ROLLBACK"
    V3X = "CLIENT_VERSION_3X"


class Protocol(enum.Enum):
    KCL2 = "2.x"  # take/steal by counter heartbeats (KCL-SPEC §2.3)
    KCL3 = "3.x"  # a leader assigns; workers discover through the GSI (§2.6)


@dataclass(frozen=True)
class Mode:
    """What this table asks of a worker: the lease protocol, and whether to publish metrics."""

    client_version: ClientVersion | None
    protocol: Protocol
    publish_metrics: bool


def mode_for(version: ClientVersion | None, *, metrics_table: bool) -> Mode:
    """3.x workers assign by leader only once the fleet is in 3X or 3X_WITH_ROLLBACK; before
    (absent, 2X, UPGRADE_FROM_2X) everyone takes and steals. Metrics are published whenever the
    table exists, so a 3.x leader watching an upgrade sees native workers as ready."""
    protocol = (
        Protocol.KCL3 if version in (ClientVersion.V3X, ClientVersion.V3X_WITH_ROLLBACK) else Protocol.KCL2
    )
    return Mode(version, protocol, metrics_table)


def parse_client_version(item: Mapping[str, Any] | None) -> ClientVersion | None:
    if not item or "cv" not in item:
        return None
    try:
        return ClientVersion(item["cv"]["S"])
    except (ValueError, KeyError):
        return None


# -- the leader lock ---------------------------------------------------------------------


@dataclass(frozen=True)
class LockItem:
    """The ``Leader`` item as the lock client writes it."""

    owner: str
    rvn: str  # recordVersionNumber, a fresh UUID at every acquire and heartbeat
    duration_s: float
    released: bool = False

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> LockItem:
        duration = item.get("leaseDuration", {}).get("S", str(int(LOCK_DURATION_S * 1000)))
        return cls(
            owner=item.get("ownerName", {}).get("S", ""),
            rvn=item.get("recordVersionNumber", {}).get("S", ""),
            duration_s=int(duration) / 1000,
            released="isReleased" in item,
        )


class LockAction(enum.Enum):
    HOLD = "hold"  # ours
    CREATE = "create"  # no item: put if absent
    TAKE_RELEASED = "take_released"  # released: put if rvn unchanged and still released
    TAKE_EXPIRED = "take_expired"  # the same rvn seen for longer than its duration: put if rvn unchanged
    WAIT = "wait"  # someone else holds it


@dataclass
class LockWatcher:
    """The lock client's rule for a lock held by someone else: it is dead only once *this*
    client has seen the same recordVersionNumber for longer than the item's leaseDuration (no
    clocks are compared across hosts)."""

    me: str
    _seen: tuple[str, float] | None = None  # (rvn, first seen at, monotonic)

    def decide(self, item: LockItem | None, my_rvn: str | None, now: float) -> LockAction:
        if item is None:
            self._seen = None
            return LockAction.CREATE
        if item.owner == self.me and item.rvn == my_rvn and not item.released:
            return LockAction.HOLD
        if item.released:
            return LockAction.TAKE_RELEASED
        if self._seen is None or self._seen[0] != item.rvn:
            self._seen = (item.rvn, now)
            return LockAction.WAIT
        return LockAction.TAKE_EXPIRED if now - self._seen[1] > item.duration_s else LockAction.WAIT


# -- WorkerMetricStats -------------------------------------------------------------------


def stats_item(stats: WorkerStats) -> dict[str, Any]:
    """KCL's WorkerMetricStats item; empty ``sts``/``opr`` = the default (throughput) metric,
    which is what KCL 3.1.3 itself publishes where it cannot read CPU (seen here on Linux)."""
    return {
        "wid": {"S": stats.worker_id},
        "lut": {"N": str(int(stats.last_update or 0))},
        "sts": {"M": {k: {"L": [{"N": repr(float(v))} for v in vs]} for k, vs in stats.metric_stats.items()}},
        "opr": {"M": {k: {"L": [{"N": str(int(v))} for v in vs]} for k, vs in stats.operating_range.items()}},
    }


def stats_from_item(item: Mapping[str, Any]) -> WorkerStats | None:
    if "wid" not in item:
        return None
    lut = item.get("lut", {}).get("N")

    def numbers(attr: str) -> dict[str, list[float]]:
        raw = item.get(attr, {}).get("M", {})
        return {k: [float(x["N"]) for x in v.get("L", [])] for k, v in raw.items()}

    return WorkerStats(
        worker_id=item["wid"]["S"],
        last_update=int(float(lut)) if lut is not None else None,
        metric_stats=numbers("sts"),
        operating_range={k: [int(x) for x in v] for k, v in numbers("opr").items()},
    )


@dataclass
class ThroughputMeter:
    """Per-lease KB/s as a 3.x worker reports it on renewal (KCL's ``LeaseStatsRecorder``):
    bytes delivered since the previous renewal / 1024 / seconds, smoothed by an EMA (alpha 0.5).
    Fed with each consumer's running byte count, so nothing is recorded per batch."""

    alpha: float = 0.5
    _last: dict[str, tuple[int, float]] = field(default_factory=dict)
    _ema: dict[str, float] = field(default_factory=dict)

    def sample(self, key: str, total_bytes: int, now: float) -> float | None:
        """None on the first sample of a lease (KCL then writes no throughput either)."""
        last = self._last.get(key)
        self._last[key] = (total_bytes, now)
        if last is None or now <= last[1]:
            return None
        value = max(0, total_bytes - last[0]) / 1024 / (now - last[1])
        previous = self._ema.get(key)
        self._ema[key] = value if previous is None else self.alpha * value + (1 - self.alpha) * previous
        return round(self._ema[key], 3)

    def forget(self, key: str) -> None:
        self._last.pop(key, None)
        self._ema.pop(key, None)
