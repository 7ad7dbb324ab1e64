"""What each task endpoint asks the model, and how its answer becomes typed grounding.

Instructions come from :mod:`meerkat_core.prompts`, the templates the model was trained on. Training
picks a paraphrase at random; the service picks one with a fixed seed per task, so the same
request always sends the same prompt (a served model's answers are then reproducible and
cacheable). Parsing uses :mod:`meerkat_core.grounding` and :func:`meerkat_core.prompts.parse_verdict`,
which never raise on model output: what does not parse is ``None`` and ``parsed`` is false.
"""

from __future__ import annotations

import random

from meerkat_core import grounding, prompts
from serve.errors import APIError
from serve.schemas import (
    AnswerParams,
    BoxOut,
    FactcheckParams,
    Grounding,
    LocalizeParams,
    TaskParams,
    WindowOut,
)

# The template key of each task endpoint (fact-checking adds its type).
TEMPLATE_KEYS = {
    "ground": "arig",
    "localize": "igatl",
    "factcheck": "avfact",
    "answer": "avqa",
    "caption": "avc",
}
_PARAPHRASE_SEED = 0


def _fact_type(params: FactcheckParams) -> int:
    """The paper's fact-check type for the fields given (see :class:`FactcheckParams`)."""
    if params.box is not None:
        if params.object is not None:
            raise APIError(422, "invalid_request_error", "give either object or box, not both")
        return 3 if params.window is not None else 1
    if params.window is not None:
        if params.object is None:
            raise APIError(422, "invalid_request_error", "a window needs the object it refers to")
        return 2
    if params.object is not None:
        raise APIError(422, "invalid_request_error", "an object needs the window in which it is heard")
    return 4


def instruction(task: str, params: TaskParams) -> tuple[str, int | None]:
    """The instruction for ``task`` with ``params``, and the fact-check type (None for other tasks).

    Raises APIError (422) for a fact-check whose fields match none of the four types.
    """
    rng = random.Random(_PARAPHRASE_SEED)
    if isinstance(params, FactcheckParams):
        if params.statement is not None:
            if params.object is not None or params.box is not None or params.window is not None:
                raise APIError(
                    422, "invalid_request_error", "give either a statement or object/box/window, not both"
                )
            return params.statement, None
        fact_type = _fact_type(params)
        fields = {"obj": params.object, "box": params.box, "segment": params.window}
        present = {k: v for k, v in fields.items() if v is not None}
        return prompts.render_instruction("avfact", rng, fact_type=fact_type, **present), fact_type
    if isinstance(params, LocalizeParams):
        return prompts.render_instruction(TEMPLATE_KEYS[task], rng, obj=params.object), None
    if isinstance(params, AnswerParams):
        return prompts.render_instruction(TEMPLATE_KEYS[task], rng, question=params.question), None
    return prompts.render_instruction(TEMPLATE_KEYS[task], rng), None


def _box(text: str, width: int, height: int) -> BoxOut | None:
    box = grounding.parse_box(text)
    if box is None:
        return None
    return BoxOut(normalised=list(box), pixels=list(grounding.normalised_box_to_pixels(box, width, height)))


def _window(text: str) -> WindowOut | None:
    segment = grounding.parse_segment(text)
    return None if segment is None else WindowOut(start_s=segment[0], end_s=segment[1])


def task_grounding(task: str, text: str, width: int, height: int) -> Grounding:
    """The typed answer of a task endpoint: only the field the task asks for is read from ``text``."""
    if task == "ground":
        box = _box(text, width, height)
        return Grounding(parsed=box is not None, box=box)
    if task == "localize":
        window = _window(text)
        return Grounding(parsed=window is not None, window=window)
    if task == "factcheck":
        verdict = prompts.parse_verdict(text)
        return Grounding(parsed=verdict is not None, verdict=verdict)
    return Grounding(parsed=bool(text.strip()))


def chat_grounding(text: str, width: int, height: int) -> Grounding:
    """Every kind of grounding ``text`` holds: a chat does not say which task it is."""
    box, window, verdict = _box(text, width, height), _window(text), prompts.parse_verdict(text)
    return Grounding(
        parsed=box is not None or window is not None or verdict is not None,
        box=box,
        window=window,
        verdict=verdict,
    )
