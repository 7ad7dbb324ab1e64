"""Tests for meerkat_core.prompts: templates, instruction rendering, chat template, verdicts."""

import random

import pytest

from meerkat_core.prompts import (
    AUDIO_TOKEN,
    FACT_ANSWERS,
    IMAGE_TOKEN,
    OBJ_TOKEN,
    SPECIAL_TOKENS,
    SYSTEM_PROMPT,
    TEMPLATES,
    chat_prompt,
    chat_prompt_parts,
    chat_target,
    parse_verdict,
    render_instruction,
    template_fields,
    verdict_text,
)

EXPECTED_FIELDS = {
    "arig": set(),
    "igatl": {"obj"},
    "avfact1": {"box"},
    "avfact2": {"obj", "segment"},
    "avfact3": {"box", "segment"},
    "avfact4": set(),
    "avqa": {"question"},
    "avc": set(),
}

SAMPLE_FIELDS = {
    "obj": "violin",
    "box": "[0.12, 0.30, 0.55, 0.80]",
    "segment": "[3.5, 7.0]",
    "question": "How many instruments are playing?",
}


def test_special_tokens():
    assert SPECIAL_TOKENS == ("<image>", "<audio>", "<obj>")
    assert (IMAGE_TOKEN, AUDIO_TOKEN, OBJ_TOKEN) == SPECIAL_TOKENS
    assert FACT_ANSWERS == ("True", "False")


def test_every_task_has_ten_distinct_paraphrases():
    assert set(TEMPLATES) == set(EXPECTED_FIELDS)
    for key, templates in TEMPLATES.items():
        assert len(set(templates)) == len(templates) >= 10, key


@pytest.mark.parametrize("key", sorted(EXPECTED_FIELDS))
def test_every_template_uses_exactly_its_fields_and_formats_cleanly(key):
    for template in TEMPLATES[key]:
        assert template_fields(template) == EXPECTED_FIELDS[key], template
        text = template.format(**SAMPLE_FIELDS)
        assert "{" not in text and "}" not in text, text
        for name in EXPECTED_FIELDS[key]:
            assert SAMPLE_FIELDS[name] in text
        if key.startswith("avfact"):
            assert "True" in text and "False" in text, template


def test_template_fields():
    assert template_fields("When does the {obj} sound during {segment}?") == {"obj", "segment"}
    assert template_fields("no fields") == set()


def test_render_is_deterministic_per_seed_and_covers_paraphrases():
    first = [render_instruction("arig", random.Random(seed)) for seed in range(50)]
    again = [render_instruction("arig", random.Random(seed)) for seed in range(50)]
    assert first == again
    # rng.choice on the template tuple: the same draw picks the same paraphrase.
    assert render_instruction("avc", random.Random(7)) == random.Random(7).choice(TEMPLATES["avc"])
    rng = random.Random(0)
    seen = {render_instruction("arig", rng) for _ in range(400)}
    assert seen == set(TEMPLATES["arig"])


def test_render_fills_fields_and_formats_numbers():
    rng = random.Random(1)
    text = render_instruction("avfact", rng, fact_type=3, box=(0.123, 0.3, 0.549, 0.8), segment=(3.54, 7))
    assert "[0.12, 0.30, 0.55, 0.80]" in text and "[3.5, 7.0]" in text
    assert render_instruction("avfact", random.Random(2), fact_type=3, **SAMPLE_FIELDS) == random.Random(
        2
    ).choice(TEMPLATES["avfact3"]).format(**SAMPLE_FIELDS)
    question = "Which {instrument} is louder?"
    assert question in render_instruction("avqa", rng, question=question)
    # Fields the template does not use are ignored.
    assert "violin" in render_instruction("igatl", rng, obj="violin", box="[0.00, 0.00, 1.00, 1.00]")


def test_render_accepts_a_template_key_directly():
    assert render_instruction(
        "avfact2", random.Random(4), obj="dog", segment="[1.0, 2.0]"
    ) == render_instruction("avfact", random.Random(4), fact_type=2, obj="dog", segment="[1.0, 2.0]")


@pytest.mark.parametrize(
    ("task", "fact_type", "fields"),
    [
        ("grounding", None, {}),
        ("", None, {}),
        ("avfact", None, {"box": "[0.00, 0.00, 1.00, 1.00]"}),
        ("avfact", 5, {}),
        ("avfact", 0, {}),
        ("arig", 1, {}),
        ("igatl", None, {}),
        ("avfact", 2, {"obj": "dog"}),
        ("avfact", 3, {"segment": "[1.0, 2.0]"}),
        ("avqa", None, {"obj": "dog"}),
    ],
)
def test_render_errors(task, fact_type, fields):
    with pytest.raises(ValueError):
        render_instruction(task, random.Random(0), fact_type=fact_type, **fields)


def test_render_rejects_an_invalid_box():
    with pytest.raises(ValueError):
        render_instruction("avfact", random.Random(0), fact_type=1, box=(0.5, 0.0, 0.2, 1.0))


def test_chat_prompt_exact_strings():
    assert chat_prompt("Describe.", system="Be brief.") == (
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n<image>\n<audio>\nDescribe. [/INST]"
    )
    assert chat_prompt("Describe.", system=None) == "[INST] <image>\n<audio>\nDescribe. [/INST]"
    assert chat_prompt("Hi") == f"[INST] <<SYS>>\n{SYSTEM_PROMPT}\n<</SYS>>\n\n<image>\n<audio>\nHi [/INST]"
    assert chat_target("True") == " True"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("True", True),
        ("False", False),
        ("true.", True),
        ("FALSE, the dog is silent", False),
        ("Yes", True),
        ("no", False),
        ("  True", True),
        ('"False"', False),
        ("**Yes**, it is.", True),
        ("No.", False),
        ("", None),
        ("Maybe", None),
        ("Yesterday it barked", None),
        ("Nothing", None),
        ("Not sure", None),
        ("Truely", None),
        ("It is true", None),
        ("[0.1, 0.2, 0.3, 0.4]", None),
    ],
)
def test_parse_verdict(text, expected):
    assert parse_verdict(text) is expected


@pytest.mark.parametrize("value", [None, 1, True, b"True"])
def test_parse_verdict_non_strings(value):
    assert parse_verdict(value) is None


def test_verdict_text_round_trips():
    assert verdict_text(True) == "True" and verdict_text(False) == "False"
    assert parse_verdict(verdict_text(True)) is True and parse_verdict(verdict_text(False)) is False


def test_chat_prompt_parts_surround_the_instruction():
    for system in (SYSTEM_PROMPT, None, "Be brief."):
        before, after = chat_prompt_parts(system=system)
        assert before + "Hi there" + after == chat_prompt("Hi there", system=system)
