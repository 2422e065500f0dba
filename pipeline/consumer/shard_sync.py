"""Create leases for shards that have none. Creation is conditional, so several
workers syncing at once create each lease exactly once."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.consumer.lease_store import LeaseStore
from pipeline.consumer.leases import Lease
from pipeline.consumer.sequence import LATEST, TRIM_HORIZON, ExtendedSequenceNumber
from pipeline.core.aws_errors import is_transient_aws
from pipeline.core.retry import Backoff, call_with_retry

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_kinesis.type_defs import RecordTypeDef


def list_shards(kinesis: KinesisClient, stream: str) -> list[dict[str, Any]]:
    shards: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"StreamName": stream}
    while True:
        page = _list_page(kinesis, kwargs)
        shards.extend(page["Shards"])
        token = page.get("NextToken")
        if not token:
            return shards
        kwargs = {"NextToken": token}


def stream_pages(kinesis: KinesisClient, stream: str) -> Iterator[tuple[str, list[RecordTypeDef]]]:
    """(shard id, records) for every page of every shard, from TRIM_HORIZON until a shard returns
    nothing more: what a benchmark or a check compares a consumer's output with."""
    for shard in list_shards(kinesis, stream):
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            if not page["Records"]:
                break
            yield shard["ShardId"], page["Records"]
            iterator = page.get("NextShardIterator")


def _list_page(kinesis: KinesisClient, kwargs: dict[str, Any]) -> dict[str, Any]:
    return dict(
        call_with_retry(
            lambda: kinesis.list_shards(**kwargs),
            what="list shards",
            backoff=Backoff(base=0.2, cap=5.0, max_attempts=6),
            retry_if=is_transient_aws,
        )
    )


def parents_of(shard: dict[str, Any]) -> frozenset[str]:
    return frozenset(p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p)


def leases_to_create(
    shards: Sequence[dict[str, Any]], existing: set[str], initial_position: str
) -> list[Lease]:
    """Pure: which new leases a sync creates.

    An open shard always gets a lease. A closed shard gets one only while none of its children
    has a lease yet (otherwise it was processed and cleaned up, and re-creating it would replay it).
    With LATEST, closed shards are skipped: their records are history.
    """
    children: dict[str, set[str]] = {}
    for shard in shards:
        for parent in parents_of(shard):
            children.setdefault(parent, set()).add(shard["ShardId"])
    out = []
    for shard in shards:
        key = shard["ShardId"]
        if key in existing:
            continue
        closed = "EndingSequenceNumber" in shard.get("SequenceNumberRange", {})
        if closed and (initial_position == LATEST or children.get(key, set()) & existing):
            continue
        position = initial_position if not shard.get("ParentShardId") else TRIM_HORIZON
        hash_range = shard.get("HashKeyRange", {})
        out.append(
            Lease(
                lease_key=key,
                checkpoint=ExtendedSequenceNumber(position),
                parent_shard_ids=parents_of(shard) - {key},
                starting_hash_key=hash_range.get("StartingHashKey"),
                ending_hash_key=hash_range.get("EndingHashKey"),
            )
        )
    return out


def sync_shards(kinesis: KinesisClient, store: LeaseStore, stream: str, initial_position: str) -> int:
    existing = {lease.lease_key for lease in store.list_leases()}
    created = 0
    for lease in leases_to_create(list_shards(kinesis, stream), existing, initial_position):
        created += int(store.create_if_absent(lease))
    return created
