"""serve.deploy's config, without a cluster: overrides of serve/config.yaml."""

from __future__ import annotations

from ray.serve.schema import ServeDeploySchema

from serve import deploy


def test_deploy_config_overrides():
    config = deploy.deploy_config(
        model="models:/m@prod",
        port=18000,
        max_batch_size=1,
        batch_wait_timeout_s=0.0,
        api_token_sha256="ab" * 32,
    )
    (application,) = config["applications"]
    assert (
        application["args"]["model"] == "models:/m@prod"
        and application["args"]["api_token_sha256"] == "ab" * 32
    )
    assert config["http_options"]["port"] == 18000 and deploy.base_url(config) == "http://127.0.0.1:18000"
    (model,) = [d for d in application["deployments"] if d["name"] == "ModelReplica"]
    assert model["user_config"] == {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}
    ServeDeploySchema.model_validate(config)
