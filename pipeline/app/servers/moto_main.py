"""moto's server, with the two defects that matter to a stream pipeline fixed at start-up.

1. moto's Kinesis and DynamoDB backends are not thread-safe while its server is threaded:
   concurrent PutRecords calls silently lost records (74 of 20,000 with four calls in flight),
   and two conditional UpdateItem calls could both pass their condition — which would break the
   lease protocol's optimistic lock. Every mutating call of those backends is serialised here.
2. ``Shard.get_max_sequence_number`` copied every key of the shard per record written, so
   PutRecords slowed from ~10,700 to ~450 records/s as a shard filled; the last key of the
   ordered dict is read directly instead.
3. moto's CloudFormation lacks resource types deploy/shardhouse.yaml uses (ElastiCache, Secrets
   Manager secrets, CloudWatch alarms); :mod:`pipeline.app.servers.moto_cfn` adds them.

Run as ``python -m pipeline.app.servers.moto_main -H 127.0.0.1 -p 4566`` (moto's own arguments).
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from typing import Any

_LOCK = threading.RLock()

KINESIS_CALLS = (
    "put_record",
    "put_records",
    "get_records",
    "split_shard",
    "merge_shards",
    "update_shard_count",
)
DYNAMODB_CALLS = (
    "put_item",
    "update_item",
    "delete_item",
    "transact_write_items",
    "batch_write_item",
    "get_item",
    "create_table",
    "update_table",
)


def _serialised(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return fn(*args, **kwargs)

    return wrapper


def _last_sequence_number(shard: Any) -> int:
    return next(reversed(shard.records)) if shard.records else 0


def apply_fixes() -> None:
    import moto.dynamodb.models as dynamodb_models
    import moto.kinesis.models as kinesis_models

    from pipeline.app.servers import moto_cfn

    moto_cfn.register()

    setattr(kinesis_models.Shard, "get_max_sequence_number", _last_sequence_number)  # noqa: B010
    for backend, names in (
        (kinesis_models.KinesisBackend, KINESIS_CALLS),
        (dynamodb_models.DynamoDBBackend, DYNAMODB_CALLS),
    ):
        for name in names:
            setattr(backend, name, _serialised(getattr(backend, name)))


def main() -> None:
    apply_fixes()
    from moto.server import main as moto_main

    moto_main(sys.argv[1:])


if __name__ == "__main__":
    main()
