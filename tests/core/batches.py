"""Training batches of the tiny preset for the model's tests: ARIG prompts, given answers, random media."""

from __future__ import annotations

import random

import torch

from meerkat_core import batching, prompts
from meerkat_core.config import PRESETS

TINY = PRESETS["tiny"]


def make_batch(model, answers, boxes=None, seed=0, ot_pair=None):
    """A right-padded batch: one ARIG instruction per answer, sample i's media seeded by (seed, i) so
    that it is the same whatever the batch size; ``boxes`` per sample (a list of boxes, or None)."""
    tok = model.tokenizer
    examples = [
        batching.encode_example(
            tok, prompts.render_instruction("arig", random.Random(i)), a, TINY.max_text_tokens
        )
        for i, a in enumerate(answers)
    ]
    batch = batching.pad_text(examples, tok.pad_token_id)
    batch.update(batching.box_masks(boxes or [None] * len(answers), TINY.image.grid))
    pixels, audio = [], []
    for i in range(len(answers)):
        g = torch.Generator().manual_seed(1000 * seed + i)
        pixels.append(torch.randn(3, 224, 224, generator=g))
        audio.append(torch.randn(1, 1, TINY.audio.frames_per_window, TINY.audio.num_mel_bins, generator=g))
    batch["pixel_values"] = torch.stack(pixels)
    batch["audio_features"] = torch.stack(audio)
    if ot_pair is not None:
        batch["ot_pair"] = torch.tensor(ot_pair)
    return batch
