"""The one place that turns a trained-model reference into a loaded :class:`MeerkatModel`.

Training writes a model directory (``config.json`` + ``trainable.pt`` + ``tokenizer/``, see
:meth:`meerkat_core.model.MeerkatModel.save_pretrained`): the base model is referenced by name or
seed, never copied. :func:`log_and_register` stores that directory in MLflow as a pyfunc model and
registers it; evaluation and Serve then load any of these with one call, :func:`load`:

* ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` — the MLflow Model Registry;
* ``runs:/<run_id>/model`` — a logged model;
* ``s3://bucket/.../checkpoint_xxx`` or a local directory — a Ray Train checkpoint or model dir.

This module is the only bridge between ``serve`` and ``pipelines`` (DESIGN.md).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pyarrow.fs

from meerkat_core.model import MeerkatModel, load_model
from pipelines import storage

logger = logging.getLogger(__name__)
MODEL_FILES = ("config.json", "trainable.pt")


class MeerkatPyfunc(mlflow.pyfunc.PythonModel):
    """Generic MLflow entry: ``predict`` takes rows with base64 ``image``/``audio`` and ``instruction``."""

    def load_context(self, context: Any) -> None:
        self.model = load_model(context.artifacts["meerkat"])

    # Untyped on purpose: MLflow reads predict's type hints as an input schema and rejects ``Any``.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        import base64

        from meerkat_core import batching

        prep = batching.SamplePreprocessor(self.model.config, self.model.tokenizer)
        records = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        rows = [
            prep(
                base64.b64decode(r["image"]),
                base64.b64decode(r["audio"]),
                {"instruction": r["instruction"]},
                with_answer=False,
            )
            for r in records
        ]
        batch = batching.collate(rows, self.model.tokenizer.pad_token_id, side="left")
        return self.model.generate(batch, max_new_tokens=int((params or {}).get("max_new_tokens", 48)))


def find_model_dir(root: str | Path) -> Path:
    """The directory under ``root`` (itself included) that holds ``config.json`` and ``trainable.pt``."""
    root = Path(root)
    for candidate in [root, *sorted(p.parent for p in root.rglob("trainable.pt"))]:
        if all((candidate / f).exists() for f in MODEL_FILES):
            return candidate
    raise FileNotFoundError(f"no Meerkat model (config.json + trainable.pt) under {root}")


def log_and_register(
    model_dir: str | Path, *, registered_name: str | None, artifact_path: str = "model"
) -> str | None:
    """Log ``model_dir`` into the active MLflow run as a pyfunc model; register it when named.

    Returns the registered version (or None when not registered).
    """
    info = mlflow.pyfunc.log_model(
        name=artifact_path,
        python_model=MeerkatPyfunc(),
        artifacts={"meerkat": str(model_dir)},
        pip_requirements=["meerkat-ray"],  # the project itself; no dependency inference (slow, offline)
        registered_model_name=registered_name,
    )
    return str(info.registered_model_version) if registered_name else None


def resolve(ref: str, *, cache_dir: str | None = None) -> Path:
    """A local model directory for any supported reference (downloads MLflow/S3 artifacts)."""
    if ref.startswith(("models:/", "runs:/", "mlflow-artifacts:")):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=ref, dst_path=cache_dir or tempfile.mkdtemp()
        )
        return find_model_dir(local)
    if ref.startswith("s3://"):
        fs, path = storage.pyarrow_fs(ref)
        local = Path(cache_dir or tempfile.mkdtemp())
        pyarrow.fs.copy_files(
            path, str(local), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem()
        )
        return find_model_dir(local)
    return find_model_dir(ref)


def load(ref: str, *, device: str = "cpu") -> MeerkatModel:
    """Load a trained Meerkat model from a registry name, run, S3 checkpoint or directory."""
    directory = resolve(ref)
    logger.info("loading the Meerkat model of %s from %s", ref, directory)
    return load_model(directory, device=device)


def resolve_version(ref: str) -> str:
    """``models:/<name>/latest`` or ``models:/<name>@<alias>`` as the version it points to now,
    ``models:/<name>/<n>``; any other reference unchanged.

    Serve resolves the reference once at deploy, so that every replica (and every restart) loads
    the same version, whatever ``latest`` or the alias points to later. Raises
    ``mlflow.exceptions.MlflowException`` for an unknown name or alias, LookupError for a name
    without versions.
    """
    if not ref.startswith("models:/"):
        return ref
    body = ref[len("models:/") :].strip("/")
    client = mlflow.MlflowClient()
    if "@" in body:
        name, alias = body.split("@", 1)
        return f"models:/{name}/{client.get_model_version_by_alias(name, alias).version}"
    name, _, version = body.rpartition("/")
    if version != "latest":
        return ref
    found = client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"], max_results=1)
    if not found:
        raise LookupError(f"registered model {name!r} has no versions")
    return f"models:/{name}/{found[0].version}"
