"""Bad input to a command: one clear line on stderr, a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CASES = [
    (
        ["up", "--kinesis", "foo"],
        "Invalid value for '--kinesis': Value error, 'foo' is not one of 'moto', 'kinesis-mock'",
    ),
    (["up", "--redis-port", "x"], "Invalid value for '--redis-port'"),
    (["no-such-command"], "No such command 'no-such-command'"),
    (["provision", "--shards", "0"], "Invalid value for '--shards'"),
    (["env", "--state-dir", "/nonexistent-shardhouse"], "the local stack is not up"),
]


@pytest.mark.parametrize(("args", "expected"), CASES)
def test_bad_input_is_one_clear_line(args: list[str], expected: str) -> None:
    env = {**os.environ, "SHARDHOUSE_STATE_DIR": "/nonexistent-shardhouse"}
    done = subprocess.run(
        [sys.executable, "-c", "from pipeline.app.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("shardhouse: error: ")
    assert expected in lines[0]


def test_unreachable_endpoint_is_one_line() -> None:
    env = {
        **os.environ,
        "SHARDHOUSE_STATE_DIR": "/nonexistent-shardhouse",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
    }
    done = subprocess.run(
        [sys.executable, "-c", "from pipeline.app.cli import main; main()", "provision"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        'shardhouse: error: EndpointConnectionError: Could not connect to the endpoint URL: "http://127.0.0.1:9/"'
    ]
