"""Records as the runtime delivers them, synthetic events on an injected clock, and delivery."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from pipeline.consumer.processor import Checkpointer, ProcessRecordsInput, Record, RecordProcessor
from pipeline.producer.synthetic import SyntheticConfig, SyntheticRecord, generate

#: 2024-05-01T12:00:00Z: a fixed arrival origin, so records are the same in every run.
ORIGIN_MS = 1_714_564_800_000


def synthetic(
    n: int, *, origin: datetime, step_ms: int = 50, config: SyntheticConfig | None = None, **fields: Any
) -> list[SyntheticRecord]:
    """``n`` synthetic records whose clock starts at ``origin`` and ticks ``step_ms`` per event
    (``config``, or a SyntheticConfig of ``fields``)."""
    ticks = iter(range(10**9))
    return list(
        generate(
            config or SyntheticConfig(**fields),
            n,
            now=lambda: origin + timedelta(milliseconds=next(ticks) * step_ms),
        )
    )


def records_of(
    items: Iterable[bytes | SyntheticRecord],
    *,
    first_seq: int = 100,
    origin_ms: int = ORIGIN_MS,
    step_ms: int = 10,
) -> list[Record]:
    """Records at increasing sequence numbers and arrival times (partition key: the synthetic
    record's, else ``pk<i>``)."""
    out = []
    for i, item in enumerate(items):
        data, key = (item, f"pk{i}") if isinstance(item, bytes) else (item.data, item.partition_key)
        out.append(Record(data, key, str(first_seq + i), 0, origin_ms + i * step_ms))
    return out


def deliver(
    proc: RecordProcessor,
    records: Sequence[Record],
    ckpt: Checkpointer,
    *,
    behind_ms: int = 0,
    chunk: int | None = None,
) -> None:
    """``records`` in one delivery, or in deliveries of ``chunk``; ``behind_ms`` is
    millis_behind_latest (0: caught up)."""
    size = chunk or max(len(records), 1)
    for start in range(0, max(len(records), 1), size):
        proc.process_records(ProcessRecordsInput(list(records[start : start + size]), behind_ms, ckpt))


def deliver_batches(
    proc: RecordProcessor, batches: Iterable[Sequence[Record]], ckpt: Checkpointer, *, behind_ms: int = 0
) -> None:
    for batch in batches:
        proc.process_records(ProcessRecordsInput(list(batch), behind_ms, ckpt))


def after(records: Sequence[Record], position: tuple[str | None, int | None] | None) -> list[Record]:
    """The records a new owner receives when it resumes after ``position`` (KCL semantics)."""
    if position is None:
        return list(records)
    seq, sub = position
    assert seq is not None
    return [r for r in records if (int(r.sequence_number), r.sub_sequence_number) > (int(seq), sub or 0)]
