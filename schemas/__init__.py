"""Event registry: one definition per event type+version → validator, Arrow schema, DDL.

See docs/schemas.md.
"""

from schemas.definition import (
    KINDS,
    FieldDef,
    SchemaDefinitionError,
    TypeDefinition,
    builtin_definitions,
    parse_definition,
)
from schemas.errors import REASONS, InvalidEvent, SchemaEvolutionError
from schemas.event import Event, Payload, encode_event, event_to_dict
from schemas.ids import CUSTOMER_ID_PATTERN, is_safe_customer_id, is_safe_sql_name, quote_ident
from schemas.registry import DEFAULT_MAX_EVENT_BYTES, EventType, Registry, load_registry

__all__ = [
    "CUSTOMER_ID_PATTERN",
    "DEFAULT_MAX_EVENT_BYTES",
    "KINDS",
    "REASONS",
    "Event",
    "EventType",
    "FieldDef",
    "InvalidEvent",
    "Payload",
    "Registry",
    "SchemaDefinitionError",
    "SchemaEvolutionError",
    "TypeDefinition",
    "builtin_definitions",
    "encode_event",
    "event_to_dict",
    "is_safe_customer_id",
    "is_safe_sql_name",
    "load_registry",
    "parse_definition",
    "quote_ident",
]
