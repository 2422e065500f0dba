"""Settings from a deployed CloudFormation stack (deploy/shardhouse.yaml).

``SHARDHOUSE_STACK`` names the stack; its outputs become a layer of ``SHARDHOUSE_*`` settings
between the defaults and the environment, so every command runs against what was deployed and
an explicit variable still wins (the emulator test points Redis and the warehouse at local
servers that way).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.core.aws_errors import classify_aws, error_code, is_transient_aws
from pipeline.core.errors import ConfigError
from pipeline.core.retry import Backoff, call_with_retry
from pipeline.core.settings import Settings, load_settings

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient

#: Stack output → the setting it stands for. Every output of the template is either here or in
#: INFORMATIONAL_OUTPUTS (tests/unit/test_deploy_template.py keeps the two in step).
STACK_OUTPUTS: Mapping[str, str] = {
    "StreamName": "SHARDHOUSE_STREAM",
    "BucketName": "SHARDHOUSE_BUCKET",
    "BatchQueueName": "SHARDHOUSE_QUEUE",
    "DeadLetterQueueName": "SHARDHOUSE_DEAD_LETTER_QUEUE",
    "MaxReceiveCount": "SHARDHOUSE_MAX_RECEIVE_COUNT",
    "BatcherApplication": "SHARDHOUSE_BATCHER_APP",
    "ProjectorApplication": "SHARDHOUSE_PROJECTOR_APP",
    "WarehouseCopyRoleArn": "SHARDHOUSE_WAREHOUSE_REDSHIFT_IAM_ROLE",
    "WarehouseDialect": "SHARDHOUSE_WAREHOUSE_DIALECT",
}
#: Outputs for operators (attach the producer policy, subscribe to alarms), not settings.
INFORMATIONAL_OUTPUTS = frozenset({"ProducerPolicyArn", "AlarmTopicArn"})

#: Stack states without usable outputs: creation failed, or the stack is going away.
_UNUSABLE = ("CREATE_FAILED", "ROLLBACK_COMPLETE", "ROLLBACK_IN_PROGRESS", "ROLLBACK_FAILED", "DELETE_")


def settings_env(outputs: Mapping[str, str]) -> dict[str, str]:
    """The ``SHARDHOUSE_*`` variables a stack's outputs stand for (unknown outputs ignored)."""
    return {STACK_OUTPUTS[key]: value for key, value in outputs.items() if key in STACK_OUTPUTS}


def stack_outputs(
    cloudformation: CloudFormationClient, name: str, *, backoff: Backoff | None = None
) -> dict[str, str]:
    """One DescribeStacks (retried while transient); a missing or failed stack is a ConfigError."""
    try:
        reply = call_with_retry(
            lambda: cloudformation.describe_stacks(StackName=name),
            what=f"describe stack {name}",
            backoff=backoff or Backoff(base=0.2, cap=5.0, max_attempts=6),
            retry_if=is_transient_aws,
        )
    except ClientError as exc:
        if error_code(exc) == "ValidationError":
            raise ConfigError(f"SHARDHOUSE_STACK={name!r}: no such stack ({exc})") from exc
        raise classify_aws(exc, f"describe stack {name}") from exc
    except BotoCoreError as exc:
        raise classify_aws(exc, f"describe stack {name}") from exc
    stack = reply["Stacks"][0]
    status = stack["StackStatus"]
    if status.startswith(_UNUSABLE):
        raise ConfigError(f"SHARDHOUSE_STACK={name!r} is {status}: deploy it first (docs/deploy.md)")
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", []) if "OutputKey" in o}


def load_deployed_settings(
    env: Mapping[str, str], cloudformation_for: Callable[[Settings], CloudFormationClient]
) -> Settings:
    """:func:`load_settings`, with the named stack's outputs beneath ``env`` when one is named."""
    settings = load_settings(env)
    if not settings.stack:
        return settings
    outputs = stack_outputs(cloudformation_for(settings), settings.stack)
    return load_settings({**settings_env(outputs), **env})
