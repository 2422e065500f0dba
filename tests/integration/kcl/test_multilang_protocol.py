"""MultiLang protocol conformance of pipeline/app/kcl_entry.py, driven over real stdin/stdout pipes.

The test plays the daemon's side (docs/kcl-multilang.md; the message shapes of kclpy's own
test_amazon_kclpy_input_output_integration.py) against a real child process running
``kcl.KCLProcess`` around our adapter and a probe processor. No JVM needed: this is the part
that fails first when kclpy or the contract drifts.
"""

from __future__ import annotations

import base64
import json
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.kcl,
    pytest.mark.usefixtures("kcl_available"),
]

REPO = Path(__file__).resolve().parents[3]
PROBE = "tests.integration.kcl.probe_processor:create_processor"
SHARD = "shardId-000000000007"
TIMEOUT = 20.0
OUR_CHECKPOINT_ERROR = "pipeline.consumer.processor.CheckpointError"


class FakeDaemon:
    """The daemon's half of the protocol: one JSON line per message, wait for the child's reply."""

    def __init__(self, processor: str = PROBE) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.app.kcl_entry", "--processor", processor],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            text=True,
            env={"PATH": "/usr/bin:/bin", "SHARDHOUSE_LOG_LEVEL": "INFO", "PYTHONPATH": str(REPO)},
        )
        self.stdout_lines: list[str] = []
        self._out: queue.Queue[str | None] = queue.Queue()
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._pump_out, daemon=True).start()
        self._err_thread = threading.Thread(target=self._pump_err, daemon=True)
        self._err_thread.start()

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout_lines.append(line)
            self._out.put(line)
        self._out.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict[str, Any]:
        """The next protocol message (kclpy surrounds each with blank lines; skip those)."""
        while True:
            line = self._out.get(timeout=TIMEOUT)
            if line is None:
                raise AssertionError(f"child closed stdout; stderr:\n{''.join(self.stderr_lines)}")
            if line.strip():
                return json.loads(line)  # type: ignore[no-any-return]

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def probes(self) -> list[dict[str, Any]]:
        return [json.loads(line[6:]) for line in self.stderr_lines if line.startswith("PROBE ")]

    def finish(self) -> int:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.close_stdin()
        code = self.proc.wait(timeout=TIMEOUT)
        self._err_thread.join(timeout=TIMEOUT)
        return code


@pytest.fixture
def daemon() -> Any:
    d = FakeDaemon()
    yield d
    if d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()


def record(data: bytes, seq: str, subseq: int = 0, pk: str = "cust_1") -> dict[str, Any]:
    return {
        "action": "record",
        "data": base64.b64encode(data).decode(),
        "partitionKey": pk,
        "sequenceNumber": seq,
        "subSequenceNumber": subseq,
        "approximateArrivalTimestamp": 1_476_889_707_123,
    }


def initialize(d: FakeDaemon, seq: str = "TRIM_HORIZON") -> None:
    d.send({"action": "initialize", "shardId": SHARD, "sequenceNumber": seq, "subSequenceNumber": 0})
    assert d.receive() == {"action": "status", "responseFor": "initialize"}


def test_initialize_process_checkpoint_round_trip(daemon: FakeDaemon) -> None:
    initialize(daemon)
    records = [record(b"alpha", "4961"), record(b"\x00\xffbin", "4962", 0), record(b"agg", "4962", 3)]
    daemon.send({"action": "processRecords", "millisBehindLatest": 1234, "records": records})

    assert daemon.receive() == {"action": "checkpoint", "sequenceNumber": "4962", "subSequenceNumber": 3}
    daemon.send({"action": "checkpoint", "sequenceNumber": "4962", "subSequenceNumber": 3})
    assert daemon.receive() == {"action": "status", "responseFor": "processRecords"}

    assert daemon.finish() == 0, "EOF on stdin must end the child cleanly"
    probes = daemon.probes()
    init, batch, ok = probes
    assert init == {
        "event": "initialize",
        "type": "pipeline.consumer.processor.InitializeInput",
        "shard_id": SHARD,
        "sequence_number": "TRIM_HORIZON",
        "sub_sequence_number": 0,
    }
    assert batch["event"] == "process_records" and batch["millis_behind_latest"] == 1234
    assert [base64.b64decode(r["data"]) for r in batch["records"]] == [b"alpha", b"\x00\xffbin", b"agg"]
    assert [(r["seq"], r["subseq"]) for r in batch["records"]] == [("4961", 0), ("4962", 0), ("4962", 3)]
    assert {r["type"] for r in batch["records"]} == {"pipeline.consumer.processor.Record"}
    # Epoch milliseconds as an int, not kclpy's naive local datetime.
    assert {r["arrival"] for r in batch["records"]} == {1_476_889_707_123}
    assert ok == {"event": "checkpoint_ok", "seq": "4962", "subseq": 3}


def test_processor_output_never_reaches_the_protocol_pipe(daemon: FakeDaemon) -> None:
    initialize(daemon)
    assert daemon.finish() == 0
    messages = [json.loads(line) for line in daemon.stdout_lines if line.strip()]
    assert messages == [{"action": "status", "responseFor": "initialize"}]
    stderr = "".join(daemon.stderr_lines)
    assert "a stray print from processor code" in stderr
    assert '"responseFor": "bogus"' in stderr


@pytest.mark.parametrize(
    "error", ["ShutdownException", "ThrottlingException", "InvalidStateException", "IllegalArgumentException"]
)
def test_checkpoint_error_surfaces_as_our_checkpoint_error(daemon: FakeDaemon, error: str) -> None:
    initialize(daemon, seq="4960")
    daemon.send({"action": "processRecords", "millisBehindLatest": 0, "records": [record(b"x", "4961")]})
    assert daemon.receive() == {"action": "checkpoint", "sequenceNumber": "4961", "subSequenceNumber": 0}
    daemon.send({"action": "checkpoint", "sequenceNumber": "4961", "subSequenceNumber": 0, "error": error})
    assert daemon.receive() == {"action": "status", "responseFor": "processRecords"}
    assert daemon.finish() == 0
    failures = [p for p in daemon.probes() if p["event"] == "checkpoint_error"]
    assert failures == [
        {"event": "checkpoint_error", "type": "pipeline.consumer.processor.CheckpointError", "value": error}
    ]


def test_shard_ended_checkpoints_shard_end_then_exits_on_eof(daemon: FakeDaemon) -> None:
    initialize(daemon, seq="4961")
    daemon.send({"action": "shardEnded"})
    # null/null = "the end of the shard" (KCL #211: never re-checkpoint the last sequence number).
    assert daemon.receive() == {"action": "checkpoint", "sequenceNumber": None, "subSequenceNumber": None}
    daemon.send({"action": "checkpoint", "sequenceNumber": "SHARD_END", "subSequenceNumber": 0})
    assert daemon.receive() == {"action": "status", "responseFor": "shardEnded"}
    daemon.close_stdin()  # the daemon closes stdin after shardEnded
    assert daemon.finish() == 0
    assert [p["event"] for p in daemon.probes()] == ["initialize", "shard_ended", "checkpoint_ok"]


def test_lease_lost_then_eof(daemon: FakeDaemon) -> None:
    initialize(daemon)
    daemon.send({"action": "leaseLost"})
    assert daemon.receive() == {"action": "status", "responseFor": "leaseLost"}
    assert daemon.finish() == 0
    assert [p["event"] for p in daemon.probes()] == ["initialize", "lease_lost"]


def test_shutdown_requested_checkpoints_largest_delivered(daemon: FakeDaemon) -> None:
    initialize(daemon)
    daemon.send({"action": "shutdownRequested"})
    assert daemon.receive() == {"action": "checkpoint", "sequenceNumber": None, "subSequenceNumber": None}
    daemon.send({"action": "checkpoint", "sequenceNumber": "4961", "subSequenceNumber": 0})
    assert daemon.receive() == {"action": "status", "responseFor": "shutdownRequested"}
    assert daemon.finish() == 0


def test_daemon_vanishing_mid_checkpoint_is_a_shutdown_exception(daemon: FakeDaemon) -> None:
    initialize(daemon)
    daemon.send({"action": "processRecords", "millisBehindLatest": 0, "records": [record(b"x", "4961")]})
    assert daemon.receive()["action"] == "checkpoint"
    daemon.close_stdin()  # no reply: the JVM died
    assert daemon.finish() == 0
    failures = [p for p in daemon.probes() if p["event"] == "checkpoint_error"]
    assert failures == [
        {
            "event": "checkpoint_error",
            "type": "pipeline.consumer.processor.CheckpointError",
            "value": "ShutdownException",
        }
    ]


def test_unknown_processor_fails_fast_with_a_clear_message() -> None:
    d = FakeDaemon(processor="no_such_processor")
    code = d.finish()
    assert code == 2
    assert "unknown processor 'no_such_processor'" in "".join(d.stderr_lines)
