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
from meerkat_core.correspondence import class_columns

IGNORE_INDEX = -100


class PromptTooLongError(ValueError):
    """The prompt alone does not fit the model's text budget."""


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, instruction: str, *, offsets: bool = False
) -> tuple[list[int], list[tuple[int, int]] | None]:
    """Token ids of ``prompts.chat_prompt(instruction)``, BOS first, and with ``offsets`` each
    token's character span in that text (None from a slow tokenizer, which has none).

    This is where user text is kept from becoming a placeholder or special token. An instruction
    that spells none of the tokenizer's special tokens is encoded with the template as one string,
    exactly as before this guard existed (so trained models see the same ids). One that does
    (``<image>``, ``<audio>``, ``</s>``, ``<pad>``, ... typed by a user; an extra ``<image>`` would
    make the model fail, a ``</s>`` end the prompt) is encoded apart from the template, with
    ``split_special_tokens=True``: those characters are then plain text. Ordinary added tokens (the
    tiny tokenizer's numbers) still apply. ``[INST]`` is not a special token of the project's
    tokenizers: typed by a user, it stays text, as in any Llama-2 chat.
    """
    text = prompts.chat_prompt(instruction)
    with_offsets = offsets and tokenizer.is_fast
    if not _spells_special_tokens(tokenizer, instruction):
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=with_offsets)
        return list(enc["input_ids"]), ([tuple(o) for o in enc["offset_mapping"]] if with_offsets else None)
    before, after = prompts.chat_prompt_parts()
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    start = 0
    for index, (piece, user) in enumerate(((before, False), (instruction, True), (after, False))):
        enc = tokenizer(
            piece,
            add_special_tokens=index == 0,
            split_special_tokens=user,
            return_offsets_mapping=with_offsets,
        )
        ids.extend(enc["input_ids"])
        if with_offsets:
            spans.extend((a + start, b + start) for a, b in enc["offset_mapping"])
        start += len(piece)
    return ids, (spans if with_offsets else None)


def _spells_special_tokens(tokenizer: PreTrainedTokenizerBase, instruction: str) -> bool:
    """Whether the prompt holds more special-token text than its template alone (also across the
    instruction's edges)."""
    specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    specials.update(tokenizer.all_special_tokens)
    text, template = prompts.chat_prompt(instruction), prompts.chat_prompt("")
    return any(text.count(s) != template.count(s) for s in specials if s)


def encode_example(
    tokenizer: PreTrainedTokenizerBase, instruction: str, answer: str | None, max_tokens: int
) -> dict[str, list[int]]:
    """Token ids and labels of one example; ``answer=None`` gives a generation prompt.

    The answer is cut (EOS kept) when prompt + answer exceed ``max_tokens``; a prompt that alone
    exceeds it raises :class:`PromptTooLongError`. Instruction and answer are text, never special
    tokens (see :func:`encode_prompt`).
    """
    prompt_ids, _ = encode_prompt(tokenizer, instruction)
    if len(prompt_ids) > max_tokens - (1 if answer is None else 2):
        raise PromptTooLongError(f"prompt is {len(prompt_ids)} tokens; the limit is {max_tokens}")
    if answer is None:
        return {"input_ids": prompt_ids, "labels": [IGNORE_INDEX] * len(prompt_ids)}
    answer_ids = tokenizer(prompts.chat_target(answer), add_special_tokens=False, split_special_tokens=True)[
        "input_ids"
    ]
    answer_ids = answer_ids[: max_tokens - len(prompt_ids) - 1] + [tokenizer.eos_token_id]
    return {
        "input_ids": prompt_ids + answer_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    }


def prompt_regions(tokenizer: PreTrainedTokenizerBase, instruction: str) -> dict[str, Any]:
    """The first box ``[x1, y1, x2, y2]`` and the first time segment ``[t0, t1]`` written in the
    instruction, with the index of the token holding each one's closing bracket in the prompt's
    tokens (those :func:`encode_example` starts with).

    Returns ``{"box": (x1, y1, x2, y2) | None, "box_pos": int, "segment": (t0, t1) | None,
    "segment_pos": int}`` (-1 where there is none). Tokenizer-agnostic: the spans are found in the
    chat prompt's text and mapped to tokens through the fast tokenizer's offsets; a span whose
    bracket no token covers (or a slow tokenizer, which has no offsets) is left out.
    """
    out: dict[str, Any] = {"box": None, "box_pos": -1, "segment": None, "segment_pos": -1}
    text = prompts.chat_prompt(instruction)
    found: dict[str, tuple[tuple[float, ...], int]] = {}
    for match in grounding.BRACKET_GROUP.finditer(text):
        box, segment = grounding.parse_box(match.group(0)), grounding.parse_segment(match.group(0))
        if box is not None and "box" not in found:
            found["box"] = (box, match.end() - 1)
        elif segment is not None and "segment" not in found:
            found["segment"] = (segment, match.end() - 1)
    if not found:
        return out
    _, offsets = encode_prompt(tokenizer, instruction, offsets=True)
    if offsets is None:
        return out
    for name, (value, char) in found.items():
        pos = next((i for i, (a, b) in enumerate(offsets) if a <= char < b), -1)
        if pos >= 0:
            out[name], out[f"{name}_pos"] = value, pos
    return out


def segment_features(mel: np.ndarray, segment: Sequence[float] | None, window_seconds: float) -> np.ndarray:
    """``[2F]``: the mean log-mel frame inside ``segment`` (seconds), and that minus the clip's mean.

    ``mel`` is one clip's ``[W, 1, T, F]`` windows of ``window_seconds`` each (frame ``t`` of window
    ``w`` at ``(w + t / (T - 1)) * window_seconds``). The region feature of a time window written in
    a prompt (see :mod:`meerkat_core.regions`); zeros when there is no segment or it
    covers no frame.
    """
    w, _, t, f = mel.shape
    out = np.zeros(2 * f, dtype=np.float32)
    if segment is None:
        return out
    frames = mel[:, 0].reshape(w * t, f)  # [W*T, F], time order
    times = (np.arange(w)[:, None] + np.arange(t)[None, :] / max(t - 1, 1)).reshape(-1) * window_seconds
    inside = (times >= segment[0]) & (times <= segment[1])
    if not inside.any():
        return out
    mean_in = frames[inside].mean(axis=0)
    out[:f], out[f:] = mean_in, mean_in - frames.mean(axis=0)
    return out


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


def front_ends(config: ModelConfig) -> tuple[media.ImageFrontEnd, media.AudioFrontEnd]:
    """The image and audio front ends of a model config.

    When the config names a checkpoint (``image.name_or_path``, ``audio.name_or_path``), the front
    end is that checkpoint's (its ``preprocessor_config.json``, at the config's revision), and it
    must agree with the config's own fields, which the rest of the pipeline reads (crop size and
    patch grid, sampling rate, mel bins, hop, window length): a mismatch raises ValueError naming
    the field. Without a checkpoint the config's fields build CLIP's and CLAP's default front ends.
    """
    i, a = config.image, config.audio
    if i.name_or_path:
        image = media.ImageFrontEnd.from_pretrained(i.name_or_path, i.revision)
        if image.image_size != i.image_size:
            raise ValueError(
                f"{i.name_or_path} crops images to {image.image_size} px but model.image.image_size is "
                f"{i.image_size}"
            )
    else:
        image = media.ImageFrontEnd(i.image_size)
    if a.name_or_path:
        audio = media.AudioFrontEnd.from_pretrained(a.name_or_path, a.revision, num_windows=a.num_windows)
        for name, theirs, ours in (
            ("sampling_rate", audio.sampling_rate, a.sampling_rate),
            ("num_mel_bins", audio.num_mel_bins, a.num_mel_bins),
            ("hop_length", audio.hop_length, a.hop_length),
            ("window_seconds", audio.window_samples / audio.sampling_rate, a.window_seconds),
        ):
            if theirs != ours:
                raise ValueError(
                    f"the front end of {a.name_or_path} has {name} {theirs} but model.audio.{name} is {ours}"
                )
    else:
        audio = media.AudioFrontEnd(
            a.sampling_rate, a.num_mel_bins, a.hop_length, a.window_seconds, a.num_windows
        )
    return image, audio


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
        self.image, self.audio = front_ends(config)
        self.max_audio_seconds = max(600.0, config.audio.clip_seconds)

    def __call__(
        self,
        image: bytes | Image.Image,
        audio: bytes | np.ndarray,
        meta: dict[str, Any],
        *,
        with_answer: bool = True,
    ) -> dict[str, Any]:
        """Row with ``pixel_values [3,S,S]``, ``audio_features [W,1,T,F]``, ``input_ids``, ``labels``,
        ``box_mask [g,g]``, ``has_box``, ``ot_pair``, the match loss's class columns
        (:func:`~meerkat_core.correspondence.class_columns`), and the prompt's regions (:func:`prompt_regions`):
        ``region_box [4]`` (in the crop's coordinates) and ``region_pos``, ``segment_feat [2F]``
        (:func:`segment_features`) and ``segment_pos``; a position of -1 means none."""
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
        mel = self.audio([wave])[0].numpy()
        return {
            "pixel_values": self.image([img])[0].numpy(),
            "audio_features": mel,
            "input_ids": np.asarray(text["input_ids"], dtype=np.int64),
            "labels": np.asarray(text["labels"], dtype=np.int64),
            "box_mask": mask,
            "has_box": bool(mask.any()),
            "ot_pair": bool(meta.get("paired", True)),
            **class_columns(meta),
            **self.regions(meta["instruction"], mel, img.width, img.height),
        }

    def regions(self, instruction: str, mel: np.ndarray, width: int, height: int) -> dict[str, Any]:
        """The region-prompt columns of a row (see :meth:`__call__`)."""
        found = prompt_regions(self.tokenizer, instruction)
        crop = (
            media.box_to_crop(found["box"], width, height, self.config.image.image_size)
            if found["box"]
            else None
        )
        return {
            "region_box": np.asarray(crop if crop else (0.0, 0.0, 0.0, 0.0), dtype=np.float32),
            "region_pos": np.int64(found["box_pos"] if crop else -1),
            "segment_feat": segment_features(mel, found["segment"], self.config.audio.window_seconds),
            "segment_pos": np.int64(found["segment_pos"]),
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
    if all("classes_known" in r for r in rows):
        for name in ("image_classes", "sound_classes"):
            batch[name] = torch.from_numpy(np.stack([np.asarray(r[name], dtype=np.int64) for r in rows]))
        batch["classes_known"] = torch.tensor([bool(r["classes_known"]) for r in rows])
    if all("region_pos" in r for r in rows):
        # positions index the unpadded prompt; left padding shifts them by the row's pad length
        length = batch["input_ids"].shape[1]
        shift = [length - len(r["input_ids"]) if side == "left" else 0 for r in rows]
        for name in ("region_pos", "segment_pos"):
            batch[name] = torch.tensor(
                [int(r[name]) + s if int(r[name]) >= 0 else -1 for r, s in zip(rows, shift, strict=True)]
            )
        batch["region_box"] = torch.from_numpy(
            np.stack([np.asarray(r["region_box"], np.float32) for r in rows])
        )
        batch["segment_feat"] = torch.from_numpy(
            np.stack([np.asarray(r["segment_feat"], np.float32) for r in rows])
        )
    return batch
