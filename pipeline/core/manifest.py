"""The "batch ready" SQS message: the contract between batcher and inserter.

Versioned (``format``); the inserter refuses formats it does not know rather than guessing.
"""

from __future__ import annotations

import msgspec

FORMAT = 1


class BatchObject(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    key: str
    customer_id: str
    type: str
    version: int
    rows: int
    bytes: int
    min_occurred_at: str  # RFC 3339, UTC
    max_occurred_at: str


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
    if manifest.format != FORMAT:
        raise ManifestError(f"unsupported manifest format {manifest.format} (this inserter reads {FORMAT})")
    return manifest


def batch_id(stream: str, shard_id: str, first_sequence: str, last_sequence: str) -> str:
    """Deterministic: a replayed flush of the same records gets the same id."""
    return f"{stream}/{shard_id}/{first_sequence}-{last_sequence}"

