"""The batcher: Kinesis records → validated, deduplicated zstd Parquet on S3 → SQS manifest.

``create_processor`` is the factory the consumer runtime and the MultiLangDaemon adapter look up
by the name "batcher". See docs/batcher.md.
"""

from __future__ import annotations

from pipeline.consumer.processor import RecordProcessor
from pipeline.core.clients import ClientFactory
from pipeline.core.settings import Settings
from workers.batcher.context import BatcherContext, build_context, context_for
from workers.batcher.processor import BatcherProcessor

__all__ = [
    "BatcherContext",
    "BatcherProcessor",
    "build_context",
    "context_for",
    "create_processor",
]


def create_processor(clients: ClientFactory, settings: Settings) -> RecordProcessor:
    """One processor per shard; every shard of this process shares one context (budget, pool)."""
    return BatcherProcessor(context_for(clients, settings))
