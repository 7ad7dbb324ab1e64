"""The task endpoints, one row each in :data:`TASKS`, and how a chat answer becomes typed grounding.

A row is everything that differs between ``POST /v1/ground``, ``/v1/localize``, ``/v1/factcheck``,
``/v1/answer`` and ``/v1/caption``: the path, the request schema (a :class:`TaskParams`), the
prompt builder, the answer parser and the route's description. The ingress
(:mod:`serve.ingress`) makes one route per row, all served by one handler.

Instructions come from :mod:`meerkat_core.prompts`, the templates the model was trained on. Training
picks a paraphrase at random; the service picks one with a fixed seed per task, so the same
request always sends the same prompt (a served model's answers are then reproducible and
cacheable). Parsing uses :mod:`meerkat_core.grounding` and :func:`meerkat_core.prompts.parse_verdict`,
which never raise on model output: what does not parse is ``None`` and ``parsed`` is false.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from meerkat_core import grounding, prompts
from serve.errors import APIError
from serve.schemas import (
    AnswerParams,
    BoxOut,
    CaptionParams,
    FactcheckParams,
    Grounding,
    GroundParams,
    LocalizeParams,
    TaskParams,
    WindowOut,
)

_PARAPHRASE_SEED = 0

Prompt = Callable[[str, TaskParams, random.Random], tuple[str, int | None]]
"""A prompt builder: ``(template key, params, rng) -> (instruction, fact-check type or None)``."""
Answer = Callable[[str, int, int], Grounding]
"""An answer parser: ``(answer text, image width, image height) -> grounding``."""


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


def _plain_prompt(template: str, params: TaskParams, rng: random.Random) -> tuple[str, int | None]:
    return prompts.render_instruction(template, rng), None


def _localize_prompt(template: str, params: LocalizeParams, rng: random.Random) -> tuple[str, int | None]:
    return prompts.render_instruction(template, rng, obj=params.object), None


def _answer_prompt(template: str, params: AnswerParams, rng: random.Random) -> tuple[str, int | None]:
    return prompts.render_instruction(template, rng, question=params.question), None


def _factcheck_prompt(template: str, params: FactcheckParams, rng: random.Random) -> tuple[str, int | None]:
    if params.statement is not None:
        if params.object is not None or params.box is not None or params.window is not None:
            raise APIError(
                422, "invalid_request_error", "give either a statement or object/box/window, not both"
            )
        return params.statement, None
    fact_type = _fact_type(params)
    fields = {"obj": params.object, "box": params.box, "segment": params.window}
    present = {k: v for k, v in fields.items() if v is not None}
    return prompts.render_instruction(template, rng, fact_type=fact_type, **present), fact_type


def _box(text: str, width: int, height: int) -> BoxOut | None:
    box = grounding.parse_box(text)
    if box is None:
        return None
    return BoxOut(normalised=list(box), pixels=list(grounding.normalised_box_to_pixels(box, width, height)))


def _window(text: str) -> WindowOut | None:
    segment = grounding.parse_segment(text)
    return None if segment is None else WindowOut(start_s=segment[0], end_s=segment[1])


def _box_answer(text: str, width: int, height: int) -> Grounding:
    box = _box(text, width, height)
    return Grounding(parsed=box is not None, box=box)


def _window_answer(text: str, width: int, height: int) -> Grounding:
    window = _window(text)
    return Grounding(parsed=window is not None, window=window)


def _verdict_answer(text: str, width: int, height: int) -> Grounding:
    verdict = prompts.parse_verdict(text)
    return Grounding(parsed=verdict is not None, verdict=verdict)


def _text_answer(text: str, width: int, height: int) -> Grounding:
    return Grounding(parsed=bool(text.strip()))


@dataclass(frozen=True)
class Task:
    """One task endpoint, ``POST /v1/<name>``."""

    name: str
    """The route's name (its OpenAPI operation) and the last part of its path."""
    params: type[TaskParams]
    """The request's parameters beside the two media."""
    template: str
    """The :data:`meerkat_core.prompts.TEMPLATES` key of its instructions (fact-checking adds its type)."""
    prompt: Prompt
    """Builds the instruction from the params."""
    answer: Answer
    """Reads the typed grounding from the answer: only the field the task asks for."""
    description: str
    """What the endpoint does, for the OpenAPI page."""

    @property
    def path(self) -> str:
        return f"/v1/{self.name}"


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "ground",
            GroundParams,
            "arig",
            _plain_prompt,
            _box_answer,
            "Box the object in the image that makes the sound (``grounding.box``).",
        ),
        Task(
            "localize",
            LocalizeParams,
            "igatl",
            _localize_prompt,
            _window_answer,
            "When the named object of the image is heard (``grounding.window``, seconds).",
        ),
        Task(
            "factcheck",
            FactcheckParams,
            "avfact",
            _factcheck_prompt,
            _verdict_answer,
            "Whether a claim about the image and the sound holds (``grounding.verdict``).",
        ),
        Task(
            "answer",
            AnswerParams,
            "avqa",
            _answer_prompt,
            _text_answer,
            "Answer a question about the scene and its sound.",
        ),
        Task(
            "caption",
            CaptionParams,
            "avc",
            _plain_prompt,
            _text_answer,
            "Describe what is seen and heard.",
        ),
    )
}
"""The task endpoints, in the order of the OpenAPI document."""


def instruction(task: str, params: TaskParams) -> tuple[str, int | None]:
    """The instruction for ``task`` with ``params``, and the fact-check type (None for other tasks).

    Raises APIError (422) for a fact-check whose fields match none of the four types.
    """
    row = TASKS[task]
    return row.prompt(row.template, params, random.Random(_PARAPHRASE_SEED))


def task_grounding(task: str, text: str, width: int, height: int) -> Grounding:
    """The typed answer of a task endpoint: only the field the task asks for is read from ``text``."""
    return TASKS[task].answer(text, width, height)


def chat_grounding(text: str, width: int, height: int) -> Grounding:
    """Every kind of grounding ``text`` holds: a chat does not say which task it is."""
    box, window, verdict = _box(text, width, height), _window(text), prompts.parse_verdict(text)
    return Grounding(
        parsed=box is not None or window is not None or verdict is not None,
        box=box,
        window=window,
        verdict=verdict,
    )
