"""Settings and clients for a CLI invocation: loaded once, at the entrypoint.

When ``shardhouse up`` has recorded a running local stack, its environment is the default
beneath the real environment, so ``shardhouse up && shardhouse provision`` needs no exports.
When ``SHARDHOUSE_STACK`` names a deployed CloudFormation stack, its outputs name the resources
(pipeline/core/deployed.py).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pipeline.app.servers.stack import read_state
from pipeline.core.clients import ClientFactory
from pipeline.core.deployed import load_deployed_settings
from pipeline.core.settings import Settings


def state_dir() -> Path:
    return Path(os.environ.get("SHARDHOUSE_STATE_DIR", ".shardhouse"))


@functools.cache
def settings() -> Settings:
    state = read_state(state_dir())
    stack_env = state.env if state is not None else {}
    env = {**stack_env, **os.environ}
    for key, value in stack_env.items():  # the credentials boto3 reads itself
        if key.startswith("AWS_") and key not in os.environ:
            os.environ[key] = value
    return load_deployed_settings(env, lambda base: ClientFactory(base).cloudformation())


@functools.cache
def clients() -> ClientFactory:
    return ClientFactory(settings())
