"""The in-test checkpointer: remembers every checkpoint and can refuse as KCL would."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.consumer.processor import CheckpointError


@dataclass
class Checkpoints:
    """``fail``: CheckpointError values raised once each, in order, before any checkpoint lands;
    ``refuse``: an exception raised on every call; ``log``: an event log shared with fakes."""

    calls: list[tuple[str | None, int | None]] = field(default_factory=list)
    fail: list[str] = field(default_factory=list)
    refuse: Exception | None = None
    log: list[str] | None = None

    def checkpoint(self, sequence_number: str | None = None, sub_sequence_number: int | None = None) -> None:
        if self.refuse is not None:
            raise self.refuse
        if self.fail:
            raise CheckpointError(self.fail.pop(0))
        self.calls.append((sequence_number, sub_sequence_number))
        if self.log is not None:
            self.log.append(f"checkpoint {sequence_number}")

    @property
    def last(self) -> tuple[str | None, int | None] | None:
        """Where a restart resumes: the last position checkpointed."""
        return self.calls[-1] if self.calls else None

    @property
    def last_sequence(self) -> str | None:
        return self.calls[-1][0] if self.calls else None
