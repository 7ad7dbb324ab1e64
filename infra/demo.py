"""The whole system on one machine: ``make demo``.

    python -m infra.demo [--config FILE] [dir=.local-stack] [train_steps=900] [scenes=400] [retrain=true]

1. starts the embedded local stack (Ray head, MLflow, S3-compatible server on loopback), or reuses it;
2. ``ray job submit``: builds the procedural AVFIT into the S3 server;
3. ``ray job submit``: trains the tiny model with 2 Ray Train workers, tracked in MLflow, and
   registers it in the MLflow Model Registry;
4. ``ray job submit``: evaluates the registered model on held-out scenes (MeerkatBench against the
   trivial baselines, logged to MLflow with its artefacts);
5. deploys the Ray Serve application from the registered model (HTTP on 127.0.0.1 only, no token);
6. sends one request to each task endpoint and prints the answers next to the truth, then the
   evaluation table and the URLs (Ray dashboard, MLflow UI, the demo page).

The demo is :func:`run` of a :class:`DemoConfig`. It submits the jobs as a user would, with their
command lines, and reads what they produced from MLflow, never from their output: the model
version the training run registered (:func:`trained_version`) and the evaluation run's table of
the model against its baselines (:func:`evaluation_table`).

Every stage prints what it does and how long it took; a second run reuses the stack, the shards
(same fingerprint), the registered model (``retrain=true`` to train again; trained again too when
today's training config builds another model, :func:`registered_model_changes`) and its evaluation (the
demo's evaluation run of that version, found in MLflow). ``make demo-down`` stops the stack, Serve
included.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from infra.local import stack
from meerkat_core import grounding

REPO = Path(__file__).resolve().parents[1]
DEMO_TAG = "meerkat.demo"
"""Tag of the demo's evaluation runs: a second demo reuses the one of its model version."""


@dataclass(frozen=True)
class DemoConfig:
    dir: str = ".local-stack"
    """The local stack's directory (its state and ``stack.env``)."""
    scenes: int = 400
    """Training scenes of the procedural world."""
    train_steps: int = 900
    eval_samples: int = 1000
    """Held-out samples to evaluate, at most."""
    serve_port: int | None = None
    """``None``: ``MEERKAT_SERVE_PORT`` or 8000."""
    retrain: bool = False
    """Train again even if a model is registered."""
    model_name: str = "meerkat-tiny"
    """The registered model the demo trains, evaluates and serves."""
    build_config: str = "pipelines/configs/avfit_demo.yaml"
    train_config: str = "pipelines/configs/tiny.yaml"

    @property
    def port(self) -> int:
        return self.serve_port or int(os.environ.get("MEERKAT_SERVE_PORT", "8000"))


def _stage(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"--- done in {time.perf_counter() - t0:.0f}s", flush=True)


def submit(env: dict[str, str], *args: str) -> None:
    """``ray job submit -- python -m <args>`` with live output; raises when the job fails."""
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--", "python", "-m", *args]
    print("$ ray job submit -- python -m " + " ".join(args), flush=True)
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        print("  " + line, end="", flush=True)
    if proc.wait() != 0:
        raise SystemExit(f"ray job failed: python -m {' '.join(args)}")


def registered_version(tracking_uri: str, name: str) -> str | None:
    """The latest version of the registered model ``name``; None when it has none."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    versions = client.search_model_versions(f"name = '{name}'")
    return max((v.version for v in versions), key=int) if versions else None


def registered_model_changes(tracking_uri: str, name: str, version: str, train_config: str) -> list[str]:
    """What training with ``train_config`` now would change in the model that version ``version`` of
    ``name`` was trained as (``pipelines.train.model_changes``: ``model.<field>: <then> -> <now>``).

    A registered model of an older checkout may not load into today's code (a new trainable tensor),
    so the demo trains again rather than evaluate and serve it. ``[]`` when the same, or when the
    version's training run left no ``config/resolved.yaml`` to compare with.
    """
    import mlflow
    import yaml

    from pipelines.config import load_config, resolve_model
    from pipelines.train import TrainJobConfig, model_changes

    client = mlflow.MlflowClient(tracking_uri)
    run_id = client.get_model_version(name, version).run_id
    try:
        with tempfile.TemporaryDirectory() as tmp:
            text = Path(client.download_artifacts(run_id, "config/resolved.yaml", tmp)).read_text()
    except (mlflow.exceptions.MlflowException, OSError):
        return []
    now = resolve_model(load_config(TrainJobConfig, train_config).model)
    return model_changes(yaml.safe_load(text)["model"], now)


def _runs(client, filter_string: str) -> list:
    """Runs of every experiment matching ``filter_string``, newest first."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string, order_by=["attributes.start_time DESC"])


def trained_version(tracking_uri: str, run_name: str, model_name: str) -> str:
    """The version of ``model_name`` that the training run ``run_name`` registered (the training
    job tags its MLflow run ``meerkat.run_name``; a version records the run it came from)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    run_ids = {r.info.run_id for r in _runs(client, f"tags.`meerkat.run_name` = '{run_name}'")}
    if not run_ids:
        raise LookupError(f"no MLflow run of the training run {run_name!r}")
    versions = [
        v.version for v in client.search_model_versions(f"name = '{model_name}'") if v.run_id in run_ids
    ]
    if not versions:
        raise LookupError(f"training run {run_name!r} registered no version of {model_name!r}")
    return max(versions, key=int)


def evaluation_table(tracking_uri: str, model_ref: str) -> str | None:
    """The model-against-baselines table of the latest finished demo evaluation of ``model_ref``
    (its ``baselines.md`` artefact, see ``pipelines.evaluate``); None when there is none."""
    import mlflow

    from pipelines.evaluate import BASELINES_ARTIFACT

    client = mlflow.MlflowClient(tracking_uri)
    runs = _runs(
        client,
        "tags.`meerkat.kind` = 'evaluation' and attributes.status = 'FINISHED' "
        f"and tags.`meerkat.model_ref` = '{model_ref}' and tags.`{DEMO_TAG}` = 'true'",
    )
    for found in runs:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = client.download_artifacts(found.info.run_id, BASELINES_ARTIFACT, tmp)
            except (mlflow.exceptions.MlflowException, OSError):
                continue  # an evaluation run without the table
            return Path(path).read_text().strip()
    return None


def evaluate(env: dict[str, str], tracking_uri: str, model_ref: str, data_uri: str, max_samples: int) -> str:
    """``ray job submit -- python -m pipelines.evaluate`` unless the demo evaluated ``model_ref``
    already; the evaluation table, read from MLflow."""
    from pipelines import registry

    table = evaluation_table(tracking_uri, model_ref)
    if table is not None:
        print(f"{model_ref} was evaluated already (MLflow, tag {DEMO_TAG}); its table is reused")
        return table
    submit(
        env,
        "pipelines.evaluate",
        f"model={model_ref}",
        f"data={data_uri}",
        f"max_samples={max_samples}",
        f"run_name=demo-eval-{registry.parse_model_ref(model_ref).version}",
        f"tags={{{DEMO_TAG}: 'true'}}",
    )
    table = evaluation_table(tracking_uri, model_ref)
    if table is None:
        raise SystemExit(f"the evaluation of {model_ref} left no table in MLflow ({tracking_uri})")
    return table


def deploy(env: dict[str, str], model_ref: str, port: int) -> str:
    """Deploy the Serve application on the stack from ``model_ref``; its base URL.

    Without a token: the local stack's HTTP proxy listens on 127.0.0.1 only (``serve/config.yaml``).
    """
    from serve import deploy as serve_deploy

    os.environ.update(env)
    os.environ.pop(serve_deploy.auth.TOKEN_ENV, None)
    code = serve_deploy.main(
        ["up", "--address", env["RAY_ADDRESS"], "--model", model_ref, "--port", str(port)]
    )
    if code != 0:
        raise SystemExit("the Serve application did not come up (see above)")
    return f"http://127.0.0.1:{port}"


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def ask_every_task(base_url: str) -> None:
    """One request per task endpoint, with a held-out scene of the procedural world; prints answer and truth."""
    from pipelines.avfit.world import WORLD_PRESETS, iter_samples

    samples = list(iter_samples(WORLD_PRESETS["easy"], "test", 1, 12345))
    by_task = {s["json"]["task"]: s for s in samples}
    scene = by_task["arig"]
    meta = scene["json"]
    sounding = next(o for o in meta["objects"] if o["sounds"])
    window = next(e["segment"] for e in meta["sound_events"] if e["class"] == sounding["class"])
    media = {
        "image": base64.b64encode(scene["image"]).decode(),
        "audio": base64.b64encode(scene["audio"]).decode(),
    }
    box = [round(v, 2) for v in sounding["box"]]
    requests = [
        ("ground", {}, grounding.format_box(sounding["box"])),
        ("localize", {"object": sounding["class"]}, grounding.format_segment(window)),
        ("factcheck", {"box": box, "window": window}, "True"),
        ("answer", {"question": "How many objects in the image make a sound?"}, "1"),
        ("caption", {}, by_task["avc"]["json"]["answer"] if "avc" in by_task else "-"),
    ]
    print(f"scene: a {sounding['class']} sounds at {window} s, box {box}")
    for task, params, truth in requests:
        t0 = time.perf_counter()
        reply = _post(f"{base_url}/v1/{task}", {**media, **params})
        parsed = {k: v for k, v in reply["grounding"].items() if v not in (None, False)}
        print(f"POST /v1/{task:<9} {time.perf_counter() - t0:5.2f}s  model: {reply['text']!r}")
        print(f"    {'':<15} truth: {truth!r}  grounding: {json.dumps(parsed)}")


def run(cfg: DemoConfig) -> dict[str, str]:
    """The six stages; returns the model reference served, its evaluation table and the demo's URL."""
    t_all = time.perf_counter()

    t0 = _stage("1/6 local stack: Ray head, MLflow, S3 server on 127.0.0.1")
    config = stack.up(stack.StackConfig.from_env(cfg.dir))
    env = {**os.environ, **config.env()}
    _done(t0)

    data_uri = f"s3://{config.bucket}/avfit"
    t0 = _stage(f"2/6 AVFIT: procedural world -> WebDataset shards in {data_uri}")
    submit(
        env,
        "pipelines.build_avfit",
        "--config",
        cfg.build_config,
        f"out_uri={data_uri}",
        f"world.scenes.train={cfg.scenes}",
    )
    _done(t0)

    t0 = _stage("3/6 training: tiny Meerkat, 2 Ray Train workers, MLflow tracking")
    version = registered_version(config.mlflow_uri, cfg.model_name)
    changed = (
        registered_model_changes(config.mlflow_uri, cfg.model_name, version, cfg.train_config)
        if version is not None and not cfg.retrain
        else []
    )
    if changed:
        print(
            f"model {cfg.model_name} version {version} was trained as another model than "
            f"{cfg.train_config} gives now ({'; '.join(changed)}): training again"
        )
    if version is None or cfg.retrain or changed:
        run_name = f"{cfg.model_name}-{int(time.time())}"
        submit(
            env,
            "pipelines.train",
            "--config",
            cfg.train_config,
            f"data.uri={data_uri}/train",
            f"storage_uri=s3://{config.bucket}/runs",
            f"optim.max_steps={cfg.train_steps}",
            f"name={run_name}",
            f"mlflow.register_as={cfg.model_name}",
        )
        version = trained_version(config.mlflow_uri, run_name, cfg.model_name)
    else:
        print(f"model {cfg.model_name} version {version} is registered already (retrain=true to train again)")
    model_ref = f"models:/{cfg.model_name}/{version}"
    _done(t0)

    t0 = _stage(f"4/6 MeerkatBench on held-out scenes: {model_ref} against the trivial baselines")
    table = evaluate(env, config.mlflow_uri, model_ref, f"{data_uri}/test", cfg.eval_samples)
    _done(t0)

    t0 = _stage(f"5/6 Ray Serve: deploying {model_ref}")
    base_url = deploy(config.env(), model_ref, cfg.port)
    _done(t0)

    t0 = _stage("6/6 one request per task endpoint")
    ask_every_task(base_url)
    _done(t0)

    print(f"\nMeerkatBench, {model_ref} (every task against its trivial baselines):\n{table}")
    print(f"\nDemo finished in {time.perf_counter() - t_all:.0f}s.")
    print(f"Ray dashboard: {config.dashboard_url}")
    print(
        f"MLflow UI:     {config.mlflow_uri}  (experiment 'meerkat': training curves, evaluation artefacts)"
    )
    print(f"Demo page:     {base_url}/   API docs: {base_url}/docs")
    print(f"Stop everything with: make demo-down (python -m infra.local.stack down --dir {cfg.dir})")
    return {"model_ref": model_ref, "table": table, "url": base_url}


def main(argv: list[str] | None = None) -> dict[str, str]:
    """``python -m infra.demo [--config FILE] [a.b.c=value ...]``."""
    from pipelines.config import from_argv

    return run(from_argv(DemoConfig, argv, description="Meerkat on Ray, end to end on one machine."))


if __name__ == "__main__":
    from infra.demo import main as _main

    _main()
