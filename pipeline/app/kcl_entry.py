"""The child process the KCL MultiLangDaemon starts for each shard (``executableName``).

    python -m pipeline.app.kcl_entry --processor batcher

Adapts amazon-kclpy's v3 callbacks to :mod:`pipeline.consumer.processor`, so the same processor
object runs under the native runtime and under the Java daemon:

* inputs become our frozen dataclasses. kclpy's ``Record.approximate_arrival_timestamp`` is a
  *naive local* ``datetime``; ours is epoch milliseconds (``Record.timestamp_millis`` in kclpy).
* kclpy's ``CheckpointError`` becomes :class:`pipeline.consumer.processor.CheckpointError` with the
  same ``.value``; a daemon that vanished mid-checkpoint (EOF) becomes ``ShutdownException``.
* stdout belongs to the protocol: ``sys.stdout`` is pointed at stderr before any processor code
  runs, so a stray ``print`` cannot inject a line the daemon would try to parse.

The processor is named by ``--processor`` (or ``SHARDHOUSE_KCL_PROCESSOR``) exactly as for the native
``shardhouse worker``: a name from :mod:`pipeline.app.processors` (batcher, projector, noop,
recorder) or ``package.module:factory``; factories are ``(ClientFactory, Settings) -> RecordProcessor``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from pipeline.app.processors import resolve_processor
from pipeline.consumer.checkpointing import KclError
from pipeline.consumer.dead_letters import S3DeadLetters
from pipeline.consumer.processor import (
    CheckpointError,
    InitializeInput,
    LeaseLostInput,
    ProcessRecordsInput,
    Record,
    RecordProcessor,
    ShardEndedInput,
    ShutdownRequestedInput,
)
from pipeline.consumer.resilient import ResilientProcessor
from pipeline.core.clients import ClientFactory
from pipeline.core.deployed import load_deployed_settings
from pipeline.core.errors import ConfigError

log = logging.getLogger("shardhouse.kcl_entry")

PROCESSOR_ENV = "SHARDHOUSE_KCL_PROCESSOR"

# The same names as ``shardhouse worker --processor`` (one registry for both runtimes).


class KclCheckpointer:
    """Our :class:`~pipeline.consumer.processor.Checkpointer` over kclpy's (stdin/stdout) one."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def checkpoint(self, sequence_number: str | None = None, sub_sequence_number: int | None = None) -> None:
        from amazon_kclpy.checkpoint_error import CheckpointError as KclCheckpointError

        try:
            self._inner.checkpoint(sequence_number, sub_sequence_number)
        except KclCheckpointError as exc:
            raise CheckpointError(str(exc.value)) from exc
        except (ValueError, BrokenPipeError) as exc:
            # json.loads("") at EOF, or a closed pipe: the daemon is gone, and the lease with it.
            raise CheckpointError(KclError.SHUTDOWN, "MultiLangDaemon closed the pipe") from exc


def to_record(kcl_record: Any) -> Record:
    return Record(
        binary_data=kcl_record.binary_data,
        partition_key=kcl_record.partition_key,
        sequence_number=kcl_record.sequence_number,
        sub_sequence_number=int(kcl_record.sub_sequence_number or 0),
        approximate_arrival_timestamp=int(kcl_record.timestamp_millis),
    )


class KclAdapter:
    """amazon-kclpy v3 ``RecordProcessorBase`` shape (``version = 3``) delegating to our processor."""

    version = 3

    def __init__(self, processor: RecordProcessor) -> None:
        self.processor = processor

    def initialize(self, initialize_input: Any) -> None:
        self.processor.initialize(
            InitializeInput(
                shard_id=initialize_input.shard_id,
                sequence_number=initialize_input.sequence_number,
                sub_sequence_number=int(initialize_input.sub_sequence_number or 0),
            )
        )

    def process_records(self, process_records_input: Any) -> None:
        self.processor.process_records(
            ProcessRecordsInput(
                records=[to_record(r) for r in process_records_input.records],
                millis_behind_latest=int(process_records_input.millis_behind_latest or 0),
                checkpointer=KclCheckpointer(process_records_input.checkpointer),
            )
        )

    def lease_lost(self, lease_lost_input: Any) -> None:
        self.processor.lease_lost(LeaseLostInput())

    def shard_ended(self, shard_ended_input: Any) -> None:
        self.processor.shard_ended(
            ShardEndedInput(checkpointer=KclCheckpointer(shard_ended_input.checkpointer))
        )

    def shutdown_requested(self, shutdown_requested_input: Any) -> None:
        self.processor.shutdown_requested(
            ShutdownRequestedInput(checkpointer=KclCheckpointer(shutdown_requested_input.checkpointer))
        )


def run(processor: RecordProcessor, *, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> None:
    """Serve the MultiLang protocol on the given streams until stdin reaches EOF."""
    from amazon_kclpy import kcl

    kcl.KCLProcess(KclAdapter(processor), input_file=stdin, output_file=stdout, error_file=stderr).run()


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    protocol_out = sys.stdout
    sys.stdout = sys.stderr  # from here on, only kclpy writes to the daemon's pipe
    source = dict(os.environ if env is None else env)
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.app.kcl_entry", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--processor", default=source.get(PROCESSOR_ENV), help="name or package.module:factory"
    )
    args = parser.parse_args(argv)
    settings = load_deployed_settings(source, lambda base: ClientFactory(base).cloudformation())

    from pipeline.core.observability import configure_logging

    configure_logging(settings.log_level, role="kcl-child")
    try:
        if not args.processor:
            raise ConfigError(f"no processor: pass --processor NAME or set {PROCESSOR_ENV}")
        factory = resolve_processor(args.processor)
        clients = ClientFactory(settings)
        res = settings.resources
        sink = S3DeadLetters(clients.s3(), res.bucket, res.stream, args.processor)
        # The daemon cannot re-read what a processor failed on: the wrapper keeps and redelivers it.
        processor = ResilientProcessor(lambda: factory(clients, settings), sink)
    except ConfigError as exc:
        # The daemon logs our stderr; exiting non-zero makes it fail the shard consumer loudly.
        log.error("kcl child cannot start", extra={"error": str(exc)})
        return 2
    log.info("kcl child started", extra={"processor": args.processor, "pid": os.getpid()})
    run(processor, stdin=sys.stdin, stdout=protocol_out, stderr=sys.stderr)
    log.info("kcl child exiting: stdin closed", extra={"processor": args.processor})
    return 0


if __name__ == "__main__":
    sys.exit(main())
