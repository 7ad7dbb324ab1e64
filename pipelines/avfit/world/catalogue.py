"""The world's object classes: how each looks (a colour and a shape) and how it sounds.

A class is a (colour, shape) pair with its own sound: a fundamental frequency, a timbre (pure, odd
harmonics, all harmonics, or band noise around the fundamental) and a pulse rate of amplitude
modulation. ``CLASS_CATALOGUE`` is ordered so that short prefixes are the most distinct
(``WorldConfig.n_classes`` takes a prefix): the first four classes differ in colour, shape, pitch,
timbre and pulse at once, and no two of the first six share a colour, a shape or a pitch.
"""

from __future__ import annotations

from dataclasses import dataclass

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
