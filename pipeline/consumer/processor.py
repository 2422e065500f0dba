"""The record-processor contract, in amazon-kclpy v3's shape.

A processor written against these types runs unchanged under the native runtime
(:mod:`pipeline.consumer`) and under the official KCL MultiLangDaemon (through the adapter in
``pipeline/app/kcl_entry.py``, which feeds kclpy's objects: they expose the same attribute names).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class CheckpointError(Exception):
    """A checkpoint was refused. ``value`` carries the KCL error name.

    ``ShutdownException`` (lease lost: stop, don't retry), ``ThrottlingException`` (back off and
    retry), ``InvalidStateException``, ``KinesisClientLibDependencyException``,
    ``IllegalArgumentException`` — the same names kclpy's ``CheckpointError.value`` carries.
    """

    def __init__(self, value: str, message: str = "") -> None:
        super().__init__(f"{value}: {message}" if message else value)
        self.value = value


@dataclass(frozen=True, slots=True)
class Record:
    """One (de-aggregated) Kinesis record; attribute names match kclpy's ``Record``."""

    binary_data: bytes
    partition_key: str
    sequence_number: str
    sub_sequence_number: int
    approximate_arrival_timestamp: int  # epoch milliseconds, as the MultiLangDaemon sends it


class Checkpointer(Protocol):
    def checkpoint(self, sequence_number: str | None = None, sub_sequence_number: int | None = None) -> None:
        """Record progress; ``None`` means the largest delivered (SHARD_END in shard_ended)."""


@dataclass(frozen=True, slots=True)
class InitializeInput:
    shard_id: str
    sequence_number: str  # may be a sentinel such as "TRIM_HORIZON"
    sub_sequence_number: int


@dataclass(frozen=True, slots=True)
class ProcessRecordsInput:
    records: Sequence[Record]
    millis_behind_latest: int
    checkpointer: Checkpointer


@dataclass(frozen=True, slots=True)
class LeaseLostInput:
    pass


@dataclass(frozen=True, slots=True)
class ShardEndedInput:
    checkpointer: Checkpointer


@dataclass(frozen=True, slots=True)
class ShutdownRequestedInput:
    checkpointer: Checkpointer


class RecordProcessor(Protocol):
    """amazon-kclpy v3 ``RecordProcessorBase`` shape. One instance per shard."""

    def initialize(self, initialize_input: InitializeInput) -> None: ...

    def process_records(self, process_records_input: ProcessRecordsInput) -> None: ...

    def lease_lost(self, lease_lost_input: LeaseLostInput) -> None: ...

    def shard_ended(self, shard_ended_input: ShardEndedInput) -> None: ...

    def shutdown_requested(self, shutdown_requested_input: ShutdownRequestedInput) -> None: ...
