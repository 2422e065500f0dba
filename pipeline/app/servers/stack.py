"""``shardhouse up`` / ``down``: the local stack as real processes, recorded in a state file.

One launcher serves the CLI, the tests (free ports, a temporary state dir) and the demo, so the
stack the tests exercise is the stack users run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

import psycopg
import redis

from pipeline.app.servers import binaries, postgres
from pipeline.app.servers.process import free_port, pid_alive, port_open, spawn, stop_pid, wait_for_port
from pipeline.core.errors import ConfigError, TerminalError


class KinesisEngine(StrEnum):
    """Which emulator serves Kinesis: moto (fast, in the one AWS server) or kinesis-mock (faithful
    resharding and shard iterators, see docs/architecture.md)."""

    MOTO = "moto"
    KINESIS_MOCK = "kinesis-mock"


PG_SUPERUSER = "shardhouse"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@dataclass(frozen=True)
class StackConfig:
    state_dir: Path
    host: str = "127.0.0.1"
    aws_port: int = 4566
    kinesis_engine: KinesisEngine = KinesisEngine.MOTO
    kinesis_mock_port: int = 4567
    redis_port: int = 6379
    pg_port: int = 5432
    with_kinesis_mock: bool = False  # start kinesis-mock beside moto even when moto serves Kinesis
    npm_dirs: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kinesis_engine", KinesisEngine(self.kinesis_engine))
        except ValueError:
            choices = ", ".join(KinesisEngine)
            raise ConfigError(f"--kinesis {self.kinesis_engine!r}: expected one of {choices}") from None

    @classmethod
    def on_free_ports(
        cls,
        state_dir: Path,
        *,
        kinesis_engine: KinesisEngine = KinesisEngine.MOTO,
        with_kinesis_mock: bool = False,
        npm_dirs: tuple[Path, ...] = (),
    ) -> StackConfig:
        """A stack that runs beside others (tests, benchmarks): every port free when chosen."""
        return cls(
            state_dir=state_dir,
            aws_port=free_port(),
            kinesis_engine=kinesis_engine,
            kinesis_mock_port=free_port(),
            redis_port=free_port(),
            pg_port=free_port(),
            with_kinesis_mock=with_kinesis_mock,
            npm_dirs=npm_dirs,
        )


@dataclass
class Service:
    pid: int
    port: int
    log: str
    stop_signal_fast: bool = False


@dataclass
class StackState:
    services: dict[str, Service] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def aws_endpoint(self) -> str:
        return self.env["AWS_ENDPOINT_URL"]

    @property
    def kinesis_mock_endpoint(self) -> str | None:
        svc = self.services.get("kinesis-mock")
        return f"http://127.0.0.1:{svc.port}" if svc else None

    @property
    def redis_url(self) -> str:
        return self.env["SHARDHOUSE_REDIS_URL"]

    @property
    def pg_url(self) -> str:
        return self.env["SHARDHOUSE_DATABASE_URL"]

    def alive(self) -> dict[str, bool]:
        return {
            name: pid_alive(s.pid) and port_open("127.0.0.1", s.port) for name, s in self.services.items()
        }


def state_file(state_dir: Path) -> Path:
    return state_dir / "stack.json"


def read_state(state_dir: Path) -> StackState | None:
    path = state_file(state_dir)
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return StackState(
        services={k: Service(**v) for k, v in raw.get("services", {}).items()},
        env=dict(raw.get("env", {})),
    )


def _write_state(state_dir: Path, state: StackState) -> None:
    payload = {"services": {k: asdict(v) for k, v in state.services.items()}, "env": state.env}
    tmp = state_file(state_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(state_file(state_dir))


def _stack_env(cfg: StackConfig) -> dict[str, str]:
    env = {
        "AWS_ENDPOINT_URL": f"http://{cfg.host}:{cfg.aws_port}",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        **FAKE_CREDENTIALS,
        "SHARDHOUSE_REDIS_URL": f"redis://{cfg.host}:{cfg.redis_port}/0",
        "SHARDHOUSE_DATABASE_URL": f"postgresql://{PG_SUPERUSER}@{cfg.host}:{cfg.pg_port}/shardhouse",
    }
    if cfg.kinesis_engine is KinesisEngine.KINESIS_MOCK:
        env["AWS_ENDPOINT_URL_KINESIS"] = f"http://{cfg.host}:{cfg.kinesis_mock_port}"
    return env


def _start_moto(cfg: StackConfig, logs: Path) -> Service:
    log = logs / "moto.log"
    pid = spawn(
        [binaries.python(), "-m", "pipeline.app.servers.moto_main", "-H", cfg.host, "-p", str(cfg.aws_port)],
        log_path=log,
        env={**os.environ, **FAKE_CREDENTIALS},
    )
    wait_for_port("moto server", cfg.host, cfg.aws_port, pid=pid, log_path=log)
    return Service(pid, cfg.aws_port, str(log))


def _start_kinesis_mock(cfg: StackConfig, logs: Path) -> Service:
    log = logs / "kinesis-mock.log"
    # scripts/install-deps.sh installs it under the checkout's .shardhouse/npm.
    checkout_npm = Path(__file__).resolve().parents[2] / ".shardhouse" / "npm"
    main = binaries.kinesis_mock([*cfg.npm_dirs, cfg.state_dir / "npm", checkout_npm, Path.cwd()])
    env = {
        **os.environ,
        "KINESIS_MOCK_CERT_PATH": str(main.parent / "server.json"),
        "KINESIS_MOCK_PLAIN_PORT": str(cfg.kinesis_mock_port),
        # We only speak plain HTTP; port 0 lets the OS give the TLS listener a port no one holds
        # (a derived port such as plain+10000 can be another server's, and the start then fails).
        "KINESIS_MOCK_TLS_PORT": "0",
        "LOG_LEVEL": "WARN",
        "CREATE_STREAM_DURATION": "0ms",
        "DELETE_STREAM_DURATION": "0ms",
        "UPDATE_SHARD_COUNT_DURATION": "0ms",
        "SHARD_LIMIT": "10000",
    }
    pid = spawn([binaries.node(), str(main)], log_path=log, env=env)
    wait_for_port("kinesis-mock", cfg.host, cfg.kinesis_mock_port, pid=pid, log_path=log)
    return Service(pid, cfg.kinesis_mock_port, str(log))


def _start_redis(cfg: StackConfig, logs: Path) -> Service:
    log = logs / "redis.log"
    data = cfg.state_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    cmd = [
        binaries.redis_server(),
        "--port", str(cfg.redis_port),
        "--bind", cfg.host,
        "--dir", str(data.resolve()),
        "--save", "",
        "--appendonly", "no",
        "--protected-mode", "no",
    ]  # fmt: skip
    pid = spawn(cmd, log_path=log)
    wait_for_port("redis-server", cfg.host, cfg.redis_port, pid=pid, log_path=log)
    client = redis.Redis(host=cfg.host, port=cfg.redis_port, socket_timeout=5)
    _until(lambda: bool(client.ping()), "redis-server answering PING", log)
    return Service(pid, cfg.redis_port, str(log))


def _start_postgres(cfg: StackConfig, logs: Path) -> Service:
    log = logs / "postgres.log"
    account = postgres.service_account()
    postgres.remove_orphans()
    datadir = postgres.data_dir(cfg.state_dir, account)
    postgres.init_cluster(datadir, account, PG_SUPERUSER)
    pid = spawn(postgres.server_command(datadir, cfg.pg_port, cfg.host, account), log_path=log)
    wait_for_port("postgres", cfg.host, cfg.pg_port, pid=pid, log_path=log)
    admin_url = f"postgresql://{PG_SUPERUSER}@{cfg.host}:{cfg.pg_port}/postgres"

    def ready() -> bool:
        with psycopg.connect(admin_url, connect_timeout=5, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'shardhouse'").fetchone()
            if not exists:
                conn.execute("CREATE DATABASE shardhouse")
        return True

    _until(ready, "postgres accepting connections", log)
    # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM would wait for every client to leave.
    return Service(pid, cfg.pg_port, str(log), stop_signal_fast=True)


def _until(probe: Callable[[], bool], what: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except Exception as exc:  # the server is still starting; remember why and try again
            last = exc
        time.sleep(0.2)
    raise TerminalError(f"timed out waiting for {what}: {last}; see {log}")


STARTERS: dict[str, Callable[[StackConfig, Path], Service]] = {
    "moto": _start_moto,
    "kinesis-mock": _start_kinesis_mock,
    "redis": _start_redis,
    "postgres": _start_postgres,
}


def wanted_services(cfg: StackConfig) -> list[str]:
    names = ["moto", "redis", "postgres"]
    if cfg.kinesis_engine is KinesisEngine.KINESIS_MOCK or cfg.with_kinesis_mock:
        names.insert(1, "kinesis-mock")
    return names


def up(
    cfg: StackConfig, *, on_event: Callable[[str], None] = lambda _m: None
) -> tuple[StackState, list[str]]:
    """Start every wanted service not already running; return the state and what was started."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    logs = cfg.state_dir / "logs"
    state = read_state(cfg.state_dir) or StackState()
    alive = state.alive()
    started: list[str] = []
    try:
        for name in wanted_services(cfg):
            if alive.get(name):
                on_event(f"{name} already running (pid {state.services[name].pid})")
                continue
            port = _port_of(cfg, name)
            if port_open(cfg.host, port):
                raise ConfigError(
                    f"port {port} for {name} is taken by a process this stack did not start; "
                    f"stop it or choose another port"
                )
            on_event(f"starting {name} on {cfg.host}:{port}")
            state.services[name] = STARTERS[name](cfg, logs)
            started.append(name)
            state.env = _stack_env(cfg)
            _write_state(cfg.state_dir, state)
    except BaseException:
        for name in started:
            _stop(state.services.pop(name))
        _write_state(cfg.state_dir, state)
        raise
    state.env = _stack_env(cfg)
    _write_state(cfg.state_dir, state)
    return state, started


def _port_of(cfg: StackConfig, name: str) -> int:
    return {
        "moto": cfg.aws_port,
        "kinesis-mock": cfg.kinesis_mock_port,
        "redis": cfg.redis_port,
        "postgres": cfg.pg_port,
    }[name]


def _stop(service: Service) -> None:
    if service.stop_signal_fast and pid_alive(service.pid):
        import signal

        try:
            os.kill(service.pid, signal.SIGINT)
        except ProcessLookupError:
            return
    stop_pid(service.pid, grace=15.0)


def down(
    state_dir: Path, *, on_event: Callable[[str], None] = lambda _m: None, discard: bool = False
) -> list[str]:
    """Stop exactly the processes this state dir's ``up`` started. ``discard``: the state dir is
    a throwaway one (a test session's, a benchmark's), so PostgreSQL's data goes too, wherever
    it lives (a /tmp twin outlives the state dir otherwise)."""
    state = read_state(state_dir)
    stopped = []
    for name, service in reversed(list(state.services.items()) if state else []):
        on_event(f"stopping {name} (pid {service.pid})")
        _stop(service)
        stopped.append(name)
    state_file(state_dir).unlink(missing_ok=True)
    if discard:
        postgres.discard(state_dir)
    return stopped
