"""The projector: Kinesis records → CQRS read models in Redis, idempotent and order-safe.

``create_processor`` is the factory the consumer runtime and the MultiLangDaemon adapter look up
by the name "projector" (run it under ``settings.worker.projector_app``, its own lease table).
Read models: schemas/read_models.py; key layout: keys.py; reference fold: fold.py; the Lua fast
path: apply.lua. See docs/projector.md.
"""

from __future__ import annotations

from pipeline.consumer.processor import RecordProcessor
from pipeline.core.clients import ClientFactory
from pipeline.core.settings import Settings
from workers.projector.context import ProjectorContext, build_context, context_for
from workers.projector.fold import EntityState, ReadModels, fold
from workers.projector.keys import Namespace
from workers.projector.processor import ProjectorProcessor
from workers.projector.store import ProjectionStore

__all__ = [
    "EntityState",
    "Namespace",
    "ProjectionStore",
    "ProjectorContext",
    "ProjectorProcessor",
    "ReadModels",
    "build_context",
    "context_for",
    "create_processor",
    "fold",
]


def create_processor(clients: ClientFactory, settings: Settings) -> RecordProcessor:
    """One processor per shard; the shards of a process share one context."""
    return ProjectorProcessor(context_for(clients, settings))
