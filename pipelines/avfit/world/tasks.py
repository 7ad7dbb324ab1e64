"""From scenes to AVFIT samples of the five MeerkatBench tasks (``pipelines/avfit/sample.py`` contract).

Each task drafts its instruction, answer and fields from the scene's exact ground truth; the
negatives of fact-checking are wrong by construction.

- All samples of a scene share its image and audio, except the Type 4 fact-check negative, whose
  audio is re-rendered with every on-screen sound replaced by a class absent from the picture
  (``paired`` False). Each sample's ``objects[].sounds`` and ``sound_events`` describe its own audio.
- ``avfact`` samples carry in ``boxes``/``segments`` the box and window *of the statement*, as the
  contract says, which for a False statement is not the sounding object; the sounding object is in
  ``objects``. Other tasks carry the boxes of all sounding on-screen objects in ``boxes``.
- Tasks that a scene cannot support are skipped for that scene (arig needs exactly one sounding
  object, igatl and avfact at least one), so the realised task mix can differ from ``task_weights``;
  the shard manifest counts what was written.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from meerkat_core.grounding import box_iou, format_box, format_segment
from meerkat_core.media import encode_flac, encode_jpeg
from meerkat_core.prompts import FACT_ANSWERS, render_instruction
from pipelines.avfit.sample import SPLITS, TASKS, validate_key, validate_meta
from pipelines.avfit.world.catalogue import CLASS_CATALOGUE
from pipelines.avfit.world.config import TICKS_PER_S, WorldConfig, ticks
from pipelines.avfit.world.render import render_audio, render_image
from pipelines.avfit.world.scene import Box, Scene, Segment, SoundEvent, generate_scene

SOURCE = "world"


_BOX_TRIES = 64
_WINDOW_TRIES = 64
# A wrong box or window in a fact-check statement must overlap the true one by less than this IoU.
_WRONG_IOU = 0.5
# Objects whose centre is this close to the vertical midline get no left/right question.
_MIDLINE_MARGIN = 0.05


@dataclass
class _Draft:
    """A sample before its media and common fields are attached."""

    task: str
    instruction: str
    answer: str
    fields: dict
    events: tuple[SoundEvent, ...] | None = None  # the sample's audio when not the scene's
    paired: bool = True


def _overlaps(a: Segment, b: Segment) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _with_article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _wrong_box(scene: Scene, rng: np.random.Generator) -> Box | None:
    """A box that is not any sounding object's (IoU < 0.5 with each): another object's box or a box
    on the background; None in the rare scene where neither is found."""
    cfg = scene.config
    sounding_indices = scene.sounding()
    sounding = [scene.objects[i].box for i in sounding_indices]
    others = [
        o.box
        for i, o in enumerate(scene.objects)
        if i not in sounding_indices and all(box_iou(o.box, s) < _WRONG_IOU for s in sounding)
    ]
    if others and rng.random() < 0.5:
        return others[int(rng.integers(len(others)))]
    size = cfg.image_size
    best, best_overlap = None, math.inf
    for _ in range(_BOX_TRIES):
        side = max(1, round(rng.uniform(cfg.min_size, cfg.max_size) * size))
        left, top = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        cand = (left / size, top / size, (left + side) / size, (top + side) / size)
        # Prefer empty background: the least overlap with any object, not only the sounding ones.
        overlap = max(box_iou(cand, o.box) for o in scene.objects)
        if overlap < best_overlap:
            best, best_overlap = cand, overlap
    if best is not None and all(box_iou(best, s) < _WRONG_IOU for s in sounding):
        return best
    return others[int(rng.integers(len(others)))] if others else None


def _wrong_window(scene: Scene, rng: np.random.Generator, index: int) -> Segment | None:
    """A window that overlaps no event of object ``index``: another sound's window (a hard negative)
    or a random stretch of the clip; None when neither is found."""
    cfg = scene.config
    own = [e.segment for e in scene.events_of(index)]
    others = [e.segment for e in scene.events if e.source != index]
    if others and rng.random() < 0.5:
        return others[int(rng.integers(len(others)))]
    total = ticks(cfg.clip_seconds)
    low, high = ticks(cfg.min_event_seconds), ticks(cfg.max_event_seconds)
    for _ in range(_WINDOW_TRIES):
        length = int(rng.integers(low, min(high, total) + 1))
        start = int(rng.integers(0, total - length + 1))
        cand = (start / TICKS_PER_S, (start + length) / TICKS_PER_S)
        if not any(_overlaps(cand, seg) for seg in own):
            return cand
    return others[int(rng.integers(len(others)))] if others else None


def _arig(scene: Scene, rng: np.random.Generator, prng: random.Random) -> _Draft | None:
    sounding = scene.sounding()
    if len(sounding) != 1:
        return None
    box = scene.objects[sounding[0]].box
    return _Draft("arig", render_instruction("arig", prng), format_box(box), {"boxes": [list(box)]})


def _igatl(scene: Scene, rng: np.random.Generator, prng: random.Random) -> _Draft | None:
    sounding = scene.sounding()
    if not sounding:
        return None
    index = sounding[int(rng.integers(len(sounding)))]
    obj = scene.objects[index]
    segments = [list(e.segment) for e in scene.events_of(index)]
    return _Draft(
        "igatl",
        render_instruction("igatl", prng, obj=obj.name),
        # every window of the object, in time order: the answer is what segment F1 scores
        ", ".join(format_segment(seg) for seg in segments),
        {"segments": segments, "label_text": [obj.name]},
    )


def _mismatched_events(scene: Scene, rng: np.random.Generator) -> tuple[SoundEvent, ...]:
    """The scene's events with every on-screen sound replaced by one class absent from the picture."""
    on_screen = {o.cls for o in scene.objects}
    absent = [c for c in range(scene.config.n_classes) if c not in on_screen]
    stranger = absent[int(rng.integers(len(absent)))]
    return tuple(
        e if e.source is None else SoundEvent(stranger, e.start, e.end, None, e.seed) for e in scene.events
    )


def _avfact(
    scene: Scene, rng: np.random.Generator, prng: random.Random, fact_type: int, label: bool
) -> _Draft | None:
    sounding = scene.sounding()
    if not sounding:
        return None
    target = sounding[int(rng.integers(len(sounding)))]
    true_box = scene.objects[target].box
    target_events = scene.events_of(target)
    true_window = target_events[int(rng.integers(len(target_events)))].segment
    fields: dict = {"fact_type": fact_type, "label": label}
    prompt_fields: dict = {}
    events = None
    if fact_type == 1:
        box = true_box if label else _wrong_box(scene, rng)
        if box is None:
            return None
        prompt_fields["box"] = box
        fields["boxes"] = [list(box)]
    elif fact_type == 2:
        silent = [i for i in range(len(scene.objects)) if i not in sounding]
        if (
            not label
            and silent
            and scene.config.whose_negative_prob > 0.0
            and rng.random() < scene.config.whose_negative_prob
        ):
            # when right, whose wrong: only a model that binds the named object to the sound says False
            index, window = silent[int(rng.integers(len(silent)))], true_window
        else:
            index = target if label else int(rng.integers(len(scene.objects)))
            window = true_window if label else _wrong_window(scene, rng, index)
        if window is None:
            return None
        prompt_fields.update(obj=scene.objects[index].name, segment=window)
        fields.update(segments=[list(window)], label_text=[scene.objects[index].name])
    elif fact_type == 3:
        box, window = true_box, true_window
        if not label and rng.random() < 0.5:
            box = _wrong_box(scene, rng)
        elif not label:
            window = _wrong_window(scene, rng, target)
        if box is None or window is None:
            return None
        prompt_fields.update(box=box, segment=window)
        fields.update(boxes=[list(box)], segments=[list(window)])
    else:
        events = None if label else _mismatched_events(scene, rng)
    answer = FACT_ANSWERS[0] if label else FACT_ANSWERS[1]
    instruction = render_instruction("avfact", prng, fact_type=fact_type, **prompt_fields)
    return _Draft("avfact", instruction, answer, fields, events=events, paired=label or fact_type != 4)


def _first_start(scene: Scene, index: int) -> float:
    return scene.events_of(index)[0].start


def _avqa(scene: Scene, rng: np.random.Generator, prng: random.Random) -> _Draft:
    cfg = scene.config
    sounding = scene.sounding()
    names = [o.name for o in scene.objects]
    categories = ["Existential", "Count"]
    if sounding:
        categories.append("Temporal")
    if len(sounding) == 1 and abs(_box_centre_x(scene.objects[sounding[0]].box) - 0.5) >= _MIDLINE_MARGIN:
        categories.append("Localisation")
    category = categories[int(rng.integers(len(categories)))]
    label_text: list[str] = []
    if category == "Existential":
        # A class heard off screen is neither clearly "there" nor clearly not: never ask about it.
        unasked = {e.cls for e in scene.events} | {o.cls for o in scene.objects}
        not_sounding = [names[i] for i in range(len(names)) if i not in sounding]
        not_sounding += [CLASS_CATALOGUE[c].name for c in range(cfg.n_classes) if c not in unasked]
        yes = bool(sounding) and (not not_sounding or rng.random() < 0.5)
        pool = [names[i] for i in sounding] if yes else not_sounding
        name = pool[int(rng.integers(len(pool)))]
        question = f"Is there {_with_article(name)} making a sound?"
        answer, label_text = ("yes" if yes else "no"), [name]
    elif category == "Count":
        question, answer = "How many objects in the image make a sound?", str(len(sounding))
    elif category == "Temporal" and len(sounding) >= 2:
        a, b = (int(i) for i in rng.choice(sounding, size=2, replace=False))
        first = a if _first_start(scene, a) < _first_start(scene, b) else b
        question = f"Which sounds first, the {names[a]} or the {names[b]}?"
        answer, label_text = names[first], [names[a], names[b]]
    elif category == "Temporal":
        name = names[sounding[0]]
        question = f"Does the {name} start sounding in the first or the second half of the clip?"
        answer = "first" if _first_start(scene, sounding[0]) < cfg.clip_seconds / 2 else "second"
        label_text = [name]
    else:
        question = "Is the sounding object on the left or the right of the image?"
        answer = "left" if _box_centre_x(scene.objects[sounding[0]].box) < 0.5 else "right"
    fields: dict = {"qa_category": category}
    if label_text:
        fields["label_text"] = label_text
    return _Draft("avqa", render_instruction("avqa", prng, question=question), answer, fields)


def _box_centre_x(box: Box) -> float:
    return (box[0] + box[2]) / 2


def caption_references(scene: Scene) -> list[str]:
    """Three paraphrases describing the same facts: the objects, which of them sound and how, and
    any sound from outside the picture."""
    objects = _join([_with_article(o.name) for o in scene.objects])
    sounding = [
        (scene.objects[i].name, CLASS_CATALOGUE[scene.objects[i].cls].describe_sound())
        for i in scene.sounding()
    ]
    offscreen = sorted({CLASS_CATALOGUE[e.cls].describe_sound() for e in scene.events if e.source is None})
    elsewhere = _join([_with_article(s) for s in offscreen]) if offscreen else ""

    first = f"{_capitalise(objects)} on a textured background. "
    if sounding:
        first += _capitalise(_join([f"the {n} makes {_with_article(s)}" for n, s in sounding])) + "."
    else:
        first += "None of them makes a sound."
    if elsewhere:
        first += f" {_capitalise(elsewhere)} comes from outside the picture."

    second = f"The picture shows {objects}; "
    second += (
        _join([f"{_with_article(s)} comes from the {n}" for n, s in sounding])
        if sounding
        else "all of them are silent"
    )
    second += f", and {elsewhere} is heard from something out of view." if elsewhere else "."

    third = f"In this scene with {objects}, "
    third += (
        "we hear " + _join([f"the {n}'s {s}" for n, s in sounding])
        if sounding
        else "no visible object makes a sound"
    )
    third += f" while {elsewhere} plays off screen." if elsewhere else "."
    return [first, second, third]


def _avc(scene: Scene, rng: np.random.Generator, prng: random.Random) -> _Draft:
    references = caption_references(scene)
    answer = references[int(rng.integers(len(references)))]
    return _Draft("avc", render_instruction("avc", prng), answer, {"references": references})


def _sample_count(weight: float, rng: np.random.Generator) -> int:
    whole = math.floor(weight)
    return whole + int(rng.random() < weight - whole)


def _fact_type(weights: tuple[float, ...], rng: np.random.Generator) -> int:
    """A fact-check type 1-4 drawn with ``weights`` (equal weights take the same draw as always, so
    a world built without the knob is the same sample for sample)."""
    if len(set(weights)) == 1:
        return int(rng.integers(1, 5))
    p = np.asarray(weights) / sum(weights)
    return int(rng.choice(4, p=p)) + 1


def scene_samples(scene: Scene, scene_id: str, split: str, rng: np.random.Generator) -> list[dict]:
    """Samples of every task in ``scene.config.task_weights`` that the scene supports.

    Keys are ``f"{scene_id}-{task}-{n}"``. Fact-check samples come in pairs of one type (drawn with
    ``fact_type_weights``) with opposite labels (random order), so True and False are balanced
    within each type to within one per scene.
    """
    cfg = scene.config
    prng = random.Random(int(rng.integers(2**63)))
    drafts: list[_Draft | None] = []
    for task in TASKS:
        count = _sample_count(cfg.task_weights.get(task, 0.0), rng)
        if task == "avfact":
            for j in range(count):
                if j % 2 == 0:
                    fact_type, label = _fact_type(cfg.fact_type_weights, rng), bool(rng.integers(2))
                drafts.append(_avfact(scene, rng, prng, fact_type, label))
                label = not label
        else:
            builder = {"arig": _arig, "igatl": _igatl, "avqa": _avqa, "avc": _avc}[task]
            drafts += [builder(scene, rng, prng) for _ in range(count)]

    image = encode_jpeg(render_image(scene))
    audio_cache: dict[tuple[SoundEvent, ...], bytes] = {}
    samples = []
    counters = dict.fromkeys(TASKS, 0)
    for draft in drafts:
        if draft is None:
            continue
        events = scene.events if draft.events is None else draft.events
        if events not in audio_cache:
            audio_cache[events] = encode_flac(render_audio(scene, events), cfg.sample_rate)
        key = validate_key(f"{scene_id}-{draft.task}-{counters[draft.task]}")
        counters[draft.task] += 1
        meta = _meta(scene, split, draft, events)
        samples.append({"__key__": key, "image": image, "audio": audio_cache[events], "json": meta})
    return samples


def _meta(scene: Scene, split: str, draft: _Draft, events: tuple[SoundEvent, ...]) -> dict:
    sources = {e.source for e in events}
    meta: dict = {
        "task": draft.task,
        "source": SOURCE,
        "split": split,
        "instruction": draft.instruction,
        "answer": draft.answer,
        "duration": scene.config.clip_seconds,
        "paired": draft.paired,
        "objects": [
            {"class": o.name, "box": list(o.box), "sounds": i in sources} for i, o in enumerate(scene.objects)
        ],
        "sound_events": [
            {"class": CLASS_CATALOGUE[e.cls].name, "segment": list(e.segment), "object": e.source}
            for e in events
        ],
    }
    sounding_boxes = [list(o.box) for i, o in enumerate(scene.objects) if i in sources]
    if draft.task != "avfact" and sounding_boxes:
        meta["boxes"] = sounding_boxes
    meta.update(draft.fields)
    return validate_meta(meta)


def iter_samples(cfg: WorldConfig, split: str, n_scenes: int, seed: int, *, start: int = 0) -> Iterator[dict]:
    """Samples of scenes start..start+n_scenes-1 of ``split`` (the build job's tasks take ranges).

    Scene ``i`` is seeded by ``(seed, split, i)`` alone, so it is the same whatever ``n_scenes`` is,
    and the splits never share a scene stream. Keys are ``world-{split}-{i:06d}-{task}-{n}``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    for index in range(start, start + n_scenes):
        scene_seq, sample_seq = np.random.SeedSequence([seed, SPLITS.index(split), index]).spawn(2)
        scene = generate_scene(np.random.default_rng(scene_seq), cfg)
        yield from scene_samples(
            scene, f"{SOURCE}-{split}-{index:06d}", split, np.random.default_rng(sample_seq)
        )
