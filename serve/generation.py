"""Generation for a batch of preprocessed requests: sampling settings, isolation of failures.

:class:`Generator` wraps a loaded :class:`~meerkat_core.model.MeerkatModel` for the Serve model
replica (:mod:`serve.replica`); it holds no Ray or HTTP, so it is tested directly on a tiny model.
Batching and generation are :func:`meerkat_core.generation.generate_answers`'s; what is added here
is what only a service needs: per-request sampling settings, exact token counts and finish
reasons, stop strings and the isolation of a failing request.

Decisions made here:

- A batch may mix requests with different settings: it is split into groups of equal
  ``(max_new_tokens, temperature, top_p)``, each one ``generate`` call, rather than giving one
  request another's settings. Greedy requests (temperature 0) ignore ``top_p`` and ``seed``.
- A *seeded* sampling request is generated alone, with the global RNG seeded inside
  ``torch.random.fork_rng`` (the others' draws are left untouched): in a batch the draws of a row
  depend on its neighbours, and a seed must give the same answer whatever else is being served.
- ``top_p`` is not an argument of ``MeerkatModel.generate``, which returns text only: for the
  one call, the LLM's ``generate`` is wrapped (:meth:`Generator._llm_call`) to add ``top_p`` and to
  keep the generated ids, from which ``tokens`` (up to and including EOS) and ``finish_reason``
  (``length``: the budget was used without EOS) are read exactly. Calls run one at a time per
  replica, so the wrapper is never seen by another request.
- ``stop`` strings cut the answer at the first one (not included, as OpenAI does), after
  generation: the text before a stop string does not depend on what follows it, so cutting is
  exact; only the tokens generated after it are wasted.
- Isolation: when a group's ``generate`` raises, each of its requests is retried alone, so one
  sample that makes the model fail costs only its own answer (``Completion.error``), never its
  neighbours'. The ingress validates every request before it gets here, so this is the second
  line of defence.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from meerkat_core import generation, media

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    """How one request is to be generated."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Generation:
    """One preprocessed request: a :class:`~meerkat_core.batching.SamplePreprocessor` row, its
    media float or lean (:func:`meerkat_core.media.lean_media`, as the ingress sends them)."""

    row: dict[str, Any]
    sampling: Sampling


@dataclass(frozen=True)
class Completion:
    """The answer to one :class:`Generation`, or the error that kept it from having one."""

    text: str = ""
    tokens: int = 0
    finish_reason: str = "stop"
    error: str | None = field(default=None)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest of the ``stop`` strings, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class Generator:
    """Answers for batches of :class:`Generation` from a loaded model (see the module docstring)."""

    def __init__(self, model: Any, device: str) -> None:
        self.model = model
        self.device = device
        self._alone = itertools.count()

    def _key(self, sampling: Sampling) -> tuple[Any, ...]:
        if sampling.temperature <= 0:
            return (sampling.max_new_tokens, 0.0, 1.0, None)
        if sampling.seed is not None:
            return (
                sampling.max_new_tokens,
                sampling.temperature,
                sampling.top_p,
                ("alone", next(self._alone)),
            )
        return (sampling.max_new_tokens, sampling.temperature, sampling.top_p, None)

    def __call__(self, requests: Sequence[Generation]) -> list[Completion]:
        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            groups[self._key(request.sampling)].append(index)
        completions: list[Completion] = [Completion()] * len(requests)
        for indices in groups.values():
            group = [requests[i] for i in indices]
            try:
                answers = self._generate(group)
            except Exception:  # noqa: BLE001 - isolate, then report per request
                if len(group) > 1:
                    logger.warning("a batch of %d failed; generating each request alone", len(group))
                answers = [self._generate_alone(request) for request in group]
            for index, answer in zip(indices, answers, strict=True):
                completions[index] = answer
        return completions

    def _generate_alone(self, request: Generation) -> Completion:
        try:
            return self._generate([request])[0]
        except Exception as err:  # noqa: BLE001 - this request's own failure, logged and answered
            logger.exception("generation failed for one request")
            return Completion(error=type(err).__name__)

    def _generate(self, group: Sequence[Generation]) -> list[Completion]:
        sampling = group[0].sampling
        tokenizer = self.model.tokenizer
        extra = {"top_p": sampling.top_p} if sampling.temperature > 0 and sampling.top_p < 1.0 else {}
        with self._llm_call(extra) as outputs, self._seeded(sampling):
            texts = generation.generate_answers(
                self.model,
                [media.float_row(r.row) for r in group],
                max_new_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
                device=self.device,
            )
        (ids,) = outputs  # [B, new tokens]
        completions = []
        for request, text, row in zip(group, texts, ids.tolist(), strict=True):
            eos = tokenizer.eos_token_id
            tokens = row.index(eos) + 1 if eos in row else len(row)
            cut, stopped = cut_at_stop(text, request.sampling.stop)
            length = eos not in row and tokens >= request.sampling.max_new_tokens
            completions.append(Completion(cut, tokens, "length" if length and not stopped else "stop"))
        return completions

    @contextmanager
    def _llm_call(self, extra: dict[str, Any]) -> Iterator[list[torch.Tensor]]:
        """Within the block, the LLM's ``generate`` also gets ``extra`` and its outputs are kept."""
        llm = self.model.llm
        own = llm.__dict__.get("generate")
        original = llm.generate
        outputs: list[torch.Tensor] = []

        def generate(*args: Any, **kwargs: Any) -> torch.Tensor:
            out = original(*args, **{**kwargs, **extra})
            outputs.append(out)
            return out

        llm.generate = generate
        try:
            yield outputs
        finally:
            if own is None:
                del llm.generate
            else:
                llm.generate = own

    @contextmanager
    def _seeded(self, sampling: Sampling) -> Iterator[None]:
        if sampling.seed is None or sampling.temperature <= 0:
            yield
            return
        devices = [torch.device(self.device)] if str(self.device).startswith("cuda") else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(sampling.seed)
            yield
