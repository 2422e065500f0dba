"""`shardhouse demo` twice in one state directory, the first run's stack left running (``--keep``)
and the same seed (the same event ids, which a reused Redis or warehouse would call duplicates):
the second run starts clean and its checks count only its own events."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from pipeline.app.demo.main import execute
from pipeline.app.demo.run import DemoConfig

# Demos prefer the well-known ports (4566, 6379, 5432): one xdist process runs them all.
pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("demo")]


def test_the_demo_passes_twice_in_a_row_in_one_state_dir(tmp_path: Path) -> None:
    said: list[str] = []
    for keep in (True, False):
        config = DemoConfig(
            events=800, customers=3, seed=9, keep=keep, timeout=120, state_dir=tmp_path / "demo"
        )
        with open(tmp_path / "console.txt", "a") as out:
            outcome = execute(config, Console(file=out, width=140), said.append)
        verdict = outcome.verdict
        assert verdict.ok, verdict
        assert sum(verdict.rows_per_customer.values()) == outcome.run.expected.unique_valid
    assert "stopping the previous demo's stack" in "\n".join(said)
    assert any(line.startswith("dropped the previous run's warehouse database") for line in said)
