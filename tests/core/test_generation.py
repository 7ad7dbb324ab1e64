"""meerkat_core.generation on the tiny model: prompt rows, the left-padded batch, the answers."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from meerkat_core import batching, generation, media
from meerkat_core.builders import build_model
from meerkat_core.config import PRESETS

INSTRUCTIONS = ("Where is the sound?", "Describe what you hear in this scene, please.")


def _png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (shade, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _wav(seconds: float) -> bytes:
    buffer = io.BytesIO()
    tone = 0.2 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * 16_000)) / 16_000).astype(np.float32)
    sf.write(buffer, tone, 16_000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model():
    return build_model(PRESETS["tiny"], pretrained=False, seed=0).eval()


@pytest.fixture(scope="module")
def prep(model):
    return batching.SamplePreprocessor(model.config, model.tokenizer)


@pytest.fixture(scope="module")
def rows(prep):
    return [
        generation.prompt_row(prep, _png(60 * i), _wav(1.0 + i), text) for i, text in enumerate(INSTRUCTIONS)
    ]


def test_prompt_row_takes_an_instruction_or_a_samples_metadata(prep, rows):
    row = generation.prompt_row(prep, _png(0), _wav(1.0), {"instruction": INSTRUCTIONS[0], "task": "arig"})
    assert np.array_equal(row["input_ids"], rows[0]["input_ids"])
    # a generation prompt: no answer tokens, nothing to learn from
    assert (row["labels"] == batching.IGNORE_INDEX).all()
    ids, _ = batching.encode_prompt(prep.tokenizer, INSTRUCTIONS[0])
    assert list(row["input_ids"]) == ids


def test_prompt_row_refuses_bad_media(prep):
    with pytest.raises(media.MediaError):
        generation.prompt_row(prep, b"not an image", _wav(1.0), INSTRUCTIONS[0])


def test_generation_batch_pads_on_the_left_and_moves_to_the_device(model, rows):
    batch = generation.generation_batch(rows, model.tokenizer.pad_token_id, "cpu")
    lengths = [len(r["input_ids"]) for r in rows]
    assert lengths[0] != lengths[1]
    mask = batch["attention_mask"]
    assert mask.shape == (2, max(lengths))
    assert mask[:, -1].all() and mask.sum(1).tolist() == lengths  # every prompt ends at the last column
    assert all(v.device == torch.device("cpu") for v in batch.values())


def test_generate_answers_is_the_models_generate_on_the_left_padded_batch(model, rows):
    with torch.no_grad():
        texts = generation.generate_answers(model, rows, max_new_tokens=6)
        direct = model.generate(
            batching.collate(rows, model.tokenizer.pad_token_id, side="left"), max_new_tokens=6
        )
        with_attention, attn = generation.generate_answers(
            model, rows, max_new_tokens=6, device="cpu", return_attention=True
        )
    assert texts == direct == with_attention
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    grid = model.config.image.grid
    assert attn.shape == (2, grid, grid)
