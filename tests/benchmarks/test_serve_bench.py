"""Serve load benchmark (``-m bench``), all measured in one run on the local stack:

- end to end: ``POST /v1/ground`` over HTTP at 1, 4 and 16 concurrent clients, with dynamic
  batching (``max_batch_size=16``) and without (``=1``), on the same replicas;
- the Serve + HTTP overhead at batch 1: an HTTP request against an in-process call doing the
  service's work (decode, features, tokenize, generate at batch 1 on one thread, as the replica),
  alternated so that both see the same background load;
- where a request's CPU time goes, in process with the service down: preprocessing (decode and
  CLAP log-mel features, per request, in the ingress) and generation per request at batch 1 and
  16 (what batching shares).

Batching raises throughput only where the model replica is the bottleneck. On a small CPU machine
with the tiny model it is not: the per-request work in front of it (HTTP proxy, ingress, body of
~0.8 MB, decoding, log-mel features) admits requests about as fast as the model answers them one
by one, so batches stay small. The in-process figures show what batching does to generation alone.

    .venv/bin/python -m pytest -m bench -s tests/benchmarks/test_serve_bench.py

The model is the untrained tiny model: it never stops early, so every request generates exactly
``NEW_TOKENS`` tokens and the work per request is fixed. The batch size is switched through the
model's ``user_config``, which Serve applies to the running replica; the test checks that the
replicas stayed the same.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest
import torch
from threadpoolctl import threadpool_limits

from infra.local import stack
from meerkat_core import batching
from meerkat_core.config import PRESETS
from meerkat_core.model import build_model, load_model
from serve import inputs, tasks
from serve.schemas import GroundParams
from tests.serve import service

pytestmark = pytest.mark.bench

NEW_TOKENS = 32
CLIENTS = (1, 4, 16)
REQUESTS_PER_CLIENT = {1: 20, 4: 12, 16: 8}  # bounded work per level: 20, 48 and 128 requests
OVERHEAD_PAIRS = 20
SETTLE_S = 0.5
LEVEL_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Level:
    path: str
    batch: int
    clients: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1]


async def _clients(call: Callable[[], Awaitable[None]], clients: int) -> tuple[float, list[float]]:
    """``clients`` concurrent callers, each making its share of requests back to back, after one
    warm-up request each; returns the wall time and each request's latency."""
    latencies: list[float] = []

    async def one_client(requests: int, record: bool) -> None:
        for _ in range(requests):
            start = time.perf_counter()
            await call()
            if record:
                latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(one_client(1, False) for _ in range(clients)))
    start = time.perf_counter()
    runs = (one_client(REQUESTS_PER_CLIENT[clients], True) for _ in range(clients))
    await asyncio.wait_for(asyncio.gather(*runs), LEVEL_TIMEOUT_S)
    return time.perf_counter() - start, latencies


def _http_levels(deployed: service.Service, body: bytes, batch: int) -> list[Level]:
    async def run(clients: int) -> tuple[float, list[float]]:
        headers = {**deployed.headers, "Content-Type": "application/json"}
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(
            base_url=deployed.url, headers=headers, timeout=120, limits=limits
        ) as client:

            async def call() -> None:
                response = await client.post("/v1/ground", content=body)
                assert response.status_code == 200, response.text

            return await _clients(call, clients)

    return [Level("HTTP", batch, c, *asyncio.run(run(c))) for c in CLIENTS]


def _per_request_ms(work: Callable[[], object], requests: int, repeats: int = 5) -> float:
    """Median wall time of ``work`` over ``repeats`` runs (after one warm-up), per request, in ms."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / requests * 1e3


def test_batching_throughput_latency_and_serve_overhead(local_stack, tmp_path):
    model_dir = build_model(PRESETS["tiny"], pretrained=False, seed=0).save_pretrained(
        tmp_path / "model", seed=0, pretrained=False
    )
    (scene,) = service.world_scenes(1)
    raw = inputs.Media(scene.image, scene.audio)
    body = json.dumps(
        {
            "image": base64.b64encode(scene.image).decode(),
            "audio": base64.b64encode(scene.audio).decode(),
            "max_new_tokens": NEW_TOKENS,
        }
    ).encode()
    model = load_model(model_dir)
    prep = batching.SamplePreprocessor(model.config, model.tokenizer)
    instruction, _ = tasks.instruction("ground", GroundParams())
    limits = {"sample_rate": model.config.audio.sampling_rate, "max_pixels": 1 << 24, "max_seconds": 60.0}

    def preprocess() -> dict:
        decoded = inputs.decode_media(raw, **limits)
        return prep(decoded.image, decoded.wave, {"instruction": instruction}, with_answer=False)

    def generate(rows: list[dict]) -> None:
        batch = batching.collate(rows, model.tokenizer.pad_token_id, side="left")
        model.generate(batch, max_new_tokens=NEW_TOKENS)

    # One thread for torch, BLAS and OpenMP, as in the replicas (Ray sets OMP_NUM_THREADS to num_cpus).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            port = stack.free_port()
            deployed = service.deploy(
                local_stack, str(model_dir), port, secrets.token_hex(16), "--max-batch-size", "16"
            )
            try:
                replicas = service.replicas(deployed)
                levels = _http_levels(deployed, body, 16)
                service.deploy(local_stack, str(model_dir), port, deployed.token, "--max-batch-size", "1")
                assert service.replicas(deployed) == replicas, "changing the batch size restarted a replica"
                levels += _http_levels(deployed, body, 1)
                pairs = []
                with httpx.Client(base_url=deployed.url, headers=deployed.headers, timeout=120) as client:
                    for _ in range(OVERHEAD_PAIRS):
                        # Each call starts on a quiet machine: after a response, Serve's processes
                        # still log and report metrics, which would slow the next in-process call.
                        time.sleep(SETTLE_S)
                        start = time.perf_counter()
                        generate([preprocess()])
                        local = time.perf_counter() - start
                        time.sleep(SETTLE_S)
                        start = time.perf_counter()
                        response = client.post(
                            "/v1/ground", content=body, headers={"Content-Type": "application/json"}
                        )
                        assert response.status_code == 200, response.text
                        pairs.append((local, time.perf_counter() - start))
            finally:
                service.meerkat_serve(local_stack.config.dir, deployed.env, "down")
            row = preprocess()
            preprocess_ms = _per_request_ms(preprocess, 1)
            generate_ms = {b: _per_request_ms(lambda b=b: generate([row] * b), b) for b in (1, 16)}
    finally:
        torch.set_num_threads(threads)

    print(f"\nServe benchmark: POST /v1/ground, {NEW_TOKENS} new tokens, untrained tiny model, CPU")
    print(
        f"{'path':<6}{'batch':>6}{'clients':>8}{'requests':>9}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'p99/p50':>8}"
    )
    for lv in levels:
        p50, p99 = lv.percentile(50), lv.percentile(99)
        print(
            f"{lv.path:<6}{lv.batch:>6}{lv.clients:>8}{len(lv.latencies):>9}{lv.throughput:>8.2f}"
            f"{p50 * 1e3:>8.0f}{p99 * 1e3:>8.0f}{p99 / p50:>8.2f}"
        )
    by = {(lv.batch, lv.clients): lv for lv in levels}
    top = CLIENTS[-1]
    gain = by[16, top].throughput / by[1, top].throughput
    tail = by[16, top].percentile(99) / by[16, top].percentile(50)
    overhead = statistics.median(served - local for local, served in pairs)
    local_p50 = statistics.median(local for local, _ in pairs)
    generation_gain = generate_ms[1] / generate_ms[16]
    print(f"batched / batch-1 throughput at {top} clients: {gain:.2f}x (goal >= 4)")
    print(f"p99/p50 at {top} clients, batched: {tail:.2f} (goal <= 2)")
    print(
        f"Serve + HTTP overhead at batch 1: {overhead * 1e3:+.0f} ms "
        f"(median of {OVERHEAD_PAIRS} alternated pairs) on {local_p50 * 1e3:.0f} ms in process"
    )
    print(
        f"per request, in process: preprocess {preprocess_ms:.0f} ms; generate {generate_ms[1]:.0f} ms at "
        f"batch 1, {generate_ms[16]:.0f} ms at batch 16 ({generation_gain:.1f}x)"
    )

    assert generation_gain > 2, f"generation should gain from batches of 16: {generation_gain:.2f}x"
