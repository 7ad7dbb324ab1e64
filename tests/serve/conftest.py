"""Fixtures of the Serve tests: the grounding model, registered in MLflow, deployed on the local stack.

``meerkat_service`` is the application deployed with ``meerkat serve`` from
``models:/meerkat-serve-test/latest`` (resolved at deploy to the registered version) on the
``local_stack`` fixture, with a bearer token;
tests using it are marked ``integration`` through ``local_stack``. It is package-scoped, so that
its replicas leave the shared Ray head once the Serve tests are done.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local import processes
from tests.serve import service

REGISTERED_NAME = "meerkat-serve-test"


@pytest.fixture(scope="session")
def scenes() -> list[service.Scene]:
    return service.world_scenes()


@pytest.fixture(scope="session")
def grounding_model_dir(tmp_path_factory: pytest.TempPathFactory, scenes: list[service.Scene]) -> Path:
    return service.train_grounding_model(tmp_path_factory.mktemp("grounding-model"), scenes)


@pytest.fixture(scope="session")
def registered_model(local_stack, grounding_model_dir: Path) -> str:
    """The grounding model logged and registered in the stack's MLflow; its ``models:/`` URI."""
    import mlflow

    from pipelines import registry

    uri = local_stack.config.mlflow_uri
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            experiment = mlflow.MlflowClient(uri).create_experiment(f"serve-tests-{secrets.token_hex(4)}")
            with mlflow.start_run(experiment_id=experiment):
                version = registry.log_and_register(grounding_model_dir, registered_name=REGISTERED_NAME)
        finally:
            mlflow.set_tracking_uri(previous)
    return f"models:/{REGISTERED_NAME}/{version}"


@pytest.fixture(scope="session")
def deployed_ref(registered_model: str) -> str:
    """What the service is deployed with: ``latest``, which the builder resolves to the version."""
    return registered_model.rpartition("/")[0] + "/latest"


@pytest.fixture(scope="package")
def meerkat_service(local_stack, deployed_ref: str) -> Iterator[service.Service]:
    deployed = service.deploy(local_stack, deployed_ref, processes.free_port(), secrets.token_hex(16))
    try:
        yield deployed
    finally:
        service.meerkat_serve(local_stack.config.dir, deployed.env, "down")
