"""The one place that turns a trained-model reference into a loaded :class:`MeerkatModel`.

Training writes a model directory (``config.json`` + ``trainable.pt`` + ``tokenizer/``, see
:meth:`meerkat_core.model.MeerkatModel.save_pretrained`): the base model is referenced by name and
revision (or seed), never copied. :func:`log_and_register` stores that directory in MLflow as a
pyfunc model and registers it; evaluation and Serve then load any of these with one call,
:func:`load`:

* ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` — the MLflow Model Registry;
* ``runs:/<run_id>/model`` — a logged model;
* ``s3://bucket/.../checkpoint_xxx`` or a local directory — a Ray Train checkpoint or model dir.

:func:`parse_model_ref` is the one reader of these references (which kind, and a registered
model's name, version or alias); :func:`fetch_tokenizer` fetches a reference's tokenizer alone.

The registered model is portable: ``mlflow.pyfunc.load_model("models:/...")`` works in a fresh
virtualenv built from the model's own ``requirements.txt``. Decisions:

* the code travels with the model: the pyfunc is MLflow's models-from-code
  (:mod:`pipelines.pyfunc_model`, which imports only MLflow and ``meerkat_core``) and
  ``meerkat_core`` is its code path. Nothing names this project's own (unpublished) package;
* requirements are pinned to the versions installed where the model is logged: ``mlflow-skinny``
  (enough to load and call a pyfunc), ``pandas`` (``mlflow.pyfunc`` imports it, ``mlflow-skinny``
  does not install it) and what ``meerkat_core`` imports (:data:`CORE_REQUIREMENTS`); torch without
  its local build label (``2.13.0+cpu`` -> ``torch==2.13.0``), so that a GPU machine takes its
  CUDA build of the same release;
* a signature (base64 ``image``, ``audio``, ``instruction`` -> text; param ``max_new_tokens``) and
  an input example (a generated JPEG and FLAC). MLflow would check the example by loading the
  model and predicting at log time, which for the paper preset means the 7B base on the job's
  driver; :func:`log_and_register` turns that check off (the fresh-virtualenv test of
  ``tests/pipelines/test_registry.py`` does it for real).

This module is the only bridge between ``serve`` and ``pipelines``.
"""

from __future__ import annotations

import base64
import importlib.metadata
import io
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import mlflow
import mlflow.pyfunc
import numpy as np
import pyarrow.fs
from packaging.version import Version

import meerkat_core
from meerkat_core import checkpoint, generation
from meerkat_core.builders import load_model
from meerkat_core.model import MeerkatModel
from pipelines import storage

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)
MODEL_FILES = (checkpoint.CONFIG_FILE, checkpoint.TRAINABLE_FILE)
# The models-from-code file, by path: importing it would run its ``mlflow.models.set_model`` in
# every process that merely loads models (evaluation actors, Serve replicas).
PYFUNC_MODEL_FILE = Path(__file__).with_name("pyfunc_model.py")
PYFUNC_ARTIFACT = "meerkat"
"""Name of the model directory among the logged model's artifacts (``pyfunc_model.ARTIFACT``)."""
CORE_REQUIREMENTS = (
    "torch",
    "transformers",
    "tokenizers",
    "peft",
    "pot",
    "numpy",
    "pillow",
    "soundfile",
    "scipy",
    "pyyaml",
)
"""Distributions ``meerkat_core`` needs to load and run a model (pinned at their installed versions)."""
LOADER_REQUIREMENTS = ("mlflow-skinny", "pandas")
"""What ``mlflow.pyfunc.load_model`` and ``predict`` need beside the core."""
EXAMPLE_INSTRUCTION = "Which object in the image is making the sound?"
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:")
"""Reference prefixes that MLflow resolves (a registered model, a run's model, an artifact URI)."""

RefKind = Literal["registry", "run", "mlflow-artifacts", "s3", "local"]


@dataclass(frozen=True)
class ModelRef:
    """A model reference, parsed by :func:`parse_model_ref`."""

    ref: str
    """The reference as given."""
    kind: RefKind
    """``registry`` (``models:/``), ``run`` (``runs:/``), ``mlflow-artifacts``, ``s3`` or ``local``."""
    body: str
    """The reference after its scheme, without leading or trailing ``/`` (a local path: as given)."""
    name: str | None = None
    """A registered model's name."""
    version: str | None = None
    """A registered model's version: a number or ``latest`` (None with an alias)."""
    alias: str | None = None
    """A registered model's alias (``models:/<name>@<alias>``)."""

    @property
    def in_mlflow(self) -> bool:
        """Whether MLflow resolves the reference (``models:/``, ``runs:/``, ``mlflow-artifacts:``)."""
        return self.kind in ("registry", "run", "mlflow-artifacts")


def parse_model_ref(ref: str) -> ModelRef:
    """The kind of ``ref`` and, for ``models:/<name>/<version>`` or ``models:/<name>@<alias>``, its
    name and version or alias. Never raises: a reference it cannot read is left to whatever opens it.
    """
    if ref.startswith("models:/"):
        body = ref[len("models:/") :].strip("/")
        if "@" in body:
            name, alias = body.split("@", 1)
            return ModelRef(ref, "registry", body, name=name, alias=alias)
        name, _, version = body.rpartition("/")
        if not name:  # ``models:/<name>``: no version
            return ModelRef(ref, "registry", body, name=body)
        return ModelRef(ref, "registry", body, name=name, version=version)
    for scheme, kind in (("runs:/", "run"), ("mlflow-artifacts:", "mlflow-artifacts"), ("s3://", "s3")):
        if ref.startswith(scheme):
            return ModelRef(ref, kind, ref[len(scheme) :].strip("/"))
    return ModelRef(ref, "local", ref)


def pip_requirements() -> list[str]:
    """``name==version`` of :data:`LOADER_REQUIREMENTS` and :data:`CORE_REQUIREMENTS` as installed
    here, without local build labels."""
    out = []
    for name in (*LOADER_REQUIREMENTS, *CORE_REQUIREMENTS):
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError as exc:
            raise RuntimeError(f"{name} is not installed: cannot pin the model's requirements") from exc
        out.append(f"{name}=={Version(version).public}")
    return out


def input_example() -> pd.DataFrame:
    """One request: a 64x64 JPEG with a red square, one second of a 440 Hz tone as FLAC (both
    base64), and an instruction."""
    import pandas as pd
    import soundfile as sf
    from PIL import Image

    img = Image.new("RGB", (64, 64), (30, 90, 160))
    img.paste((220, 40, 40), (16, 16, 40, 40))
    jpg = io.BytesIO()
    img.save(jpg, format="JPEG")
    rate = 16_000
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)
    flac = io.BytesIO()
    sf.write(flac, tone, rate, format="FLAC")
    return pd.DataFrame(
        {
            "image": [base64.b64encode(jpg.getvalue()).decode()],
            "audio": [base64.b64encode(flac.getvalue()).decode()],
            "instruction": [EXAMPLE_INSTRUCTION],
        }
    )


def signature() -> mlflow.models.ModelSignature:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema(
            [ColSpec("string", "image"), ColSpec("string", "audio"), ColSpec("string", "instruction")]
        ),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", generation.DEFAULT_MAX_NEW_TOKENS)]),
    )


def check_model_dir(model_dir: str | Path) -> Path:
    """``model_dir`` if it holds only ``config.json``, the trainable weights and ``tokenizer/``
    (never base weights); ValueError naming what else it holds or what it lacks."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ValueError(f"model directory {model_dir} does not exist")
    allowed = {*MODEL_FILES, checkpoint.TOKENIZER_DIR}
    extra = sorted(p.name for p in model_dir.iterdir() if p.name not in allowed)
    missing = sorted(name for name in allowed if not (model_dir / name).exists())
    if extra or missing:
        raise ValueError(
            f"{model_dir} is not a model directory to register (config.json, trainable.pt, tokenizer/ "
            f"only: base weights are named by repository and revision, never copied): "
            f"unexpected {extra}, missing {missing}"
        )
    return model_dir


def _warn_unpinned_base(model_dir: Path) -> None:
    """Warn when the base weights a pretrained model names are a local path or have no revision."""
    spec = checkpoint.read_model_spec(model_dir)
    if not spec.pretrained:
        return
    model = spec.config
    named = [
        (f"{part}.name_or_path", getattr(model, part).name_or_path, getattr(model, part).revision)
        for part in ("image", "audio", "llm")
    ]
    named.append(("tokenizer", model.tokenizer, model.tokenizer_revision))
    for field, name, revision in named:
        if name and (Path(name).is_absolute() or name.startswith(".")):
            logger.warning(
                "%s is a local path (%s): the registered model loads only where it exists", field, name
            )
        elif name and not revision:
            logger.warning("%s (%s) has no pinned revision: the hub's default branch may move", field, name)


def find_model_dir(root: str | Path) -> Path:
    """The model directory or training checkpoint under ``root`` (itself first): see
    :func:`meerkat_core.checkpoint.find_model_dir`."""
    return checkpoint.find_model_dir(root)


class _PyfuncWithoutExampleCheck:
    """A flavor for ``mlflow.models.Model.log``: pyfunc's own ``save_model``, with Model.log's
    load-and-predict check of the input example turned off (``validate_serving_input``, which
    ``mlflow.pyfunc.log_model`` cannot pass)."""

    @staticmethod
    def save_model(path: str, mlflow_model: Any, validate_serving_input: bool = False, **kwargs: Any) -> None:
        mlflow.pyfunc.save_model(path, mlflow_model=mlflow_model, **kwargs)


def log_and_register(
    model_dir: str | Path, *, registered_name: str | None, artifact_path: str = "model"
) -> str | None:
    """Log ``model_dir`` into the active MLflow run as a portable pyfunc model; register it when named.

    Returns the registered version (or None when not registered).
    """
    model_dir = check_model_dir(model_dir)
    _warn_unpinned_base(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "meerkat_core"
        shutil.copytree(
            Path(meerkat_core.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        info = mlflow.models.Model.log(
            artifact_path=None,
            name=artifact_path,
            flavor=_PyfuncWithoutExampleCheck,
            flavor_name="mlflow.pyfunc",
            python_model=str(PYFUNC_MODEL_FILE),
            artifacts={PYFUNC_ARTIFACT: str(model_dir)},
            code_paths=[str(code)],
            pip_requirements=pip_requirements(),
            signature=signature(),
            input_example=input_example(),
            registered_model_name=registered_name,
            validate_serving_input=False,
        )
    return str(info.registered_model_version) if registered_name else None


def resolve(ref: str, *, cache_dir: str | None = None) -> Path:
    """A local model directory for any supported reference (downloads MLflow/S3 artifacts)."""
    parsed = parse_model_ref(ref)
    if parsed.in_mlflow:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=ref, dst_path=cache_dir or tempfile.mkdtemp()
        )
        return find_model_dir(local)
    if parsed.kind == "s3":
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
    parsed = parse_model_ref(ref)
    if parsed.kind != "registry" or (parsed.alias is None and parsed.version != "latest"):
        return ref
    name = parsed.name
    client = mlflow.MlflowClient()
    if parsed.alias is not None:
        return f"models:/{name}/{client.get_model_version_by_alias(name, parsed.alias).version}"
    found = client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"], max_results=1)
    if not found:
        raise LookupError(f"registered model {name!r} has no versions")
    return f"models:/{name}/{found[0].version}"


def training_run_id(ref: str) -> str | None:
    """The MLflow run a registered model version was logged from (its training run), or None for a
    reference outside the Model Registry; ``latest`` and aliases resolve to their version first."""
    if parse_model_ref(ref).kind != "registry":
        return None
    parsed = parse_model_ref(resolve_version(ref))
    return mlflow.MlflowClient().get_model_version(parsed.name, parsed.version).run_id


def fetch_tokenizer(model_ref: str, dst: str | Path) -> Path:
    """The tokenizer directory of ``model_ref`` alone, copied under ``dst`` when it is remote.

    A registered model or run (``models:/``, ``runs:/``, ``mlflow-artifacts:``) is a pyfunc model
    whose ``MLmodel`` file names where its model directory lies (the :data:`PYFUNC_ARTIFACT`
    artifact): that file and ``<directory>/tokenizer`` are downloaded, not the weights. An S3
    checkpoint: the objects below the model directory's ``tokenizer/`` only (the model directory is
    the shallowest folder holding ``config.json`` and ``tokenizer/``). A local directory is read in
    place.
    """
    import yaml

    dst = Path(dst)
    parsed = parse_model_ref(model_ref)
    if parsed.in_mlflow:
        base = model_ref.rstrip("/")
        mlmodel = mlflow.artifacts.download_artifacts(artifact_uri=f"{base}/MLmodel", dst_path=str(dst))
        spec = yaml.safe_load(Path(mlmodel).read_text(encoding="utf-8")) or {}
        try:
            sub = spec["flavors"]["python_function"]["artifacts"][PYFUNC_ARTIFACT]["path"]
        except (KeyError, TypeError):
            raise ValueError(
                f"{model_ref} is not a Meerkat pyfunc model: its MLmodel has no "
                f"python_function artifact {PYFUNC_ARTIFACT!r}"
            ) from None
        uri = f"{base}/{sub.strip('/')}/{checkpoint.TOKENIZER_DIR}"
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst / "tokenizer_dl")))
    if parsed.kind == "s3":
        root = model_ref.rstrip("/")
        keys = [uri[len(root) + 1 :] for uri in storage.list_prefix(root)]
        homes = set()  # folders (relative, "" or ending in "/") holding tokenizer/ and config.json
        for key in keys:
            parts = key.split("/")
            for i, part in enumerate(parts[:-1]):
                home = "".join(f"{p}/" for p in parts[:i])
                if part == checkpoint.TOKENIZER_DIR and f"{home}{checkpoint.CONFIG_FILE}" in keys:
                    homes.add(home)
        if not homes:
            raise FileNotFoundError(
                f"no model directory with {checkpoint.CONFIG_FILE} and {checkpoint.TOKENIZER_DIR}/ under {model_ref}"
            )
        prefix = min(homes, key=lambda h: (h.count("/"), h)) + f"{checkpoint.TOKENIZER_DIR}/"
        out = dst / checkpoint.TOKENIZER_DIR
        for key in keys:
            if key.startswith(prefix):
                target = out / key[len(prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(storage.read_bytes(f"{root}/{key}"))
        return out
    return find_model_dir(model_ref) / checkpoint.TOKENIZER_DIR
