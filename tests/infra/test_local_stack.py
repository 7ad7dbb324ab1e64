"""infra.local.stack: its configuration (unit) and a whole up / reuse / job / down cycle (integration)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from infra.local import processes, stack

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_config_from_env_and_env_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MEERKAT_STACK_S3_PORT", "31000")
    monkeypatch.setenv("MEERKAT_STACK_MLFLOW_PORT", "31001")
    monkeypatch.setenv("MEERKAT_STACK_DASHBOARD_PORT", "31002")
    monkeypatch.setenv("MEERKAT_STACK_BUCKET", "b1")
    config = stack.StackConfig.from_env(str(tmp_path))
    assert (config.s3_port, config.mlflow_port, config.dashboard_port, config.bucket) == (
        31000,
        31001,
        31002,
        "b1",
    )
    assert config.ray_port == 26379 and config.dir == str(tmp_path)
    assert config.env()["MEERKAT_DATA_URI"] == "s3://b1/data"
    path = stack._write_env_file(config)
    assert stack.read_env_file(path) == config.env()
    assert path.stat().st_mode & 0o077 == 0


# ------------------------------------------------------------------------------------ integration

_JOB = """
import mlflow
from pipelines import storage
storage.atomic_write_bytes("s3://meerkat/data/from-job.txt", b"hello from a Ray job")
with mlflow.start_run(run_name="stack-test"):
    mlflow.log_text("artifact", "proof.txt")
"""


def _cli(command: str, directory: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "infra.local.stack", command, "--dir", str(directory)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _group_members(pgids: set[int]) -> list[int]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) in pgids and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return found


@pytest.mark.integration
def test_up_reuse_job_and_down(tmp_path):
    names = ("S3", "MLFLOW", "RAY", "DASHBOARD", "RAY_CLIENT", "DASHBOARD_AGENT")
    ports = {name: processes.free_port() for name in names}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS", "MLFLOW_"))}
    env.update({f"MEERKAT_STACK_{n}_PORT": str(p) for n, p in ports.items()}, MEERKAT_STACK_NUM_CPUS="1")
    directory = tmp_path / "stack"
    try:
        first = _cli("up", directory, env)
        assert first.returncode == 0, first.stdout + first.stderr
        config, services = stack.load_state(str(directory))
        assert {s.name for s in services} == {"s3", "mlflow", "ray"}
        assert stack.health(config) == {"s3": True, "mlflow": True, "ray": True}

        stack_env = stack.read_env_file(directory / "stack.env")
        assert stack_env == {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['S3']}",
            "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{ports['S3']}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['MLFLOW']}",
            "RAY_ADDRESS": f"http://127.0.0.1:{ports['DASHBOARD']}",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(directory / "ray_auth_token"),
            "MEERKAT_DATA_URI": "s3://meerkat/data",
        }
        assert (directory / "ray_auth_token").stat().st_mode & 0o077 == 0
        assert processes.http_get(f"{stack_env['RAY_ADDRESS']}/api/jobs/")[0] == 401  # no token, no entry

        second = _cli("up", directory, env)
        assert second.returncode == 0 and "reusing" in second.stdout, second.stdout + second.stderr
        assert stack.load_state(str(directory)) == (config, services)  # same processes, not restarted
        assert _cli("status", directory, env).returncode == 0

        # `ray job submit` with stack.env: the job sees S3 and MLflow from the head's environment,
        # and its `python` is this venv's.
        submit = subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--", "python", "-c", _JOB],
            env={**env, **stack_env},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert submit.returncode == 0 and "succeeded" in submit.stdout + submit.stderr, (
            submit.stdout + submit.stderr
        )
        client = stack.s3_client(stack_env["AWS_ENDPOINT_URL"])
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="meerkat")["Contents"]]
        assert "data/from-job.txt" in keys
        assert any(k.startswith("mlflow-artifacts/") and k.endswith("/artifacts/proof.txt") for k in keys)

        pgids = {s.pgid for s in services}
        ray_temp = next(s.marker for s in services if s.name == "ray")
        before = {p.pid for s in services for p in processes.service_processes(s)}
        assert len(before) >= 5  # moto, mlflow (+ uvicorn), gcs, raylet, dashboard, ...
    finally:
        down = _cli("down", directory, env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(_alive(pid) for pid in before)
    assert _group_members(pgids) == []
    assert not any(processes.port_in_use(p) for p in ports.values())
    assert not Path(ray_temp).exists()
    assert not (directory / "state.json").exists() and not (directory / "stack.env").exists()
    assert (directory / "mlflow.db").exists()
    assert _cli("status", directory, env).returncode == 1
