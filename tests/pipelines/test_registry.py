"""The registered model is portable: it loads with ``mlflow.pyfunc.load_model("models:/...")`` in a
fresh virtualenv built from its own requirements (pipelines/registry.py, pipelines/pyfunc_model.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from meerkat_core import checkpoint, generation
from meerkat_core.builders import build_model
from meerkat_core.config import TINY
from pipelines import registry

# Run in the fresh virtualenv, from a directory outside the checkout: prints the answers, where
# meerkat_core came from, and which of the project's other modules got imported.
VENV_SCRIPT = """
import json, sys
import mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
answers = model.predict(model.input_example, params={"max_new_tokens": 8})
import meerkat_core
print(json.dumps({
    "answers": list(answers),
    "meerkat_core": meerkat_core.__file__,
    "imported": sorted(m for m in ("pipelines", "ray", "boto3", "serve") if m in sys.modules),
}))
"""


def _answers(model, example, max_new_tokens: int) -> list[str]:
    """What the model says to the rows of ``example``, through the core's generation path."""
    import base64

    from meerkat_core.batching import SamplePreprocessor

    prep = SamplePreprocessor(model.config, model.tokenizer)
    rows = [
        generation.prompt_row(
            prep, base64.b64decode(r["image"]), base64.b64decode(r["audio"]), r["instruction"]
        )
        for r in example.to_dict("records")
    ]
    return generation.generate_answers(model, rows, max_new_tokens=max_new_tokens)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_model(TINY, pretrained=False, seed=0)
    return model.save_pretrained(tmp_path_factory.mktemp("tiny") / "m", seed=0, pretrained=False)


def test_model_dir_holds_only_config_weights_and_tokenizer(model_dir: Path, tmp_path: Path):
    assert registry.check_model_dir(model_dir) == model_dir
    assert registry.find_model_dir(model_dir.parent) == model_dir
    import shutil

    copied = tmp_path / "m"
    shutil.copytree(model_dir, copied)
    (copied / "model.safetensors").write_bytes(b"base weights")
    with pytest.raises(ValueError, match=r"unexpected \['model.safetensors'\]"):
        registry.check_model_dir(copied)
    (copied / "model.safetensors").unlink()
    (copied / checkpoint.TRAINABLE_FILE).unlink()
    with pytest.raises(ValueError, match=rf"missing \['{checkpoint.TRAINABLE_FILE}'\]"):
        registry.check_model_dir(copied)


def test_the_models_from_code_file_is_the_one_registry_logs():
    from pipelines import pyfunc_model

    assert registry.PYFUNC_MODEL_FILE == Path(pyfunc_model.__file__)
    assert registry.PYFUNC_ARTIFACT == pyfunc_model.ARTIFACT


def test_the_pyfunc_answers_as_the_core_generation_path(model_dir: Path):
    """The pyfunc's ``predict``, in this process without MLflow's loader: the input example's answer
    is the model's own through :mod:`meerkat_core.generation`."""
    from types import SimpleNamespace

    from meerkat_core.builders import load_model
    from pipelines import pyfunc_model

    pyfunc = pyfunc_model.MeerkatPyfunc()
    pyfunc.load_context(SimpleNamespace(artifacts={pyfunc_model.ARTIFACT: str(model_dir)}))
    example = registry.input_example()
    answers = pyfunc.predict(None, example, params={"max_new_tokens": 8})
    assert len(answers) == 1 and isinstance(answers[0], str)
    assert answers == _answers(load_model(model_dir), example, 8)
    with pytest.raises(ValueError, match="missing"):
        pyfunc.predict(None, example.drop(columns=["audio"]))


@pytest.mark.parametrize(
    ("ref", "kind", "body", "name", "version", "alias"),
    [
        ("models:/meerkat-tiny/3", "registry", "meerkat-tiny/3", "meerkat-tiny", "3", None),
        ("models:/meerkat-tiny/latest/", "registry", "meerkat-tiny/latest", "meerkat-tiny", "latest", None),
        ("models:/meerkat-tiny@prod", "registry", "meerkat-tiny@prod", "meerkat-tiny", None, "prod"),
        ("models:/meerkat-tiny", "registry", "meerkat-tiny", "meerkat-tiny", None, None),
        ("runs:/abc123/model", "run", "abc123/model", None, None, None),
        (
            "mlflow-artifacts:/1/abc/artifacts/model",
            "mlflow-artifacts",
            "1/abc/artifacts/model",
            None,
            None,
            None,
        ),
        ("s3://bucket/runs/checkpoint_000004/", "s3", "bucket/runs/checkpoint_000004", None, None, None),
        ("/tmp/models/tiny", "local", "/tmp/models/tiny", None, None, None),
    ],
)
def test_parse_model_ref(ref, kind, body, name, version, alias):
    parsed = registry.parse_model_ref(ref)
    assert (parsed.ref, parsed.kind, parsed.body) == (ref, kind, body)
    assert (parsed.name, parsed.version, parsed.alias) == (name, version, alias)
    assert parsed.in_mlflow == (kind in ("registry", "run", "mlflow-artifacts"))


def test_resolve_version_leaves_fixed_references_alone():
    for ref in ("models:/m/3", "models:/m", "runs:/abc/model", "s3://b/run", "/tmp/m"):
        assert registry.resolve_version(ref) == ref


def test_fetch_tokenizer_downloads_the_tokenizer_not_the_model(model_dir: Path, tmp_path: Path, monkeypatch):
    """A registered pyfunc model (the MLmodel's ``meerkat`` artifact), an S3 training checkpoint and
    a local directory: only the tokenizer's files (and the MLmodel file) arrive."""
    import shutil

    import mlflow
    from transformers import AutoTokenizer

    from pipelines import storage

    expected = AutoTokenizer.from_pretrained(model_dir / checkpoint.TOKENIZER_DIR).get_vocab()
    tokenizer_files = {p.name for p in (model_dir / checkpoint.TOKENIZER_DIR).rglob("*") if p.is_file()}
    assert (
        registry.fetch_tokenizer(str(model_dir), tmp_path / "local") == model_dir / checkpoint.TOKENIZER_DIR
    )

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("fetch", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        version = registry.log_and_register(model_dir, registered_name="fetch-tok")
    got = registry.fetch_tokenizer(f"models:/fetch-tok/{version}", tmp_path / "dl")
    assert AutoTokenizer.from_pretrained(got).get_vocab() == expected
    arrived = {p.name for p in (tmp_path / "dl").rglob("*") if p.is_file()}
    assert arrived == tokenizer_files | {"MLmodel"}, arrived

    # An S3 checkpoint: a Ray Train checkpoint folder holding the model directory.
    bucket = tmp_path / "bucket"
    shutil.copytree(model_dir, bucket / "run" / "checkpoint_000001" / "model")
    (bucket / "run" / "notes").mkdir()
    (bucket / "run" / "notes" / "tokenizer.txt").write_text("not a tokenizer")
    read = []

    def list_prefix(uri):
        return [
            f"s3://b/{p.relative_to(bucket)}"
            for p in sorted((bucket / uri[len("s3://b/") :]).rglob("*"))
            if p.is_file()
        ]

    def read_bytes(uri):
        read.append(uri)
        return (bucket / uri[len("s3://b/") :]).read_bytes()

    monkeypatch.setattr(storage, "list_prefix", list_prefix)
    monkeypatch.setattr(storage, "read_bytes", read_bytes)
    got = registry.fetch_tokenizer("s3://b/run", tmp_path / "s3dl")
    assert AutoTokenizer.from_pretrained(got).get_vocab() == expected
    assert {u.rsplit("/", 1)[-1] for u in read} == tokenizer_files
    assert all("/checkpoint_000001/model/tokenizer/" in u for u in read)


def test_requirements_are_pinned_and_name_no_unpublished_package():
    import importlib.metadata

    reqs = registry.pip_requirements()
    names = [r.split("==")[0] for r in reqs]
    assert names == [*registry.LOADER_REQUIREMENTS, *registry.CORE_REQUIREMENTS]
    assert "meerkat-ray" not in names
    torch_req = next(r for r in reqs if r.startswith("torch=="))
    assert torch_req == "torch==" + importlib.metadata.version("torch").split("+")[0]  # no local label
    for r in reqs:
        assert "+" not in r and r.count("==") == 1, r


@pytest.mark.slow  # minutes: make test-slow, which CI runs after make test
@pytest.mark.integration
def test_registered_model_loads_in_a_fresh_virtualenv(
    model_dir: Path, mlflow_server: str, tmp_path: Path, monkeypatch
):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    name = f"portable-{uuid.uuid4().hex[:6]}"
    mlflow.set_experiment("registry-tests")
    with mlflow.start_run():
        version = registry.log_and_register(model_dir, registered_name=name)
    uri = f"models:/{name}/{version}"

    # In this process: the same pyfunc, on the logged input example.
    here = mlflow.pyfunc.load_model(uri)
    example = here.input_example
    assert list(example.columns) == ["image", "audio", "instruction"]
    expected = list(here.predict(example, params={"max_new_tokens": 8}))
    assert len(expected) == 1 and isinstance(expected[0], str)
    # The logged model: the signature, the model directory without base weights, meerkat_core as code.
    info = mlflow.models.get_model_info(uri)
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["image", "audio", "instruction"]
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "downloaded")))
    assert registry.check_model_dir(registry.find_model_dir(local / "artifacts"))
    assert (local / "code" / "meerkat_core" / "model.py").is_file()
    # evaluation and Serve load the same registered model through registry.load
    loaded = registry.load(uri)
    assert loaded.config == TINY
    assert _answers(loaded, example, 8) == expected
    requirements = Path(mlflow.pyfunc.get_model_dependencies(uri))
    lines = [ln for ln in requirements.read_text().splitlines() if ln.strip()]
    assert lines == registry.pip_requirements(), lines

    # A fresh virtualenv (no system site-packages) from the model's own requirements, with their
    # dependencies. pip's cache and its configured wheel locations (torch==2.13.0 lies on this
    # machine's disk) are reused; --no-compile skips byte-compiling every installed file (most of
    # the install's CPU time), Python compiles what it imports.
    started = time.monotonic()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["MLFLOW_TRACKING_URI"] = mlflow_server
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-compile",
            "--disable-pip-version-check",
            "-r",
            str(requirements),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # a registry that does not answer fails the test instead of hanging CI
    )
    assert install.returncode == 0, install.stderr[-3000:]
    installed = time.monotonic()
    script = tmp_path / "load.py"
    script.write_text(VENV_SCRIPT)
    run = subprocess.run(
        [str(python), str(script), uri], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    print(
        f"fresh venv: install {installed - started:.0f} s, load + predict {time.monotonic() - installed:.0f} s"
    )
    assert out["answers"] == expected
    assert out["imported"] == []
    # meerkat_core came with the model, not from this checkout
    assert "/code/meerkat_core/" in out["meerkat_core"], out["meerkat_core"]
    assert not out["meerkat_core"].startswith(str(Path(registry.__file__).parents[1]))


def test_training_run_id_of_registry_references(mlflow_server, monkeypatch):
    """Registry references (a version, ``latest``, an alias) name their training run (the evaluation
    run's parent); other references have none."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient()
    tag = uuid.uuid4().hex[:6]
    exp = client.create_experiment(f"parent-{tag}")
    first, second = (client.create_run(exp).info.run_id for _ in range(2))
    name = f"parent-{tag}"
    client.create_registered_model(name)
    for run_id in (first, second):
        client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias(name, "champion", "1")
    assert registry.training_run_id(f"models:/{name}/1") == first
    assert registry.training_run_id(f"models:/{name}/latest") == second
    assert registry.training_run_id(f"models:/{name}@champion") == first
    assert registry.training_run_id("s3://b/runs/checkpoint_000001") is None
    assert registry.training_run_id(f"runs:/{first}/model") is None


def test_registering_warns_of_base_weights_that_are_local_or_unpinned(model_dir: Path, tmp_path, caplog):
    import logging
    import shutil

    copied = tmp_path / "m"
    shutil.copytree(model_dir, copied)
    meta = json.loads((copied / checkpoint.CONFIG_FILE).read_text())
    meta["pretrained"] = True
    meta["model"]["llm"].update(name_or_path="/models/llama", revision=None)
    meta["model"]["image"].update(name_or_path="openai/clip-vit-base-patch16", revision=None)
    meta["model"]["audio"].update(name_or_path="laion/clap-htsat-unfused", revision="abc123")
    (copied / checkpoint.CONFIG_FILE).write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger=registry.logger.name):
        registry._warn_unpinned_base(copied)
    text = caplog.text
    assert "llm.name_or_path is a local path (/models/llama)" in text
    assert "image.name_or_path (openai/clip-vit-base-patch16) has no pinned revision" in text
    assert "audio.name_or_path" not in text
