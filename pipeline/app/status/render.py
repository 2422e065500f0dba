"""One screen of plain text from a :class:`~pipeline.app.status.model.Snapshot` (pure)."""

from __future__ import annotations

from datetime import datetime

from pipeline.app.status.model import Snapshot


def seconds_text(seconds: float | None) -> str:
    """Short human durations: 850ms, 12.3s, 4.5m, 2.0h, 3.1d; '-' when unknown."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    for limit, unit, size in ((120, "s", 1), (7200, "m", 60), (172_800, "h", 3600)):
        if seconds < limit:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds / 86_400:.1f}d"


def _ago(now: datetime, then: datetime | None) -> str:
    return "-" if then is None else seconds_text(max(0.0, (now - then).total_seconds()))


def _ms(value: int | None) -> str:
    return "-" if value is None else seconds_text(value / 1000)


def render(snap: Snapshot) -> str:
    now = snap.taken_at
    shards = "?" if snap.open_shards is None else str(snap.open_shards)
    out = [f"shardhouse status — stream {snap.stream} ({shards} open shards) at {now:%Y-%m-%d %H:%M:%S}Z", ""]

    out.append(f"workers (lease renewals watched for {snap.sample_s:.1f}s)")
    out.append(f"  {'application':<30} {'worker':<32} {'leases':>6}  state")
    for w in snap.workers:
        state = "alive" if w.renewing else "NOT RENEWING (dead or paused; its leases expire)"
        out.append(f"  {w.app:<30} {w.worker:<32} {w.leases:>6}  {state}")
    if not snap.workers:
        out.append("  (no lease is owned: no worker is running)")

    out.append("")
    out.append("shards (lag = MillisBehindLatest after the checkpoint; age = of the checkpointed record)")
    out.append(f"  {'application':<30} {'shard':<22} {'owner':<32} {'lag':>8} {'cp age':>8}")
    for s in snap.shards:
        lag = "ended" if s.ended else _ms(s.millis_behind)
        owner = s.owner or "(none)"
        out.append(
            f"  {s.app:<30} {s.shard_id:<22} {owner:<32} {lag:>8} {seconds_text(s.checkpoint_age_s):>8}"
        )
        if s.failing:
            out.append(f"    FAILING (records kept, retried with backoff): {s.failing}")
    if not snap.shards:
        out.append("  (no leases yet)")

    out.append("")
    out.append("queues")
    for q in snap.queues:
        counts = f"waiting {q.waiting:>6}  in flight {q.in_flight:>5}  delayed {q.delayed:>4}"
        out.append(f"  {q.name:<40} {counts}")

    out.append("")
    out.append("warehouse (per customer: last load, newest event loaded)")
    out.append(f"  {'customer':<24} {'last load':>10} {'newest event':>13} {'rows':>12} {'loads':>7}")
    for c in snap.customers:
        out.append(
            f"  {c.customer:<24} {_ago(now, c.last_load) + ' ago':>10} "
            f"{_ago(now, c.newest_event) + ' ago':>13} {c.rows:>12,} {c.loads:>7,}"
        )
    if not snap.customers:
        out.append("  (nothing loaded yet)")

    out.append("")
    rm = snap.read_models
    if rm is not None:
        out.append(
            f"read models: generation {rm.generation or '-'} ({rm.origin or 'no models yet'}), "
            f"staleness {_ms(rm.staleness_ms)} (the projector's largest lag)"
        )
    for problem in snap.problems:
        out.append(f"! {problem}")
    return "\n".join(out)
