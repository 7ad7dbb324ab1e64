"""FSDP2 and DDP as the training job uses them, in real gloo process groups on the CPU.

The reference for every sharded result is the same code in one process: two ranks that each take
one micro-batch and reduce must end where one process that accumulates both micro-batches ends.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from meerkat_core import checkpoint, parallel
from meerkat_core.builders import build_model
from meerkat_core.config import PRESETS, replace_path
from tests.core.batches import make_batch

ANSWERS = [
    ["[0.10, 0.20, 0.50, 0.60]", "[0.30, 0.30, 0.90, 0.70]"],
    ["[0.05, 0.40, 0.35, 0.95]", "[0.55, 0.10, 0.95, 0.45]"],
]
BOXES = [[[[0.1, 0.2, 0.5, 0.6]], None], [[[0.05, 0.4, 0.35, 0.95]], [[0.55, 0.1, 0.95, 0.45]]]]
STEPS = 3
# bf16 base, fp32 trainables, no dropout (the batches here write no region prompt)
CONFIG = PRESETS["tiny"]
for _path, _value in (("base_dtype", "bfloat16"), ("lora.dropout", 0.0), ("region_prompts", False)):
    CONFIG = replace_path(CONFIG, _path, _value)


def _run(rank: int, world: int, strategy: str, out: str, sync_every_micro: bool) -> None:
    # Rendezvous through a file beside the run's directory, not a TCP port picked in advance (a port
    # free when picked can be taken by another process before the store binds it), and a timeout,
    # so that a rank that never arrives fails the test instead of blocking it.
    dist.init_process_group(
        "gloo",
        init_method=f"file://{Path(out).resolve()}.rendezvous",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=300),
    )
    torch.set_num_threads(1)
    try:
        model = build_model(CONFIG, pretrained=False, seed=0)
        wrapped = (
            parallel.shard(model) if strategy == "fsdp" else parallel.replicate(model, torch.device("cpu"))
        )
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-2)
        # four micro-batches per step: rank r of 2 accumulates batches 2r and 2r + 1, reducing only
        # on its second (the job's accumulation); one process accumulates all four
        mine = [2 * rank, 2 * rank + 1] if world == 2 else [0, 1, 2, 3]
        norms = []
        for step in range(STEPS):
            for i, b in enumerate(mine):
                batch = make_batch(model, ANSWERS[b % 2], boxes=BOXES[b % 2], seed=10 * step + b)
                with parallel.grad_sync(wrapped, enabled=sync_every_micro or i == len(mine) - 1):
                    (wrapped(batch)["loss"] / len(mine)).backward()
            norms.append(parallel.clip_grad_norm(params, 1.0))
            opt.step()
            opt.zero_grad(set_to_none=True)
        held = parallel.shard_fraction(model, frozen=True)
        checkpoint.save_training_state(out, model, opt, {"step": STEPS}, seed=0, pretrained=False)
        torch.save({"norms": norms, "held": held}, Path(out) / f"extra-{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Everything is on disk: leave without running destructors. Freeing the DDP reducer when this
    # frame unwinds destroys its gloo group, whose destructor joins a worker thread while holding
    # the GIL; a worker still releasing a finished broadcast needs the GIL, and the child hangs.
    os._exit(0)


def _train(world: int, strategy: str, out: Path, sync_every_micro: bool = False) -> dict:
    args = (world, strategy, str(out), sync_every_micro)
    mp.spawn(_run, args=args, nprocs=world, join=True)
    model = build_model(CONFIG, pretrained=False, seed=0)
    checkpoint.load_trainable(out, model)  # one process, no process group
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    extras = [torch.load(out / f"extra-{r}.pt") for r in range(world)]
    return {"state": state, "extras": extras}


# Two processes in a gloo group on loopback for every test here: integration, not make check.
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs(world, strategy, sync_every_micro)``: trained once per module, shared by the tests."""
    done: dict[tuple[int, str, bool], dict] = {}

    def get(world: int, strategy: str, sync_every_micro: bool = False) -> dict:
        key = (world, strategy, sync_every_micro)
        if key not in done:
            out = tmp_path_factory.mktemp(f"{strategy}{world}")
            done[key] = {**_train(*key[:2], out, sync_every_micro), "dir": out}
        return done[key]

    return get


def _gap(a: dict, b: dict) -> tuple[float, float]:
    """L2 of ``a - b`` relative to ``b``'s update from the initial weights, and that update."""
    init = {
        n: p for n, p in build_model(CONFIG, pretrained=False, seed=0).named_parameters() if p.requires_grad
    }
    diff = sum(((a[k] - b[k]) ** 2).sum() for k in init) ** 0.5
    update = sum(((b[k] - init[k]) ** 2).sum() for k in init) ** 0.5
    return float(diff / update), float(update)


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_two_ranks_equal_one_process_accumulating_both_batches(runs, strategy):
    """Each rank accumulates two micro-batches without reducing the first (``grad_sync``); the
    reference is one process over all four. They agree to 1 % of the whole trainable
    update (L2): not bitwise, since the reduction's order and scaling differ in the last bits, and
    Adam's first steps turn a last-bit difference in a gradient element near zero into up to ±lr
    (elementwise normalisation). The gradient norms, which Adam's normalisation cannot hide (a
    sum instead of a mean over ranks would double them), agree to 1e-4 at the first step."""
    single, two = runs(1, strategy, sync_every_micro=True), runs(2, strategy)
    assert two["state"].keys() == single["state"].keys()
    gap, update = _gap(two["state"], single["state"])
    assert update > 1e-2 and gap < 1e-2, (gap, update)
    # the clipped norm is the global one: both ranks see the single process's norm (to 1e-4 at the
    # first step, from the same weights; later steps start from weights a rounding apart)
    for extra in two["extras"]:
        assert extra["norms"][0] == pytest.approx(single["extras"][0]["norms"][0], rel=1e-4)
        assert extra["norms"] == pytest.approx(single["extras"][0]["norms"], rel=1e-3)


def test_fsdp_ranks_hold_half_of_the_frozen_base_each(runs):
    held = [e["held"] for e in runs(2, "fsdp")["extras"]]
    assert all(abs(h - 0.5) < 0.01 for h in held), held
    assert sum(held) == pytest.approx(1.0, abs=1e-6)


def test_sharded_checkpoint_restores_on_one_worker_with_optimizer_state(runs):
    """A 2-rank FSDP checkpoint resumes in one process: parameters and Adam moments whole."""
    directory = runs(2, "fsdp")["dir"]
    model = build_model(CONFIG, pretrained=False, seed=0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    state = checkpoint.load_training_state(directory, model, opt)
    assert state["step"] == STEPS
    steps = {int(s["step"]) for s in opt.state_dict()["state"].values()}
    assert steps == {STEPS}
    reference = build_model(CONFIG, pretrained=False, seed=0)
    checkpoint.load_trainable(directory, reference)
    for (n, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        if p.requires_grad:
            torch.testing.assert_close(p, q, msg=n)
