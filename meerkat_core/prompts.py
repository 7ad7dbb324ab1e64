"""Chat template, special tokens and the instruction templates of each MeerkatBench task.

The paper (Sec. 4.2) writes a few instructions per task, has them paraphrased, and picks one at
random for each sample; ``TEMPLATES`` holds our own paraphrases and ``render_instruction`` picks
one with a caller-supplied ``random.Random`` so that dataset builds are reproducible.

Placeholders are ``str.format`` fields:

===========  ========================  ==================================================
key          fields                    answer
===========  ========================  ==================================================
arig         (none)                    a box, ``grounding.format_box``
igatl        ``obj``                   a time segment, ``grounding.format_segment``
avfact1      ``box``                   True / False (Type 1 of the paper's Sec. 5.2)
avfact2      ``obj``, ``segment``      True / False (Type 2)
avfact3      ``box``, ``segment``      True / False (Type 3)
avfact4      (none)                    True / False (Type 4)
avqa         ``question``              free text
avc          (none)                    a caption
===========  ========================  ==================================================

``box`` and ``segment`` may be given as numbers; they are then written with ``grounding``'s
formats, so that every box in an instruction looks like every box in an answer. Fields a template
does not use are ignored, so that callers may pass whatever a sample has.

The prompt follows the Llama-2-Chat template with the media placeholders ahead of the instruction;
``<image>`` and ``<audio>`` are later replaced by projected encoder tokens. The BOS and EOS tokens
are added by the tokenizer code, not here. Instructions and answers are text: whatever they hold
(``<image>``, ``</s>``, ``[INST]``) is tokenized as the characters it is, never as a placeholder or
special token; :func:`meerkat_core.batching.encode_prompt` is where that is made so.
"""

from __future__ import annotations

import random
import re
import string

from meerkat_core.grounding import format_box, format_segment

IMAGE_TOKEN = "<image>"
AUDIO_TOKEN = "<audio>"
OBJ_TOKEN = "<obj>"
SPECIAL_TOKENS = (IMAGE_TOKEN, AUDIO_TOKEN, OBJ_TOKEN)

FACT_ANSWERS = ("True", "False")

SYSTEM_PROMPT = (
    "You are a helpful assistant that understands images and sounds together. Give boxes as "
    "[x1, y1, x2, y2] normalised to the image size and time windows as [start, end] in seconds."
)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "arig": (
        "Which region of the image produces the sound in the audio? Answer with a bounding box.",
        "Locate the object that is making the sound you hear. Give its bounding box.",
        "Find the source of the sound in the image and answer with its bounding box.",
        "Draw a bounding box around the object in the picture that is responsible for this sound.",
        "Where in the image does the audio come from? Reply with the bounding box of the sounding object.",
        "Listen to the audio and point out the object producing it in the image, as a bounding box.",
        "Give the bounding box of the thing in the image that makes the sound in this clip.",
        "Which object in the scene is the sound coming from? Answer with its box coordinates.",
        "Identify the sounding object in the image and return its bounding box.",
        "Based on what you hear, mark the region of the image that emits the sound with a bounding box.",
        "Ground the sound in the image: output the bounding box of the object that produces it.",
        "Show me where the sound source is in this picture by giving a bounding box.",
    ),
    "igatl": (
        "When does the {obj} in the image make a sound? Answer with a time window in seconds.",
        "During which part of the audio can the {obj} shown in the image be heard? Give the start "
        "and end times in seconds.",
        "Find the time interval in the audio when the {obj} from the picture is sounding.",
        "At what time does the sound of the {obj} in the image occur? Reply with a start and end time "
        "in seconds.",
        "Listen to the clip and tell me when the {obj} seen in the image is making noise, as a time "
        "window in seconds.",
        "Give the time segment, in seconds, in which the audio contains the sound of the {obj} in the image.",
        "Look at the {obj} in the image. When is it heard in the audio? Answer with [start, end] in seconds.",
        "Locate in time the sound made by the {obj} visible in the picture.",
        "Between which seconds of the recording does the {obj} from the image produce sound?",
        "Temporally ground the {obj} in the image: when does its sound start and stop?",
        "Which time window of the audio corresponds to the {obj} pictured in the image? Give it in seconds.",
    ),
    "avfact1": (
        "Does the object inside the box {box} produce the sound in the audio? Answer True or False.",
        "Is the sound in the audio made by the object in the region {box} of the image? Answer True "
        "or False.",
        "True or False: the object within the bounding box {box} is the source of the sound.",
        "Check whether the object in the box {box} makes the sound you hear. Reply True or False.",
        "Verify if the thing located at {box} in the image corresponds to the audio. Answer with True "
        "or False.",
        "Does the sound in this clip come from the object at {box}? Answer True or False.",
        "Look at the region {box} of the image and listen to the audio. Is that object making the "
        "sound? True or False?",
        "Is it true that the object in the bounding box {box} produces the audio? Answer True or False.",
        "The box {box} marks an object in the image. Does it match the sound? Reply True or False.",
        "Decide whether the audio is produced by the object within {box}. Answer only True or False.",
        "Can the sound be attributed to the object in the region {box}? Answer True or False.",
    ),
    "avfact2": (
        "Is the {obj} in the image related to the sound in the audio during {segment} seconds? "
        "Answer True or False.",
        "True or False: the audio between {segment} seconds contains the sound of the {obj} shown in "
        "the image.",
        "Does the {obj} in the picture make the sound heard within the time window {segment}? Answer "
        "True or False.",
        "Check whether the sound in the segment {segment} seconds belongs to the {obj} in the image. "
        "Reply True or False.",
        "Listen to the audio during {segment} seconds. Is it the {obj} from the image? Answer True or False.",
        "Verify if the {obj} visible in the image is heard in the time window {segment}. Answer with "
        "True or False.",
        "Within {segment} seconds of the audio, is the {obj} shown in the image the one making the "
        "sound? True or False?",
        "Is it true that the sound in the interval {segment} comes from the {obj} in the image? Answer "
        "True or False.",
        "Does the audio segment {segment} match the {obj} that appears in the picture? Reply True or False.",
        "Decide whether the {obj} in the image corresponds to what is heard at {segment} seconds. "
        "Answer only True or False.",
        "Look at the {obj} in the image. Is that what we hear in the window {segment} seconds? Answer "
        "True or False.",
    ),
    "avfact3": (
        "Does the object inside the box {box} produce the sound heard during {segment} seconds? Answer "
        "True or False.",
        "True or False: the object in the region {box} makes the sound in the audio between {segment} "
        "seconds.",
        "Is the sound in the time window {segment} produced by the object within the bounding box "
        "{box}? Answer True or False.",
        "Check whether the object at {box} is the source of the audio in the segment {segment} "
        "seconds. Reply True or False.",
        "Listen to the audio during {segment} seconds and look at the region {box}. Is that object "
        "making the sound? True or False?",
        "Verify if the object in the box {box} corresponds to the sound in the interval {segment}. "
        "Answer with True or False.",
        "Is it true that during {segment} seconds the audio comes from the object in {box}? Answer "
        "True or False.",
        "Does the sound between {segment} seconds match the object located at {box} in the image? "
        "Reply True or False.",
        "Decide whether the object in the bounding box {box} is heard in the window {segment}. Answer "
        "only True or False.",
        "The box {box} marks an object in the image. Is it the one sounding at {segment} seconds? "
        "Answer True or False.",
        "Within the time segment {segment}, is the sound made by the object in the region {box}? "
        "Answer True or False.",
    ),
    "avfact4": (
        "Is the source of the sound in the audio visible in the image? Answer True or False.",
        "True or False: the object making this sound appears in the picture.",
        "Does the image contain the thing that produces the sound you hear? Answer True or False.",
        "Check whether the visual counterpart of the audio is present in the image. Reply True or False.",
        "Listen to the audio. Can you see what makes this sound in the image? True or False?",
        "Verify if the sounding object is shown in the image. Answer with True or False.",
        "Is it true that the picture shows what is making the sound? Answer True or False.",
        "Does the sound match something that appears in the image? Reply True or False.",
        "Decide whether the object heard in the audio is present in the scene. Answer only True or False.",
        "Is the sound source part of this image? Answer True or False.",
        "Can the origin of the sound be found in the image? Answer True or False.",
    ),
    "avqa": (
        "{question}",
        "Answer the question using both the image and the audio: {question}",
        "Look at the image and listen to the audio, then answer: {question}",
        "Question: {question} Answer based on what you see and hear.",
        "Using the picture and the sound, answer the following question. {question}",
        "{question} Use the audio and the image to answer.",
        "Here is a question about the scene and its sound: {question}",
        "Consider both the visual and the audio content when you answer. {question}",
        "Please answer this question about the audio-visual scene: {question}",
        "Based on the image and the audio clip, respond to this: {question}",
        "Look and listen carefully. {question}",
    ),
    "avc": (
        "Describe what you see and hear.",
        "Write a caption for this image and its sound.",
        "Give a short description of the scene, covering both the picture and the audio.",
        "What is happening in this audio-visual scene? Describe it in one sentence.",
        "Caption the scene, mentioning what can be seen and what can be heard.",
        "Summarise the image and the audio in a single sentence.",
        "Describe the scene and the sounds in it.",
        "Provide a brief caption that covers both the visual and the audio content.",
        "Tell me what is going on, based on the picture and the sound.",
        "Write one sentence describing the sights and sounds of this clip.",
        "Generate a description of this audio-visual content.",
    ),
}

_FACT_TYPES = (1, 2, 3, 4)
_VERDICT = re.compile(r"[\s\"'*`]*(true|false|yes|no)\b", re.IGNORECASE)


def _template_key(task: str, fact_type: int | None) -> str:
    if task == "avfact":
        if fact_type not in _FACT_TYPES:
            raise ValueError(f"task 'avfact' needs fact_type in {_FACT_TYPES}, got {fact_type!r}")
        return f"avfact{fact_type}"
    if task not in TEMPLATES:
        raise ValueError(f"unknown task {task!r}; expected 'avfact' or one of {sorted(TEMPLATES)}")
    if fact_type is not None:
        raise ValueError(f"fact_type is only meaningful for task 'avfact', got {fact_type!r} for {task!r}")
    return task


def template_fields(template: str) -> set[str]:
    """The ``str.format`` field names used by ``template``."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def render_instruction(
    task: str, rng: random.Random, *, fact_type: int | None = None, **fields: object
) -> str:
    """A paraphrase of ``task``'s instruction picked uniformly with ``rng`` and filled with ``fields``.

    ``task`` is a key of ``TEMPLATES`` or ``"avfact"`` with ``fact_type`` in 1..4. ``box`` and
    ``segment`` may be strings or numbers (then formatted by ``grounding``). Raises ValueError for an
    unknown task, a missing or unexpected ``fact_type``, or a field the template needs but did not get.
    """
    template = rng.choice(TEMPLATES[_template_key(task, fact_type)])
    missing = template_fields(template) - fields.keys()
    if missing:
        raise ValueError(f"instruction for {task!r} needs fields {sorted(missing)}")
    values = dict(fields)
    if "box" in values and not isinstance(values["box"], str):
        values["box"] = format_box(values["box"])
    if "segment" in values and not isinstance(values["segment"], str):
        values["segment"] = format_segment(values["segment"])
    return template.format(**values)


def chat_prompt_parts(*, system: str | None = SYSTEM_PROMPT) -> tuple[str, str]:
    """The template text before and after the instruction: ``chat_prompt(i) == before + i + after``.

    The tokenizer code encodes the three pieces apart, so that the instruction (user text) can be
    encoded with special tokens split (see :func:`meerkat_core.batching.encode_prompt`).
    """
    media = f"{IMAGE_TOKEN}\n{AUDIO_TOKEN}\n"
    system_block = "" if system is None else f"<<SYS>>\n{system}\n<</SYS>>\n\n"
    return f"[INST] {system_block}{media}", " [/INST]"


def chat_prompt(instruction: str, *, system: str | None = SYSTEM_PROMPT) -> str:
    """The Llama-2-Chat prompt for one user turn, media placeholders first; no BOS.

    ``system=None`` leaves out the ``<<SYS>>`` block. The text only: placeholders or special
    tokens written in ``instruction`` must not be tokenized from this string as a whole, see
    :func:`meerkat_core.batching.encode_prompt`.
    """
    before, after = chat_prompt_parts(system=system)
    return f"{before}{instruction}{after}"


def chat_target(answer: str) -> str:
    """The assistant turn that follows ``chat_prompt``; EOS is added by the tokenizer code."""
    return " " + answer


def parse_verdict(text: str) -> bool | None:
    """True / False from a fact-check answer starting with True, False, Yes or No (any case).

    Leading whitespace, quotes and markdown emphasis are skipped; the word must stand alone
    (``"Yesterday"`` is not a verdict). None for anything else; never raises.
    """
    if not isinstance(text, str):
        return None
    match = _VERDICT.match(text)
    if match is None:
        return None
    return match.group(1).lower() in ("true", "yes")


def verdict_text(value: bool) -> str:
    """The canonical fact-check answer for ``value``: one of ``FACT_ANSWERS``."""
    return FACT_ANSWERS[0] if value else FACT_ANSWERS[1]
