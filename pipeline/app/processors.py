"""Record-processor factories by name, for ``shardhouse worker --processor NAME``.

A name maps to a factory or to its import path (``package.module:attr``), imported only when the
name is resolved, so the CLI does not import every worker's dependencies. Any other
``package.module:attr`` string resolves too, so a new processor needs no registration to be run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from pipeline.consumer.diagnostic import create_noop, create_recorder
from pipeline.consumer.processor import RecordProcessor
from pipeline.core.clients import ClientFactory
from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings

ProcessorFactory = Callable[[ClientFactory, Settings], RecordProcessor]


def _batcher(clients: ClientFactory, settings: Settings) -> RecordProcessor:
    from workers.batcher import create_processor

    return create_processor(clients, settings)


def _projector(clients: ClientFactory, settings: Settings) -> RecordProcessor:
    from workers.projector import create_processor

    return create_processor(clients, settings)


# The roles are imported when a processor is made, not when the CLI starts (each pulls in its own
# dependencies: pyarrow for the batcher, the Lua scripts for the projector).
_FACTORIES: dict[str, ProcessorFactory | str] = {
    "batcher": _batcher,
    "projector": _projector,
    "noop": create_noop,
    "recorder": create_recorder,
}


def register_processor(name: str, factory: ProcessorFactory | str) -> None:
    """Add or replace a named factory (an object, or a ``module:attr`` path imported lazily)."""
    _FACTORIES[name] = factory


def processor_names() -> list[str]:
    return sorted(_FACTORIES)


def resolve_processor(name: str) -> ProcessorFactory:
    """The factory a registered name (or a ``package.module:attr`` spec) refers to."""
    entry = _FACTORIES.get(name, name)
    if not isinstance(entry, str):
        return entry
    module_name, sep, attr = entry.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"unknown processor {name!r}: expected one of {', '.join(processor_names())} "
            "or 'package.module:factory'"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"processor {name!r}: cannot import {module_name}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"processor {name!r}: {module_name} has no callable {attr!r}")
    return factory  # type: ignore[no-any-return]
