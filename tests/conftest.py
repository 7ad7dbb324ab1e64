"""Shared fixtures: real local services on loopback, started only when a test asks for one.

- ``s3_server`` (session): a moto S3 server on a free port with bucket ``meerkat-test``; for the
  session it points the standard AWS variables at it (dummy credentials), restored afterwards.
- ``s3_uri`` (function): a fresh ``s3://meerkat-test/<test>-<random>`` prefix, the S3 ``tmp_path``.
- ``mlflow_server`` (session): a lean MLflow tracking server (SQLite, one worker, no job runner,
  artifacts proxied to a temp dir); yields its tracking URI and leaves ``MLFLOW_TRACKING_URI``
  alone: set it with ``monkeypatch`` where a test wants it.
- ``ray_local`` (session): an in-process local Ray (``address="local"``, 6 logical CPUs, no dashboard).
  It depends on ``s3_server`` so that Ray's workers, which copy the environment when Ray starts,
  see the S3 settings.

A test using any of them is marked ``integration`` automatically (``-m "not integration"``
deselects it); the services are the ones ``infra.local.stack`` starts, launched by the same code.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from infra.local import stack

INTEGRATION_FIXTURES = frozenset({"s3_server", "s3_uri", "mlflow_server", "ray_local", "local_stack"})
TEST_BUCKET = "meerkat-test"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    port = stack.free_port()
    service = stack.start_s3(port, tmp_path_factory.mktemp("s3") / "moto.log")
    try:
        server = S3Server(f"http://127.0.0.1:{port}", TEST_BUCKET)
        stack.create_bucket(server.endpoint_url, server.bucket)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
            mp.setenv("AWS_ENDPOINT_URL_S3", server.endpoint_url)
            mp.setenv("AWS_ACCESS_KEY_ID", stack.LOCAL_ACCESS_KEY)
            mp.setenv("AWS_SECRET_ACCESS_KEY", stack.LOCAL_SECRET_KEY)
            mp.setenv("AWS_DEFAULT_REGION", stack.LOCAL_REGION)
            for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
                mp.delenv(name, raising=False)
            yield server
    finally:
        stack.stop_service(service)


@pytest.fixture
def s3_uri(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:60]
    return s3_server.uri(f"{name}-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow")
    port = stack.free_port()
    service = stack.start_mlflow(port, root / "mlflow.db", str(root / "artifacts"), root / "mlflow.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stack.stop_service(service)


@pytest.fixture(scope="module")
def ray_local(s3_server: S3Server):
    """A local Ray instance for one test module.

    Module-scoped, not session-scoped: a driver left connected would make the next module's own
    ``ray.init`` (the two-node cluster of ``test_train.py``) fail with "called ray.init twice".
    """
    import ray

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.delenv("RAY_ADDRESS", raising=False)
        context = ray.init(
            address="local",
            num_cpus=6,  # logical: training workers, data actors and read tasks each reserve one
            include_dashboard=False,
            object_store_memory=256 * 1024 * 1024,
            log_to_driver=False,
        )
        try:
            yield context
        finally:
            ray.shutdown()


@dataclass(frozen=True)
class LocalStack:
    config: stack.StackConfig
    env: dict[str, str]
    """The process environment for clients of this stack (``stack.env`` over ours)."""


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The whole embedded stack (Ray head, MLflow, S3) on free loopback ports, as ``make demo`` runs it."""
    import os

    directory = tmp_path_factory.mktemp("stack")
    config = stack.StackConfig(
        dir=str(directory),
        s3_port=stack.free_port(),
        mlflow_port=stack.free_port(),
        ray_port=stack.free_port(),
        dashboard_port=stack.free_port(),
        ray_client_port=stack.free_port(),
        dashboard_agent_port=stack.free_port(),
        num_cpus=6,
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS", "MLFLOW_"))}
    try:
        stack.up(config)
        yield LocalStack(config, {**base, **config.env()})
    finally:
        stack.down(str(directory))


@pytest.fixture(scope="session")
def pretrained_dirs(tmp_path_factory: pytest.TempPathFactory):
    """Small random CLIP / CLAP / Llama checkpoints and a Llama-style tokenizer in the official
    layouts (:func:`tests.fixtures.pretrained.write_pretrained_checkpoints`), written once per session."""
    from tests.fixtures.pretrained import write_pretrained_checkpoints

    return write_pretrained_checkpoints(tmp_path_factory.mktemp("pretrained"))
