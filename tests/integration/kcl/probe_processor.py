"""A processor for the MultiLang protocol test: reports every callback as a ``PROBE {json}`` line
on stderr, and misbehaves on purpose (prints to stdout) to prove the entry point protects the pipe.

Imported by the child as ``tests.integration.kcl.probe_processor:create_processor``.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

from pipeline.consumer.processor import (
    CheckpointError,
    InitializeInput,
    LeaseLostInput,
    ProcessRecordsInput,
    ShardEndedInput,
    ShutdownRequestedInput,
)
from pipeline.core.clients import ClientFactory
from pipeline.core.settings import Settings


def report(event: str, **fields: Any) -> None:
    sys.stderr.write("PROBE " + json.dumps({"event": event, **fields}) + "\n")
    sys.stderr.flush()


class ProbeProcessor:
    def initialize(self, initialize_input: InitializeInput) -> None:
        # Both lines must land on stderr: the daemon would parse the second one as a message.
        print("a stray print from processor code")
        print(json.dumps({"action": "status", "responseFor": "bogus"}))
        report(
            "initialize",
            type=type(initialize_input).__module__ + "." + type(initialize_input).__name__,
            shard_id=initialize_input.shard_id,
            sequence_number=initialize_input.sequence_number,
            sub_sequence_number=initialize_input.sub_sequence_number,
        )

    def process_records(self, process_records_input: ProcessRecordsInput) -> None:
        records = process_records_input.records
        report(
            "process_records",
            millis_behind_latest=process_records_input.millis_behind_latest,
            records=[
                {
                    "type": type(r).__module__ + "." + type(r).__name__,
                    "data": base64.b64encode(r.binary_data).decode(),
                    "pk": r.partition_key,
                    "seq": r.sequence_number,
                    "subseq": r.sub_sequence_number,
                    "arrival": r.approximate_arrival_timestamp,
                }
                for r in records
            ],
        )
        last = records[-1]
        self._checkpoint(process_records_input, last.sequence_number, last.sub_sequence_number)

    def _checkpoint(self, holder: Any, seq: str | None, subseq: int | None) -> None:
        try:
            holder.checkpointer.checkpoint(seq, subseq)
        except CheckpointError as exc:
            report("checkpoint_error", type=type(exc).__module__ + "." + type(exc).__name__, value=exc.value)
            return
        report("checkpoint_ok", seq=seq, subseq=subseq)

    def lease_lost(self, lease_lost_input: LeaseLostInput) -> None:
        report("lease_lost")

    def shard_ended(self, shard_ended_input: ShardEndedInput) -> None:
        report("shard_ended")
        self._checkpoint(shard_ended_input, None, None)

    def shutdown_requested(self, shutdown_requested_input: ShutdownRequestedInput) -> None:
        report("shutdown_requested")
        self._checkpoint(shutdown_requested_input, None, None)


def create_processor(clients: ClientFactory, settings: Settings) -> ProbeProcessor:
    return ProbeProcessor()
