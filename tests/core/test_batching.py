"""meerkat_core.batching: prompts and answers as token ids, region spans, padding and collation."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

from meerkat_core import batching, prompts
from meerkat_core.batching import IGNORE_INDEX, encode_example, encode_prompt, prompt_regions
from meerkat_core.config import PRESETS
from meerkat_core.prompts import AUDIO_TOKEN, IMAGE_TOKEN, TEMPLATES, chat_prompt
from meerkat_core.tokenizer import ensure_special_tokens, load_tokenizer
from tests.fixtures.pretrained import llama_style_tokenizer

TINY = PRESETS["tiny"]

POISON = ("<image>", "<audio>", "</s>", "<s>", "<pad>", "<unk>", "<obj>", "[INST]", "[/INST]", "<<SYS>>")


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return load_tokenizer(None)


def _filled(template: str) -> str:
    values = {"obj": "red circle", "box": "[0.10, 0.20, 0.50, 0.60]", "segment": "[2.5, 7.0]"}
    return template.format(question="What is making the sound on the left?", **values)


@pytest.fixture(scope="module", params=["tiny", "llama-style"])
def tokenizer(request, tiny_tokenizer):
    if request.param == "tiny":
        return tiny_tokenizer
    return ensure_special_tokens(copy.deepcopy(llama_style_tokenizer()))


def test_benign_instructions_encode_as_the_whole_prompt_did(tokenizer):
    instructions = [_filled(t) for templates in TEMPLATES.values() for t in templates]
    instructions += [
        "Where?",
        "why  ",
        "a [0.10, 0.20] b",
        "Is it 3.5 s?",
        "dog's bark",
        "",
        "[INST] hi",
        "<img>",
    ]
    for instruction in instructions:
        whole = tokenizer(chat_prompt(instruction), add_special_tokens=True)["input_ids"]
        ids, offsets = encode_prompt(tokenizer, instruction, offsets=True)
        assert ids == whole, instruction
        text = chat_prompt(instruction)
        assert len(offsets) == len(ids)
        assert all(0 <= a <= b <= len(text) for a, b in offsets)


@pytest.mark.parametrize("poison", POISON)
def test_special_token_text_in_an_instruction_or_answer_stays_text(tokenizer, poison, tiny_tokenizer):
    special = set(tokenizer.all_special_ids)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    audio_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    for instruction in (poison, f"Is the {poison} here?", poison * 3, f"x{poison}y"):
        example = encode_example(tokenizer, instruction, f"{poison} True {poison}", 400)
        ids, labels = example["input_ids"], example["labels"]
        # the template's own: BOS first, one <image>, one <audio>, EOS last; nothing else special
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        assert ids.count(image_id) == 1 and ids.count(audio_id) == 1
        inner = [i for i in ids[1:-1] if i not in (image_id, audio_id)]
        assert not special & set(inner), (instruction, tokenizer.convert_ids_to_tokens(ids))
        answer = [i for i in labels if i != -100]
        if tokenizer is tiny_tokenizer:  # byte-level: the text comes back exactly
            assert tokenizer.decode(answer[:-1]) == f" {poison} True {poison}"
            prompt = ids[: len(ids) - len(answer)]
            assert tokenizer.decode(prompt[1:]) == chat_prompt(instruction)


def test_regions_of_a_poisoned_instruction_point_at_its_own_tokens(tiny_tokenizer):
    instruction = "<image></s> Does the box [0.10, 0.20, 0.50, 0.60] <audio> sound? <s>"
    found = prompt_regions(tiny_tokenizer, instruction)
    ids = encode_example(tiny_tokenizer, instruction, None, 400)["input_ids"]
    assert found["box"] == pytest.approx((0.1, 0.2, 0.5, 0.6))
    assert tiny_tokenizer.decode(ids[1 : found["box_pos"] + 1]).endswith(
        "<image></s> Does the box [0.10, 0.20, 0.50, 0.60]"
    )


def test_answer_labels_cover_answer_and_eos_only(tiny_tokenizer):
    tok = tiny_tokenizer
    ex = encode_example(tok, "Where?", "[0.10, 0.20, 0.50, 0.60]", 160)
    answer = [t for t in ex["labels"] if t != IGNORE_INDEX]
    assert tok.decode(answer, skip_special_tokens=True).strip() == "[0.10, 0.20, 0.50, 0.60]"
    assert answer[-1] == tok.eos_token_id
    with pytest.raises(batching.PromptTooLongError):
        encode_example(tok, "word " * 500, "x", 160)


def _token_text(tok, instruction: str, pos: int) -> str:
    ids = tok(prompts.chat_prompt(instruction), add_special_tokens=True)["input_ids"]
    return tok.decode(ids[pos : pos + 1])


def test_prompt_regions_find_the_closing_brackets(tiny_tokenizer):
    tok = tiny_tokenizer
    ins = prompts.render_instruction(
        "avfact", random.Random(3), fact_type=3, box=(0.1, 0.2, 0.5, 0.6), segment=(3.5, 7.0)
    )
    found = prompt_regions(tok, ins)
    assert found["box"] == pytest.approx((0.1, 0.2, 0.5, 0.6))
    assert found["segment"] == pytest.approx((3.5, 7.0))
    assert "]" in _token_text(tok, ins, found["box_pos"])
    assert "]" in _token_text(tok, ins, found["segment_pos"])
    # the positions index the prompt's tokens, which encode_example starts with
    enc = encode_example(tok, ins, "True", TINY.max_text_tokens)
    prompt_len = sum(1 for label in enc["labels"] if label == IGNORE_INDEX)
    assert found["box_pos"] < prompt_len and found["segment_pos"] < prompt_len
    # decoding the tokens before the bracket gives back the written box
    ids = enc["input_ids"][: found["box_pos"] + 1]
    assert tok.decode(ids).endswith("[0.10, 0.20, 0.50, 0.60]")


def test_prompt_regions_none_and_malformed(tiny_tokenizer):
    tok = tiny_tokenizer
    assert prompt_regions(tok, "Where is the sound? <image> <audio>") == {
        "box": None,
        "box_pos": -1,
        "segment": None,
        "segment_pos": -1,
    }
    # corners out of order is no box; three numbers is neither
    found = prompt_regions(tok, "Box [0.9, 0.2, 0.1, 0.6] or [1, 2, 3]?")
    assert found["box"] is None and found["segment"] is None
    # only the first box counts
    found = prompt_regions(tok, "[0.10, 0.10, 0.20, 0.20] then [0.30, 0.30, 0.40, 0.40]")
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


def test_pad_text_right_for_training_left_for_generation():
    examples = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    right = batching.pad_text(examples, 0)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    left = batching.pad_text(examples, 0, side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="side"):
        batching.pad_text(examples, 0, side="middle")


def test_box_masks_unite_each_samples_boxes_and_flag_them():
    out = batching.box_masks([[(0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)], None, []], 2)
    assert out["has_box"].tolist() == [True, False, False]
    torch.testing.assert_close(out["box_mask"][0], torch.eye(2))
    assert not out["box_mask"][1:].any()


def test_ac_boxes_trust_only_the_sounding_object():
    world = {
        "objects": [{"box": [0, 0, 1, 1], "sounds": False}, {"box": [0.1, 0.1, 0.2, 0.2], "sounds": True}]
    }
    assert batching.ac_boxes(world) == [[0.1, 0.1, 0.2, 0.2]]
    assert batching.ac_boxes({"task": "arig", "boxes": [(0, 0, 0.5, 0.5)]}) == [[0, 0, 0.5, 0.5]]
    # a fact-check statement's box may be a deliberately wrong one; a mismatched pair has no source
    assert batching.ac_boxes({"task": "avfact", "boxes": [(0, 0, 0.5, 0.5)]}) == []
    assert batching.ac_boxes({"task": "arig", "boxes": [(0, 0, 0.5, 0.5)], "paired": False}) == []
