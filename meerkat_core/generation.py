"""Prompt -> collate -> generate: the one path from samples to a model's answer texts.

Every caller that asks a :class:`~meerkat_core.model.MeerkatModel` for answers goes through here:
the registry's pyfunc model, the Serve model replica, evaluation, the quickstart and the
experiments. No Ray, no HTTP: the core layer.

The path has three steps, each a function, so that a caller that does a step elsewhere (Serve
builds prompts on its ingress and generates on a model replica) uses the others:

1. :func:`prompt_row`: one sample (image, audio, instruction or sample metadata) -> a generation
   row of :class:`~meerkat_core.batching.SamplePreprocessor` (the chat prompt without its answer);
2. :func:`generation_batch`: rows -> one batch, text padded on the left (every prompt ends where
   the generated tokens begin), on the model's device;
3. :func:`generate_answers`: rows -> the answer texts (and, on request, AVACE's attention map).

Call it::

    from meerkat_core import generation
    from meerkat_core.batching import SamplePreprocessor

    prep = SamplePreprocessor(model.config, model.tokenizer)
    rows = [generation.prompt_row(prep, image, audio, meta) for image, audio, meta in samples]
    texts = generation.generate_answers(model, rows, max_new_tokens=48, device="cuda")
    texts, attn = generation.generate_answers(
        model, rows, max_new_tokens=48, device="cuda", return_attention=True
    )

``image`` and ``audio`` are encoded files (bytes) or a decoded ``PIL.Image`` and waveform; ``meta``
is an instruction string or a sample's metadata dict (its ``instruction``; its boxes, if any, fill
the row's box mask, which generation does not read). :func:`prompt_row` raises
:class:`~meerkat_core.media.MediaError` or :class:`ValueError` for a sample that cannot be used
(:class:`~meerkat_core.batching.PromptTooLongError` for a prompt over the model's text budget);
callers that skip bad samples catch those.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from meerkat_core import batching

DEFAULT_MAX_NEW_TOKENS = 48
"""The answer budget when a caller does not choose one (the registered model's ``max_new_tokens``)."""


def prompt_row(
    prep: batching.SamplePreprocessor,
    image: bytes | Image.Image,
    audio: bytes | np.ndarray,
    meta: str | dict[str, Any],
) -> dict[str, Any]:
    """The generation row of one sample: its media's features and the prompt of its instruction.

    ``meta``: the instruction, or a sample's metadata holding one under ``instruction``.
    """
    if isinstance(meta, str):
        meta = {"instruction": meta}
    return prep(image, audio, meta, with_answer=False)


def generation_batch(
    rows: Sequence[dict[str, Any]], pad_id: int, device: str | torch.device | None = None
) -> dict[str, torch.Tensor]:
    """Generation rows -> one batch padded on the left, moved to ``device`` (None: left where it is)."""
    batch = batching.collate(rows, pad_id, side="left")
    if device is None:
        return batch
    return {k: v.to(device) for k, v in batch.items()}


def generate_answers(
    model: Any,
    rows: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = 0.0,
    device: str | torch.device | None = None,
    return_attention: bool = False,
) -> list[str] | tuple[list[str], torch.Tensor]:
    """The model's answer to each generation row (greedy when ``temperature`` is 0).

    ``model``: a :class:`~meerkat_core.model.MeerkatModel` (or anything with its ``tokenizer`` and
    ``generate``); ``device``: where the model is (None: the batch stays on the CPU). With
    ``return_attention``, also AVACE's map of each row, ``[B, grid, grid]``.
    """
    batch = generation_batch(rows, model.tokenizer.pad_token_id, device)
    return model.generate(
        batch, max_new_tokens=max_new_tokens, temperature=temperature, return_attention=return_attention
    )
