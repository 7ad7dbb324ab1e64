"""meerkat_core.regions: a box or time window written in the prompt, given to the LLM as features."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from meerkat_core import batching, prompts
from meerkat_core.attention import MAP_BOX_POWER, map_box
from meerkat_core.builders import build_model
from meerkat_core.config import PRESETS
from meerkat_core.model import count_parameters
from meerkat_core.regions import (
    MATCH_FEATURES,
    add_region_features,
    box_coverage,
    box_iou,
    map_agreement,
    region_features,
    zero_linear,
)

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def model():
    return build_model(TINY, pretrained=False, seed=0)


def test_box_coverage_by_hand():
    cov = box_coverage(torch.tensor([[0.0, 0.0, 0.5, 0.25], [0.125, 0.0, 0.375, 1.0]]), 4)
    expected0 = torch.zeros(4, 4)
    expected0[0, :2] = 1.0
    expected1 = torch.zeros(4, 4)
    expected1[:, :2] = 0.5  # x from 0.125 to 0.375: half of cells 0 and 1
    torch.testing.assert_close(cov[0].reshape(4, 4), expected0)
    torch.testing.assert_close(cov[1].reshape(4, 4), expected1)


def test_zero_linear_starts_at_zero():
    layer = zero_linear(3, 2)
    assert not layer.weight.any() and not layer.bias.any()
    assert not layer(torch.randn(4, 3)).any()


def test_add_region_features_adds_at_the_closing_brackets_only():
    text = torch.zeros(3, 5, 2)
    batch = {"region_pos": torch.tensor([1, -1, 4]), "segment_pos": torch.tensor([1, 2, -1])}
    box = torch.tensor([[1.0, 1.0], [9.0, 9.0], [2.0, 3.0]])
    segment = torch.tensor([[10.0, 0.0], [20.0, 0.0], [9.0, 9.0]])
    out = add_region_features(text, batch, box, segment)
    expected = torch.zeros(3, 5, 2)
    expected[0, 1] = torch.tensor([11.0, 1.0])  # box and window at the same token add up
    expected[1, 2] = torch.tensor([20.0, 0.0])
    expected[2, 4] = torch.tensor([2.0, 3.0])
    torch.testing.assert_close(out, expected)


def test_region_features_pool_the_image_tokens_the_box_covers():
    # a 2 x 2 grid of LLM-side tokens whose feature is the token's index; the box covers the left half
    image_tokens = torch.arange(4, dtype=torch.float32).reshape(1, 4, 1)
    attn_map = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # all attention on the left half
    batch = {"region_box": torch.tensor([[0.0, 0.0, 0.5, 1.0]]), "segment_feat": torch.tensor([[1.0, 3.0]])}
    no_match = zero_linear(MATCH_FEATURES * 16, 3)
    implied = torch.tensor([[0.0, 0.0, 0.5, 1.0]])
    box, segment = region_features(
        batch, image_tokens, attn_map, implied, nn.Identity(), no_match, nn.Identity()
    )
    # tokens 0 and 2 (the left column): mean 1; attention inside 1, outside 0
    torch.testing.assert_close(box, torch.tensor([[1.0, 1.0, 0.0]]))
    torch.testing.assert_close(segment, torch.tensor([[-1.0, 1.0]]), atol=1e-3, rtol=0)  # layer-normalised


def test_box_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.2, 0.2], [0.1, 0.1, 0.1, 0.3]])
    b = torch.tensor([[0.25, 0.0, 0.75, 0.5], [0.5, 0.5, 1.0, 1.0], [0.1, 0.1, 0.1, 0.3]])
    # 0.125 shared of 0.25 + 0.25 - 0.125; disjoint; two empty boxes
    torch.testing.assert_close(box_iou(a, b), torch.tensor([1 / 3, 0.0, 0.0]))


def test_map_agreement_by_hand():
    # a 4 x 4 map that is 1 on the top-left 2 x 2 cells and 0 elsewhere
    amap = torch.zeros(2, 4, 4)
    amap[:, :2, :2] = 1.0
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])  # on the map; on the far corner
    # the map's box is mu +- sqrt(3) sigma of cells at 1/8 and 3/8: [1/4 - sqrt(3)/8, 1/4 + sqrt(3)/8]
    lo, hi = 0.25 - 3**0.5 / 8, 0.25 + 3**0.5 / 8
    implied = map_box(amap.flatten(1) ** MAP_BOX_POWER, 4)
    torch.testing.assert_close(implied, torch.tensor([[lo, lo, hi, hi]] * 2))
    got = map_agreement(boxes, amap, implied)
    iou_on = (hi - lo) ** 2 / 0.25  # the map's box lies inside the first box: 0.75
    expected = torch.tensor([[1.0, 0.0, 1.0, iou_on], [0.0, 4 / 12, (1 - 4 / 12) / 2, 0.0]])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert got.shape[1] == MATCH_FEATURES


def test_map_box_is_float32_under_autocast():
    # bf16 moments turn a one-cell peak's box into a point (0.9297 for every coordinate)
    peak = torch.zeros(1, 49)
    peak[0, 48] = 1.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = map_box(peak**MAP_BOX_POWER, 7)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, map_box(peak**MAP_BOX_POWER, 7))
    assert (low[0, 2:] > low[0, :2]).all()


def _fact_batch(model, box, segment=(2.0, 5.0), side="right"):
    tok = model.tokenizer
    prep = batching.SamplePreprocessor(TINY, tok)
    ins = prompts.render_instruction("avfact", random.Random(0), fact_type=3, box=box, segment=segment)
    text = batching.encode_example(tok, ins, "True", TINY.max_text_tokens)
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(1, 1, TINY.audio.frames_per_window, TINY.audio.num_mel_bins, generator=g).numpy()
    row = {
        "pixel_values": torch.randn(3, 224, 224, generator=g).numpy(),
        "audio_features": mel,
        "input_ids": np.asarray(text["input_ids"]),
        "labels": np.asarray(text["labels"]),
        "box_mask": np.zeros((TINY.image.grid,) * 2, np.float32),
        "has_box": False,
        "ot_pair": True,
        **prep.regions(ins, mel, 224, 224),
    }
    return batching.collate([row], tok.pad_token_id, side=side)


def test_region_features_start_as_a_no_op_then_carry_the_box(model):
    a, b = _fact_batch(model, (0.1, 0.1, 0.4, 0.4)), _fact_batch(model, (0.5, 0.5, 0.9, 0.9))
    assert a["region_pos"].item() >= 0 and a["segment_pos"].item() >= 0
    no_regions = {k: v for k, v in a.items() if k not in ("region_pos", "segment_pos")}
    with torch.no_grad():
        # zero-initialised projections: the same loss with or without the region columns
        torch.testing.assert_close(model(a)["loss_ce"], model(no_regions)["loss_ce"])
    model.zero_grad(set_to_none=True)
    model(a)["loss"].backward()
    for layer in (model.region_box_proj, model.region_match_proj, model.region_segment_proj):
        assert layer.weight.grad.abs().sum() > 0
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("region_")}
    try:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.startswith("region_"):
                    p.normal_(0, 0.05)
            # now the written box changes what the model computes, and only through the region
            assert abs(model(a)["loss_ce"].item() - model(b)["loss_ce"].item()) > 1e-4
            torch.testing.assert_close(model(a)["loss_ac"], model(b)["loss_ac"])
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.startswith("region_"):
                    p.copy_(saved[n])


def test_paper_preset_has_no_region_prompts():
    m = build_model(PRESETS["paper"], pretrained=False, device="meta")
    assert not hasattr(m, "region_box_proj")
    assert count_parameters(m, name_contains="region_") == 0


def test_projections_get_a_gradient_even_without_regions(model):
    # DDP needs every trainable parameter to take part in every step, on every rank
    batch = _fact_batch(model, (0.1, 0.1, 0.4, 0.4))
    batch["region_pos"] = torch.full_like(batch["region_pos"], -1)
    batch["segment_pos"] = torch.full_like(batch["segment_pos"], -1)
    model.zero_grad(set_to_none=True)
    model(batch)["loss"].backward()
    for layer in (model.region_box_proj, model.region_match_proj, model.region_segment_proj):
        assert layer.weight.grad is not None and not layer.weight.grad.any()


def test_ddp_steps_with_and_without_regions(model, tmp_path):
    """The failure a 2-worker run hit: DDP refuses a step after one that left a parameter unused."""
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        with_regions = _fact_batch(model, (0.1, 0.1, 0.4, 0.4))
        without = dict(with_regions)
        without["region_pos"] = torch.full_like(with_regions["region_pos"], -1)
        without["segment_pos"] = torch.full_like(with_regions["segment_pos"], -1)
        for batch in (without, with_regions, without):
            model.zero_grad(set_to_none=True)
            ddp(batch)["loss"].backward()
        assert model.region_box_proj.weight.grad is not None
    finally:
        dist.destroy_process_group()
