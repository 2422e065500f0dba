"""Optional KPL aggregation for producers: many user records in one Kinesis record.

Uses the ``aws_kinesis_agg`` aggregator (the KPL wire format, which KCL consumers and our
consumer runtime de-aggregate). As in the KPL, user records are grouped by the shard their
partition key hashes to, so each key still lands on its own shard; an aggregated record is
sent under its first user record's partition key, which hashes to that same shard. When the
shard map changes (resharding) records may land on a sibling shard until the map is reloaded;
consumers must not rely on key affinity for correctness (they don't: dedupe is global).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# aggregator first: on import it puts its own directory on sys.path, which messages_pb2 needs
# (it does ``import config_pb2``). Import this module only when aggregation is wanted.
from aws_kinesis_agg.aggregator import RecordAggregator  # isort: skip
from aws_kinesis_agg import MAGIC, messages_pb2  # isort: skip
from botocore.exceptions import BotoCoreError, ClientError

from pipeline.core.aws_errors import classify_aws
from pipeline.producer.batching import MAX_PARTITION_KEY_CHARS, MAX_RECORD_BYTES, Entry, check_record

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient

#: The KPL's default AggregationMaxSize: small enough to keep records flowing to all shards.
DEFAULT_MAX_SIZE = 51_200
#: Room for the largest partition key (256 characters of up to 4 UTF-8 bytes each).
MAX_AGGREGATE_SIZE = MAX_RECORD_BYTES - 4 * MAX_PARTITION_KEY_CHARS
_DIGEST = 16


def hash_key(partition_key: str) -> int:
    """Kinesis's mapping of a partition key onto the 128-bit hash key space."""
    return int.from_bytes(hashlib.md5(partition_key.encode("utf-8"), usedforsecurity=False).digest(), "big")


@dataclass(frozen=True)
class ShardMap:
    """Open shards by starting hash key, to group user records the way Kinesis will route them."""

    starts: tuple[int, ...] = (0,)
    shard_ids: tuple[str, ...] = ("",)

    def index_for(self, partition_key: str) -> int:
        return max(0, bisect.bisect_right(self.starts, hash_key(partition_key)) - 1)

    @classmethod
    def from_shards(cls, shards: Iterable[dict[str, Any]]) -> ShardMap:
        """From ListShards entries; closed shards (with an ending sequence number) are skipped."""
        listed = list(shards)
        open_shards = [s for s in listed if "EndingSequenceNumber" not in s["SequenceNumberRange"]]
        chosen = sorted(open_shards or listed, key=lambda s: int(s["HashKeyRange"]["StartingHashKey"]))
        if not chosen:
            return cls()
        return cls(
            starts=tuple(int(s["HashKeyRange"]["StartingHashKey"]) for s in chosen),
            shard_ids=tuple(str(s["ShardId"]) for s in chosen),
        )


def load_shard_map(kinesis: KinesisClient, stream: str) -> ShardMap:
    """List the stream's shards (paginated)."""
    shards: list[dict[str, Any]] = []
    try:
        response = kinesis.list_shards(StreamName=stream)
        while True:
            shards.extend(dict(s) for s in response.get("Shards", []))
            token = response.get("NextToken")
            if not token:
                break
            response = kinesis.list_shards(NextToken=token)
    except (ClientError, BotoCoreError) as exc:
        raise classify_aws(exc, f"list shards of stream {stream!r}") from exc
    return ShardMap.from_shards(shards)


def aggregate(
    entries: Iterable[Entry],
    *,
    shard_map: ShardMap | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
) -> Iterator[Entry]:
    """Pack user records into aggregated Kinesis records of at most ``max_size`` bytes.

    Lazy; order is preserved per shard (and so per partition key). A user record too big to
    share a record is flushed after its shard's pending aggregate and sent as a plain record,
    which de-aggregators pass through unchanged.
    """
    if not 1 <= max_size <= MAX_AGGREGATE_SIZE:
        raise ValueError(f"max_size must be 1-{MAX_AGGREGATE_SIZE}, got {max_size}")
    routing = shard_map or ShardMap()
    pending: dict[int, RecordAggregator] = {}
    for index, (data, key) in enumerate(entries):
        check_record(data, key, index)
        shard = routing.index_for(key)
        agg = pending.get(shard)
        if agg is None:
            agg = pending[shard] = RecordAggregator(max_size)
        try:
            full = agg.add_user_record(key, data)
        except ValueError:  # alone it exceeds max_size
            flushed = agg.clear_and_get()
            if flushed is not None:
                yield _entry(flushed)
            yield data, key
            continue
        if full is not None:
            yield _entry(full)
    for agg in pending.values():
        rest = agg.clear_and_get()
        if rest is not None:
            yield _entry(rest)


def _entry(record: Any) -> Entry:
    key, _explicit_hash_key, data = record.get_contents()
    return bytes(data), str(key)


def count_user_records(data: bytes) -> int:
    """How many user records a Kinesis record carries (1 unless it is a valid KPL aggregate)."""
    if len(data) <= len(MAGIC) + _DIGEST or not data.startswith(MAGIC):
        return 1
    body, digest = data[len(MAGIC) : -_DIGEST], data[-_DIGEST:]
    if hashlib.md5(body, usedforsecurity=False).digest() != digest:
        return 1
    message = messages_pb2.AggregatedRecord()
    message.ParseFromString(body)
    return len(message.records)
