"""deploy/shardhouse.yaml deployed into the local moto server's CloudFormation; then producer →
batcher → inserter → projector run against the resources the stack created, the roles finding
them through SHARDHOUSE_STACK alone, and the stores hold every valid event exactly once.

The emulator has no Redshift or ElastiCache engine: the stack creates those resources (moto
records them) and the test points Redis and the warehouse at the local redis-server and
PostgreSQL with explicit variables, which beat the stack's outputs by design.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest

from pipeline.app.demo.roles import Role
from pipeline.app.demo.run import DemoConfig, DemoRun, loaded_rows, projected_events
from pipeline.app.demo.verify import verify
from pipeline.app.provision import ensure_database
from pipeline.app.servers.process import free_port
from pipeline.app.servers.stack import StackState
from pipeline.core.clients import ClientFactory
from pipeline.core.deployed import STACK_OUTPUTS, load_deployed_settings
from pipeline.core.settings import Settings
from pipeline.producer.client import Producer
from pipeline.producer.synthetic import SyntheticConfig, generate

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "shardhouse.yaml"
pytestmark = pytest.mark.timeout(240)


def deploy(stack: StackState, settings: Settings, name: str) -> dict[str, str]:
    """create-stack with the operator's parameters, on the emulator's default VPC."""
    kw: dict[str, Any] = {"endpoint_url": stack.aws_endpoint, "region_name": settings.aws.region}
    ec2, ssm = boto3.client("ec2", **kw), boto3.client("ssm", **kw)
    subnets = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"][:2]
    ami = f"/{name}/ami"  # the ImageId parameter is an SSM parameter name, as on AWS
    ssm.put_parameter(Name=ami, Value="ami-12c6146b", Type="String")
    params = {
        "VpcId": subnets[0]["VpcId"],
        "SubnetIds": ",".join(s["SubnetId"] for s in subnets),
        "ImageId": ami,
        "ShardCount": "2",
        "BatcherCount": "1",
        "ProjectorCount": "1",
        "InserterCount": "1",
        "MaxReceiveCount": "4",
    }
    cfn = ClientFactory(settings).cloudformation()
    cfn.create_stack(
        StackName=name,
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    cfn.get_waiter("stack_create_complete").wait(StackName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    described = cfn.describe_stacks(StackName=name)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}


def test_the_template_deploys_and_the_pipeline_runs_on_the_stacks_resources(
    stack: StackState, settings: Settings, unique_name: str, tmp_path: Path
) -> None:
    outputs = deploy(stack, settings, unique_name)
    assert set(STACK_OUTPUTS) <= set(outputs)
    kw: dict[str, Any] = {"endpoint_url": stack.aws_endpoint, "region_name": settings.aws.region}

    # What the stack created, as the services themselves describe it.
    groups = boto3.client("autoscaling", **kw).describe_auto_scaling_groups()["AutoScalingGroups"]
    mine = [g for g in groups if g["AutoScalingGroupName"].startswith(unique_name)]
    assert len(mine) == 3 and all(g["MixedInstancesPolicy"] for g in mine)
    redis = boto3.client("elasticache", **kw).describe_replication_groups()["ReplicationGroups"]
    assert any(g["TransitEncryptionEnabled"] and g["AuthTokenEnabled"] for g in redis)
    alarms = boto3.client("cloudwatch", **kw).describe_alarms(AlarmNamePrefix=unique_name)["MetricAlarms"]
    assert len(alarms) == 4
    sqs = boto3.client("sqs", **kw)
    url = sqs.get_queue_url(QueueName=outputs["BatchQueueName"])["QueueUrl"]
    redrive = json.loads(
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"][
            "RedrivePolicy"
        ]
    )
    assert int(redrive["maxReceiveCount"]) == 4 and redrive["deadLetterTargetArn"].endswith(
        outputs["DeadLetterQueueName"]
    )

    # The roles' environment names the stack and the local Redis and warehouse, nothing else.
    warehouse_url = psycopg.conninfo.make_conninfo(settings.warehouse.url, dbname=unique_name)
    ensure_database(warehouse_url)
    env = {
        **os.environ,
        **stack.env,
        "SHARDHOUSE_STACK": unique_name,
        "SHARDHOUSE_DATABASE_URL": warehouse_url,
        "SHARDHOUSE_WAREHOUSE_DIALECT": "postgres",  # the emulator has no Redshift engine
        "SHARDHOUSE_STATE_DIR": str(tmp_path / "no-local-stack"),
        "SHARDHOUSE_FLUSH_AGE_SECONDS": "1",
        "SHARDHOUSE_IDLE_BETWEEN_READS_MS": "200",
    }
    for key in [
        k for k in env if k.startswith(("SHARDHOUSE_STREAM", "SHARDHOUSE_BUCKET", "SHARDHOUSE_QUEUE"))
    ]:
        del env[key]
    deployed = load_deployed_settings(env, lambda base: ClientFactory(base).cloudformation())
    assert deployed.resources.stream == outputs["StreamName"]
    assert deployed.resources.bucket == outputs["BucketName"] and deployed.resources.max_receive_count == 4
    assert deployed.worker.batcher_app == f"{unique_name}-batcher"

    run = DemoRun(config=DemoConfig(), settings=deployed, clients=ClientFactory(deployed))
    records = list(
        generate(SyntheticConfig(seed=15, customers=2, duplicate_ratio=0.05, invalid_ratio=0.02), 400)
    )
    for record in records:
        run.expected.add(record)
    run.records = records

    roles = [
        Role("batcher", ["worker", "--processor", "batcher", "--worker-id", "b1"], free_port(), tmp_path / "b.log"),
        Role("projector", ["worker", "--processor", "projector", "--worker-id", "p1"], free_port(), tmp_path / "p.log"),
        Role("inserter", ["inserter", "--wait-seconds", "1"], free_port(), tmp_path / "i.log"),
    ]  # fmt: skip
    for role in roles:
        role.start(env)
    try:
        result = Producer(run.clients.kinesis(), deployed.resources.stream).put(
            (r.data, r.partition_key) for r in records
        )
        assert not result.failed
        deadline = time.monotonic() + 150
        want = run.expected.unique_valid
        while time.monotonic() < deadline and (loaded_rows(run) < want or projected_events(run) < want):
            assert all(r.alive for r in roles), [r.log.read_text()[-2000:] for r in roles if not r.alive]
            time.sleep(0.5)
        logs = {r.name: r.log.read_text()[-1500:] for r in roles}
        assert loaded_rows(run) >= want, logs
        assert projected_events(run) >= want, logs
        verdict = verify(run)
        assert verdict.ok, verdict.problems()
        assert sum(verdict.rows_per_customer.values()) == want
    finally:
        for role in roles:
            role.stop()
