"""How scenes are drawn: ``WorldConfig`` (every knob, checked for worlds that cannot be drawn) and
the named ``WORLD_PRESETS``.

Every time in the world is a whole number of deciseconds (``TICKS_PER_S``), and sound events keep at
least ``MIN_GAP_TICKS`` between them: the one-decimal segment text of
:mod:`meerkat_core.grounding` is then exact, "which sounds first" has one answer, and a time window
can be wrong without doubt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from pipelines.avfit.sample import TASKS
from pipelines.avfit.world.catalogue import CLASS_CATALOGUE

# Every time is a whole number of deciseconds (see the module docstring).
TICKS_PER_S = 10
MIN_GAP_TICKS = 3


def ticks(seconds: float) -> int:
    """``seconds`` on the decisecond grid."""
    return round(seconds * TICKS_PER_S)


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
    fact_type_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    """Relative frequency of fact-check types 1-4 (each scene's fact-checks come in pairs of one
    type, drawn with these weights)."""
    whose_negative_prob: float = 0.0
    """Probability that a False type-2 statement, in a scene with a silent on-screen object, names
    that silent object at the window of the sounding object's sound: the statement has *when*
    right and *whose* wrong. Otherwise (and always at 0) the named object is any on-screen object
    and the window one its own sound does not hold, which in a two-object scene with one sound
    makes such statements about a quarter of the False ones. At 1, False statements with a wrong
    window are left only to scenes without a silent object."""

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
        for name in ("silent_prob", "offscreen_distractor_prob", "whose_negative_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability")
        times = (self.clip_seconds, self.min_event_seconds, self.max_event_seconds)
        if any(abs(t * TICKS_PER_S - round(t * TICKS_PER_S)) > 1e-9 for t in times):
            raise ValueError("clip_seconds and event lengths must be whole multiples of 0.1 s")
        if not 0.0 < self.min_event_seconds <= self.max_event_seconds:
            raise ValueError("need 0 < min_event_seconds <= max_event_seconds")
        most_events = self.max_sounding * self.max_events + (self.offscreen_distractor_prob > 0)
        needed = most_events * ticks(self.min_event_seconds) + (most_events + 1) * MIN_GAP_TICKS
        if needed > ticks(self.clip_seconds):
            raise ValueError(f"{most_events} events of min_event_seconds do not fit in clip_seconds")
        if not isinstance(self.fact_type_weights, (tuple, list)):
            raise ValueError(f"fact_type_weights needs a list of 4 weights, got {self.fact_type_weights!r}")
        weights = tuple(float(w) for w in self.fact_type_weights)  # YAML gives a list
        if (
            len(weights) != 4
            or not all(math.isfinite(w) and w >= 0.0 for w in weights)
            or sum(weights) <= 0.0
        ):
            raise ValueError(
                f"fact_type_weights needs 4 weights >= 0, not all 0, got {self.fact_type_weights}"
            )
        object.__setattr__(self, "fact_type_weights", weights)
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
