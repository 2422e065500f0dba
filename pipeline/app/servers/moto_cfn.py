"""CloudFormation resource types moto's server lacks, added so deploy/shardhouse.yaml deploys whole.

moto skips a resource type it does not know, and a ``Fn::GetAtt`` on it then fails the stack.
These adapters create the resource in moto's own backend (so ``describe-*`` answers for it) and
expose the attributes the template reads. Applied by :mod:`pipeline.app.servers.moto_main`.
"""

from __future__ import annotations

import secrets
from typing import Any

from moto.core.common_models import CloudFormationModel


def _props(cloudformation_json: dict[str, Any]) -> dict[str, Any]:
    return dict(cloudformation_json.get("Properties") or {})


class _Adapter:
    """Shared no-op lifecycle: the stacks of the emulator test are created and thrown away.
    (A mixin: moto finds models among CloudFormationModel's *direct* subclasses.)"""

    ATTRIBUTES: dict[str, str] = {}
    physical_resource_id: str

    @staticmethod
    def cloudformation_name_type() -> str:
        return ""

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        # moto validates ``${Redis.PrimaryEndPoint.Address}`` by its first segment.
        return any(name == attr or name.startswith(f"{attr}.") for name in cls.ATTRIBUTES)

    def get_cfn_attribute(self, attribute_name: str) -> Any:
        from moto.cloudformation.exceptions import UnformattedGetAttTemplateException

        if attribute_name not in self.ATTRIBUTES:
            raise UnformattedGetAttTemplateException()
        return getattr(self, self.ATTRIBUTES[attribute_name])

    @classmethod
    def update_from_cloudformation_json(
        cls, original_resource: Any, new_resource_name: str, cloudformation_json: Any,
        account_id: str, region_name: str,
    ) -> Any:  # fmt: skip
        return original_resource

    @classmethod
    def delete_from_cloudformation_json(
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
    ) -> None:
        return None

    def is_created(self) -> bool:
        return True


class Secret(_Adapter, CloudFormationModel):
    """``AWS::SecretsManager::Secret`` with ``GenerateSecretString`` (Ref = the secret's ARN)."""

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::SecretsManager::Secret"

    @classmethod
    def create_from_cloudformation_json(
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> Secret:
        import json

        from moto.secretsmanager.models import secretsmanager_backends

        props = _props(cloudformation_json)
        value = props.get("SecretString")
        generate = props.get("GenerateSecretString")
        if value is None and generate:
            doc = json.loads(generate.get("SecretStringTemplate", "{}"))
            doc[generate.get("GenerateStringKey", "password")] = secrets.token_hex(16)
            value = json.dumps(doc)
        backend = secretsmanager_backends[account_id][region_name]
        out = json.loads(
            backend.create_secret(
                name=props.get("Name", resource_name), secret_string=value, secret_binary=None,
                description=props.get("Description"), tags=None, kms_key_id=None,
                client_request_token=None, replica_regions=[], force_overwrite=False,
            )
        )  # fmt: skip
        self = cls()
        self.physical_resource_id = out["ARN"]
        return self


class CacheSubnetGroup(_Adapter, CloudFormationModel):
    """``AWS::ElastiCache::SubnetGroup`` (Ref = its name)."""

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::ElastiCache::SubnetGroup"

    @classmethod
    def create_from_cloudformation_json(
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> CacheSubnetGroup:
        self = cls()
        props = _props(cloudformation_json)
        self.physical_resource_id = str(props.get("CacheSubnetGroupName", resource_name))
        return self


#: create_replication_group's arguments the template does not set (moto wants each named).
_UNSET_GROUP_ARGUMENTS = (
    "global_replication_group_id", "primary_cluster_id", "preferred_cache_cluster_azs",
    "num_node_groups", "replicas_per_node_group", "node_group_configuration",
    "cache_parameter_group_name", "cache_security_group_names", "tags", "snapshot_arns",
    "snapshot_name", "preferred_maintenance_window", "notification_topic_arn",
    "auto_minor_version_upgrade", "snapshot_retention_limit", "snapshot_window", "kms_key_id",
    "user_group_ids", "log_delivery_configurations", "data_tiering_enabled", "network_type",
    "ip_discovery", "transit_encryption_mode", "cluster_mode", "serverless_cache_snapshot_name",
)  # fmt: skip


class ReplicationGroup(_Adapter, CloudFormationModel):
    """``AWS::ElastiCache::ReplicationGroup``, created in moto's ElastiCache backend."""

    ATTRIBUTES = {"PrimaryEndPoint.Address": "address", "PrimaryEndPoint.Port": "port"}
    address: str
    port: str

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::ElastiCache::ReplicationGroup"

    @classmethod
    def create_from_cloudformation_json(
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> ReplicationGroup:
        from moto.elasticache.models import elasticache_backends

        props = _props(cloudformation_json)
        group_id = str(props.get("ReplicationGroupId", resource_name))[:40].lower()
        unset = dict.fromkeys(_UNSET_GROUP_ARGUMENTS)
        backend: Any = elasticache_backends[account_id][region_name]  # moto types every argument str
        backend.create_replication_group(
            replication_group_id=group_id,
            replication_group_description=props.get("ReplicationGroupDescription", ""),
            automatic_failover_enabled=bool(props.get("AutomaticFailoverEnabled")),
            multi_az_enabled=bool(props.get("MultiAZEnabled")),
            num_cache_clusters=int(props.get("NumCacheClusters", 1)),
            cache_node_type=props.get("CacheNodeType"),
            engine=props.get("Engine", "redis"),
            engine_version=props.get("EngineVersion"),
            cache_subnet_group_name=props.get("CacheSubnetGroupName"),
            security_group_ids=props.get("SecurityGroupIds", []),
            port=int(props.get("Port", 6379)),
            auth_token=props.get("AuthToken"),
            transit_encryption_enabled=bool(props.get("TransitEncryptionEnabled")),
            at_rest_encryption_enabled=bool(props.get("AtRestEncryptionEnabled")),
            **unset,
        )
        self = cls()
        self.physical_resource_id = group_id
        self.address = f"master.{group_id}.cache.amazonaws.com"
        self.port = str(props.get("Port", 6379))
        return self


class Alarm(_Adapter, CloudFormationModel):
    """``AWS::CloudWatch::Alarm``, created in moto's CloudWatch backend (Ref = its name)."""

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::CloudWatch::Alarm"

    @classmethod
    def create_from_cloudformation_json(
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> Alarm:
        from moto.cloudwatch.models import cloudwatch_backends

        props = _props(cloudformation_json)
        name = str(props.get("AlarmName", resource_name))
        cloudwatch_backends[account_id][region_name].put_metric_alarm(
            name=name,
            namespace=props.get("Namespace", ""),
            metric_name=props.get("MetricName", ""),
            comparison_operator=props["ComparisonOperator"],
            evaluation_periods=int(props["EvaluationPeriods"]),
            period=int(props.get("Period", 60)),
            threshold=float(props.get("Threshold", 0)),
            statistic=props.get("Statistic", ""),
            description=props.get("AlarmDescription", ""),
            dimensions=list(props.get("Dimensions", [])),
            alarm_actions=list(props.get("AlarmActions", [])),
            ok_actions=list(props.get("OKActions", [])),
            treat_missing_data=props.get("TreatMissingData"),
        )
        self = cls()
        self.physical_resource_id = name
        return self


ADAPTERS = (Secret, CacheSubnetGroup, ReplicationGroup, Alarm)


def _yaml_tag(loader: Any, tag: str, node: Any) -> Any:
    """moto's YAML constructor, except ``!GetAtt Redis.PrimaryEndPoint.Address`` splits at the
    first dot only (the attribute name itself has dots), as CloudFormation does."""
    from moto.cloudformation.utils import yaml_tag_constructor

    if tag == "!GetAtt" and isinstance(node.value, str):
        return {"Fn::GetAtt": node.value.split(".", 1)}
    return yaml_tag_constructor(loader, tag, node)


def register() -> None:
    """Make moto's CloudFormation see the adapters (its type map is cached on first use)."""
    from moto.cloudformation import models, parsing, responses

    for cache in (parsing.get_model_map, parsing.get_name_type_map):
        cache.cache_clear()
    for module in (models, responses):
        setattr(module, "yaml_tag_constructor", _yaml_tag)  # noqa: B010
