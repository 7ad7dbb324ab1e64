"""Shared fixtures: real local services on loopback, started only when a test asks for one.

- ``s3_server`` (session): a moto S3 server on a free port with bucket ``meerkat-test``; for the
  session it points the standard AWS variables at it (dummy credentials), restored afterwards.
- ``s3_uri`` (function): a fresh ``s3://meerkat-test/<test>-<random>`` prefix, the S3 ``tmp_path``.
- ``mlflow_server`` (session): a lean MLflow tracking server (SQLite, one worker, no job runner,
  artifacts proxied to a temp dir); yields its tracking URI and leaves ``MLFLOW_TRACKING_URI``
  alone: set it with ``monkeypatch`` where a test wants it.
- ``ray_local`` (module): an in-process local Ray (``address="local"``, 6 logical CPUs, no dashboard).
  It depends on ``s3_server`` so that Ray's workers, which copy the environment when Ray starts,
  see the S3 settings.
- ``local_stack`` (session): the whole embedded stack, as ``make demo`` runs it.
- ``pretrained_dirs`` (session): small random checkpoints in the official layouts.

A test using a service is marked ``integration`` automatically (``-m "not integration"``
deselects it). The services are started by ``tests/fixtures/services.py`` with the local stack's
own code; it is imported inside the fixtures, so the core's tests import nothing outside the core.
"""

from __future__ import annotations

import re
import uuid

import pytest

INTEGRATION_FIXTURES = frozenset({"s3_server", "s3_uri", "mlflow_server", "ray_local", "local_stack"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    from tests.fixtures import services

    with services.s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3_uri(s3_server, request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:60]
    return s3_server.uri(f"{name}-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    from tests.fixtures import services

    with services.mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="module")
def ray_local(s3_server):
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
            num_cpus=6,  # logical: training workers, data actors and stream tasks each reserve one
            include_dashboard=False,
            object_store_memory=256 * 1024 * 1024,
            log_to_driver=False,
        )
        try:
            yield context
        finally:
            ray.shutdown()


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory):
    """The whole embedded stack (Ray head, MLflow, S3) on free loopback ports, as ``make demo`` runs it."""
    from tests.fixtures import services

    with services.local_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="session")
def pretrained_dirs(tmp_path_factory: pytest.TempPathFactory):
    """Small random CLIP / CLAP / Llama checkpoints and a Llama-style tokenizer in the official
    layouts (:func:`tests.fixtures.pretrained.write_pretrained_checkpoints`), written once per session."""
    from tests.fixtures.pretrained import write_pretrained_checkpoints

    return write_pretrained_checkpoints(tmp_path_factory.mktemp("pretrained"))
