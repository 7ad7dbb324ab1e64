"""serve.tasks and serve.schemas: the instruction each endpoint sends, the typed grounding of answers."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from meerkat_core import prompts
from serve import schemas, tasks
from serve.errors import APIError
from serve.schemas import (
    AnswerParams,
    CaptionParams,
    FactcheckParams,
    GroundParams,
    LocalizeParams,
)


def test_each_task_renders_a_training_template_the_same_way_every_time():
    cases = [
        ("ground", GroundParams(), "arig"),
        ("localize", LocalizeParams(object="red circle"), "igatl"),
        ("answer", AnswerParams(question="How many objects make a sound?"), "avqa"),
        ("caption", CaptionParams(), "avc"),
    ]
    for task, params, key in cases:
        first, fact_type = tasks.instruction(task, params)
        assert tasks.instruction(task, params) == (first, None) and fact_type is None
        filled = [
            t.format(obj="red circle", question="How many objects make a sound?")
            for t in prompts.TEMPLATES[key]
        ]
        assert first in filled


@pytest.mark.parametrize(
    ("fields", "fact_type", "inside"),
    [
        ({"box": [0.1, 0.2, 0.5, 0.6], "window": [1, 2.5]}, 3, ["[0.10, 0.20, 0.50, 0.60]", "[1.0, 2.5]"]),
        ({"box": [0.1, 0.2, 0.5, 0.6]}, 1, ["[0.10, 0.20, 0.50, 0.60]"]),
        ({"object": "red circle", "window": [1, 2.5]}, 2, ["red circle", "[1.0, 2.5]"]),
        ({}, 4, []),
    ],
)
def test_factcheck_type_follows_the_fields_given(fields, fact_type, inside):
    text, got = tasks.instruction("factcheck", FactcheckParams(**fields))
    assert got == fact_type and all(s in text for s in inside), text


@pytest.mark.parametrize(
    ("fields", "box", "window"),
    [
        ({"box": [0.1, 0.2, 0.5, 0.6], "window": [1, 2.5]}, (0.1, 0.2, 0.5, 0.6), (1.0, 2.5)),
        ({"object": "red circle", "window": [1, 2.5]}, None, (1.0, 2.5)),
        (
            {"statement": "The sound at [0.5, 3.0] comes from [0.20, 0.20, 0.40, 0.40]."},
            (0.2, 0.2, 0.4, 0.4),
            (0.5, 3.0),
        ),
    ],
)
def test_factcheck_box_and_window_reach_the_model_as_region_prompts(fields, box, window):
    # the rendered claim is what SamplePreprocessor reads its region prompts from (tiny preset)
    from meerkat_core import batching
    from meerkat_core.tokenizer import load_tokenizer

    text, _ = tasks.instruction("factcheck", FactcheckParams(**fields))
    found = batching.prompt_regions(load_tokenizer(None), text)
    assert found["box"] == (pytest.approx(box) if box else None)
    assert found["segment"] == pytest.approx(window)
    assert (found["box_pos"] >= 0) == (box is not None) and found["segment_pos"] >= 0


def test_factcheck_statement_is_sent_verbatim():
    assert tasks.instruction("factcheck", FactcheckParams(statement="The dog barks.")) == (
        "The dog barks.",
        None,
    )


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"window": [1, 2]}, "needs the object"),
        ({"object": "dog"}, "needs the window"),
        ({"object": "dog", "box": [0, 0, 1, 1]}, "not both"),
        ({"statement": "x", "box": [0, 0, 1, 1]}, "either a statement"),
    ],
)
def test_factcheck_fields_that_match_no_type_are_refused(fields, fragment):
    with pytest.raises(APIError, match=fragment) as info:
        tasks.instruction("factcheck", FactcheckParams(**fields))
    assert info.value.status == 422


@pytest.mark.parametrize(
    "fields",
    [
        {"box": [0.5, 0.1, 0.2, 0.6]},
        {"box": [0, 0, 1.5, 1]},
        {"box": [0, 0, 1]},
        {"window": [3, 1]},
        {"window": [-1, 2]},
    ],
)
def test_invalid_boxes_and_windows_fail_validation(fields):
    with pytest.raises(ValidationError):
        FactcheckParams(**fields)


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ([0.5, 0.1, 0.2, 0.6], schemas.BOX_ORDER_MESSAGE),
        ([0.123, 0.1, 1.5, 0.6], schemas.BOX_RANGE_MESSAGE),
        ([0.625, 0.1, 0.2, 1.5], schemas.BOX_RANGE_MESSAGE),  # both faults: the range is named first
        ([-0.001, 0.1, 0.2, 0.6], schemas.BOX_RANGE_MESSAGE),  # no tolerance for a box from a client
    ],
)
def test_a_bad_box_is_a_422_naming_the_field_and_the_rule_without_echoing_it(box, message):
    from serve import inputs

    with pytest.raises(APIError) as info:
        inputs.validate(FactcheckParams, {"box": box})
    assert info.value.status == 422
    assert info.value.message.startswith("box: ") and message in info.value.message
    assert not any(str(v) in info.value.message for v in box if v not in (0, 1))
    assert FactcheckParams(box=[0.1, 0.2, 0.1, 1.0]).box == [0.1, 0.2, 0.1, 1.0]  # zero width is a box


def test_task_grounding_reads_only_what_the_task_asks_for():
    box = tasks.task_grounding("ground", "It is at [0.10, 0.20, 0.50, 0.60].", 640, 480)
    assert box.parsed and box.box.normalised == [0.1, 0.2, 0.5, 0.6]
    assert box.box.pixels == [64, 96, 320, 288] and box.window is None and box.verdict is None

    window = tasks.task_grounding("localize", "[2.1, 6.4]", 640, 480)
    assert window.parsed and (window.window.start_s, window.window.end_s) == (2.1, 6.4) and window.box is None

    assert tasks.task_grounding("factcheck", "False", 1, 1).verdict is False
    assert tasks.task_grounding("factcheck", "Yesterday", 1, 1).parsed is False
    assert tasks.task_grounding("ground", "VerVerVer [0.9, 0.1, 0.2, 0.3]", 10, 10).model_dump() == {
        "parsed": False,
        "box": None,
        "window": None,
        "verdict": None,
    }
    assert tasks.task_grounding("caption", "A red circle hums.", 1, 1).parsed is True
    assert tasks.task_grounding("answer", "  ", 1, 1).parsed is False


def test_chat_grounding_reads_everything_the_text_holds():
    g = tasks.chat_grounding(
        "True: the object at [0.10, 0.20, 0.50, 0.60] sounds during [1.0, 2.0].", 100, 50
    )
    assert g.parsed and g.verdict is True
    assert g.box.pixels == [10, 10, 50, 30] and (g.window.start_s, g.window.end_s) == (1.0, 2.0)
    assert tasks.chat_grounding("garbage", 10, 10).parsed is False
