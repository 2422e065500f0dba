"""deploy/shardhouse.yaml against the code: each role's policy allows exactly the AWS calls its
code makes, on the stack's own resources; the README's table is generated from it; every output
is a setting `shardhouse` reads (or says why not); the queue is the one the inserter expects."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from support import iam

from pipeline.app import provision
from pipeline.core.deployed import INFORMATIONAL_OUTPUTS, STACK_OUTPUTS

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("role", sorted(iam.ROLES))
def test_each_role_policy_allows_exactly_the_calls_its_code_makes(role: str) -> None:
    policy, _ = iam.ROLES[role]
    called, unknown = iam.code_actions(role)
    assert not unknown, (
        f"calls of AWS operation names on unknown receivers (name the client after its service, or list it in NOT_AWS): {unknown}"
    )
    allowed = iam.policy_actions(policy)
    missing = {a: [f"{c.module}:{c.line}" for c in calls] for a, calls in called.items() if a not in allowed}
    assert not missing, f"{policy} lacks actions its code calls: {missing}"
    assert not allowed - set(called), f"{policy} allows actions no code of the {role} calls"


def test_the_scan_finds_calls_through_helpers_and_paginators() -> None:
    batcher, _ = iam.code_actions("batcher")
    # The lease store passes bound methods to its retry helper (self._call(..., self.db.scan)).
    assert any(c.module == "pipeline.consumer.lease_store" for c in batcher["dynamodb:Scan"])
    assert {c.operation for c in batcher["s3:PutObject"]} >= {"put_object", "upload_part"}
    inserter, _ = iam.code_actions("inserter")
    assert "s3:ListBucket" in inserter  # replay lists the archive


def _resources(statement: dict[str, Any]) -> list[Any]:
    return iam.as_list(statement["Resource"])


@pytest.mark.parametrize("role", sorted(iam.ROLES))
def test_policies_name_the_stacks_resources_never_a_wildcard(role: str) -> None:
    policy, _ = iam.ROLES[role]
    for statement in iam.policy_statements(policy):
        for resource in _resources(statement):
            assert resource != "*" and isinstance(resource, dict), (policy, statement.get("Sid"), resource)
            assert {"Ref", "Fn::GetAtt", "Fn::Sub"} & set(resource), (policy, resource)


def test_each_role_reaches_only_its_own_lease_table() -> None:
    def tables(policy: str) -> list[Any]:
        return [r for s in iam.policy_statements(policy) if s.get("Sid") == "Leases" for r in _resources(s)]

    for role in ("Batcher", "Projector"):
        own, other = f"{role}LeaseTable", "ProjectorLeaseTable" if role == "Batcher" else "BatcherLeaseTable"
        text = str(tables(f"{role}Policy"))
        assert tables(f"{role}Policy")[0] == {"Fn::GetAtt": [own, "Arn"]}
        assert own in text and other not in text
        assert "-CoordinatorState" in text and "-WorkerMetricStats" in text and "/index/*" in text


def test_readme_iam_table_is_the_one_generated_from_the_template() -> None:
    table = iam.readme_table()
    assert table in README.read_text(), f"README's IAM table is stale; replace it with:\n{table}"


def test_every_output_is_a_setting_or_informational() -> None:
    outputs = set(iam.template()["Outputs"])
    assert outputs == set(STACK_OUTPUTS) | INFORMATIONAL_OUTPUTS
    assert not set(STACK_OUTPUTS) & INFORMATIONAL_OUTPUTS


def test_the_batch_queue_is_the_one_the_inserter_expects() -> None:
    resources = iam.template()["Resources"]
    queue = resources["BatchQueue"]["Properties"]
    expected_visibility = inspect.signature(provision.ensure_queues).parameters["visibility_timeout"].default
    assert queue["VisibilityTimeout"] == expected_visibility
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]},
        "maxReceiveCount": {"Ref": "MaxReceiveCount"},
    }
    assert iam.template()["Outputs"]["MaxReceiveCount"]["Value"] == {"Ref": "MaxReceiveCount"}


def test_lease_tables_have_kcls_key_on_demand_billing_and_point_in_time_recovery() -> None:
    resources = iam.template()["Resources"]
    for name in ("BatcherLeaseTable", "ProjectorLeaseTable"):
        props = resources[name]["Properties"]
        assert props["KeySchema"] == [{"AttributeName": "leaseKey", "KeyType": "HASH"}]
        assert props["BillingMode"] == "PAY_PER_REQUEST"
        assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}


def test_worker_fleets_are_spot_first_with_rebalancing_and_run_the_worker_under_systemd() -> None:
    resources = iam.template()["Resources"]
    for role in ("Batcher", "Projector"):
        group = resources[f"{role}Group"]["Properties"]
        assert group["CapacityRebalance"] is True
        dist = group["MixedInstancesPolicy"]["InstancesDistribution"]
        assert dist["OnDemandPercentageAboveBaseCapacity"] == 0
        assert len(group["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]) >= 3
        user_data = resources[f"{role}LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
        script = user_data["Fn::Base64"]["Fn::Sub"][0]
        assert f"ExecStart=/opt/shardhouse/bin/shardhouse worker --processor {role.lower()}" in script
        assert "SHARDHOUSE_STACK=${AWS::StackName}" in script
        assert "systemctl enable --now shardhouse" in script
