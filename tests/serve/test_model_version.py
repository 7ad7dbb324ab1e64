"""pipelines.registry.resolve_version: a moving reference becomes the version it names now (no Ray)."""

from __future__ import annotations

import mlflow
import pytest

from pipelines import registry


def test_latest_and_alias_resolve_to_a_fixed_version(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("m")
    for i in range(11):  # version 11 sorts after 9 as a number, not as text
        client.create_model_version("m", source=str(tmp_path / f"v{i}"))
    client.set_registered_model_alias("m", "prod", "2")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_REGISTRY_URI", uri)
        assert registry.resolve_version("models:/m/latest") == "models:/m/11"
        assert registry.resolve_version("models:/m@prod") == "models:/m/2"
        assert registry.resolve_version("models:/m/4") == "models:/m/4"
        client.create_registered_model("empty")
        with pytest.raises(LookupError, match="no versions"):
            registry.resolve_version("models:/empty/latest")
        with pytest.raises(mlflow.exceptions.MlflowException):
            registry.resolve_version("models:/m@nope")
    for ref in ("runs:/abc/model", "s3://b/k", "/tmp/model"):
        assert registry.resolve_version(ref) == ref
