"""The embedded local stack: an S3 server, an MLflow server and a Ray head, on one machine.

Run from the repository root::

    python -m infra.local.stack up        # start (or reuse a healthy running stack)
    source .local-stack/stack.env         # point jobs, `ray job submit` and boto3 at it
    python -m infra.local.stack status    # health of each service; exit 1 if one is down
    python -m infra.local.stack down      # stop everything `up` started

``--dir`` (default ``.local-stack``) holds ``state.json`` (what runs, with its process groups),
``stack.env``, the Ray token, ``mlflow.db`` and the service logs.

Services, user-facing endpoints on 127.0.0.1:

- S3: ``moto.server`` (in memory: objects are gone after ``down``, while ``mlflow.db`` stays, so old
  runs' artifacts then dangle), bucket ``MEERKAT_STACK_BUCKET`` (default ``meerkat``).
- MLflow: SQLite backend, one worker, no job runner (the defaults add worker processes and a job runner that a one-machine stack does not use, in memory and start-up time); artifacts
  proxied by the server (``mlflow-artifacts:`` URIs, so clients need no S3 access) into
  ``s3://<bucket>/mlflow-artifacts``, or a local directory named by ``MEERKAT_STACK_MLFLOW_ARTIFACTS``.
- Ray head: job server and dashboard on the dashboard port. Its processes carry the stack
  environment (S3 endpoint and credentials, MLflow URI), so submitted jobs inherit it. Ray 2.60
  rewrites a loopback ``--node-ip-address`` to the host's address and its gRPC servers (GCS,
  raylet) listen on every interface; only the dashboard and the client server bind loopback. So
  token authentication is always on, with a token of the stack's own (``<dir>/ray_auth_token``;
  ``stack.env`` sets ``RAY_AUTH_MODE`` and ``RAY_AUTH_TOKEN_PATH`` for clients).

Ports come from the environment: ``MEERKAT_STACK_S3_PORT`` (29000), ``MEERKAT_STACK_MLFLOW_PORT``
(25000), ``MEERKAT_STACK_RAY_PORT`` (GCS, 26379), ``MEERKAT_STACK_DASHBOARD_PORT`` (8265),
``MEERKAT_STACK_RAY_CLIENT_PORT`` (20001), ``MEERKAT_STACK_DASHBOARD_AGENT_PORT`` (22365); also
``MEERKAT_STACK_NUM_CPUS`` (max(6, cores): logical). The defaults sit below the Linux ephemeral range and away
from the usual 9000/5000/6379/10001, so a stack does not collide with a developer's own MinIO,
MLflow or Ray.

``down`` ends only this stack's processes: their process groups as recorded by ``up`` plus any
process carrying this Ray head's private temp dir. It never runs ``ray stop``, which kills every
Ray process of the machine, other people's clusters included.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from infra.local.processes import (
    Service,
    StackError,
    http_get,
    launch,
    port_in_use,
    stop_service,
)
from pipelines import storage

# Credentials for the local moto server only: it accepts any; never real ones.
LOCAL_ACCESS_KEY = "testing"
LOCAL_SECRET_KEY = "testing"
LOCAL_REGION = "us-east-1"
DEFAULT_DIR = ".local-stack"
STATE_FILE = "state.json"
ENV_FILE = "stack.env"


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and which ports it takes."""

    dir: str
    bucket: str = "meerkat"
    s3_port: int = 29000
    mlflow_port: int = 25000
    ray_port: int = 26379
    dashboard_port: int = 8265
    ray_client_port: int = 20001
    dashboard_agent_port: int = 22365
    num_cpus: int = 1
    # None: s3://<bucket>/mlflow-artifacts; otherwise a local directory.
    mlflow_artifacts: str | None = None

    @classmethod
    def from_env(cls, directory: str) -> StackConfig:
        env = os.environ

        def port(name: str, default: int) -> int:
            return int(env.get(f"MEERKAT_STACK_{name}_PORT", default))

        return cls(
            dir=os.path.abspath(directory),
            bucket=env.get("MEERKAT_STACK_BUCKET", cls.bucket),
            s3_port=port("S3", cls.s3_port),
            mlflow_port=port("MLFLOW", cls.mlflow_port),
            ray_port=port("RAY", cls.ray_port),
            dashboard_port=port("DASHBOARD", cls.dashboard_port),
            ray_client_port=port("RAY_CLIENT", cls.ray_client_port),
            dashboard_agent_port=port("DASHBOARD_AGENT", cls.dashboard_agent_port),
            # logical CPUs: 2 training workers + data actors + stream tasks must fit at once
            num_cpus=int(env.get("MEERKAT_STACK_NUM_CPUS", max(6, os.cpu_count() or 1))),
            mlflow_artifacts=env.get("MEERKAT_STACK_MLFLOW_ARTIFACTS") or None,
        )

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def ray_token_path(self) -> Path:
        return Path(self.dir) / "ray_auth_token"

    def env(self) -> dict[str, str]:
        """The variables that point a client at this stack (what ``stack.env`` exports)."""
        return {
            # Both endpoint names: the _S3 one wins in boto3 and in pipelines.storage, so a value
            # left in the user's shell must not outrank this stack.
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_KEY,
            "AWS_DEFAULT_REGION": LOCAL_REGION,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "RAY_ADDRESS": self.dashboard_url,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.ray_token_path),
            "MEERKAT_DATA_URI": f"s3://{self.bucket}/data",
        }


# ---------------------------------------------------------------------------------------------
# The services (their processes are launched and stopped by infra/local/processes.py).


def start_s3(port: int, log: Path) -> Service:
    """A moto S3 server on 127.0.0.1:``port``."""
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]

    def ready() -> bool:
        return http_get(f"http://127.0.0.1:{port}/moto-api/") is not None

    return launch("s3", cmd, log, dict(os.environ), f"-H 127.0.0.1 -p {port}", [port], ready, 30)


def s3_client(endpoint: str):
    settings = storage.S3Settings(
        region=LOCAL_REGION, endpoint_url=endpoint, access_key=LOCAL_ACCESS_KEY, secret_key=LOCAL_SECRET_KEY
    )
    return storage.boto3_client(settings)


def create_bucket(endpoint: str, bucket: str) -> None:
    client = s3_client(endpoint)
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket)


def start_mlflow(
    port: int, db_path: Path, artifacts: str, log: Path, extra_env: dict[str, str] | None = None
) -> Service:
    """A lean MLflow server: one worker, no job runner, artifacts proxied to ``artifacts``."""
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{db_path}",
        "--artifacts-destination", artifacts,
        "--workers", "1",
        "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip
    env = {**os.environ, **(extra_env or {}), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    marker = f"--host 127.0.0.1 --port {port}"
    return launch("mlflow", cmd, log, env, marker, [port], lambda: mlflow_healthy(port), 120)


def mlflow_healthy(port: int) -> bool:
    reply = http_get(f"http://127.0.0.1:{port}/health")
    return reply is not None and reply[0] == 200


# ---------------------------------------------------------------------------------------------
# The stack.


def _ray_healthy(config: StackConfig) -> bool:
    try:
        auth = {"Authorization": f"Bearer {config.ray_token_path.read_text().strip()}"}
    except FileNotFoundError:
        return False
    version = http_get(f"{config.dashboard_url}/api/version", headers=auth)
    jobs = http_get(f"{config.dashboard_url}/api/jobs/", headers=auth)
    return version is not None and version[0] == 200 and jobs is not None and jobs[0] == 200


def _s3_healthy(config: StackConfig) -> bool:
    if not port_in_use(config.s3_port):
        return False
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        buckets = s3_client(config.s3_endpoint).list_buckets().get("Buckets", [])
    except (BotoCoreError, ClientError):
        return False
    return config.bucket in {b["Name"] for b in buckets}


def health(config: StackConfig) -> dict[str, bool]:
    return {
        "s3": _s3_healthy(config),
        "mlflow": mlflow_healthy(config.mlflow_port),
        "ray": _ray_healthy(config),
    }


def _start_ray(config: StackConfig, log: Path, env: dict[str, str]) -> Service:
    # Token auth, explicitly: Ray 2.60 otherwise turns it on or off depending on whether
    # ~/.ray/auth_token happens to exist, and its GCS listens on every interface. The token is this
    # stack's own (stack.env points clients at it), so ~/.ray is left alone.
    if not config.ray_token_path.exists():
        fd = os.open(config.ray_token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    # A private temp dir marks every process of this head (down finds them by it) and keeps the
    # Unix socket paths short (they must fit in 107 bytes; a deep --dir would not).
    temp_dir = tempfile.mkdtemp(prefix="meerkat-ray-")
    cmd = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head",
        f"--port={config.ray_port}",
        f"--num-cpus={config.num_cpus}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={config.dashboard_port}",
        f"--ray-client-server-port={config.ray_client_port}",
        f"--dashboard-agent-listen-port={config.dashboard_agent_port}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]  # fmt: skip
    ports = [config.ray_port, config.dashboard_port, config.ray_client_port, config.dashboard_agent_port]
    try:
        return launch(
            "ray", cmd, log, env, temp_dir, ports, lambda: _ray_healthy(config), 120, marker_unique=True
        )
    except StackError:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise


def _write_env_file(config: StackConfig) -> Path:
    path = Path(config.dir) / ENV_FILE
    lines = ["# Written by `python -m infra.local.stack up`: `source` it to use the local stack."]
    lines += [f"export {key}={value}" for key, value in config.env().items()]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds (dummy) credentials
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """The variables of a ``stack.env`` file."""
    env = {}
    for line in Path(path).read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            env[key] = value
    return env


def _save_state(config: StackConfig, services: list[Service]) -> None:
    state = {"config": asdict(config), "services": [asdict(s) for s in services]}
    storage.atomic_write_bytes(str(Path(config.dir) / STATE_FILE), json.dumps(state, indent=1).encode())


def load_state(directory: str) -> tuple[StackConfig, list[Service]] | None:
    path = Path(directory) / STATE_FILE
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    return StackConfig(**state["config"]), [Service(**s) for s in state["services"]]


def up(config: StackConfig) -> StackConfig:
    """Start the stack, or reuse the one recorded in ``config.dir`` if it is healthy; return its config.

    A recorded stack that is only partly healthy is stopped and started afresh.
    """
    os.makedirs(config.dir, exist_ok=True)
    recorded = load_state(config.dir)
    if recorded is not None:
        running, services = recorded
        if all(health(running).values()):
            print(f"stack already up in {config.dir}; reusing it")
            _write_env_file(running)
            return running
        print("recorded stack is unhealthy; stopping what is left of it")
        _stop_all(running, services)

    busy = [p for p in _all_ports(config) if port_in_use(p)]
    if busy:
        raise StackError(f"ports {busy} are in use; set MEERKAT_STACK_*_PORT to free ones")
    logs = Path(config.dir)
    services: list[Service] = []
    try:
        services.append(start_s3(config.s3_port, logs / "s3.log"))
        _save_state(config, services)
        create_bucket(config.s3_endpoint, config.bucket)

        stack_env = config.env()
        s3_env = {k: v for k, v in stack_env.items() if k.startswith("AWS_")}
        artifacts = config.mlflow_artifacts or f"s3://{config.bucket}/mlflow-artifacts"
        db = Path(config.dir) / "mlflow.db"
        # MLflow's S3 artifact store reads MLFLOW_S3_ENDPOINT_URL, not the AWS endpoint variables.
        mlflow_env = {**s3_env, "MLFLOW_S3_ENDPOINT_URL": config.s3_endpoint}
        services.append(start_mlflow(config.mlflow_port, db, artifacts, logs / "mlflow.log", mlflow_env))
        _save_state(config, services)

        # A driver inheriting RAY_ADDRESS=http://... would fail in ray.init(); jobs get theirs from Ray.
        ray_env = {**os.environ, **stack_env, "RAY_USAGE_STATS_ENABLED": "0"}
        ray_env.pop("RAY_ADDRESS")
        # Job entrypoints say `python ...`: make that this interpreter even when the venv that
        # runs `up` was never activated.
        ray_env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), ray_env.get("PATH", "")])
        services.append(_start_ray(config, logs / "ray.log", ray_env))
        _save_state(config, services)
    except BaseException:
        _stop_all(config, services)
        raise
    env_file = _write_env_file(config)
    print(f"stack up: S3 {config.s3_endpoint}, MLflow {config.mlflow_uri}, Ray {config.dashboard_url}")
    print(f"source {env_file}")
    return config


def _all_ports(config: StackConfig) -> list[int]:
    return [
        config.s3_port,
        config.mlflow_port,
        config.ray_port,
        config.dashboard_port,
        config.ray_client_port,
        config.dashboard_agent_port,
    ]


def _stop_all(config: StackConfig, services: list[Service]) -> None:
    """Stop every service (Ray first: its jobs may still write to MLflow and S3), even if one fails."""
    errors = []
    for service in sorted(services, key=lambda s: ("ray", "mlflow", "s3").index(s.name)):
        try:
            stop_service(service)
        except StackError as err:
            errors.append(str(err))
            continue
        if service.name == "ray":
            shutil.rmtree(service.marker, ignore_errors=True)
    if errors:
        raise StackError("; ".join(errors))
    for name in (STATE_FILE, ENV_FILE):
        (Path(config.dir) / name).unlink(missing_ok=True)


def down(directory: str) -> None:
    """Stop the stack recorded in ``directory``; ``mlflow.db`` and the logs stay."""
    recorded = load_state(directory)
    if recorded is None:
        print(f"no stack recorded in {directory}")
        return
    _stop_all(*recorded)
    print("stack down")


def status(directory: str) -> bool:
    """Print each service's endpoint and health; True when all are healthy."""
    recorded = load_state(directory)
    if recorded is None:
        print(f"no stack recorded in {directory}")
        return False
    config, _ = recorded
    endpoints = {"s3": config.s3_endpoint, "mlflow": config.mlflow_uri, "ray": config.dashboard_url}
    healthy = health(config)
    for name, ok in healthy.items():
        print(f"{name:7s} {endpoints[name]:28s} {'ok' if ok else 'DOWN'}")
    return all(healthy.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--dir", default=DEFAULT_DIR, help="state, env file, MLflow DB and logs")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up(StackConfig.from_env(args.dir))
        elif args.command == "down":
            down(args.dir)
        else:
            return 0 if status(args.dir) else 1
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
