"""Scenes: the objects of a picture and the sound events of its clip, drawn at random from a config.

- Boxes are read off the rendered mask of each object (drawn alone), so they are tight by
  construction. With ``allow_overlap`` a later object may hide part of an earlier one; the box stays
  the whole shape's (amodal), and overlaps are capped so that no object is mostly hidden.
- Sound events never overlap in time and sit on the decisecond grid of
  :mod:`pipelines.avfit.world.config`, with at least ``MIN_GAP_TICKS`` between them.
- The objects of a scene have distinct classes, and an off-screen distractor's class is never on
  screen, so a class name always identifies one object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.avfit.world.catalogue import CLASS_CATALOGUE
from pipelines.avfit.world.config import MIN_GAP_TICKS, TICKS_PER_S, WorldConfig, ticks
from pipelines.avfit.world.render import shape_mask

Box = tuple[float, float, float, float]
Segment = tuple[float, float]


_LAYOUT_TRIES = 50
_PLACE_TRIES = 100
_GAP_PX = 2
# With allow_overlap, at most this fraction of the smaller of two objects' squares may be covered.
_MAX_COVER = 0.3


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
    total = ticks(cfg.clip_seconds)
    low, high = ticks(cfg.min_event_seconds), ticks(cfg.max_event_seconds)
    lengths = rng.integers(low, high + 1, size=count)  # [count]
    budget = total - (count + 1) * MIN_GAP_TICKS
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
        t += MIN_GAP_TICKS + int(extra[slot])
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
        mask = shape_mask(CLASS_CATALOGUE[cls].shape, left, top, side, cfg.image_size)
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
        SoundEvent(cls, start / TICKS_PER_S, end / TICKS_PER_S, source, int(rng.integers(2**63)))
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
