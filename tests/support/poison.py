"""A processor that raises on chosen records, around a real one — the runtime's "nothing is
skipped" tests run it in worker processes and under the Java MultiLangDaemon, both of which
import it as ``tests.support.poison:create_batcher``."""

from __future__ import annotations

from pipeline.app.processors import resolve_processor
from pipeline.consumer.processor import (
    InitializeInput,
    LeaseLostInput,
    ProcessRecordsInput,
    RecordProcessor,
    ShardEndedInput,
    ShutdownRequestedInput,
)
from pipeline.core.clients import ClientFactory
from pipeline.core.settings import Settings

#: A record whose data starts with this makes the processor raise, wherever it sits in a batch.
MARK = b"POISON:"


class PoisonedProcessor:
    def __init__(self, inner: RecordProcessor) -> None:
        self.inner = inner

    def initialize(self, initialize_input: InitializeInput) -> None:
        self.inner.initialize(initialize_input)

    def process_records(self, process_records_input: ProcessRecordsInput) -> None:
        for record in process_records_input.records:
            if record.binary_data.startswith(MARK):
                raise RuntimeError(f"poisoned record {record.sequence_number}")
        self.inner.process_records(process_records_input)

    def lease_lost(self, lease_lost_input: LeaseLostInput) -> None:
        self.inner.lease_lost(lease_lost_input)

    def shard_ended(self, shard_ended_input: ShardEndedInput) -> None:
        self.inner.shard_ended(shard_ended_input)

    def shutdown_requested(self, shutdown_requested_input: ShutdownRequestedInput) -> None:
        self.inner.shutdown_requested(shutdown_requested_input)


def create_batcher(clients: ClientFactory, settings: Settings) -> RecordProcessor:
    return PoisonedProcessor(resolve_processor("batcher")(clients, settings))
