"""The whole system on one machine: ``make demo``.

    python -m infra.demo [--dir .local-stack] [--train-steps 900] [--scenes 400] [--serve-port 8000]

1. starts the embedded local stack (Ray head, MLflow, S3-compatible server on loopback), or reuses it;
2. ``ray job submit``: builds the procedural AVFIT into the S3 server;
3. ``ray job submit``: trains the tiny model with 2 Ray Train workers, tracked in MLflow, and
   registers it in the MLflow Model Registry;
4. ``ray job submit``: evaluates the registered model on held-out scenes (MeerkatBench against the
   trivial baselines, logged to MLflow with its artefacts);
5. deploys the Ray Serve application from the registered model (HTTP on 127.0.0.1 only, no token);
6. sends one request to each task endpoint and prints the answers next to the truth, then the
   evaluation table and the URLs (Ray dashboard, MLflow UI, the demo page).

Every stage prints what it does and how long it took; a second run reuses the stack, the shards
(same fingerprint), the registered model (``--retrain`` to train again) and its evaluation table
(cached in the stack's directory). ``make demo-down`` stops the stack, Serve included.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from infra.local import stack
from meerkat_core import grounding

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "meerkat-tiny"


def _stage(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"--- done in {time.perf_counter() - t0:.0f}s", flush=True)


def submit(env: dict[str, str], *args: str) -> str:
    """``ray job submit -- python -m <args>`` with live output; raises when the job fails."""
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--", "python", "-m", *args]
    print("$ ray job submit -- python -m " + " ".join(args), flush=True)
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        print("  " + line, end="", flush=True)
    if proc.wait() != 0:
        raise SystemExit(f"ray job failed: python -m {' '.join(args)}")
    return "".join(lines)


def registered_version(tracking_uri: str, name: str) -> str | None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    versions = client.search_model_versions(f"name = '{name}'")
    return max((v.version for v in versions), key=int) if versions else None


def evaluate(env: dict[str, str], model_ref: str, data_uri: str, cache: Path, max_samples: int) -> str:
    """``ray job submit -- python -m pipelines.evaluate``; the results table (cached per model version)."""
    if cache.exists():
        print(f"{model_ref} was evaluated already ({cache}); delete it to evaluate again")
        return cache.read_text()
    out = submit(
        env,
        "pipelines.evaluate",
        "--model",
        model_ref,
        "--data",
        data_uri,
        "--max-samples",
        str(max_samples),
        "--run-name",
        f"demo-eval-{model_ref.rsplit('/', 1)[-1]}",
    )
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("# Model against trivial baselines"))
    last = next(i for i in range(first, len(lines)) if lines[i].startswith('{"eval_run_id"'))
    table = "\n".join(lines[first:last]).strip()
    cache.write_text(table + "\n")
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Meerkat on Ray, end to end on one machine.")
    parser.add_argument("--dir", default=".local-stack")
    parser.add_argument("--scenes", type=int, default=400, help="training scenes of the procedural world")
    parser.add_argument("--train-steps", type=int, default=900)
    parser.add_argument(
        "--eval-samples", type=int, default=1000, help="held-out samples to evaluate, at most"
    )
    parser.add_argument("--serve-port", type=int, default=int(os.environ.get("MEERKAT_SERVE_PORT", "8000")))
    parser.add_argument("--retrain", action="store_true", help="train again even if a model is registered")
    args = parser.parse_args(argv)
    t_all = time.perf_counter()

    t0 = _stage("1/6 local stack: Ray head, MLflow, S3 server on 127.0.0.1")
    config = stack.up(stack.StackConfig.from_env(args.dir))
    env = {**os.environ, **config.env()}
    _done(t0)

    data_uri = f"s3://{config.bucket}/avfit"
    t0 = _stage(f"2/6 AVFIT: procedural world -> WebDataset shards in {data_uri}")
    submit(
        env,
        "pipelines.build_avfit",
        "--config",
        "pipelines/configs/avfit_demo.yaml",
        f"out_uri={data_uri}",
        f"world.scenes.train={args.scenes}",
    )
    _done(t0)

    t0 = _stage("3/6 training: tiny Meerkat, 2 Ray Train workers, MLflow tracking")
    version = registered_version(config.mlflow_uri, MODEL_NAME)
    if version is None or args.retrain:
        out = submit(
            env,
            "pipelines.train",
            "--config",
            "pipelines/configs/tiny.yaml",
            f"data.uri={data_uri}/train",
            f"storage_uri=s3://{config.bucket}/runs",
            f"optim.max_steps={args.train_steps}",
            f"name=meerkat-tiny-{int(time.time())}",
            f"mlflow.register_as={MODEL_NAME}",
        )
        result = json.loads(
            next(line for line in out.splitlines()[::-1] if '"mlflow_run_id"' in line).strip()
        )
        version = result["registered_version"]
    else:
        print(f"model {MODEL_NAME} version {version} is registered already (--retrain to train again)")
    model_ref = f"models:/{MODEL_NAME}/{version}"
    _done(t0)

    t0 = _stage(f"4/6 MeerkatBench on held-out scenes: {model_ref} against the trivial baselines")
    cache = Path(args.dir) / f"demo-eval-{MODEL_NAME}-v{version}.md"
    table = evaluate(env, model_ref, f"{data_uri}/test", cache, args.eval_samples)
    _done(t0)

    t0 = _stage(f"5/6 Ray Serve: deploying {model_ref}")
    base_url = deploy(config.env(), model_ref, args.serve_port)
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
    print(f"Stop everything with: make demo-down (python -m infra.local.stack down --dir {args.dir})")


if __name__ == "__main__":
    from infra.demo import main as _main

    _main()
