"""Settings from a deployed stack's outputs (pipeline/core/deployed.py), with a scripted
CloudFormation stand-in: outputs sit between defaults and the environment."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from pipeline.core.deployed import load_deployed_settings, settings_env, stack_outputs
from pipeline.core.errors import ConfigError
from pipeline.core.retry import Backoff

OUTPUTS = {
    "StreamName": "prod-events",
    "BucketName": "prod-123-us-east-1",
    "BatchQueueName": "prod-batches",
    "DeadLetterQueueName": "prod-batches-dlq",
    "MaxReceiveCount": "7",
    "BatcherApplication": "prod-batcher",
    "ProjectorApplication": "prod-projector",
    "WarehouseCopyRoleArn": "arn:aws:iam::123:role/prod-CopyRole",
    "WarehouseDialect": "redshift",
    "AlarmTopicArn": "arn:aws:sns:us-east-1:123:prod-alarms",
}


class CloudFormation:
    """Answers DescribeStacks from a script: a list of replies or errors, one per call."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.calls: list[str] = []

    def describe_stacks(self, StackName: str) -> Any:
        self.calls.append(StackName)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def stack(status: str = "UPDATE_COMPLETE", outputs: dict[str, str] = OUTPUTS) -> dict[str, Any]:
    return {
        "Stacks": [
            {
                "StackStatus": status,
                "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in outputs.items()],
            }
        ]
    }


def error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "DescribeStacks",
    )


def test_outputs_name_the_resources_and_unknown_outputs_are_ignored() -> None:
    env = settings_env(OUTPUTS)
    assert env["SHARDHOUSE_STREAM"] == "prod-events"
    assert "AlarmTopicArn" not in str(env)
    cfn = CloudFormation(stack())
    s = load_deployed_settings({"SHARDHOUSE_STACK": "prod"}, lambda _: cfn)  # type: ignore[arg-type,return-value]
    assert cfn.calls == ["prod"]
    assert (s.resources.stream, s.resources.bucket, s.resources.queue) == (
        "prod-events",
        "prod-123-us-east-1",
        "prod-batches",
    )
    assert s.resources.dead_letter_queue == "prod-batches-dlq" and s.resources.max_receive_count == 7
    assert (s.worker.batcher_app, s.worker.projector_app) == ("prod-batcher", "prod-projector")
    assert (
        s.warehouse.dialect == "redshift" and s.warehouse.redshift_iam_role == OUTPUTS["WarehouseCopyRoleArn"]
    )
    assert s.stack == "prod" and s.to_env()["SHARDHOUSE_STACK"] == "prod"


def test_an_explicit_variable_beats_the_stack() -> None:
    cfn = CloudFormation(stack())
    s = load_deployed_settings({"SHARDHOUSE_STACK": "prod", "SHARDHOUSE_STREAM": "mine"}, lambda _: cfn)  # type: ignore[arg-type,return-value]
    assert s.resources.stream == "mine" and s.resources.bucket == "prod-123-us-east-1"


def test_no_stack_named_means_no_call() -> None:
    def never(_: object) -> Any:
        raise AssertionError("no stack was named")

    assert load_deployed_settings({"SHARDHOUSE_STREAM": "s"}, never).resources.stream == "s"


def test_transient_errors_are_retried_then_the_outputs_read() -> None:
    cfn = CloudFormation(error("Throttling"), error("InternalFailure", 500), stack())
    outputs = stack_outputs(cfn, "prod", backoff=Backoff(base=0.0, cap=0.0))  # type: ignore[arg-type]
    assert outputs["StreamName"] == "prod-events" and len(cfn.calls) == 3


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (error("ValidationError"), "no such stack"),
        (stack("ROLLBACK_COMPLETE", {}), "is ROLLBACK_COMPLETE: deploy it first"),
        (stack("DELETE_IN_PROGRESS"), "is DELETE_IN_PROGRESS"),
    ],
)
def test_a_missing_or_failed_stack_is_a_config_error(reply: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        stack_outputs(CloudFormation(reply), "prod", backoff=Backoff(base=0.0, cap=0.0))  # type: ignore[arg-type]


def test_a_stack_being_updated_still_serves_its_outputs() -> None:
    assert stack_outputs(CloudFormation(stack("UPDATE_IN_PROGRESS")), "prod")["BucketName"]  # type: ignore[arg-type]
