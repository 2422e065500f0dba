"""Launch the official Java KCL MultiLangDaemon over our record processors.

The daemon (jars shipped inside amazon-kclpy, ``pip install -e '.[kcl]'``) owns leases, polling
and checkpoints; it starts ``python -m pipeline.app.kcl_entry --processor NAME`` once per shard.

Pure parts (properties rendering, command building) are separate from the I/O (finding java and
the jars, probing the Kinesis endpoint, running the process) so they can be tested without a JVM.
Jar discovery follows amazon-kclpy's ``samples/amazon_kclpy_helper.py`` (``<amazon_kclpy>/jars/*.jar``
plus the properties file's directory on the classpath); that helper is not installed with the
package, so its few lines are mirrored here.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from string import Template
from typing import IO, TYPE_CHECKING
from urllib.parse import urlsplit

from pipeline.core.errors import ConfigError, TerminalError
from pipeline.core.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_kinesis.type_defs import ShardTypeDef

MULTILANG_DAEMON_CLASS = "software.amazon.kinesis.multilang.MultiLangDaemon"
CLIENT_VERSION_2X_COMPATIBLE = "CLIENT_VERSION_CONFIG_COMPATIBLE_WITH_2X"
CLIENT_VERSION_3X = "CLIENT_VERSION_CONFIG_3X"
CLIENT_VERSIONS = (CLIENT_VERSION_2X_COMPATIBLE, CLIENT_VERSION_3X)
INITIAL_POSITIONS = ("TRIM_HORIZON", "LATEST")
METRICS_LEVELS = ("NONE", "SUMMARY", "DETAILED")
INSTALL_HINT = "install the KCL extra: .venv/bin/pip install -e '.[kcl]' (or scripts/install-kcl.sh)"
_MULTILANG_JAR = re.compile(r"^amazon-kinesis-client-multilang-(?P<version>[0-9][0-9A-Za-z.\-]*)\.jar$")
_JAVA_INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class DaemonConfig:
    """Everything the properties file says; defaults are KCL's except where noted."""

    application_name: str
    stream_name: str
    processor: str
    region: str = "us-east-1"
    kinesis_endpoint: str | None = None
    dynamodb_endpoint: str | None = None
    worker_id: str = "shardhouse-kcl"
    initial_position: str = "TRIM_HORIZON"
    failover_ms: int = 10_000
    max_leases_for_worker: int = 0  # 0 = unlimited
    max_records: int = 10_000
    idle_between_reads_ms: int = 1_500
    parent_shard_poll_ms: int = 10_000
    shard_sync_interval_ms: int = 60_000
    client_version: str = CLIENT_VERSION_2X_COMPATIBLE  # not KCL's default (3X): see the template
    shutdown_grace_ms: int = 20_000  # KCL's default 0 makes SIGTERM skip shutdown_requested
    metrics_level: str = "NONE"  # not KCL's default: no CloudWatch endpoint can be set
    credentials_provider: str = "DefaultCredentialsProvider"
    timeout_seconds: int | None = None  # a child silent this long halts the JVM (KCL #185)
    python: str = field(default_factory=lambda: sys.executable)
    # None: CBOR off when an endpoint is overridden (emulator), the SDK default (on) otherwise.
    cbor: bool | None = None
    extra: Mapping[str, str] = field(default_factory=dict)  # more properties, verbatim

    @classmethod
    def from_settings(
        cls, settings: Settings, *, processor: str, application_name: str | None = None, **overrides: object
    ) -> DaemonConfig:
        """Map shardhouse Settings onto the daemon's properties (the same knobs the native runtime reads)."""
        worker = settings.worker
        app = application_name or {"batcher": worker.batcher_app, "projector": worker.projector_app}.get(
            processor
        )
        if not app:
            raise ConfigError(f"processor {processor!r} has no default application name: pass --app NAME")
        base = cls(
            application_name=app,
            stream_name=settings.resources.stream,
            processor=processor,
            region=settings.aws.region,
            kinesis_endpoint=settings.aws.endpoint_for("kinesis"),
            dynamodb_endpoint=settings.aws.endpoint_for("dynamodb"),
            worker_id=worker.worker_id,
            initial_position=worker.initial_position,
            failover_ms=worker.failover_ms,
            max_leases_for_worker=worker.max_leases_for_worker,
            max_records=worker.max_records,
            idle_between_reads_ms=worker.idle_between_reads_ms,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    @property
    def cbor_enabled(self) -> bool:
        if self.cbor is not None:
            return self.cbor
        return not (self.kinesis_endpoint or self.dynamodb_endpoint)


# ---------------------------------------------------------------------------------------- pure


def executable_name(python: str, processor: str) -> str:
    """The ``executableName`` value; the daemon splits it on single spaces, so none may hide inside."""
    for what, value in (("python interpreter path", python), ("processor name", processor)):
        if not value or any(ch.isspace() for ch in value):
            raise ConfigError(
                f"{what} {value!r} must be non-empty and contain no whitespace (KCL splits on spaces)"
            )
    return f"{python} -m pipeline.app.kcl_entry --processor {processor}"


def _check(cfg: DaemonConfig) -> None:
    if cfg.initial_position not in INITIAL_POSITIONS:
        raise ConfigError(
            f"initial position {cfg.initial_position!r}: expected one of {', '.join(INITIAL_POSITIONS)}"
        )
    if cfg.client_version not in CLIENT_VERSIONS:
        raise ConfigError(
            f"client version {cfg.client_version!r}: expected one of {', '.join(CLIENT_VERSIONS)}"
        )
    if cfg.metrics_level not in METRICS_LEVELS:
        raise ConfigError(f"metrics level {cfg.metrics_level!r}: expected one of {', '.join(METRICS_LEVELS)}")
    for name in (
        "failover_ms",
        "max_records",
        "idle_between_reads_ms",
        "parent_shard_poll_ms",
        "shard_sync_interval_ms",
    ):
        if int(getattr(cfg, name)) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(cfg, name)}")
    if not 1 <= cfg.max_records <= 10_000:
        raise ConfigError(f"max_records must be 1..10000 (the GetRecords limit), got {cfg.max_records}")
    if cfg.max_leases_for_worker < 0 or cfg.shutdown_grace_ms < 0:
        raise ConfigError("max_leases_for_worker and shutdown_grace_ms must not be negative")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,255}", cfg.application_name):
        raise ConfigError(f"application name {cfg.application_name!r} is not a valid DynamoDB table name")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,128}", cfg.stream_name):
        raise ConfigError(f"stream name {cfg.stream_name!r} is not a valid Kinesis stream name")
    for endpoint in (cfg.kinesis_endpoint, cfg.dynamodb_endpoint):
        if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
            raise ConfigError(f"endpoint {endpoint!r} must be an http:// or https:// URL")


def _prop_value(key: str, value: object) -> str:
    text = str(value)
    if any(ch in text for ch in "\r\n\\") or text != text.strip():
        raise ConfigError(f"property {key}={text!r}: no newlines, backslashes or surrounding blanks allowed")
    return text


def load_template() -> str:
    return (importlib.resources.files("pipeline.app.kcl") / "shardhouse.properties.template").read_text()


def render_properties(cfg: DaemonConfig, template: str | None = None) -> str:
    """The properties file text for ``cfg`` (pure; validates every value)."""
    _check(cfg)
    optional: dict[str, object] = {}
    if cfg.kinesis_endpoint:
        optional["kinesisEndpoint"] = cfg.kinesis_endpoint
    if cfg.dynamodb_endpoint:
        optional["dynamoDBEndpoint"] = cfg.dynamodb_endpoint
    if cfg.timeout_seconds is not None:
        optional["timeoutInSeconds"] = cfg.timeout_seconds
    optional.update(cfg.extra)
    values = {
        "executable": executable_name(cfg.python, cfg.processor),
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
        "application_name": cfg.application_name,
        "stream_name": cfg.stream_name,
        "region": cfg.region,
        "worker_id": cfg.worker_id,
        "credentials_provider": cfg.credentials_provider,
        "initial_position": cfg.initial_position,
        "max_records": cfg.max_records,
        "idle_between_reads_ms": cfg.idle_between_reads_ms,
        "failover_ms": cfg.failover_ms,
        "max_leases_for_worker": cfg.max_leases_for_worker or _JAVA_INT_MAX,
        "parent_shard_poll_ms": cfg.parent_shard_poll_ms,
        "shard_sync_interval_ms": cfg.shard_sync_interval_ms,
        "client_version": cfg.client_version,
        "shutdown_grace_ms": cfg.shutdown_grace_ms,
        "metrics_level": cfg.metrics_level,
    }
    rendered = {k: _prop_value(k, v) for k, v in values.items()}
    rendered["extra"] = "".join(f"{k} = {_prop_value(k, v)}\n" for k, v in optional.items())
    try:
        return Template(template if template is not None else load_template()).substitute(rendered)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"KCL properties template: bad placeholder {exc}") from exc


def jvm_options(cfg: DaemonConfig) -> list[str]:
    # SDK v2 reads aws.cborEnabled (or env CBOR_ENABLED); SDK v1's AWS_CBOR_DISABLE is ignored.
    return [] if cfg.cbor_enabled else ["-Daws.cborEnabled=false"]


def build_command(
    java: str, jars: Sequence[Path], properties: Path, jvm_opts: Sequence[str] = ()
) -> list[str]:
    """``java -cp <jars>:<props dir> MultiLangDaemon --properties-file <props>`` (as kclpy's helper)."""
    classpath = os.pathsep.join([*(str(j) for j in jars), str(properties.resolve().parent)])
    return [
        java,
        *jvm_opts,
        "-cp",
        classpath,
        MULTILANG_DAEMON_CLASS,
        "--properties-file",
        str(properties.resolve()),
    ]


def kcl_version(jars: Sequence[Path]) -> str | None:
    for jar in jars:
        match = _MULTILANG_JAR.match(jar.name)
        if match:
            return match.group("version")
    return None


# ----------------------------------------------------------------------------------------- I/O


def kclpy_jars_dir() -> Path:
    spec = importlib.util.find_spec("amazon_kclpy")
    if spec is None or spec.origin is None:
        raise ConfigError(f"amazon-kclpy is not installed: {INSTALL_HINT}")
    return Path(spec.origin).parent / "jars"


def find_jars() -> list[Path]:
    """The KCL jars amazon-kclpy's build downloaded; fail clearly when the build skipped them."""
    jars = sorted(kclpy_jars_dir().glob("*.jar"))
    if kcl_version(jars) is None:
        raise ConfigError(
            f"no amazon-kinesis-client-multilang jar in {kclpy_jars_dir()} (its build could not reach "
            f"Maven Central?): {INSTALL_HINT}"
        )
    return jars


def find_java(java: str | None = None, env: Mapping[str, str] | None = None) -> str:
    source = os.environ if env is None else env
    candidates = [java] if java else []
    if not java and source.get("JAVA_HOME"):
        candidates.append(str(Path(source["JAVA_HOME"]) / "bin" / "java"))
    if not java:
        candidates.append("java")
    for candidate in candidates:
        found = shutil.which(candidate) if candidate else None
        if found:
            return found
    raise ConfigError(
        "no java executable (KCL 3.x needs Java 8+; Debian: apt-get install default-jre-headless)"
    )


def probe_h2c(endpoint: str, timeout: float = 2.0) -> str:
    """``"h2c"``, ``"no-h2c"`` or ``"unreachable"``: does a plain-http endpoint answer an HTTP/2
    prior-knowledge preface with a SETTINGS frame?

    The KCL forces HTTP/2 on its Kinesis client (``KinesisClientUtil.adjustKinesisClientBuilder``),
    so an HTTP/1.1-only emulator (moto) fails with "First received frame was not SETTINGS".
    """
    parts = urlsplit(endpoint)
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return "unreachable"
    header = b""
    with sock, contextlib.suppress(OSError):
        sock.sendall(preface)
        while len(header) < 9:
            chunk = sock.recv(9 - len(header))
            if not chunk:
                break
            header += chunk
    return "h2c" if len(header) == 9 and header[3] == 0x04 else "no-h2c"  # frame type 4 = SETTINGS


def preflight(cfg: DaemonConfig) -> None:
    """Turn the emulator mismatch that floods the JVM log with Http2Exceptions into one clear error."""
    endpoint = cfg.kinesis_endpoint
    if not endpoint or urlsplit(endpoint).scheme != "http":
        return
    verdict = probe_h2c(endpoint)
    if verdict == "unreachable":
        raise ConfigError(f"Kinesis endpoint {endpoint} is not reachable (is the local stack up?)")
    if verdict == "no-h2c":
        raise ConfigError(
            f"Kinesis endpoint {endpoint} does not speak HTTP/2 (h2c), which the Java KCL requires. "
            "moto's Kinesis cannot serve the daemon; use kinesis-mock "
            "(`shardhouse up --kinesis kinesis-mock`, or AWS_ENDPOINT_URL_KINESIS); see docs/kcl-multilang.md"
        )


@dataclass(frozen=True)
class Launch:
    command: list[str]
    properties: Path
    env: dict[str, str]


def prepare(
    cfg: DaemonConfig,
    *,
    workdir: Path,
    settings: Settings | None = None,
    java: str | None = None,
    base_env: Mapping[str, str] | None = None,
) -> Launch:
    """Write the properties file and return the command plus the environment the daemon (and its
    children, which inherit it) must run with."""
    jars = find_jars()
    java_bin = find_java(java, base_env)
    text = render_properties(cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    properties = workdir / f"{cfg.application_name}.properties"
    properties.write_text(text)
    env = dict(os.environ if base_env is None else base_env)
    if settings is not None:
        env.update(settings.to_env())
    env["SHARDHOUSE_STREAM"] = cfg.stream_name
    return Launch(build_command(java_bin, jars, properties, jvm_options(cfg)), properties, env)


class DaemonProcess:
    """One running MultiLangDaemon JVM, in its own process group with its per-shard children."""

    def __init__(self, proc: subprocess.Popen[bytes], launch: Launch) -> None:
        self.proc = proc
        self.launch = launch

    @classmethod
    def start(cls, launch: Launch, *, log: IO[bytes] | None = None, cwd: Path | None = None) -> DaemonProcess:
        proc = subprocess.Popen(
            launch.command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            env=launch.env,
            cwd=cwd,
            start_new_session=True,
        )
        return cls(proc, launch)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 25.0) -> int:
        """SIGTERM (KCL's shutdown hook: shutdown_requested → checkpoint), then SIGKILL the group."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        self.kill()
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL the JVM and any child still running (a crash, for failover tests)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def wait(self, timeout: float | None = None) -> int:
        return int(self.proc.wait(timeout=timeout))


def run_foreground(launch: Launch, *, grace: float = 25.0) -> int:
    """Run the daemon attached to this terminal until it exits; SIGINT/SIGTERM stop it gracefully."""
    daemon = DaemonProcess.start(launch)
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while daemon.alive():
            if stopping:
                return daemon.stop(grace)
            time.sleep(0.2)
        code = daemon.wait()
        if code != 0:
            raise TerminalError(f"KCL MultiLangDaemon exited with status {code}")
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if daemon.alive():
            daemon.kill()


def precreate_leases(
    dynamodb: DynamoDBClient,
    kinesis: KinesisClient,
    table: str,
    stream: str,
    *,
    position: str = "TRIM_HORIZON",
) -> list[str]:
    """Create the lease table and one lease per open shard, as KCL's first shard sync would.

    KCL waits a random 1-30 s before syncing an empty table (``Scheduler.shouldInitiateLeaseSync``)
    and then sleeps ``shardSyncIntervalMillis``; with the leases already there it starts at once.
    Conditional puts, so racing a daemon (or the native runtime) that creates them too is harmless.
    """
    if position not in INITIAL_POSITIONS:
        raise ConfigError(f"initial position {position!r}: expected one of {', '.join(INITIAL_POSITIONS)}")
    with contextlib.suppress(dynamodb.exceptions.ResourceInUseException):
        dynamodb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    dynamodb.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    created: list[str] = []
    shards: list[ShardTypeDef] = []
    token: str | None = None
    while True:
        page = kinesis.list_shards(NextToken=token) if token else kinesis.list_shards(StreamName=stream)
        shards.extend(page["Shards"])
        token = page.get("NextToken")
        if not token:
            break
    for shard in shards:
        if position == "LATEST" and "EndingSequenceNumber" in shard["SequenceNumberRange"]:
            continue  # KCL lists AT_LATEST then: open shards only (TRIM_HORIZON: every retained one)
        item: dict[str, AttributeValueTypeDef] = {
            "leaseKey": {"S": shard["ShardId"]},
            "leaseCounter": {"N": "0"},
            "checkpoint": {"S": position},
            "checkpointSubSequenceNumber": {"N": "0"},
            "ownerSwitchesSinceCheckpoint": {"N": "0"},
            "startingHashKey": {"S": shard["HashKeyRange"]["StartingHashKey"]},
            "endingHashKey": {"S": shard["HashKeyRange"]["EndingHashKey"]},
        }
        parents = [p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p]
        if parents:
            item["parentShardId"] = {"SS": parents}
        try:
            dynamodb.put_item(
                TableName=table, Item=item, ConditionExpression="attribute_not_exists(leaseKey)"
            )
            created.append(shard["ShardId"])
        except dynamodb.exceptions.ConditionalCheckFailedException:
            pass
    return created
