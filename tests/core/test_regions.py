"""Region prompts: a box or time window written in the prompt, given to the LLM as features."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from meerkat_core import batching, prompts
from meerkat_core.config import PRESETS
from meerkat_core.model import box_coverage, build_model, count_parameters

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def model():
    return build_model(TINY, pretrained=False, seed=0)


def _token_text(tok, instruction: str, pos: int) -> str:
    ids = tok(prompts.chat_prompt(instruction), add_special_tokens=True)["input_ids"]
    return tok.decode(ids[pos : pos + 1])


def test_prompt_regions_find_the_closing_brackets(model):
    tok = model.tokenizer
    ins = prompts.render_instruction(
        "avfact", random.Random(3), fact_type=3, box=(0.1, 0.2, 0.5, 0.6), segment=(3.5, 7.0)
    )
    found = batching.prompt_regions(tok, ins)
    assert found["box"] == pytest.approx((0.1, 0.2, 0.5, 0.6))
    assert found["segment"] == pytest.approx((3.5, 7.0))
    assert "]" in _token_text(tok, ins, found["box_pos"])
    assert "]" in _token_text(tok, ins, found["segment_pos"])
    # the positions index the prompt's tokens, which encode_example starts with
    enc = batching.encode_example(tok, ins, "True", TINY.max_text_tokens)
    prompt_len = sum(1 for label in enc["labels"] if label == batching.IGNORE_INDEX)
    assert found["box_pos"] < prompt_len and found["segment_pos"] < prompt_len
    # decoding the tokens before the bracket gives back the written box
    ids = enc["input_ids"][: found["box_pos"] + 1]
    assert tok.decode(ids).endswith("[0.10, 0.20, 0.50, 0.60]")


def test_prompt_regions_none_and_malformed(model):
    tok = model.tokenizer
    assert batching.prompt_regions(tok, "Where is the sound? <image> <audio>") == {
        "box": None,
        "box_pos": -1,
        "segment": None,
        "segment_pos": -1,
    }
    # corners out of order is no box; three numbers is neither
    found = batching.prompt_regions(tok, "Box [0.9, 0.2, 0.1, 0.6] or [1, 2, 3]?")
    assert found["box"] is None and found["segment"] is None
    # only the first box counts
    found = batching.prompt_regions(tok, "[0.10, 0.10, 0.20, 0.20] then [0.30, 0.30, 0.40, 0.40]")
    assert found["box"] == pytest.approx((0.1, 0.1, 0.2, 0.2))


def test_segment_features_by_hand():
    # two windows of 10 s, 11 frames each (frame t of window w at w*10 + t seconds), 2 mel bins
    mel = np.zeros((2, 1, 11, 2), np.float32)
    mel[0, 0, :, 0] = np.arange(11)  # bin 0 rises in window 0
    mel[1, 0, :, 1] = 5.0  # bin 1 is on in window 1
    feat = batching.segment_features(mel, (2.0, 4.0), 10.0)  # frames 2, 3, 4 of window 0
    clip_mean = mel[:, 0].reshape(22, 2).mean(axis=0)
    np.testing.assert_allclose(feat[:2], [3.0, 0.0])
    np.testing.assert_allclose(feat[2:], np.array([3.0, 0.0]) - clip_mean)
    # window 0's last frame (10 s) and window 1's frames 0-2 (10, 11, 12 s)
    feat = batching.segment_features(mel, (10.0, 12.0), 10.0)
    np.testing.assert_allclose(feat[:2], [10 / 4, 15 / 4])
    assert not batching.segment_features(mel, None, 10.0).any()
    assert not batching.segment_features(mel, (30.0, 40.0), 10.0).any()


def test_box_coverage_by_hand():
    cov = box_coverage(torch.tensor([[0.0, 0.0, 0.5, 0.25], [0.125, 0.0, 0.375, 1.0]]), 4)
    expected0 = torch.zeros(4, 4)
    expected0[0, :2] = 1.0
    expected1 = torch.zeros(4, 4)
    expected1[:, :2] = 0.5  # x from 0.125 to 0.375: half of cells 0 and 1
    torch.testing.assert_close(cov[0].reshape(4, 4), expected0)
    torch.testing.assert_close(cov[1].reshape(4, 4), expected1)


def test_collate_shifts_positions_by_left_padding():
    def row(n, pos):
        return {
            "pixel_values": np.zeros((3, 2, 2), np.float32),
            "audio_features": np.zeros((1, 1, 2, 2), np.float32),
            "input_ids": np.arange(n),
            "labels": np.full(n, -100),
            "box_mask": np.zeros((2, 2), np.float32),
            "has_box": False,
            "ot_pair": True,
            "region_box": np.zeros(4, np.float32),
            "region_pos": np.int64(pos),
            "segment_feat": np.zeros(4, np.float32),
            "segment_pos": np.int64(-1),
        }

    rows = [row(5, 3), row(8, 6), row(6, -1)]
    right = batching.collate(rows, 0, side="right")
    left = batching.collate(rows, 0, side="left")
    assert right["region_pos"].tolist() == [3, 6, -1]
    assert left["region_pos"].tolist() == [3 + 3, 6, -1]
    for i in range(2):  # the same token either way
        p_r, p_l = right["region_pos"][i], left["region_pos"][i]
        assert right["input_ids"][i, p_r] == left["input_ids"][i, p_l]


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
    assert model.region_box_proj.weight.grad.abs().sum() > 0
    assert model.region_segment_proj.weight.grad.abs().sum() > 0
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
    for layer in (model.region_box_proj, model.region_segment_proj):
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
