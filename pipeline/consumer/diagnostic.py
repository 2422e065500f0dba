"""Diagnostic processors: ``noop`` (checkpoint only) and ``recorder`` (every record into Redis).

``noop`` measures the runtime itself (benchmarks). ``recorder`` lets tests with real worker
processes prove what was delivered: each record (shard, sequence, sub-sequence, data, worker)
goes to one Redis list per stream, and each lifecycle event (initialize, checkpoint refusals,
lease_lost, shard_ended, shutdown_requested) to a second list. Both checkpoint after every batch,
at its last record, so a successor must resume exactly there.
"""

from __future__ import annotations

import base64
import logging
import os
import time

import orjson
import redis

from pipeline.consumer.checkpointing import CheckpointFailed, checkpoint
from pipeline.consumer.processor import (
    InitializeInput,
    LeaseLostInput,
    ProcessRecordsInput,
    RecordProcessor,
    ShardEndedInput,
    ShutdownRequestedInput,
)
from pipeline.core.clients import ClientFactory
from pipeline.core.errors import TransientError
from pipeline.core.retry import call_with_retry
from pipeline.core.settings import Settings

log = logging.getLogger(__name__)


class NoopProcessor:
    """Does nothing but checkpoint each batch."""

    def initialize(self, initialize_input: InitializeInput) -> None:
        pass

    def process_records(self, process_records_input: ProcessRecordsInput) -> None:
        if process_records_input.records:
            last = process_records_input.records[-1]
            checkpoint(process_records_input.checkpointer, last.sequence_number, last.sub_sequence_number)

    def lease_lost(self, lease_lost_input: LeaseLostInput) -> None:
        pass

    def shard_ended(self, shard_ended_input: ShardEndedInput) -> None:
        checkpoint(shard_ended_input.checkpointer, None, None)  # SHARD_END (KCL #211)

    def shutdown_requested(self, shutdown_requested_input: ShutdownRequestedInput) -> None:
        try:
            checkpoint(shutdown_requested_input.checkpointer, None, None)
        except CheckpointFailed as exc:
            log.warning("shutdown checkpoint refused", extra={"value": exc.value})


def recorder_keys(stream: str) -> tuple[str, str]:
    """The Redis lists the recorder appends to: (records, lifecycle events)."""
    base = f"shardhouse:recorder:{stream}"
    return base, f"{base}:events"


class RecordingProcessor:
    def __init__(self, client: redis.Redis, stream: str, worker: str) -> None:
        self._redis = client
        self._records_key, self._events_key = recorder_keys(stream)
        self._worker = worker
        self._shard = "?"

    def _push(self, key: str, docs: list[bytes]) -> None:
        def attempt() -> None:
            try:
                self._redis.rpush(key, *docs)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise TransientError(f"redis rpush {key}: {exc}") from exc

        call_with_retry(attempt, what=f"redis rpush {key}")

    def _event(self, name: str, **fields: object) -> None:
        doc = {"event": name, "shard": self._shard, "worker": self._worker, "pid": os.getpid(),
               "at": time.time(), **fields}  # fmt: skip
        self._push(self._events_key, [orjson.dumps(doc)])

    def initialize(self, initialize_input: InitializeInput) -> None:
        self._shard = initialize_input.shard_id
        self._event(
            "initialize", seq=initialize_input.sequence_number, subseq=initialize_input.sub_sequence_number
        )

    def process_records(self, process_records_input: ProcessRecordsInput) -> None:
        records = process_records_input.records
        if not records:
            return
        now = time.time()
        self._push(
            self._records_key,
            [
                orjson.dumps(
                    {
                        "shard": self._shard,
                        "seq": r.sequence_number,
                        "subseq": r.sub_sequence_number,
                        "data": base64.b64encode(r.binary_data).decode(),
                        "worker": self._worker,
                        "lag_ms": process_records_input.millis_behind_latest,
                        "at": now,
                    }
                )
                for r in records
            ],
        )
        last = records[-1]
        try:
            checkpoint(process_records_input.checkpointer, last.sequence_number, last.sub_sequence_number)
        except CheckpointFailed as exc:
            self._event("checkpoint_refused", value=exc.value, seq=last.sequence_number)
            return
        self._event("checkpoint", seq=last.sequence_number, subseq=last.sub_sequence_number)

    def lease_lost(self, lease_lost_input: LeaseLostInput) -> None:
        self._event("lease_lost")

    def shard_ended(self, shard_ended_input: ShardEndedInput) -> None:
        checkpoint(shard_ended_input.checkpointer, None, None)
        self._event("shard_ended")

    def shutdown_requested(self, shutdown_requested_input: ShutdownRequestedInput) -> None:
        refused = None
        try:
            checkpoint(shutdown_requested_input.checkpointer, None, None)
        except CheckpointFailed as exc:
            refused = exc.value
        self._event("shutdown_requested", refused=refused)


def create_noop(clients: ClientFactory, settings: Settings) -> RecordProcessor:
    return NoopProcessor()


def create_recorder(clients: ClientFactory, settings: Settings) -> RecordProcessor:
    return RecordingProcessor(clients.redis(), settings.resources.stream, settings.worker.worker_id)
