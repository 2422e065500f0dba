"""Which AWS actions each role's code calls, and which its policy in deploy/shardhouse.yaml allows.

The code side is read from the source: every call on a boto3 client in the modules a role runs
(the role's packages and everything of ours they import, outside the application layer). A
client is recognised by the name it is held under (``kinesis``, ``db``/``dynamodb``, ``s3``,
``sqs``, ``cloudformation``: the convention throughout the code); a call of an AWS operation's
name on any other receiver must be listed in NOT_AWS, so a new client under a new name fails the
check instead of slipping past it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import botocore.session
from botocore import xform_name
from cfnlint.decode import decode_str

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "shardhouse.yaml"
OURS = ("pipeline", "workers", "inserter", "schemas")

#: Role → (its policy's logical id in the template, the packages/modules its code runs). Every
#: command reads the stack's outputs, hence pipeline.core.deployed in each.
ROLES: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "producer": ("ProducerPolicy", ("pipeline.producer", "pipeline.core.deployed")),
    "batcher": ("BatcherPolicy", ("workers.batcher", "pipeline.consumer", "pipeline.core.deployed")),
    "projector": ("ProjectorPolicy", ("workers.projector", "pipeline.consumer", "pipeline.core.deployed")),
    "inserter": ("InserterPolicy", ("inserter", "pipeline.core.deployed")),
}

#: The name a boto3 client is held under → its service.
RECEIVERS = {"kinesis": "kinesis", "db": "dynamodb", "dynamodb": "dynamodb", "s3": "s3", "sqs": "sqs",
             "cloudformation": "cloudformation"}  # fmt: skip
#: Calls that share an AWS operation's name but are not AWS: (module, receiver) → what it is.
NOT_AWS = {
    ("workers.projector.store", "self.client"): "Redis SCAN",
    ("workers.projector.readapi", "parts"): "urllib SplitResult.query",
    ("inserter.loader", "self.dialect"): "warehouse DDL",
}
#: boto3 operations whose IAM action is not service:OperationName.
ACTIONS = {
    ("s3", "head_object"): "s3:GetObject",
    ("s3", "head_bucket"): "s3:ListBucket",
    ("s3", "list_objects_v2"): "s3:ListBucket",
    ("s3", "create_multipart_upload"): "s3:PutObject",
    ("s3", "upload_part"): "s3:PutObject",
    ("s3", "complete_multipart_upload"): "s3:PutObject",
    ("sqs", "change_message_visibility_batch"): "sqs:ChangeMessageVisibility",
    ("sqs", "delete_message_batch"): "sqs:DeleteMessage",
    ("sqs", "send_message_batch"): "sqs:SendMessage",
}


@dataclass(frozen=True)
class Call:
    module: str
    line: int
    service: str
    operation: str

    @property
    def action(self) -> str:
        return (
            ACTIONS.get((self.service, self.operation))
            or f"{self.service}:{camel(self.service, self.operation)}"
        )


@cache
def operations() -> dict[str, dict[str, str]]:
    """snake_case operation → CamelCase name, per service of RECEIVERS."""
    session = botocore.session.get_session()
    return {
        service: {xform_name(name): name for name in session.get_service_model(service).operation_names}
        for service in set(RECEIVERS.values())
    }


def camel(service: str, operation: str) -> str:
    return operations()[service][operation]


def module_path(module: str) -> Path:
    base = REPO.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def submodules(package: str) -> Iterator[str]:
    path = module_path(package)
    if path.name != "__init__.py":
        yield package
        return
    for file in sorted(path.parent.rglob("*.py")):
        rel = file.relative_to(REPO).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        yield ".".join(parts)


def imports_of(module: str) -> set[str]:
    """Our modules ``module`` imports (any depth of package), excluding the application layer."""
    tree = ast.parse(module_path(module).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in names:
            if name.split(".")[0] in OURS and not name.startswith("pipeline.app"):
                while name and not module_path(name).exists():
                    name = name.rpartition(".")[0]
                if name:
                    found.add(name)
    return found


def closure(roots: Iterable[str]) -> set[str]:
    todo = [m for root in roots for m in submodules(root)]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(imports_of(module) - seen)
    return seen


def aws_calls(module: str) -> tuple[list[Call], list[str]]:
    """(AWS calls in ``module``, unexplained calls of an operation name on another receiver)."""
    every = {op for ops in operations().values() for op in ops}
    calls: list[Call] = []
    unknown: list[str] = []
    for node in ast.walk(ast.parse(module_path(module).read_text())):
        if not isinstance(node, ast.Attribute):
            continue
        receiver = ast.unparse(node.value)
        service = RECEIVERS.get(receiver.rpartition(".")[2])
        op = node.attr
        if op in ("get_paginator", "get_waiter") and service:
            continue  # the paginated operation is named by the call's argument, handled below
        if service and op in operations()[service]:
            calls.append(Call(module, node.lineno, service, op))
        elif op in every and (module, receiver) not in NOT_AWS:
            unknown.append(f"{module}:{node.lineno} {receiver}.{op}")
    for node in ast.walk(ast.parse(module_path(module).read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get_paginator"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            service = RECEIVERS.get(ast.unparse(node.func.value).rpartition(".")[2])
            if service:
                calls.append(Call(module, node.lineno, service, str(node.args[0].value)))
    return calls, unknown


def code_actions(role: str) -> tuple[dict[str, list[Call]], list[str]]:
    """IAM action → the calls that need it, for one role; plus unexplained calls."""
    by_action: dict[str, list[Call]] = {}
    unknown: list[str] = []
    for module in sorted(closure(ROLES[role][1])):
        calls, odd = aws_calls(module)
        unknown.extend(odd)
        for call in calls:
            by_action.setdefault(call.action, []).append(call)
    return by_action, unknown


@cache
def template() -> Any:
    tpl, matches = decode_str(TEMPLATE.read_text())
    assert not matches, matches
    return tpl


def policy_statements(logical_id: str) -> list[dict[str, Any]]:
    return list(template()["Resources"][logical_id]["Properties"]["PolicyDocument"]["Statement"])


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def policy_actions(logical_id: str) -> set[str]:
    return {
        action
        for statement in policy_statements(logical_id)
        if statement["Effect"] == "Allow"
        for action in as_list(statement["Action"])
    }


def readme_table() -> str:
    """The README's IAM table, generated from the template's policies."""
    commands = {
        "producer": "`shardhouse produce`",
        "batcher": "`shardhouse worker --processor batcher`",
        "projector": "`shardhouse worker --processor projector`, `shardhouse rebuild-projections`",
        "inserter": "`shardhouse inserter`, `shardhouse replay`",
    }
    rows = ["| role | command | policy in deploy/shardhouse.yaml | AWS actions (scoped to the stack's resources) |",
            "| --- | --- | --- | --- |"]  # fmt: skip
    for role, (policy, _) in ROLES.items():
        actions = ", ".join(f"`{a}`" for a in sorted(policy_actions(policy)))
        rows.append(f"| {role} | {commands[role]} | `{policy}` | {actions} |")
    return "\n".join(rows)
