"""From samples to model batches: chat tokenization with answer-only labels, padding, box masks.

Used by the Ray Data stages of training and evaluation and by the Serve deployment, so that the
three build exactly the same tensors.

A text example is ``chat_prompt(instruction)`` (which carries ``<image>`` and ``<audio>`` once each)
followed by ``chat_target(answer)`` and EOS. Labels are ``-100`` on the prompt and on padding, so
the cross-entropy counts the answer tokens (and EOS) of every sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from meerkat_core import grounding, media, prompts
from meerkat_core.config import ModelConfig

IGNORE_INDEX = -100


class PromptTooLongError(ValueError):
    """The prompt alone does not fit the model's text budget."""


def encode_example(
    tokenizer: PreTrainedTokenizerBase, instruction: str, answer: str | None, max_tokens: int
) -> dict[str, list[int]]:
    """Token ids and labels of one example; ``answer=None`` gives a generation prompt.

    The answer is cut (EOS kept) when prompt + answer exceed ``max_tokens``; a prompt that alone
    exceeds it raises :class:`PromptTooLongError`.
    """
    prompt_ids = tokenizer(prompts.chat_prompt(instruction), add_special_tokens=True)["input_ids"]
    if len(prompt_ids) > max_tokens - (1 if answer is None else 2):
        raise PromptTooLongError(f"prompt is {len(prompt_ids)} tokens; the limit is {max_tokens}")
    if answer is None:
        return {"input_ids": prompt_ids, "labels": [IGNORE_INDEX] * len(prompt_ids)}
    answer_ids = tokenizer(prompts.chat_target(answer), add_special_tokens=False)["input_ids"]
    answer_ids = answer_ids[: max_tokens - len(prompt_ids) - 1] + [tokenizer.eos_token_id]
    return {
        "input_ids": prompt_ids + answer_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    }


def pad_text(
    examples: Sequence[dict[str, list[int]]], pad_id: int, *, side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad ``input_ids``/``labels`` to the longest example: ``[B, L]`` tensors plus ``attention_mask``.

    Training pads on the right; generation on the left, so that every prompt ends where the
    generated tokens begin.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    length = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        sl = slice(length - n, length) if side == "left" else slice(0, n)
        ids[i, sl] = torch.tensor(e["input_ids"])
        labels[i, sl] = torch.tensor(e["labels"])
        mask[i, sl] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def box_masks(
    boxes_per_sample: Sequence[Sequence[Sequence[float]] | None], grid: int
) -> dict[str, torch.Tensor]:
    """``box_mask [B, grid, grid]`` (union of each sample's boxes) and ``has_box [B]``."""
    masks = np.zeros((len(boxes_per_sample), grid, grid), dtype=np.float32)
    has = np.zeros(len(boxes_per_sample), dtype=bool)
    for i, boxes in enumerate(boxes_per_sample):
        if boxes:
            masks[i] = grounding.boxes_to_mask(list(boxes), grid)
            has[i] = bool(masks[i].any())
    return {"box_mask": torch.from_numpy(masks), "has_box": torch.from_numpy(has)}


def ac_boxes(meta: dict[str, Any]) -> list[list[float]]:
    """The sounding object's box(es) that supervise AVACE (L_AC), or ``[]``.

    A sample's ``boxes`` are not always the sounding object: in a fact-check statement they may be
    a deliberately wrong box. So the procedural world's ``objects`` (with their ``sounds`` flag)
    take precedence; otherwise only grounding (``arig``) boxes are trusted. Mismatched pairs
    (``paired: False``) have no sounding object in the picture.
    """
    if not meta.get("paired", True):
        return []
    if "objects" in meta:
        return [list(o["box"]) for o in meta["objects"] if o.get("sounds")]
    if meta.get("task") == "arig":
        return [list(b) for b in meta.get("boxes", []) or []]
    return []


class SamplePreprocessor:
    """One decoded-or-encoded sample -> the numpy arrays of one batch row.

    Shared by the Ray Data stages (training, evaluation) and the Serve deployment, so that all
    three feed the model the same tensors. Heavy state (the mel filter bank) is built once in
    ``__init__``; ``__call__`` is per sample and raises :class:`~meerkat_core.media.MediaError` or
    :class:`ValueError` on bad input, which the callers count and skip.
    """

    def __init__(self, config: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        self.config = config
        self.tokenizer = tokenizer
        a = config.audio
        self.image = media.ImagePreprocessor(config.image.image_size)
        self.audio = media.AudioPreprocessor(
            a.sampling_rate, a.num_mel_bins, a.hop_length, a.window_seconds, a.num_windows
        )
        self.max_audio_seconds = max(600.0, a.clip_seconds)

    def __call__(
        self,
        image: bytes | Image.Image,
        audio: bytes | np.ndarray,
        meta: dict[str, Any],
        *,
        with_answer: bool = True,
    ) -> dict[str, Any]:
        """Row with ``pixel_values [3,S,S]``, ``audio_features [W,1,T,F]``, ``input_ids``, ``labels``,
        ``box_mask [g,g]``, ``has_box``, ``ot_pair``."""
        img = image if isinstance(image, Image.Image) else media.load_image(image)
        wave = (
            audio
            if isinstance(audio, np.ndarray)
            else media.load_audio(
                audio, target_sr=self.config.audio.sampling_rate, max_seconds=self.max_audio_seconds
            )
        )
        text = encode_example(
            self.tokenizer,
            meta["instruction"],
            meta["answer"] if with_answer else None,
            self.config.max_text_tokens,
        )
        size, grid = self.config.image.image_size, self.config.image.grid
        crop_boxes = [
            b for b in (media.box_to_crop(box, img.width, img.height, size) for box in ac_boxes(meta)) if b
        ]
        mask = grounding.boxes_to_mask(crop_boxes, grid) if crop_boxes else np.zeros((grid, grid), np.float32)
        return {
            "pixel_values": self.image([img])[0].numpy(),
            "audio_features": self.audio([wave])[0].numpy(),
            "input_ids": np.asarray(text["input_ids"], dtype=np.int64),
            "labels": np.asarray(text["labels"], dtype=np.int64),
            "box_mask": mask,
            "has_box": bool(mask.any()),
            "ot_pair": bool(meta.get("paired", True)),
        }


def collate(rows: Sequence[dict[str, Any]], pad_id: int, *, side: str = "right") -> dict[str, torch.Tensor]:
    """Rows of :class:`SamplePreprocessor` -> a model batch (text padded on ``side``)."""
    batch = pad_text(
        [{"input_ids": list(r["input_ids"]), "labels": list(r["labels"])} for r in rows], pad_id, side=side
    )
    batch["pixel_values"] = torch.from_numpy(np.stack([r["pixel_values"] for r in rows]))
    batch["audio_features"] = torch.from_numpy(np.stack([r["audio_features"] for r in rows]))
    batch["box_mask"] = torch.from_numpy(np.stack([r["box_mask"] for r in rows]).astype(np.float32))
    batch["has_box"] = torch.tensor([bool(r["has_box"]) for r in rows])
    batch["ot_pair"] = torch.tensor([bool(r["ot_pair"]) for r in rows])
    return batch
