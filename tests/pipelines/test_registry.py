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

from meerkat_core.config import TINY
from meerkat_core.model import build_model
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


def _batch(model, example) -> dict:
    import base64

    from meerkat_core.batching import SamplePreprocessor, collate

    prep = SamplePreprocessor(model.config, model.tokenizer)
    rows = [
        prep(
            base64.b64decode(r["image"]),
            base64.b64decode(r["audio"]),
            {"instruction": r["instruction"]},
            with_answer=False,
        )
        for r in example.to_dict("records")
    ]
    return collate(rows, model.tokenizer.pad_token_id, side="left")


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
    (copied / "trainable.pt").unlink()
    with pytest.raises(ValueError, match=r"missing \['trainable.pt'\]"):
        registry.check_model_dir(copied)


def test_the_models_from_code_file_is_the_one_registry_logs():
    from pipelines import pyfunc_model

    assert registry.PYFUNC_MODEL_FILE == Path(pyfunc_model.__file__)
    assert registry.PYFUNC_ARTIFACT == pyfunc_model.ARTIFACT


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
    assert loaded.generate(_batch(loaded, example), max_new_tokens=8) == expected
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
