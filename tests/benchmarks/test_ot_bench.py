"""Benchmark (opt-in, ``-m bench``): OT cost, exact (POT emd2 loop) vs batched entropic (Sinkhorn).

    .venv/bin/python -m pytest -m bench -s tests/benchmarks/test_ot_bench.py

Batch 8, 196 image patches against 64 audio tokens (one 10-s window) and 192 (a 30-s clip, three
windows), D = 64. Forward + backward, median of several runs, both measured in this one run; the
printed ratio is exact / sinkhorn. The assertion is only that both produce finite costs and that
Sinkhorn's cost is close to the exact one (a benchmark reports, it does not time-assert).
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from meerkat_core.alignment import ot_loss

pytestmark = pytest.mark.bench


def _time(fn, repeats: int = 7) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


@pytest.mark.parametrize("n_audio", [64, 192], ids=["10s-64tok", "30s-192tok"])
def test_ot_exact_vs_sinkhorn(n_audio):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 196, 64, generator=g, requires_grad=True)
    y = torch.randn(8, n_audio, 64, generator=g, requires_grad=True)

    def run(solver: str) -> torch.Tensor:
        loss = ot_loss(x, y, solver=solver, reg=0.05, n_iters=100)
        loss.sum().backward()
        return loss.detach()

    exact_s = _time(lambda: run("exact"))
    sink_s = _time(lambda: run("sinkhorn"))
    exact, sink = run("exact"), run("sinkhorn")
    print(
        f"\nOT batch 8 x 196 x {n_audio}: exact {exact_s * 1e3:.1f} ms, sinkhorn {sink_s * 1e3:.1f} ms, "
        f"ratio exact/sinkhorn {exact_s / sink_s:.2f}; mean |sinkhorn - exact| {(sink - exact).abs().mean():.4f}"
    )
    assert torch.isfinite(exact).all() and torch.isfinite(sink).all()
    assert (sink - exact).abs().max() < 0.1
