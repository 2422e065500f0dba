"""KPL aggregates built directly from the protobuf, beyond what the KPL itself would write (the
hostile producer's kind: one record holding tens of thousands of sub-records)."""

from __future__ import annotations

import hashlib

from pipeline.consumer.kpl import MAGIC


def forged_aggregate(datas: list[bytes], key: str = "k") -> bytes:
    import aws_kinesis_agg.aggregator  # noqa: F401 - puts the generated modules on sys.path
    from aws_kinesis_agg import messages_pb2

    message = messages_pb2.AggregatedRecord()
    message.partition_key_table.append(key)
    for data in datas:
        sub = message.records.add()
        sub.partition_key_index = 0
        sub.data = data
    body = message.SerializeToString()
    return MAGIC + body + hashlib.md5(body, usedforsecurity=False).digest()
