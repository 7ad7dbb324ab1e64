"""Helpers of the Serve tests and benchmark: a model that answers with grounding, and a deployed service.

- :func:`train_grounding_model` overfits the tiny model (about 60 AdamW steps) on a handful of
  procedural-world scenes with exactly the instructions the service sends, so that the service's
  answers for those scenes are boxes, windows and verdicts that parse (an untrained model writes
  garbage, which only exercises ``parsed: false``).
- :func:`deploy` runs ``meerkat serve`` (``serve deploy`` of ``serve/config.yaml``) against a local
  stack and waits until ``/healthz`` answers; :func:`replicas` reads the replicas' ids and pids
  from the Ray dashboard's Serve API, to tell whether one restarted; :func:`batch_stats` reads the
  sizes of the batches the model replica ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from meerkat_core import batching, grounding
from meerkat_core.builders import build_model
from meerkat_core.config import PRESETS
from pipelines.avfit.world import WORLD_PRESETS, iter_samples
from serve import tasks
from serve.schemas import FactcheckParams, GroundParams, LocalizeParams

REPO = Path(__file__).resolve().parents[2]
TRAIN_SCENES = 3
MAX_STEPS = 400
LEARNING_RATE = 3e-3


@dataclass(frozen=True)
class Scene:
    """One procedural-world scene and what the grounding model was taught about it."""

    image: bytes  # JPEG
    audio: bytes  # FLAC
    object: str  # the sounding object, in words
    box: list[float]  # its box, normalised
    window: list[float]  # when it sounds, seconds
    distractor_box: list[float] | None  # another object's box, if the scene has one


def world_scenes(n: int = TRAIN_SCENES, seed: int = 0) -> list[Scene]:
    """The first ``n`` scenes of the easy world's test split."""
    scenes = []
    for sample in iter_samples(WORLD_PRESETS["easy"], "test", n, seed):
        meta = sample["json"]
        if meta["task"] != "arig":
            continue
        sounding = next(o for o in meta["objects"] if o["sounds"])
        others = [o["box"] for o in meta["objects"] if not o["sounds"]]
        event = next(e for e in meta["sound_events"] if e["class"] == sounding["class"])
        scenes.append(
            Scene(
                sample["image"],
                sample["audio"],
                sounding["class"],
                list(sounding["box"]),
                list(event["segment"]),
                list(others[0]) if others else None,
            )
        )
    return scenes


def taught_examples(scene: Scene) -> list[tuple[str, str]]:
    """(instruction as the service renders it, answer) pairs taught for one scene."""
    ground, _ = tasks.instruction("ground", GroundParams())
    localize, _ = tasks.instruction("localize", LocalizeParams(object=scene.object))
    true_claim, _ = tasks.instruction(
        "factcheck", FactcheckParams(box=_round(scene.box), window=scene.window)
    )
    examples = [
        (ground, grounding.format_box(scene.box)),
        (localize, grounding.format_segment(scene.window)),
        (true_claim, "True"),
    ]
    if scene.distractor_box is not None:
        false_claim, _ = tasks.instruction(
            "factcheck", FactcheckParams(box=_round(scene.distractor_box), window=scene.window)
        )
        examples.append((false_claim, "False"))
    return examples


def _round(box: list[float]) -> list[float]:
    return [round(v, 2) for v in box]


def train_grounding_model(directory: Path, scenes: list[Scene]) -> Path:
    """Overfit the tiny model on ``scenes`` (see the module docstring), save it and return its dir.

    Raises AssertionError when the loss does not fall to a tenth within ``MAX_STEPS``.
    """
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"], pretrained=False, seed=0)
    prep = batching.SamplePreprocessor(model.config, model.tokenizer)
    rows = [
        prep(s.image, s.audio, {"instruction": instruction, "answer": answer}, with_answer=True)
        for s in scenes
        for instruction, answer in taught_examples(s)
    ]
    batch = batching.collate(rows, model.tokenizer.pad_token_id, side="right")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0)
    model.train()
    first = last = None
    for _ in range(MAX_STEPS):
        loss = model(batch)["loss_ce"]
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        last = loss.item()
        if last < 0.01 * first:
            break
    assert last is not None and last < 0.1 * first, f"the grounding model did not overfit: {first} -> {last}"
    model.eval()
    return model.save_pretrained(directory, seed=0, pretrained=False)


@dataclass(frozen=True)
class Service:
    url: str
    token: str
    dashboard: str
    ray_token: str
    env: dict[str, str]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def meerkat_serve(
    stack_dir: str, env: dict[str, str], *args: str, timeout_s: float = 600
) -> subprocess.CompletedProcess:
    """``meerkat serve <args>`` against the local stack in ``stack_dir``; raises on failure."""
    cmd = [sys.executable, "-m", "infra.cli", "serve", "--dir", stack_dir, *args]
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def deploy(stack: Any, model_ref: str, port: int, token: str, *extra: str) -> Service:
    """Deploy the application on ``stack`` (a ``LocalStack``) with ``meerkat serve`` and wait for it."""
    env = {**stack.env, "MEERKAT_API_TOKEN": token}
    meerkat_serve(stack.config.dir, env, "up", "--model", model_ref, "--port", str(port), *extra)
    ray_token = stack.config.ray_token_path.read_text().strip()
    return Service(f"http://127.0.0.1:{port}", token, stack.config.dashboard_url, ray_token, env)


def serve_details(service: Service) -> dict[str, Any]:
    """The Ray dashboard's ``GET /api/serve/applications/`` (Serve's own view of its replicas)."""
    request = urllib.request.Request(
        f"{service.dashboard}/api/serve/applications/",
        headers={"Authorization": f"Bearer {service.ray_token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def replicas(service: Service) -> dict[str, set[tuple[str, str, int]]]:
    """Per deployment of the application: its running replicas as (replica id, actor id, pid)."""
    return _running(serve_details(service)["applications"]["meerkat"]["deployments"])


def _running(deployments: dict[str, Any]) -> dict[str, set[tuple[str, str, int]]]:
    return {
        name: {(r["replica_id"], r["actor_id"], r["pid"]) for r in d["replicas"] if r["state"] == "RUNNING"}
        for name, d in deployments.items()
    }


def settled_replicas(service: Service, timeout_s: float = 180.0) -> dict[str, set[tuple[str, str, int]]]:
    """:func:`replicas` once every deployment runs as many replicas as it targets.

    A replica that is starting or being replaced when a test takes its "before" snapshot would read
    as new afterwards (seen on a loaded machine: one of the two ingress replicas missing from the
    snapshot, present later beside the first). Raises when they do not settle in ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        deployments = serve_details(service)["applications"]["meerkat"]["deployments"]
        running = _running(deployments)
        counts = {name: len(members) for name, members in running.items()}
        targets = {name: d["target_num_replicas"] for name, d in deployments.items()}
        if counts == targets:
            return running
        if time.monotonic() > deadline:
            raise AssertionError(
                f"replicas not settled after {timeout_s:.0f} s: running {counts}, target {targets}"
            )
        time.sleep(1.0)


def batch_stats(stack: Any, service: Service) -> dict[int, int]:
    """The model replica's count of the batches it has run, by size (``ModelReplica.batch_stats``),
    read through a Serve handle from a driver process on ``stack``."""
    code = (
        "import json, ray\n"
        "from ray import serve\n"
        f"ray.init(address='127.0.0.1:{stack.config.ray_port}', namespace='serve', logging_level='ERROR')\n"
        "handle = serve.get_deployment_handle('ModelReplica', app_name='meerkat')\n"
        "print(json.dumps(handle.batch_stats.remote().result()))\n"
    )
    # RAY_ADDRESS names the dashboard (for the CLI); the driver joins the cluster at its GCS.
    env = {k: v for k, v in service.env.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        raise RuntimeError(f"reading the replica's batch stats failed:\n{out.stderr[-2000:]}")
    return {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}
