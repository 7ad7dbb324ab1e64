"""The application builder and its deploy config, without starting Ray."""

from __future__ import annotations

import pytest
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from serve import app as serve_app
from serve import deploy
from serve.ingress import MeerkatAPI
from serve.replica import BatchingConfig, ModelReplica
from serve.settings import MODEL_REF_ENV, AppArgs


def test_config_yaml_is_a_valid_serve_deploy_config_for_the_builder():
    config = ServeDeploySchema.model_validate(deploy.deploy_config())
    assert config.http_options.host == "127.0.0.1"
    (application,) = config.applications
    assert application.import_path == "serve.app:app"
    args = AppArgs.model_validate(application.args)
    assert args.model.startswith("models:/")
    deployments = {d.name: d for d in application.deployments}
    assert set(deployments) == {ModelReplica.name, MeerkatAPI.name} == {deploy.MODEL_DEPLOYMENT, "MeerkatAPI"}
    batching = BatchingConfig.model_validate(deployments["ModelReplica"].user_config)
    assert deployments["ModelReplica"].max_ongoing_requests > batching.max_batch_size
    for deployment in deployments.values():
        # overload is a 503 at once; admitted requests outlive a shutdown
        assert deployment.max_queued_requests > 0
        assert deployment.graceful_shutdown_timeout_s >= args.request_timeout_s


def test_builder_binds_the_model_under_the_ingress(monkeypatch):
    monkeypatch.delenv(MODEL_REF_ENV, raising=False)
    with pytest.raises(ValueError, match="no model reference"):
        serve_app.app({})
    monkeypatch.setenv(MODEL_REF_ENV, "models:/meerkat-tiny/3")
    assert isinstance(serve_app.app({"max_audio_seconds": "30"}), Application)
    assert isinstance(serve_app.app(AppArgs(model="/tmp/model")), Application)
    with pytest.raises(ValueError):
        serve_app.app({"model": "x", "no_such_arg": 1})


@pytest.mark.parametrize(
    ("ref", "name"),
    [
        ("models:/meerkat-tiny/3", "meerkat-tiny/3"),
        ("models:/meerkat-tiny@prod", "meerkat-tiny@prod"),
        ("runs:/abc123/model", "abc123/model"),
        ("s3://bucket/runs/checkpoint_000004/", "checkpoint_000004"),
        ("/tmp/models/tiny", "tiny"),
    ],
)
def test_served_name(ref, name):
    assert serve_app.served_name(ref) == name
