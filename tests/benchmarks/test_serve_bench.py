"""Serve load benchmark (``-m bench``), all measured in one run on the local stack:

- end to end: ``POST /v1/ground`` over HTTP at 1 and 16 concurrent clients, with dynamic
  batching (``max_batch_size=16``) and without (``=1``), on the same replicas;
- the Serve + HTTP overhead at batch 1: an HTTP request against an in-process call doing the
  service's work (decode, features, tokenize, generate at batch 1 on one thread, as the replica),
  alternated so that both see the same background load;
- where a request's CPU time goes, in process with the service down: preprocessing (decode and
  CLAP log-mel features, per request, in the ingress) and generation per request at batch 1, at
  16 (what batching shares) and at every batch size the replica ran;
- the batches the model replica ran at each level, by size (``ModelReplica.batch_stats``);
- the machine's CPU time per request at each level (all processes, from ``psutil.cpu_times``);
- the ceiling: ``cores / (preprocessing + generation at batch 16 + serving overhead)``, per-request
  CPU times all measured in this run, and the batched throughput at 16 clients as a fraction of
  it. The serving overhead is CPU time, measured under the load it is charged to: what the machine
  spends per request at the batched 16-client level beyond the in-process preprocessing and the
  generation at the batch sizes the replica ran (the proxy, HTTP parsing, handles and
  serialization, Ray's daemons, logging and metrics, the load generator). So measured, the ratio
  is the share of the cores kept busy times how close the batches came to 16: it catches batches
  that do not form and cores left idle, not an overhead that grows. Beside it are printed the
  ratios with two independent overheads (at batch 1 with 16 clients; served alone, which also
  charges a request the background CPU of the processes idling beside it) and with the latency
  overhead, and the CPU of processes outside the service (a machine that was not quiet);
- with ``MEERKAT_BENCH_PROFILE=1``, a py-spy profile of the two replicas during the
  batched 16-client level: the functions where each process spends its CPU.

The last line is ``bench: serve ceiling_ratio=<x> batched_vs_batch1=<x> p99_p50=<x>`` (goals: at
least 0.8, at least 1, at most 2).

    .venv/bin/python -m pytest -m bench -s tests/benchmarks/test_serve_bench.py

The model is the untrained tiny model: it never stops early, so every request generates exactly
``NEW_TOKENS`` tokens and the work per request is fixed. The batch size is switched through the
model's ``user_config``, which Serve applies to the running replica; the test checks that the
replicas stayed the same.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import torch
from threadpoolctl import threadpool_limits

from infra.local import processes
from meerkat_core import batching
from meerkat_core.builders import build_model, load_model
from meerkat_core.config import PRESETS
from serve import inputs, tasks
from serve.schemas import GroundParams
from tests.benchmarks.processes import cpu_by_title, process_cpu_s
from tests.serve import service

pytestmark = pytest.mark.bench

NEW_TOKENS = 32
CLIENTS = (1, 16)
REQUESTS_PER_CLIENT = {1: 20, 16: 8}  # bounded work per level: 20 and 128 requests
OVERHEAD_PAIRS = 20
SETTLE_S = 0.5
LEVEL_TIMEOUT_S = 300.0
STATS_SETTLE_S = 2.0
"""Pause after reading the replica's batch stats (a short-lived Ray driver) before a level starts."""
LOAD_GENERATOR = "load generator"
SERVICE_PROCESSES = ("ray::", "raylet", "gcs_server", LOAD_GENERATOR)
"""Process titles that belong to the service, Ray or the load generator; CPU of any other process
during a level (the stack's MLflow and S3 servers, anything else on the machine) is printed apart."""


@dataclass(frozen=True)
class Level:
    path: str
    batch: int
    clients: int
    seconds: float
    latencies: list[float]
    client_cpu_s: float
    """CPU time of this process (the load generator: HTTP clients, asyncio) over the level."""
    machine_cpu_s: float
    """CPU time of the whole machine over the level (every process: proxy, replicas, Ray, clients)."""
    process_cpu_s: dict[str, float]
    """CPU time over the level by process title (``ray::ProxyActor``, each replica, ``raylet``...)."""
    batch_sizes: dict[int, int]
    """Batches the model replica ran during the level (warm-up included), by size."""

    @property
    def cpu_ms_per_request(self) -> float:
        return self.machine_cpu_s / len(self.latencies) * 1e3

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1]


async def _clients(
    call: Callable[[], Awaitable[None]], clients: int
) -> tuple[float, list[float], float, float, dict[str, float]]:
    """``clients`` concurrent callers, each making its share of requests back to back, after one
    warm-up request each; returns the wall time, each request's latency and this process's CPU
    time over the timed part."""
    latencies: list[float] = []

    async def one_client(requests: int, record: bool) -> None:
        for _ in range(requests):
            start = time.perf_counter()
            await call()
            if record:
                latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(one_client(1, False) for _ in range(clients)))
    start, cpu, machine, procs = (
        time.perf_counter(),
        time.process_time(),
        _machine_cpu_s(),
        process_cpu_s(own=LOAD_GENERATOR),
    )
    runs = (one_client(REQUESTS_PER_CLIENT[clients], True) for _ in range(clients))
    await asyncio.wait_for(asyncio.gather(*runs), LEVEL_TIMEOUT_S)
    after = process_cpu_s(own=LOAD_GENERATOR)
    by_title = cpu_by_title(procs, after)
    return (
        time.perf_counter() - start,
        latencies,
        time.process_time() - cpu,
        _machine_cpu_s() - machine,
        by_title,
    )


def _machine_cpu_s() -> float:
    """CPU seconds the machine has spent busy since boot (all processes, all cores)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def _profile(pids: dict[str, int], seconds: float, out: Path) -> list[subprocess.Popen]:
    """py-spy, sampling each process in ``pids`` for ``seconds`` (collapsed stacks, CPU only)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return [
        subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                "50",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(out / f"{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for name, pid in pids.items()
    ]


def _hotspots(path: Path, top: int = 8) -> list[tuple[str, float]]:
    """The functions (self time) with the most samples in a py-spy raw profile, as fractions."""
    counts: collections.Counter[str] = collections.Counter()
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[stack.split(";")[-1].split(" (")[0][:60]] += int(count)
    total = sum(counts.values()) or 1
    return [(name, n / total) for name, n in counts.most_common(top)]


def _http_levels(
    stack, deployed: service.Service, body: bytes, batch: int, profile: Callable[[], None] | None = None
) -> list[Level]:
    async def run(clients: int) -> tuple[float, list[float], float, float, dict[str, float]]:
        headers = {**deployed.headers, "Content-Type": "application/json"}
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(
            base_url=deployed.url, headers=headers, timeout=120, limits=limits
        ) as client:

            async def call() -> None:
                response = await client.post("/v1/ground", content=body)
                assert response.status_code == 200, response.text

            return await _clients(call, clients)

    levels = []
    for c in CLIENTS:
        if profile is not None and c == CLIENTS[-1]:
            profile()
        before = service.batch_stats(stack, deployed)
        time.sleep(STATS_SETTLE_S)
        measured = asyncio.run(run(c))
        after = service.batch_stats(stack, deployed)
        sizes = {size: n - before.get(size, 0) for size, n in after.items() if n > before.get(size, 0)}
        levels.append(Level("HTTP", batch, c, *measured, sizes))
    return levels


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
    limits = {
        "sample_rate": model.config.audio.sampling_rate,
        "max_pixels": 1 << 24,
        "max_seconds": 60.0,
        "max_samples": 1 << 24,
    }

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
            port = processes.free_port()
            deployed = service.deploy(
                local_stack, str(model_dir), port, secrets.token_hex(16), "--max-batch-size", "16"
            )
            profile_dir = tmp_path / "profile"
            profile_dir.mkdir()
            spies: list[subprocess.Popen] = []
            try:
                replicas = service.replicas(deployed)
                pids = {
                    f"{name}-{i}": pid
                    for name, running in replicas.items()
                    for i, (_, _, pid) in enumerate(sorted(running))
                }

                def profile() -> None:
                    if os.environ.get("MEERKAT_BENCH_PROFILE"):
                        spies.extend(_profile(pids, 20, profile_dir))

                levels = _http_levels(local_stack, deployed, body, 16, profile)
                for spy in spies:
                    spy.wait(timeout=120)
                service.deploy(local_stack, str(model_dir), port, deployed.token, "--max-batch-size", "1")
                assert service.replicas(deployed) == replicas, "changing the batch size restarted a replica"
                levels += _http_levels(local_stack, deployed, body, 1)
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
            # at batch 1 and 16, and at every size the replica ran in the batched top level
            sizes = {1, 16} | set(
                next(lv for lv in levels if lv.batch == 16 and lv.clients == CLIENTS[-1]).batch_sizes
            )
            generate_ms = {b: _per_request_ms(lambda b=b: generate([row] * b), b) for b in sorted(sizes)}
    finally:
        torch.set_num_threads(threads)

    print(f"\nServe benchmark: POST /v1/ground, {NEW_TOKENS} new tokens, untrained tiny model, CPU")
    print(
        f"{'path':<6}{'batch':>6}{'clients':>8}{'requests':>9}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'p99/p50':>8}"
        f"{'CPU ms/req':>11}"
    )
    for lv in levels:
        p50, p99 = lv.percentile(50), lv.percentile(99)
        print(
            f"{lv.path:<6}{lv.batch:>6}{lv.clients:>8}{len(lv.latencies):>9}{lv.throughput:>8.2f}"
            f"{p50 * 1e3:>8.0f}{p99 * 1e3:>8.0f}{p99 / p50:>8.2f}{lv.cpu_ms_per_request:>11.0f}"
        )
    by = {(lv.batch, lv.clients): lv for lv in levels}
    top = CLIENTS[-1]
    gain = by[16, top].throughput / by[1, top].throughput
    tail = by[16, top].percentile(99) / by[16, top].percentile(50)
    overhead = statistics.median(served - local for local, served in pairs)
    local_p50 = statistics.median(local for local, _ in pairs)
    generation_gain = generate_ms[1] / generate_ms[16]
    print(f"batched / batch-1 throughput at {top} clients: {gain:.2f}x (goal >= 1)")
    print(f"p99/p50 at {top} clients, batched: {tail:.2f} (goal <= 2)")
    print(
        f"Serve + HTTP overhead at batch 1: {overhead * 1e3:+.0f} ms "
        f"(median of {OVERHEAD_PAIRS} alternated pairs) on {local_p50 * 1e3:.0f} ms in process"
    )
    print(
        f"per request, in process: preprocess {preprocess_ms:.0f} ms; generate {generate_ms[1]:.0f} ms at "
        f"batch 1, {generate_ms[16]:.0f} ms at batch 16 ({generation_gain:.1f}x); by batch size: "
        + ", ".join(f"{b}: {ms:.0f}" for b, ms in sorted(generate_ms.items()))
    )

    for name in pids if spies else ():
        print(f"where {name} spends its CPU (py-spy, self time, batched, {top} clients):")
        for function, share in _hotspots(profile_dir / f"{name}.txt"):
            print(f"  {share:6.1%}  {function}")
    cores = len(os.sched_getaffinity(0))
    batched, alone = by[16, top], by[1, 1]
    client_ms = batched.client_cpu_s / len(batched.latencies) * 1e3
    for level in (batched, alone):
        runs = sum(level.batch_sizes.values())
        mean = sum(size * n for size, n in level.batch_sizes.items()) / max(runs, 1)
        print(
            f"batches the model replica ran at {level.clients} client(s), max_batch_size 16: {runs}, "
            f"mean size {mean:.1f}, by size {dict(sorted(level.batch_sizes.items()))}"
        )
    # Generation per request at the batch sizes the replica actually ran (each request weighs one).
    ran = batched.batch_sizes
    generated_ms = sum(size * n * generate_ms[size] for size, n in ran.items()) / sum(
        size * n for size, n in ran.items()
    )
    # Serving overhead as CPU time, measured under the load it is charged to: what the machine spent
    # per request in the batched top level beyond the in-process preprocessing and the generation
    # at the sizes run: proxy, HTTP parsing, handles and serialization, Ray's daemons, logging and
    # metrics, and the load generator. So measured, the ratio below is the share of the cores the
    # level kept busy times generation at batch 16 over generation at the sizes run: it fails when
    # batches do not form or cores idle, not when the overhead grows. Two independent overheads
    # are printed beside it: at batch 1 with the same clients, and served alone (which also
    # charges a request the background CPU of processes idling beside it).
    serving_ms = max(batched.cpu_ms_per_request - preprocess_ms - generated_ms, 0.0)
    unbatched = by[1, top]
    alternatives = {
        f"batch 1, {top} clients": max(unbatched.cpu_ms_per_request - preprocess_ms - generate_ms[1], 0.0),
        "served alone": max(alone.cpu_ms_per_request - preprocess_ms - generate_ms[1], 0.0),
    }
    ceiling = cores / ((preprocess_ms + generate_ms[16] + serving_ms) / 1e3)
    ratio = batched.throughput / ceiling
    latency_ceiling = cores / ((preprocess_ms + generate_ms[16] + max(overhead, 0.0) * 1e3 + client_ms) / 1e3)
    print(
        f"load generator (this process) over the batched {top}-client level: {client_ms:.1f} ms CPU per request "
        f"({batched.client_cpu_s / batched.seconds:.2f} cores)"
    )
    for level in levels:
        shares = sorted(level.process_cpu_s.items(), key=lambda kv: -kv[1])[:9]
        print(
            f"CPU per request by process, batch {level.batch}, {level.clients} client(s) (ms): "
            + ", ".join(f"{t} {v / len(level.latencies) * 1e3:.0f}" for t, v in shares)
        )
    foreign = {
        t: v / len(batched.latencies) * 1e3
        for t, v in batched.process_cpu_s.items()
        if not t.startswith(SERVICE_PROCESSES) and v / len(batched.latencies) * 1e3 >= 0.5
    }
    print(
        f"CPU of other processes in the batched {top}-client level (ms per request, counted in the overhead): "
        f"{sum(foreign.values()):.1f} {dict(sorted(foreign.items(), key=lambda kv: -kv[1]))}"
    )
    print(
        f"serving overhead, CPU: {batched.cpu_ms_per_request:.0f} ms per request batched at {top} clients - "
        f"{preprocess_ms:.0f} preprocess - {generated_ms:.0f} generate at the sizes run = {serving_ms:.0f} ms"
    )
    print(
        f"ceiling: {cores} cores / ({preprocess_ms:.0f} + {generate_ms[16]:.0f} + {serving_ms:.0f} ms) = "
        f"{ceiling:.1f} req/s; batched at {top} clients: {batched.throughput:.2f} req/s = {ratio:.2f} of it "
        f"({batched.machine_cpu_s / batched.seconds:.2f} of {cores} cores busy)"
    )
    for label, ms in alternatives.items():
        other = cores / ((preprocess_ms + generate_ms[16] + ms) / 1e3)
        print(
            f"  with the overhead measured {label} instead ({ms:.0f} ms): ceiling {other:.1f} req/s, "
            f"{batched.throughput / other:.2f} of it"
        )
    print(
        f"  with the latency overhead instead ({max(overhead, 0.0) * 1e3:.0f} ms + {client_ms:.0f} ms load "
        f"generator): {latency_ceiling:.1f} req/s, {batched.throughput / latency_ceiling:.2f} of it"
    )
    assert generation_gain > 2, f"generation should gain from batches of 16: {generation_gain:.2f}x"
    print(f"bench: serve ceiling_ratio={ratio:.2f} batched_vs_batch1={gain:.2f} p99_p50={tail:.2f}")
