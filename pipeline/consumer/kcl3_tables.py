"""DynamoDB adapters for the KCL 3.x protocol: ``<app>-CoordinatorState`` (mode and leader
lock), ``<app>-WorkerMetricStats``, and the 3.x writes on the lease table (KCL-SPEC §2.2, §2.6).

They only execute; what to write is decided in :mod:`pipeline.consumer.kcl3_state` and
:mod:`pipeline.consumer.kcl3_assignment`. The side tables are KCL's: a native worker never
creates them (a table without them is a 2.x table).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from pipeline.consumer.kcl3_assignment import WorkerStats
from pipeline.consumer.kcl3_state import (
    LEADER_KEY,
    LOCK_DURATION_S,
    MIGRATION_KEY,
    ClientVersion,
    LockAction,
    LockItem,
    parse_client_version,
    stats_from_item,
    stats_item,
)
from pipeline.consumer.lease_store import LeaseStore
from pipeline.consumer.leases import FAILING, Lease
from pipeline.core.aws_errors import classify_aws, error_code, is_transient_aws
from pipeline.core.retry import Backoff, call_with_retry

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

GSI_NAME = "LeaseOwnerToLeaseKeyIndex"
_BACKOFF = Backoff(base=0.05, cap=1.0, max_attempts=5)


def _call(what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
    return call_with_retry(lambda: fn(**kwargs), what=what, backoff=_BACKOFF, retry_if=is_transient_aws)


def _conditional(what: str, fn: Callable[..., Any], **kwargs: Any) -> bool:
    """A conditional write: True if applied, False if its condition failed; other errors
    classified (transient ones retried with backoff first)."""
    try:
        _call(what, fn, **kwargs)
        return True
    except ClientError as exc:
        if error_code(exc) == "ConditionalCheckFailedException":
            return False
        raise classify_aws(exc, what) from exc


def _table_exists(db: DynamoDBClient, name: str) -> bool:
    try:
        _call("describe table", db.describe_table, TableName=name)
        return True
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return False
        raise classify_aws(exc, f"describe {name}") from exc


class CoordinatorState:
    """``<app>-CoordinatorState`` (HASH ``key``): the ``Migration3.0`` mode and the ``Leader`` lock."""

    def __init__(self, dynamodb: DynamoDBClient, application: str) -> None:
        self.db = dynamodb
        self.table = f"{application}-CoordinatorState"

    def exists(self) -> bool:
        return _table_exists(self.db, self.table)

    def _get(self, key: str) -> dict[str, Any] | None:
        try:
            got = _call(
                "get coordinator state", self.db.get_item,
                TableName=self.table, Key={"key": {"S": key}}, ConsistentRead=True,
            )  # fmt: skip
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                return None
            raise classify_aws(exc, f"get {key}") from exc
        item: dict[str, Any] | None = got.get("Item")
        return item

    def client_version(self) -> ClientVersion | None:
        return parse_client_version(self._get(MIGRATION_KEY))

    def migration_item(self) -> dict[str, Any] | None:
        return self._get(MIGRATION_KEY)

    def leader(self) -> LockItem | None:
        item = self._get(LEADER_KEY)
        return LockItem.from_item(item) if item else None

    def acquire(
        self, action: LockAction, me: str, seen: LockItem | None, duration_s: float = LOCK_DURATION_S
    ) -> str | None:
        """Write the lock as the lock client does for ``action``; the new rvn, or None if lost."""
        rvn = str(uuid.uuid4())
        item = {
            "key": {"S": LEADER_KEY},
            "ownerName": {"S": me},
            "leaseDuration": {"S": str(int(duration_s * 1000))},
            "recordVersionNumber": {"S": rvn},
        }
        kwargs: dict[str, Any] = {"TableName": self.table, "Item": item}
        if action is LockAction.CREATE:
            kwargs["ConditionExpression"] = "attribute_not_exists(#k)"
            kwargs["ExpressionAttributeNames"] = {"#k": "key"}
        elif action in (LockAction.TAKE_RELEASED, LockAction.TAKE_EXPIRED) and seen is not None:
            cond = "attribute_exists(#k) AND recordVersionNumber = :rvn"
            if action is LockAction.TAKE_RELEASED:
                cond += " AND attribute_exists(isReleased)"
            kwargs["ConditionExpression"] = cond
            kwargs["ExpressionAttributeNames"] = {"#k": "key"}
            kwargs["ExpressionAttributeValues"] = {":rvn": {"S": seen.rvn}}
        else:
            return None
        return rvn if _conditional("acquire leader lock", self.db.put_item, **kwargs) else None

    def heartbeat(self, me: str, rvn: str, duration_s: float = LOCK_DURATION_S) -> str | None:
        new = str(uuid.uuid4())
        ok = _conditional(
            "leader heartbeat", self.db.update_item,
            TableName=self.table, Key={"key": {"S": LEADER_KEY}},
            ConditionExpression="attribute_exists(#k) AND recordVersionNumber = :rvn AND ownerName = :me",
            UpdateExpression="SET leaseDuration = :ld, recordVersionNumber = :new",
            ExpressionAttributeNames={"#k": "key"},
            ExpressionAttributeValues={
                ":rvn": {"S": rvn}, ":me": {"S": me}, ":new": {"S": new},
                ":ld": {"S": str(int(duration_s * 1000))},
            },
        )  # fmt: skip
        return new if ok else None

    def release(self, me: str, rvn: str) -> bool:
        """Delete the lock (the lock client's default on close), so a contender takes it at once."""
        return _conditional(
            "release leader lock", self.db.delete_item,
            TableName=self.table, Key={"key": {"S": LEADER_KEY}},
            ConditionExpression="attribute_exists(#k) AND recordVersionNumber = :rvn AND ownerName = :me",
            ExpressionAttributeNames={"#k": "key"},
            ExpressionAttributeValues={":rvn": {"S": rvn}, ":me": {"S": me}},
        )  # fmt: skip

    def set_client_version(
        self, version: ClientVersion, me: str, expected: ClientVersion | None, now_ms: int
    ) -> bool:
        """Flip the mode the way KCL's migration tool does: conditional on the version read,
        pushing the previous one onto the history ``h``."""
        current = self.migration_item()
        history: list[dict[str, Any]] = list(current.get("h", {}).get("L", [])) if current else []
        if current:
            history.insert(0, {"M": {k: current[k] for k in ("cv", "mb", "mts") if k in current}})
        item = {
            "key": {"S": MIGRATION_KEY}, "cv": {"S": version.value}, "mb": {"S": me},
            "mts": {"N": str(now_ms)}, "h": {"L": history[:10]},
        }  # fmt: skip
        kwargs: dict[str, Any] = {"TableName": self.table, "Item": item}
        if expected is None:
            kwargs["ConditionExpression"] = "attribute_not_exists(#k)"
            kwargs["ExpressionAttributeNames"] = {"#k": "key"}
        else:
            kwargs["ConditionExpression"] = "cv = :cv"
            kwargs["ExpressionAttributeValues"] = {":cv": {"S": expected.value}}
        return _conditional("set client version", self.db.put_item, **kwargs)


class WorkerMetricsTable:
    """``<app>-WorkerMetricStats`` (HASH ``wid``)."""

    def __init__(self, dynamodb: DynamoDBClient, application: str) -> None:
        self.db = dynamodb
        self.table = f"{application}-WorkerMetricStats"

    def exists(self) -> bool:
        return _table_exists(self.db, self.table)

    def publish(self, stats: WorkerStats) -> None:
        _call("publish worker metrics", self.db.put_item, TableName=self.table, Item=stats_item(stats))

    def delete(self, worker_id: str) -> None:
        _call(
            "delete worker metrics", self.db.delete_item, TableName=self.table, Key={"wid": {"S": worker_id}}
        )

    def all(self) -> list[WorkerStats]:
        out: list[WorkerStats] = []
        kwargs: dict[str, Any] = {"TableName": self.table, "ConsistentRead": True}
        while True:
            page = _call("scan worker metrics", self.db.scan, **kwargs)
            out.extend(stats for item in page.get("Items", []) if (stats := stats_from_item(item)))
            if "LastEvaluatedKey" not in page:
                return out
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def checkpoint_owner(lease: Lease) -> str | None:
    value = lease.extra.get("checkpointOwner", {}).get("S")
    return str(value) if value is not None else None


def throughput_kbps(lease: Lease) -> float | None:
    value = lease.extra.get("throughputKBps", {}).get("N")
    return float(value) if value is not None else None


class Kcl3Leases:
    """The 3.x writes on the lease table, beside :class:`LeaseStore`'s 2.x ones."""

    def __init__(self, store: LeaseStore) -> None:
        self.store = store
        self.db = store.db
        self.table = store.table

    def keys_for(self, owner: str) -> list[str] | None:
        """Lease keys naming ``owner``, through the GSI; None if the index is missing."""
        keys: list[str] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table, "IndexName": GSI_NAME,
            "KeyConditionExpression": "leaseOwner = :o", "ExpressionAttributeValues": {":o": {"S": owner}},
        }  # fmt: skip
        while True:
            try:
                page = _call("query lease owner index", self.db.query, **kwargs)
            except ClientError as exc:
                if error_code(exc) in ("ValidationException", "ResourceNotFoundException"):
                    return None
                raise classify_aws(exc, "query lease owner index") from exc
            keys.extend(item["leaseKey"]["S"] for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return keys
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def renew(self, lease: Lease, me: str, kbps: float | None, *, handing_off: bool) -> bool | Lease:
        """3.x renewal: fails while a handoff is pending (``checkpointOwner`` set) unless we know
        about it. Returns True, False (lost), or the re-read lease when a handoff has begun
        (the caller then checkpoints and hands over; KCL ``handleGracefulShutdown``)."""
        update = "SET leaseCounter = :n"
        values: dict[str, Any] = {
            ":c": {"N": str(lease.lease_counter)},
            ":n": {"N": str(lease.lease_counter + 1)},
        }
        if kbps is not None:
            update += ", throughputKBps = :tp"
            values[":tp"] = {"N": repr(kbps)}
        cond = (
            "leaseCounter = :c"
            if handing_off
            else "leaseCounter = :c AND attribute_not_exists(checkpointOwner)"
        )
        ok = _conditional(
            "renew lease (3.x)", self.db.update_item,
            TableName=self.table, Key={"leaseKey": {"S": lease.lease_key}},
            ConditionExpression=cond, UpdateExpression=update, ExpressionAttributeValues=values,
        )  # fmt: skip
        if ok:
            return True
        current = self.store.get(lease.lease_key)
        if current is None:
            return False
        if (
            not handing_off
            and checkpoint_owner(current) == me
            and current.lease_counter == lease.lease_counter
        ):
            return current
        # Our own write whose reply was lost counts as done (spec §2.2).
        owner_now = checkpoint_owner(current) or current.lease_owner
        return owner_now == me and current.lease_counter == lease.lease_counter + 1

    def assign(self, lease: Lease, new_owner: str, *, cp_owner: str | None = None) -> bool:
        """KCL ``assignLease``: owner fields as read, lease still there; counter +1, handoff
        cleared, and the previous owner's published failure with it (the new processor starts
        clean from the checkpoint, as after a 2.x take)."""
        names = {"#o": "leaseOwner", "#cp": "checkpointOwner", "#f": FAILING}
        values: dict[str, Any] = {":new": {"S": new_owner}, ":one": {"N": "1"}}
        conds = ["attribute_exists(leaseKey)"]
        if lease.lease_owner is None:
            conds.append("attribute_not_exists(#o)")
        else:
            conds.append("#o = :old")
            values[":old"] = {"S": lease.lease_owner}
        if cp_owner is None:
            conds.append("attribute_not_exists(#cp)")
        else:
            conds.append("#cp = :cp")
            values[":cp"] = {"S": cp_owner}
        update = "SET #o = :new REMOVE #cp, #f ADD leaseCounter :one"
        if (lease.lease_owner is not None and lease.lease_owner != new_owner) or cp_owner == new_owner:
            update += ", ownerSwitchesSinceCheckpoint :one"
        return _conditional(
            "assign lease", self.db.update_item,
            TableName=self.table, Key={"leaseKey": {"S": lease.lease_key}},
            ConditionExpression=" AND ".join(conds), UpdateExpression=update,
            ExpressionAttributeNames=names, ExpressionAttributeValues=values,
        )  # fmt: skip

    def initiate_handoff(self, lease: Lease, new_owner: str) -> bool:
        """KCL ``initiateGracefulLeaseHandoff``: leaseOwner → new, checkpointOwner → old, counter kept."""
        if lease.lease_owner is None:
            return False
        return _conditional(
            "initiate lease handoff", self.db.update_item,
            TableName=self.table, Key={"leaseKey": {"S": lease.lease_key}},
            ConditionExpression=(
                "attribute_exists(leaseKey) AND leaseOwner = :old AND attribute_not_exists(checkpointOwner)"
            ),
            UpdateExpression="SET leaseOwner = :new, checkpointOwner = :old",
            ExpressionAttributeValues={":old": {"S": lease.lease_owner}, ":new": {"S": new_owner}},
        )  # fmt: skip

    def evict(self, lease: Lease, me: str) -> bool:
        """Give a lease back to the leader (no owner, counter +1): our shutdown when no other
        worker is there to take it. Our published failure goes with it."""
        return _conditional(
            "evict lease", self.db.update_item,
            TableName=self.table, Key={"leaseKey": {"S": lease.lease_key}},
            ConditionExpression=(
                "attribute_exists(leaseKey) AND leaseOwner = :me AND attribute_not_exists(checkpointOwner)"
            ),
            UpdateExpression="REMOVE leaseOwner, #f ADD leaseCounter :one",
            ExpressionAttributeNames={"#f": FAILING},
            ExpressionAttributeValues={":me": {"S": me}, ":one": {"N": "1"}},
        )  # fmt: skip

    def get(self, key: str) -> Lease | None:
        return self.store.get(key)

    def list(self) -> list[Lease]:
        return self.store.list_leases()
