"""Benchmark (opt-in, ``-m bench``): what the match loss adds to a tiny training step.

    .venv/bin/python -m pytest -m bench -s tests/benchmarks/test_match_loss_bench.py

One tiny model's forward + backward on a batch of eight procedural-world samples (the class columns
the loss is labelled by included), one thread, the three configurations interleaved so that a busy
machine slows them alike: the tiny preset (match loss on), the same with ``loss.lambda_match = 0``
(the loss still computed for the log, without gradient) and with ``model.av_match`` off (no match
features, no loss). The printed ratios are against the last two. The assertions are only that the
three steps give finite losses and that only the first has a match loss with a gradient.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import pytest
import torch

from meerkat_core import batching
from meerkat_core.builders import build_model
from meerkat_core.config import PRESETS
from pipelines.avfit.world import WORLD_PRESETS, iter_samples

pytestmark = pytest.mark.bench


def test_match_loss_step_cost():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tiny = PRESETS["tiny"]
        weight0 = replace(tiny, loss=replace(tiny.loss, lambda_match=0.0))
        models = {
            "on": build_model(tiny, pretrained=False, seed=0),
            "weight0": build_model(weight0, pretrained=False, seed=0),
            "no_av_match": build_model(replace(weight0, av_match=False), pretrained=False, seed=0),
        }
        prep = batching.SamplePreprocessor(tiny, models["on"].tokenizer)
        samples = list(iter_samples(WORLD_PRESETS["easy"], "train", 4, 0))[:8]
        batch = batching.collate(
            [prep(s["image"], s["audio"], s["json"]) for s in samples], models["on"].tokenizer.pad_token_id
        )
        assert batch["classes_known"].all()

        def step(model) -> tuple[float, dict]:
            t = time.perf_counter()
            model.zero_grad(set_to_none=True)
            out = model(batch)
            out["loss"].backward()
            return time.perf_counter() - t, out

        for name, model in models.items():  # warm-up, and what each computes
            _, out = step(model)
            assert torch.isfinite(out["loss"]), name
        assert step(models["on"])[1]["loss_match"].requires_grad
        assert not step(models["weight0"])[1]["loss_match"].requires_grad
        assert "loss_match" not in step(models["no_av_match"])[1]
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(12):
            for name, model in models.items():
                times[name].append(step(model)[0])
        med = {name: statistics.median(v) for name, v in times.items()}
    finally:
        torch.set_num_threads(threads)
    print(
        f"bench: match_loss_step on_s={med['on']:.3f} weight0_s={med['weight0']:.3f} "
        f"no_av_match_s={med['no_av_match']:.3f} on_over_weight0={med['on'] / med['weight0']:.3f} "
        f"on_over_no_av_match={med['on'] / med['no_av_match']:.3f}"
    )
