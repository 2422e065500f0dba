"""The "batch ready" SQS message: the contract between batcher and inserter.

Versioned (``format``); the inserter refuses formats it does not know rather than guessing.
"""

from __future__ import annotations

import msgspec

FORMAT = 2
#: Formats this inserter reads: 1 has no shared objects (``customers`` is always empty).
READABLE_FORMATS = frozenset({1, 2})


class CustomerRows(msgspec.Struct, frozen=True, array_like=True):
    """One customer's rows in a shared object (the object is sorted by customer, in this order)."""

    customer_id: str
    rows: int


class BatchObject(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """One object of a batch. A customer's own object names it in ``customer_id``; a shared
    object (key ``events/shared/…``) has ``customer_id`` "" and lists its customers with their
    row counts in ``customers`` — the inserter refuses any row of a customer not listed."""

    key: str
    customer_id: str
    type: str
    version: int
    rows: int
    bytes: int
    min_occurred_at: str  # RFC 3339, UTC
    max_occurred_at: str
    customers: tuple[CustomerRows, ...] = ()


class BatchManifest(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    format: int
    batch_id: str
    stream: str
    shard_id: str
    first_sequence: str
    last_sequence: str
    bucket: str
    objects: tuple[BatchObject, ...]
    created_at: str = ""


class ManifestError(ValueError):
    """A message body that is not a manifest this inserter can load (poison: dead-letter it)."""


_decoder = msgspec.json.Decoder(BatchManifest)


def encode_manifest(manifest: BatchManifest) -> str:
    return msgspec.json.encode(manifest).decode()


def decode_manifest(body: str | bytes) -> BatchManifest:
    try:
        manifest = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ManifestError(f"malformed batch manifest: {exc}") from exc
    if manifest.format not in READABLE_FORMATS:
        known = ", ".join(str(f) for f in sorted(READABLE_FORMATS))
        raise ManifestError(f"unsupported manifest format {manifest.format} (this inserter reads {known})")
    return manifest


def batch_id(stream: str, shard_id: str, first_sequence: str, last_sequence: str) -> str:
    """Deterministic: a replayed flush of the same records gets the same id."""
    return f"{stream}/{shard_id}/{first_sequence}-{last_sequence}"
