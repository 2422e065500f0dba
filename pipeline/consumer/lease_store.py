"""The DynamoDB lease table, with KCL's schema and conditional-write rules
(docs/consumer-runtime.md, "Lease table")."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from pipeline.consumer.leases import FAILING, Lease, from_item, to_new_item
from pipeline.consumer.sequence import ExtendedSequenceNumber
from pipeline.core.aws_errors import classify_aws, error_code, is_transient_aws
from pipeline.core.retry import Backoff, call_with_retry

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

_BACKOFF = Backoff(base=0.05, cap=1.0, max_attempts=5)


class LeaseStore:
    """One application's lease table. Every write is conditional on what this worker last read."""

    def __init__(self, dynamodb: DynamoDBClient, table: str) -> None:
        self.db = dynamodb
        self.table = table

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        return call_with_retry(lambda: fn(**kwargs), what=what, backoff=_BACKOFF, retry_if=is_transient_aws)

    def ensure_table(self, timeout: float = 60.0) -> bool:
        """Create the table (PAY_PER_REQUEST, HASH leaseKey) if missing; True when created."""
        created = False
        try:
            self.db.create_table(
                TableName=self.table,
                KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
            created = True
        except ClientError as exc:
            if error_code(exc) != "ResourceInUseException":
                raise classify_aws(exc, f"create lease table {self.table}") from exc
        deadline = time.monotonic() + timeout
        while self.db.describe_table(TableName=self.table)["Table"]["TableStatus"] != "ACTIVE":
            if time.monotonic() > deadline:
                raise classify_aws(TimeoutError(self.table), "lease table not ACTIVE")
            time.sleep(0.2)
        return created

    def list_leases(self) -> list[Lease]:
        leases: list[Lease] = []
        kwargs: dict[str, Any] = {"TableName": self.table, "ConsistentRead": True}
        while True:
            page = self._call("scan lease table", self.db.scan, **kwargs)
            leases.extend(lease for item in page.get("Items", []) if (lease := from_item(item)))
            if "LastEvaluatedKey" not in page:
                return leases
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def get(self, key: str) -> Lease | None:
        item = self._call(
            "get lease",
            self.db.get_item,
            TableName=self.table,
            Key={"leaseKey": {"S": key}},
            ConsistentRead=True,
        ).get("Item")
        return from_item(item) if item else None

    def create_if_absent(self, lease: Lease) -> bool:
        try:
            self._call(
                "create lease",
                self.db.put_item,
                TableName=self.table,
                Item=to_new_item(lease),
                ConditionExpression="attribute_not_exists(leaseKey)",
            )
            return True
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise classify_aws(exc, "create lease") from exc

    def _conditional(
        self, what: str, key: str, expected_counter: int, update: str, values: dict[str, Any]
    ) -> bool:
        try:
            self._call(
                what,
                self.db.update_item,
                TableName=self.table,
                Key={"leaseKey": {"S": key}},
                ConditionExpression="leaseCounter = :c",
                UpdateExpression=update,
                ExpressionAttributeValues={":c": {"N": str(expected_counter)}, **values},
            )
            return True
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise classify_aws(exc, what) from exc

    def renew(self, lease: Lease, me: str) -> bool:
        ok = self._conditional(
            "renew lease", lease.lease_key, lease.lease_counter,
            "SET leaseCounter = :n", {":n": {"N": str(lease.lease_counter + 1)}},
        )  # fmt: skip
        if ok:
            return True
        # A ConditionalCheckFailed may be our own write whose reply was lost.
        current = self.get(lease.lease_key)
        return (
            current is not None
            and current.lease_owner == me
            and current.lease_counter == lease.lease_counter + 1
        )

    def take(self, lease: Lease, me: str) -> bool:
        update = "SET leaseCounter = :n, leaseOwner = :me"
        values: dict[str, Any] = {":n": {"N": str(lease.lease_counter + 1)}, ":me": {"S": me}}
        if lease.lease_owner != me:
            update += " ADD ownerSwitchesSinceCheckpoint :one"
            values[":one"] = {"N": "1"}
        update += f" REMOVE {FAILING}"  # the previous owner's failure is not the new owner's
        return self._conditional("take lease", lease.lease_key, lease.lease_counter, update, values)

    def release(self, lease: Lease) -> bool:
        """Give a lease up at once (KCL evict): no owner, counter bumped, so others take it now."""
        return self._conditional(
            "release lease", lease.lease_key, lease.lease_counter,
            f"SET leaseCounter = :n REMOVE leaseOwner, {FAILING}",
            {":n": {"N": str(lease.lease_counter + 1)}},
        )  # fmt: skip

    def checkpoint(self, lease: Lease, value: ExtendedSequenceNumber) -> bool:
        return self._conditional(
            "checkpoint",
            lease.lease_key,
            lease.lease_counter,
            "SET leaseCounter = :n, checkpoint = :cp, checkpointSubSequenceNumber = :sub, "
            "ownerSwitchesSinceCheckpoint = :zero "
            "REMOVE pendingCheckpoint, pendingCheckpointSubSequenceNumber, pendingCheckpointState",
            {
                ":n": {"N": str(lease.lease_counter + 1)},
                ":cp": {"S": value.sequence_number},
                ":sub": {"N": str(value.sub_sequence_number)},
                ":zero": {"N": "0"},
            },
        )

    def set_children(self, key: str, children: list[str]) -> None:
        try:
            self._call(
                "set childShardIds",
                self.db.update_item,
                TableName=self.table,
                Key={"leaseKey": {"S": key}},
                ConditionExpression="attribute_exists(leaseKey)",
                UpdateExpression="SET childShardIds = :c",
                ExpressionAttributeValues={":c": {"SS": sorted(children)}},
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise classify_aws(exc, "set childShardIds") from exc

    def set_failing(self, key: str, me: str, reason: str | None) -> None:
        """Publish (or clear, with None) why this owner's processor keeps failing on the shard,
        for ``shardhouse status``; only while the lease is still ours."""
        update = "REMOVE #f" if reason is None else "SET #f = :r"
        values: dict[str, Any] = {":me": {"S": me}}
        if reason is not None:
            values[":r"] = {"S": reason[:500]}
        try:
            self._call(
                "publish failing shard",
                self.db.update_item,
                TableName=self.table,
                Key={"leaseKey": {"S": key}},
                ConditionExpression="leaseOwner = :me",
                UpdateExpression=update,
                ExpressionAttributeNames={"#f": FAILING},
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise classify_aws(exc, "publish failing shard") from exc

    def delete(self, key: str) -> None:
        self._call("delete lease", self.db.delete_item, TableName=self.table, Key={"leaseKey": {"S": key}})
