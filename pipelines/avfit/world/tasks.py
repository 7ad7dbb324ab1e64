"""A seeded procedural audio-visual world: coloured shapes that look and sound distinct.

Every scene is a 2-D picture of a few objects (a shape in a colour, one *class* each) on a textured
background, and a clip in which some of those objects sound at known times, perhaps with a sound
from an object that is not in the picture. Because every box and every time window is known
exactly, the scenes yield samples of all five MeerkatBench tasks (``sample.py`` contract) with
true ground truth and negatives that are wrong by construction, so the whole system can be trained
and measured end to end on one machine::

    from pipelines.avfit.world import WORLD_PRESETS, iter_samples
    for sample in iter_samples(WORLD_PRESETS["easy"], "train", n_scenes=100, seed=0):
        ...

Decisions made here:

- A class is a (colour, shape) pair with its own sound: a fundamental frequency, a timbre (pure,
  odd harmonics, all harmonics, or band noise around the fundamental) and a pulse rate of amplitude
  modulation. ``CLASS_CATALOGUE`` is ordered so that short prefixes are the most distinct: the first
  four classes differ in colour, shape, pitch, timbre and pulse at once, and no two of the first six
  share a colour, a shape or a pitch.
- Boxes are read off the rendered mask of each object (drawn alone), so they are tight by
  construction. With ``allow_overlap`` a later object may hide part of an earlier one; the box stays
  the whole shape's (amodal), and overlaps are capped so that no object is mostly hidden.
- Sound events never overlap in time and sit on a 0.1 s grid with at least 0.3 s between them: the
  one-decimal segment text of ``grounding`` is then exact, "which sounds first" has one answer, and a
  time window can be wrong without doubt.
- The objects of a scene have distinct classes, and an off-screen distractor's class is never on
  screen, so a class name always identifies one object.
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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from meerkat_core.grounding import box_iou, format_box, format_segment
from meerkat_core.media import encode_flac, encode_jpeg
from meerkat_core.prompts import FACT_ANSWERS, render_instruction
from pipelines.avfit.sample import SPLITS, TASKS, validate_key, validate_meta

Box = tuple[float, float, float, float]
Segment = tuple[float, float]

SOURCE = "world"

_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "blue": (30, 70, 230),
    "green": (30, 170, 50),
    "yellow": (240, 210, 20),
    "magenta": (210, 40, 210),
    "cyan": (20, 200, 210),
}
_TIMBRE_WORDS = {"pure": "pure tone", "hollow": "hollow buzz", "bright": "bright reedy tone", "noisy": "hiss"}
_PULSE_WORDS = {0.0: "steady", 2.0: "slowly pulsing", 4.0: "pulsing", 8.0: "rapidly pulsing"}


@dataclass(frozen=True)
class SoundClass:
    """One object class: how it looks (colour, shape) and how it sounds."""

    colour: str
    shape: str  # circle | square | triangle | star | diamond | cross
    f0: float  # fundamental frequency, Hz
    timbre: str  # pure | hollow (odd harmonics) | bright (all harmonics) | noisy (band noise)
    pulse_hz: float  # rate of the amplitude modulation; 0 is a steady sound

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def rgb(self) -> tuple[int, int, int]:
        return _COLOURS[self.colour]

    def describe_sound(self) -> str:
        """Caption words for the sound, e.g. ``"low steady pure tone"``."""
        pitch = "low" if self.f0 < 350 else "mid-pitched" if self.f0 < 1000 else "high"
        return f"{pitch} {_PULSE_WORDS[self.pulse_hz]} {_TIMBRE_WORDS[self.timbre]}"


CLASS_CATALOGUE: tuple[SoundClass, ...] = (
    SoundClass("red", "circle", 196.0, "pure", 0.0),
    SoundClass("blue", "square", 1976.0, "hollow", 8.0),
    SoundClass("green", "triangle", 622.0, "noisy", 2.0),
    SoundClass("yellow", "star", 1245.0, "bright", 4.0),
    SoundClass("magenta", "diamond", 392.0, "bright", 8.0),
    SoundClass("cyan", "cross", 2489.0, "pure", 2.0),
    SoundClass("red", "square", 784.0, "hollow", 0.0),
    SoundClass("blue", "circle", 311.0, "noisy", 4.0),
    SoundClass("green", "star", 1568.0, "pure", 4.0),
    SoundClass("yellow", "triangle", 247.0, "hollow", 2.0),
    SoundClass("magenta", "cross", 988.0, "noisy", 8.0),
    SoundClass("cyan", "diamond", 494.0, "bright", 0.0),
)

# Every time is a whole number of deciseconds (see the module docstring).
_TICKS_PER_S = 10
_MIN_GAP_TICKS = 3
# Nominal RMS of one sound event; the background noise level is set against it by ``snr_db``.
_EVENT_RMS = 0.1
_FADE_S = 0.02
# The pulse dips the level to 30%, never to silence, so an event is audible over its whole window.
_PULSE_DEPTH = 0.7
# Harmonics stop below this fraction of the sample rate so that nothing aliases.
_MAX_PARTIAL = 0.45
_LAYOUT_TRIES = 50
_PLACE_TRIES = 100
_GAP_PX = 2
# With allow_overlap, at most this fraction of the smaller of two objects' squares may be covered.
_MAX_COVER = 0.3
_BOX_TRIES = 64
_WINDOW_TRIES = 64
# A wrong box or window in a fact-check statement must overlap the true one by less than this IoU.
_WRONG_IOU = 0.5
# Objects whose centre is this close to the vertical midline get no left/right question.
_MIDLINE_MARGIN = 0.05
_COARSE_GRID = 8


def _ticks(seconds: float) -> int:
    return round(seconds * _TICKS_PER_S)


_DEFAULT_TASK_WEIGHTS = {"arig": 1.0, "igatl": 1.0, "avfact": 2.0, "avqa": 1.0, "avc": 1.0}


@dataclass(frozen=True)
class WorldConfig:
    """How scenes are drawn. Sizes are fractions of the image side, times are seconds."""

    n_classes: int = 8
    """Classes in play: the first ``n_classes`` of ``CLASS_CATALOGUE`` (2..12). Fewer classes are
    more distinct from each other; must exceed ``max_objects`` so some class is always off screen."""
    min_objects: int = 1
    """Fewest objects in a picture (when the layout cannot fit them all, fewer are drawn)."""
    max_objects: int = 3
    """Most objects in a picture."""
    min_size: float = 0.2
    """Smallest object: side of the square the shape is drawn in, as a fraction of the image side."""
    max_size: float = 0.4
    """Largest object, same unit as ``min_size``."""
    image_size: int = 224
    """Side of the square RGB image, pixels."""
    clip_seconds: float = 10.0
    """Length of every audio clip, seconds (a whole number of deciseconds)."""
    sample_rate: int = 48000
    """Audio sample rate, Hz: 48000 is what the CLAP feature extractor expects; 16000 is cheaper."""
    background_noise: float = 0.08
    """Strength of the background texture, as a fraction of full scale (0 is a flat colour)."""
    allow_overlap: bool = False
    """Let objects partially cover each other (later ones on top); boxes stay the whole shape's."""
    max_sounding: int = 2
    """Most on-screen objects that sound in one scene."""
    silent_prob: float = 0.1
    """Probability that no on-screen object sounds (the clip holds only noise and distractors)."""
    offscreen_distractor_prob: float = 0.3
    """Probability that the clip also holds one event of a class that is not in the picture."""
    min_events: int = 1
    """Fewest events per sounding object."""
    max_events: int = 2
    """Most events per sounding object."""
    min_event_seconds: float = 1.0
    """Shortest event, seconds; events are shortened towards it when many must fit in the clip."""
    max_event_seconds: float = 3.0
    """Longest event, seconds."""
    snr_db: float = 15.0
    """Level of one event over the white background noise, dB; ``math.inf`` for no noise."""
    task_weights: Mapping[str, float] = field(default_factory=lambda: dict(_DEFAULT_TASK_WEIGHTS))
    """Expected samples per scene for each task: the whole part is always made, the fraction with
    that probability. Tasks missing here are not made."""

    def __post_init__(self) -> None:
        if not 2 <= self.n_classes <= len(CLASS_CATALOGUE):
            raise ValueError(f"n_classes must be in 2..{len(CLASS_CATALOGUE)}, got {self.n_classes}")
        if not 1 <= self.min_objects <= self.max_objects < self.n_classes:
            raise ValueError("need 1 <= min_objects <= max_objects < n_classes")
        if not 0.0 < self.min_size <= self.max_size <= 1.0:
            raise ValueError("need 0 < min_size <= max_size <= 1")
        if not self.allow_overlap and self.min_objects * self.min_size > 0.95:
            raise ValueError("min_objects objects of min_size cannot fit side by side without overlap")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16 px, got {self.image_size}")
        if self.sample_rate < 8000:
            raise ValueError(f"sample_rate must be at least 8000 Hz, got {self.sample_rate}")
        if not 1 <= self.max_sounding:
            raise ValueError("max_sounding must be at least 1")
        if not 1 <= self.min_events <= self.max_events:
            raise ValueError("need 1 <= min_events <= max_events")
        for name in ("silent_prob", "offscreen_distractor_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability")
        ticks = (self.clip_seconds, self.min_event_seconds, self.max_event_seconds)
        if any(abs(t * _TICKS_PER_S - round(t * _TICKS_PER_S)) > 1e-9 for t in ticks):
            raise ValueError("clip_seconds and event lengths must be whole multiples of 0.1 s")
        if not 0.0 < self.min_event_seconds <= self.max_event_seconds:
            raise ValueError("need 0 < min_event_seconds <= max_event_seconds")
        most_events = self.max_sounding * self.max_events + (self.offscreen_distractor_prob > 0)
        needed = most_events * _ticks(self.min_event_seconds) + (most_events + 1) * _MIN_GAP_TICKS
        if needed > _ticks(self.clip_seconds):
            raise ValueError(f"{most_events} events of min_event_seconds do not fit in clip_seconds")
        unknown = set(self.task_weights) - set(TASKS)
        if unknown or any(w < 0 for w in self.task_weights.values()):
            raise ValueError(f"task_weights needs keys in {TASKS} and weights >= 0, got {self.task_weights}")


WORLD_PRESETS: dict[str, WorldConfig] = {
    # The CPU demo: one sounding object among one or two large ones, four classes that differ in
    # colour, shape, pitch, timbre and rhythm at once, clean audio. Learning to pick the sounding
    # object of two is the whole lesson.
    "easy": WorldConfig(
        n_classes=4,
        min_objects=1,
        max_objects=2,
        min_size=0.3,
        max_size=0.5,
        background_noise=0.04,
        max_sounding=1,
        silent_prob=0.0,
        offscreen_distractor_prob=0.0,
        min_events=1,
        max_events=1,
        min_event_seconds=2.0,
        max_event_seconds=5.0,
        snr_db=30.0,
    ),
    "default": WorldConfig(),
    # Many similar classes, small and overlapping objects, distractors and loud noise.
    "hard": WorldConfig(
        n_classes=12,
        min_objects=2,
        max_objects=3,
        min_size=0.12,
        max_size=0.3,
        background_noise=0.15,
        allow_overlap=True,
        max_sounding=3,
        silent_prob=0.15,
        offscreen_distractor_prob=0.5,
        min_events=1,
        max_events=2,
        min_event_seconds=0.8,
        max_event_seconds=2.5,
        snr_db=5.0,
    ),
}


@dataclass(frozen=True)
class SceneObject:
    """An object in the picture: its class and the square (pixels) its shape is drawn in."""

    cls: int  # index into CLASS_CATALOGUE
    left: int
    top: int
    side: int
    box: Box  # tight around the drawn shape, normalised [x1, y1, x2, y2]

    @property
    def name(self) -> str:
        return CLASS_CATALOGUE[self.cls].name


@dataclass(frozen=True)
class SoundEvent:
    """One sound of a class during [start, end] seconds; ``source`` is the object index or None."""

    cls: int
    start: float
    end: float
    source: int | None  # None: the sound comes from outside the picture
    seed: int  # seeds the band noise of a noisy timbre, so the event renders alike alone or mixed

    @property
    def segment(self) -> Segment:
        return (self.start, self.end)


@dataclass(frozen=True)
class Scene:
    """A picture and its clip, fully determined by these fields."""

    config: WorldConfig
    objects: tuple[SceneObject, ...]
    events: tuple[SoundEvent, ...]  # sorted by start; never overlapping
    background_seed: int
    noise_seed: int

    def sounding(self) -> tuple[int, ...]:
        """Indices of the on-screen objects that make at least one sound."""
        return tuple(i for i in range(len(self.objects)) if self.events_of(i))

    def events_of(self, index: int) -> tuple[SoundEvent, ...]:
        return tuple(e for e in self.events if e.source == index)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, left: int, top: int, side: int) -> None:
    x0, y0, x1, y1 = left, top, left + side - 1, top + side - 1
    cx, cy, radius = (x0 + x1) / 2, (y0 + y1) / 2, (side - 1) / 2
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=255)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=255)
    elif shape == "star":
        points = []
        for k in range(10):
            r = radius if k % 2 == 0 else 0.45 * radius
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
        draw.polygon(points, fill=255)
    elif shape == "cross":
        half = side / 6
        draw.rectangle((x0, cy - half, x1, cy + half), fill=255)
        draw.rectangle((cx - half, y0, cx + half, y1), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _shape_mask(shape: str, left: int, top: int, side: int, size: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    _draw_shape(ImageDraw.Draw(mask), shape, left, top, side)
    return mask


def render_object_mask(scene: Scene, index: int) -> np.ndarray:
    """Bool [H, W]: the pixels of object ``index`` drawn alone (occlusion ignored)."""
    obj = scene.objects[index]
    mask = _shape_mask(CLASS_CATALOGUE[obj.cls].shape, obj.left, obj.top, obj.side, scene.config.image_size)
    return np.asarray(mask) > 0


def _background(scene: Scene) -> np.ndarray:
    """Float [H, W, 3] in 0..255: a muted base colour with smooth and fine seeded noise."""
    cfg = scene.config
    rng = np.random.default_rng(scene.background_seed)
    size = cfg.image_size
    # Grey-ish bases keep the saturated object colours the most salient thing in the picture.
    base = rng.uniform(80.0, 170.0) + rng.uniform(-15.0, 15.0, size=3)  # [3]
    coarse = rng.standard_normal((_COARSE_GRID, _COARSE_GRID, 3)).astype(np.float32)
    smooth = np.stack(
        [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(coarse[:, :, c])).resize(
                    (size, size), Image.Resampling.BICUBIC
                )
            )
            for c in range(3)
        ],
        axis=-1,
    )  # [H, W, 3]
    fine = rng.standard_normal((size, size, 3))  # [H, W, 3]
    return base + 255.0 * cfg.background_noise * (smooth + 0.5 * fine)


def render_image(scene: Scene) -> Image.Image:
    """The RGB picture: textured background, then the objects in order (later ones on top)."""
    pixels = _background(scene)  # [H, W, 3]
    for i, obj in enumerate(scene.objects):
        pixels[render_object_mask(scene, i)] = CLASS_CATALOGUE[obj.cls].rgb
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _event_wave(event: SoundEvent, sample_rate: int) -> np.ndarray:
    """Float64 [n]: one event of its class at ``_EVENT_RMS``, pulsed, with raised-cosine fades."""
    spec = CLASS_CATALOGUE[event.cls]
    n = round(event.end * sample_rate) - round(event.start * sample_rate)
    t = np.arange(n) / sample_rate  # [n]
    if spec.timbre == "noisy":
        spectrum = np.fft.rfft(np.random.default_rng(event.seed).standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
        spectrum[(freqs < spec.f0 / 1.25) | (freqs > spec.f0 * 1.25)] = 0.0
        wave = np.fft.irfft(spectrum, n)
    else:
        harmonics = {"pure": [1], "hollow": [1, 3, 5, 7, 9], "bright": list(range(1, 9))}[spec.timbre]
        wave = np.zeros(n)
        for k in harmonics:
            if k * spec.f0 < _MAX_PARTIAL * sample_rate:
                wave += np.sin(2 * np.pi * k * spec.f0 * t) / k
    wave *= _EVENT_RMS / np.sqrt(np.mean(wave**2))
    if spec.pulse_hz > 0:
        wave *= 1.0 - _PULSE_DEPTH * (0.5 - 0.5 * np.cos(2 * np.pi * spec.pulse_hz * t))
    fade = min(round(_FADE_S * sample_rate), n // 2)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)  # [fade]
    wave[:fade] *= ramp
    wave[n - fade :] *= ramp[::-1]
    return wave


def render_audio(
    scene: Scene, events: Sequence[SoundEvent] | None = None, *, noise: bool = True
) -> np.ndarray:
    """Float32 [clip_seconds * sample_rate] mono in [-1, 1]: ``events`` (default the scene's) over
    white noise at ``snr_db`` below one event's level (none when ``noise`` is False)."""
    cfg = scene.config
    n = round(cfg.clip_seconds * cfg.sample_rate)
    audio = np.zeros(n)
    if noise and math.isfinite(cfg.snr_db):
        level = _EVENT_RMS / 10 ** (cfg.snr_db / 20)
        audio += level * np.random.default_rng(scene.noise_seed).standard_normal(n)
    for event in scene.events if events is None else events:
        start = round(event.start * cfg.sample_rate)
        wave = _event_wave(event, cfg.sample_rate)
        audio[start : start + len(wave)] += wave
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def _squares_fit(a: tuple[int, int, int], b: tuple[int, int, int], allow_overlap: bool) -> bool:
    (ax, ay, aside), (bx, by, bside) = a, b
    gap = 0 if allow_overlap else _GAP_PX
    overlap_w = min(ax + aside, bx + bside) - max(ax, bx) + gap
    overlap_h = min(ay + aside, by + bside) - max(ay, by) + gap
    if overlap_w <= 0 or overlap_h <= 0:
        return True
    return allow_overlap and overlap_w * overlap_h <= _MAX_COVER * min(aside, bside) ** 2


def _layout(rng: np.random.Generator, cfg: WorldConfig, count: int) -> list[tuple[int, int, int]]:
    """``count`` squares (left, top, side) that fit together, or as many as the last try placed."""
    size = cfg.image_size
    squares: list[tuple[int, int, int]] = []
    for _ in range(_LAYOUT_TRIES):
        squares = []
        for _ in range(count):
            side = max(1, round(rng.uniform(cfg.min_size, cfg.max_size) * size))
            for _ in range(_PLACE_TRIES):
                cand = (int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1)), side)
                if all(_squares_fit(cand, other, cfg.allow_overlap) for other in squares):
                    squares.append(cand)
                    break
            else:
                break
        if len(squares) == count:
            break
    return squares


def _place_events(rng: np.random.Generator, cfg: WorldConfig, count: int) -> list[tuple[int, int]]:
    """``count`` disjoint (start, end) windows in ticks, in a random order, gaps >= the minimum."""
    total = _ticks(cfg.clip_seconds)
    low, high = _ticks(cfg.min_event_seconds), _ticks(cfg.max_event_seconds)
    lengths = rng.integers(low, high + 1, size=count)  # [count]
    budget = total - (count + 1) * _MIN_GAP_TICKS
    if lengths.sum() > budget:
        # Shrink each length's part above the minimum by the same factor; __post_init__ made sure
        # that the minimum lengths fit.
        spare = lengths - low
        lengths = low + (spare * (budget - count * low)) // max(int(spare.sum()), 1)
    free = budget - int(lengths.sum())
    cuts = np.sort(rng.integers(0, free + 1, size=count))
    extra = np.diff(np.concatenate([[0], cuts, [free]]))  # [count + 1]
    order = rng.permutation(count)
    windows: list[tuple[int, int]] = [(0, 0)] * count
    t = 0
    for slot, which in enumerate(order):
        t += _MIN_GAP_TICKS + int(extra[slot])
        windows[which] = (t, t + int(lengths[which]))
        t += int(lengths[which])
    return windows


def generate_scene(rng: np.random.Generator, cfg: WorldConfig) -> Scene:
    """A random scene drawn with ``rng``; the same generator state gives the same scene."""
    count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    squares = _layout(rng, cfg, count)
    classes = [int(c) for c in rng.choice(cfg.n_classes, size=len(squares), replace=False)]
    objects = []
    for cls, (left, top, side) in zip(classes, squares, strict=True):
        mask = _shape_mask(CLASS_CATALOGUE[cls].shape, left, top, side, cfg.image_size)
        x1, y1, x2, y2 = mask.getbbox()  # right and bottom are exclusive: pixel edges
        box = (x1 / cfg.image_size, y1 / cfg.image_size, x2 / cfg.image_size, y2 / cfg.image_size)
        objects.append(SceneObject(cls, left, top, side, box))

    n_sounding = 0
    if rng.random() >= cfg.silent_prob:
        n_sounding = int(rng.integers(1, min(cfg.max_sounding, len(objects)) + 1))
    sounding = sorted(int(i) for i in rng.choice(len(objects), size=n_sounding, replace=False))
    owners: list[tuple[int, int | None]] = []
    for i in sounding:
        owners += [(objects[i].cls, i)] * int(rng.integers(cfg.min_events, cfg.max_events + 1))
    if rng.random() < cfg.offscreen_distractor_prob:
        absent = [c for c in range(cfg.n_classes) if c not in classes]
        owners.append((int(rng.choice(absent)), None))
    windows = _place_events(rng, cfg, len(owners))
    events = [
        SoundEvent(cls, start / _TICKS_PER_S, end / _TICKS_PER_S, source, int(rng.integers(2**63)))
        for (cls, source), (start, end) in zip(owners, windows, strict=True)
    ]
    events.sort(key=lambda e: e.start)
    return Scene(
        config=cfg,
        objects=tuple(objects),
        events=tuple(events),
        background_seed=int(rng.integers(2**63)),
        noise_seed=int(rng.integers(2**63)),
    )


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
    total = _ticks(cfg.clip_seconds)
    low, high = _ticks(cfg.min_event_seconds), _ticks(cfg.max_event_seconds)
    for _ in range(_WINDOW_TRIES):
        length = int(rng.integers(low, min(high, total) + 1))
        start = int(rng.integers(0, total - length + 1))
        cand = (start / _TICKS_PER_S, (start + length) / _TICKS_PER_S)
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


def scene_samples(scene: Scene, scene_id: str, split: str, rng: np.random.Generator) -> list[dict]:
    """Samples of every task in ``scene.config.task_weights`` that the scene supports.

    Keys are ``f"{scene_id}-{task}-{n}"``. Fact-check samples come in pairs of one random type with
    opposite labels (random order), so True and False are balanced within each type to within one
    per scene.
    """
    cfg = scene.config
    prng = random.Random(int(rng.integers(2**63)))
    drafts: list[_Draft | None] = []
    for task in TASKS:
        count = _sample_count(cfg.task_weights.get(task, 0.0), rng)
        if task == "avfact":
            for j in range(count):
                if j % 2 == 0:
                    fact_type, label = int(rng.integers(1, 5)), bool(rng.integers(2))
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


def baselines(samples: Iterable[dict]) -> dict:
    """Scores of answers that need no understanding, for the samples of one split.

    - ``arig_mean_box_miou``: mean IoU of one constant box, the mean of the split's ground-truth
      boxes (the first of each sample). A model at this level has learnt where objects tend to be,
      not which one sounds.
    - ``arig_random_object_miou``: the expected IoU of the box of an object picked at random in the
      scene (the average over its objects). A model that finds objects but ignores the audio scores
      this, so only the margin above it shows audio-visual grounding.
    - ``avfact_majority_acc``: accuracy of always giving the most frequent fact-check label.

    Each IoU takes the best-matching ground-truth box of a sample. Values are None without arig or
    avfact samples. Raises ValueError for samples of several splits, or arig samples lacking
    ``objects``.
    """
    metas = [s["json"] for s in samples]
    splits = {m["split"] for m in metas}
    if len(splits) > 1:
        raise ValueError(f"baselines are per split, got samples of {sorted(splits)}")
    arig = [m for m in metas if m["task"] == "arig"]
    facts = [bool(m["label"]) for m in metas if m["task"] == "avfact"]
    result: dict = {
        "split": splits.pop() if splits else None,
        "arig_n": len(arig),
        "arig_mean_box": None,
        "arig_mean_box_miou": None,
        "arig_random_object_miou": None,
        "avfact_n": len(facts),
        "avfact_majority_acc": max(sum(facts), len(facts) - sum(facts)) / len(facts) if facts else None,
    }
    if arig:
        if any(not m.get("objects") for m in arig):
            raise ValueError("arig samples need `objects` for the random-object baseline")
        mean_box = np.mean([m["boxes"][0] for m in arig], axis=0).tolist()
        result["arig_mean_box"] = mean_box
        result["arig_mean_box_miou"] = float(np.mean([_best_iou(mean_box, m["boxes"]) for m in arig]))
        result["arig_random_object_miou"] = float(
            np.mean([np.mean([_best_iou(o["box"], m["boxes"]) for o in m["objects"]]) for m in arig])
        )
    return result


def _best_iou(box: Sequence[float], truths: Sequence[Sequence[float]]) -> float:
    return max(box_iou(box, truth) for truth in truths)
