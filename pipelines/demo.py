"""The whole system on one machine: ``make demo``.

    python -m pipelines.demo [--dir .local-stack] [--train-steps 400] [--scenes 400]

1. starts the embedded local stack (Ray head, MLflow, S3-compatible server on loopback), or reuses it;
2. ``ray job submit``: builds the procedural AVFIT into the S3 server;
3. ``ray job submit``: trains the tiny model with 2 Ray Train workers, tracked in MLflow, and
   registers it in the MLflow Model Registry;
4. loads the registered model in this process and asks it one grounding question.

Every stage prints what it does and how long it took; a second run reuses the stack, the shards
(same fingerprint) and retrains only if asked (``--retrain``). ``make demo-down`` stops the stack.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from infra.local import stack

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


def ask(model_ref: str, env: dict[str, str]) -> None:
    """Load the registered model and answer one question of each grounding kind."""
    os.environ.update(env)
    from meerkat_core import batching, grounding
    from pipelines import registry
    from pipelines.avfit.world import WORLD_PRESETS, iter_samples

    model = registry.load(model_ref)
    prep = batching.SamplePreprocessor(model.config, model.tokenizer)
    samples = list(iter_samples(WORLD_PRESETS["easy"], "test", 2, 12345))
    for task in ("arig", "avfact"):
        s = next(x for x in samples if x["json"]["task"] == task)
        batch = batching.collate(
            [prep(s["image"], s["audio"], s["json"], with_answer=False)],
            model.tokenizer.pad_token_id,
            side="left",
        )
        (text,) = model.generate(batch)
        print(f"[{task}] {s['json']['instruction']}\n    model: {text!r}   truth: {s['json']['answer']!r}")
        if task == "arig":
            box = grounding.parse_box(text)
            iou = grounding.box_iou(box, s["json"]["boxes"][0]) if box else 0.0
            print(f"    parsed box: {box}  IoU with the sounding object: {iou:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Meerkat on Ray, end to end on one machine.")
    parser.add_argument("--dir", default=".local-stack")
    parser.add_argument("--scenes", type=int, default=400, help="training scenes of the procedural world")
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--retrain", action="store_true", help="train again even if a model is registered")
    args = parser.parse_args(argv)
    t_all = time.perf_counter()

    t0 = _stage("1/4 local stack: Ray head, MLflow, S3 server on 127.0.0.1")
    config = stack.up(stack.StackConfig.from_env(args.dir))
    env = {**os.environ, **config.env()}
    _done(t0)

    data_uri = f"s3://{config.bucket}/avfit"
    t0 = _stage(f"2/4 AVFIT: procedural world -> WebDataset shards in {data_uri}")
    submit(
        env,
        "pipelines.build_avfit",
        "--config",
        "pipelines/configs/avfit_demo.yaml",
        f"out_uri={data_uri}",
        f"world.scenes.train={args.scenes}",
    )
    _done(t0)

    t0 = _stage("3/4 training: tiny Meerkat, 2 Ray Train workers, MLflow tracking")
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
    _done(t0)

    t0 = _stage(f"4/4 the registered model models:/{MODEL_NAME}/{version} answers")
    ask(f"models:/{MODEL_NAME}/{version}", config.env())
    _done(t0)

    print(f"\nDemo finished in {time.perf_counter() - t_all:.0f}s.")
    print(f"Ray dashboard: {config.dashboard_url}\nMLflow UI:     {config.mlflow_uri}")
    print(f"Stop everything with: make demo-down (python -m infra.local.stack down --dir {args.dir})")


if __name__ == "__main__":
    from pipelines.demo import main as _main

    _main()
