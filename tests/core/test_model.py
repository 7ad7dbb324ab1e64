"""meerkat_core.model: MeerkatModel's composition on the tiny preset (loss terms, gradients, generation)."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from meerkat_core import batching, grounding, prompts
from meerkat_core.batching import IGNORE_INDEX
from meerkat_core.builders import build_model
from meerkat_core.config import PRESETS
from meerkat_core.model import count_parameters
from tests.core.batches import make_batch

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def model():
    return build_model(TINY, pretrained=False, seed=0)


def _assert_loss_is_the_weighted_sum(out: dict) -> None:
    lc = TINY.loss
    torch.testing.assert_close(
        out["loss"],
        out["loss_ce"]
        + lc.lambda_ot * out["loss_ot"]
        + lc.lambda_ac * out["loss_ac"]
        + lc.lambda_match * out["loss_match"]
        + lc.lambda_time * out["loss_time"],
    )


def test_loss_terms_finite_and_gradients_only_on_trainable(model):
    model.zero_grad(set_to_none=True)
    batch = make_batch(
        model, ["[0.10, 0.20, 0.50, 0.60]", "[0.30, 0.30, 0.90, 0.70]"], boxes=[[[0.1, 0.2, 0.5, 0.6]], None]
    )
    out = model(batch)
    for k in ("loss", "loss_ce", "loss_ot", "loss_ac"):
        assert torch.isfinite(out[k]) and out[k].ndim == 0, k
    assert out["loss_ot"] > 0 and out["loss_ac"] > 0
    _assert_loss_is_the_weighted_sum(out)
    out["loss"].backward()
    reached = {n for n, p in model.named_parameters() if p.grad is not None}
    with_grad = {n for n in reached if dict(model.named_parameters())[n].grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # every trainable tensor gets a gradient, nothing frozen does; these prompts write no box or
    # window, so the region-prompt projections are unused (tests/core/test_regions.py covers them)
    assert reached == {n for n in trainable if not n.startswith("region_")}
    # lora_B starts at zero, so only it moves on the first step (lora_A's gradient is B^T-scaled)
    assert any("lora_B" in n for n in with_grad) and any("lora_A" in n for n in reached)
    assert any(n.startswith("avace.aud_to_img") for n in with_grad)
    assert any(n.startswith("avace.img_in") for n in with_grad)
    assert any(n.startswith("img_to_llm") for n in with_grad) and any(
        n.startswith("aud_to_llm") for n in with_grad
    )
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.startswith("image_encoder") for n in frozen) and any(
        n.startswith("audio_encoder") for n in frozen
    )
    assert all(not (n.startswith(("image_encoder", "audio_encoder"))) for n in trainable)
    # in the LLM only adapters and the preset's modules_to_save (tiny: lm_head) train
    assert all(("lora_" in n) or ("modules_to_save" in n) for n in trainable if n.startswith("llm"))
    assert count_parameters(model.llm, trainable=True) < 0.5 * count_parameters(model.llm)


def test_no_boxes_gives_zero_ac_without_nan(model):
    out = model(make_batch(model, ["[0.10, 0.20, 0.50, 0.60]", "[0.30, 0.30, 0.90, 0.70]"]))
    assert out["loss_ac"].item() == 0.0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_negative_pairs_add_no_ot(model):
    answers = ["True", "False"]
    both = model(make_batch(model, answers, ot_pair=[True, True]))["loss_ot"]
    first_only = model(make_batch(model, answers, ot_pair=[True, False]))["loss_ot"]
    none = model(make_batch(model, answers, ot_pair=[False, False]))["loss_ot"]
    alone = model(make_batch(model, answers[:1], ot_pair=[True]))["loss_ot"]
    assert none.item() == 0.0
    torch.testing.assert_close(first_only, alone)
    assert abs(both.item() - first_only.item()) > 1e-6


def test_ce_counts_every_samples_answer_tokens(model):
    batch = make_batch(
        model, ["[0.10, 0.20, 0.50, 0.60]", "A red circle beeps twice while a blue square hums."]
    )
    out = model(batch)
    media = model.encode_media(batch["pixel_values"], batch["audio_features"])
    embeds, mask, labels = model._merge(batch["input_ids"], batch["attention_mask"], batch["labels"], media)
    logits = model.llm(inputs_embeds=embeds, attention_mask=mask).logits
    per_sample_sum, per_sample_n = [], []
    for i in range(2):
        t = labels[i, 1:]
        keep = t != IGNORE_INDEX
        per_sample_sum.append(F.cross_entropy(logits[i, :-1][keep], t[keep], reduction="sum"))
        per_sample_n.append(keep.sum())
    assert per_sample_n[0] > 0 and per_sample_n[1] > per_sample_n[0]
    expected = sum(per_sample_sum) / sum(per_sample_n)
    torch.testing.assert_close(out["loss_ce"], expected, rtol=1e-4, atol=1e-5)
    # the second sample's answer matters too
    other = make_batch(model, ["[0.10, 0.20, 0.50, 0.60]", "Silence."])
    assert abs(model(other)["loss_ce"].item() - out["loss_ce"].item()) > 1e-4


def test_tiny_overfits_eight_samples_and_generates_the_box():
    torch.manual_seed(0)
    model = build_model(TINY, pretrained=False, seed=1)
    rng = random.Random(0)
    boxes = []
    for _ in range(8):
        x1, y1 = rng.uniform(0, 0.5), rng.uniform(0, 0.5)
        boxes.append([x1, y1, x1 + rng.uniform(0.2, 0.45), y1 + rng.uniform(0.2, 0.45)])
    answers = [grounding.format_box(b) for b in boxes]
    batch = make_batch(model, answers, boxes=[[b] for b in boxes], seed=3)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    model.train()
    first = last = None
    for _step in range(300):
        loss = model(batch)["loss_ce"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        (loss + 0.0).backward()
        opt.step()
        last = loss.item()
        if last < 0.02 * first:
            break
    assert last <= 0.1 * first, (first, last)
    model.eval()
    tok = model.tokenizer
    prompt = batching.encode_example(tok, prompts.render_instruction("arig", random.Random(2)), None, 160)
    gen = batching.pad_text([prompt], tok.pad_token_id, side="left")
    gen["pixel_values"] = batch["pixel_values"][2:3]
    gen["audio_features"] = batch["audio_features"][2:3]
    (text,) = model.generate(gen, max_new_tokens=24)
    assert text == answers[2]
    assert grounding.parse_box(text) is not None


def test_soft_number_labels_reward_near_misses_and_zero_sigma_is_plain_ce():
    from meerkat_core.config import replace_path

    hard = build_model(TINY, pretrained=False, seed=0)
    soft = build_model(replace_path(TINY, "loss.number_label_sigma", 1.5), pretrained=False, seed=0)
    batch = make_batch(hard, ["[0.10, 0.20, 0.50, 0.60]", "True"])
    plain = hard(batch)["loss_ce"]
    # same weights (same seed), only the targets of the four numbers differ
    smoothed = soft(batch)["loss_ce"]
    assert torch.isfinite(smoothed) and abs(smoothed.item() - plain.item()) > 1e-4
    ids = soft.number_ids
    targets = soft.number_targets
    assert targets.shape == (len(ids), len(ids))
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(len(ids)))
    slot = int(soft.number_slot[soft.tokenizer.convert_tokens_to_ids("0.40")])
    row = targets[slot]
    assert row.argmax() == slot and row[slot + 1] > row[slot + 3] > row[slot + 10]
    assert len(hard.number_ids) == 0


def test_time_stamps_add_the_time_tokens_embedding_to_each_audio_token(model):
    assert TINY.audio_time_stamps and not PRESETS["paper"].audio_time_stamps
    batch = make_batch(model, ["[0.10, 0.20, 0.50, 0.60]"])
    with torch.no_grad():
        on = model.encode_media(batch["pixel_values"], batch["audio_features"]).aud
        z_img = model.image_encoder(batch["pixel_values"])[:, 1:]
        av = model.avace(z_img, model.audio_encoder(batch["audio_features"]))
        plain = model.aud_to_llm(av.aud)
        stamps = model.llm.get_input_embeddings()(model.audio_time_ids)  # [N, D_T]
    assert on.shape == plain.shape == (1, TINY.audio.num_tokens, stamps.shape[1])
    torch.testing.assert_close(on, plain + model.audio_time_gain * stamps)
    vocab = model.tokenizer.convert_ids_to_tokens(model.audio_time_ids[[0, 31, 32]].tolist())
    assert vocab == ["0.2", "9.8", "0.2"]


def test_time_stamps_off_is_the_model_without_them():
    from dataclasses import replace

    from meerkat_core.tokenizer import number_tokens

    off_cfg = replace(TINY, audio_time_stamps=False)
    off = build_model(off_cfg, pretrained=False, seed=0)
    assert not hasattr(off, "audio_time_gain") and not hasattr(off, "audio_time_ids")
    assert not any("audio_time" in n for n, _ in off.named_parameters())
    batch = make_batch(off, ["[0.10, 0.20, 0.50, 0.60]"])
    with torch.no_grad():
        aud = off.encode_media(batch["pixel_values"], batch["audio_features"]).aud
        z_img = off.image_encoder(batch["pixel_values"])[:, 1:]
        plain = off.aud_to_llm(off.avace(z_img, off.audio_encoder(batch["audio_features"])).aud)
    torch.testing.assert_close(aud, plain)

    # the time tokens' rows: harmonics when off (0.3 s apart nearly the same), octaves when on
    def cos(m, a: float, b: float) -> float:
        ids = dict((v, i) for i, v in number_tokens(m.tokenizer)["time"])
        emb = m.llm.get_input_embeddings().weight
        return F.cosine_similarity(emb[ids[a]], emb[ids[b]], dim=0).item()

    on = build_model(TINY, pretrained=False, seed=0)
    assert cos(off, 2.0, 2.3) > 0.99 and cos(on, 2.0, 2.3) < 0.85
    assert cos(on, 2.0, 2.1) > cos(on, 2.0, 2.3) > cos(on, 2.0, 5.0)  # still smooth in the value
    box = dict((v, i) for i, v in number_tokens(on.tokenizer)["box"])
    torch.testing.assert_close(  # box rows are the same either way
        on.llm.get_input_embeddings().weight[list(box.values())],
        off.llm.get_input_embeddings().weight[list(box.values())],
    )


def test_time_map_window_gives_back_a_window_of_whole_tokens():
    from meerkat_core.encoders import audio_token_times
    from meerkat_core.model import time_map_window

    starts, ends = audio_token_times(TINY.audio)
    centres = torch.tensor((starts + ends) / 2, dtype=torch.float32)
    step = 10.0 / 32
    # slots 8..15 of both bands: [2.5, 5.0] s exactly, with or without a floor below 0.5 outside
    inside = ((centres >= 2.5) & (centres <= 5.0)).float()
    got = time_map_window(torch.stack([inside, inside * 0.6 + 0.4]), centres, step, 10.0, 2)
    torch.testing.assert_close(got, torch.tensor([[2.5, 5.0], [2.5, 5.0]]))
    # bands are averaged: slot 8 above 0.5 in one band only (mean 0.5) is not in the window
    one_band = inside.clone()
    one_band[8] = 0.0
    torch.testing.assert_close(
        time_map_window(one_band[None], centres, step, 10.0, 2)[0], torch.tensor([2.8125, 5.0])
    )
    # no slot above 0.5: mu +- sqrt(3) sigma; one token at 0 s -> [c - step/2, c + step/2], clamped
    one = torch.zeros(64)
    one[0] = 0.4
    torch.testing.assert_close(
        time_map_window(one[None], centres, step, 10.0, 2)[0], torch.tensor([0.0, step])
    )
    spread = torch.full((64,), 0.3)  # uniform over the clip: the whole clip
    torch.testing.assert_close(
        time_map_window(spread[None], centres, step, 10.0, 2)[0], torch.tensor([0.0, 10.0])
    )


def test_answer_windows_and_the_time_map_loss_by_hand(model):
    from meerkat_core.model import answer_windows, time_map_loss

    tok = model.tokenizer
    batch = make_batch(model, ["[2.3, 5.1]", "[0.10, 0.20, 0.50, 0.60]", "[5.1, 2.3]"])
    window, has = answer_windows(batch["labels"], model.time_values)
    assert has.tolist() == [True, False, False]  # a box is no window; nor is a reversed one
    torch.testing.assert_close(window[0], torch.tensor([2.3, 5.1]))
    assert tok.convert_tokens_to_ids("2.3") in batch["labels"][0].tolist()
    centres = model.audio_token_centres
    inside = ((centres >= 2.3) & (centres <= 5.1)).float()  # 9 slots per band: 2.34 .. 4.84 s
    assert int(inside.sum()) == 2 * 9
    logits = torch.zeros(3, 64)
    logits[0] = 2.0 * (2 * inside - 1)  # +2 inside, -2 outside: BCE = log(1 + e^-2) on every token
    got = time_map_loss(logits, batch["labels"], model.time_values, centres)
    torch.testing.assert_close(got, torch.tensor(math.log(1 + math.exp(-2.0))))
    none = time_map_loss(logits[1:2].requires_grad_(), batch["labels"][1:2], model.time_values, centres)
    assert none.item() == 0.0 and none.requires_grad  # in the graph for DDP


def test_time_map_loss_is_added_and_off_means_no_head(model):
    batch = make_batch(model, ["[2.3, 5.1]", "[0.10, 0.20, 0.50, 0.60]"])
    out = model(batch)
    assert out["loss_time"] > 0
    _assert_loss_is_the_weighted_sum(out)
    from dataclasses import replace

    off = build_model(replace(TINY, audio_time_map=False), pretrained=False, seed=0)
    assert not any(n.startswith("time_") for n, _ in off.named_parameters())
    assert "loss_time" not in off(make_batch(off, ["[2.3, 5.1]"]))
