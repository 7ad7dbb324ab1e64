"""The world's classes: short prefixes of the catalogue are the most distinct."""

from __future__ import annotations

from pipelines.avfit.world import CLASS_CATALOGUE


def test_class_names_are_unique_and_the_first_classes_differ_in_every_feature():
    names = [c.name for c in CLASS_CATALOGUE]
    assert len(set(names)) == len(names)
    first_four = CLASS_CATALOGUE[:4]
    for feature in ("colour", "shape", "f0", "timbre", "pulse_hz"):
        assert len({getattr(c, feature) for c in first_four}) == 4, feature
    first_six = CLASS_CATALOGUE[:6]
    for feature in ("colour", "shape", "f0"):
        assert len({getattr(c, feature) for c in first_six}) == 6, feature


def test_sound_words_name_pitch_pulse_and_timbre():
    assert CLASS_CATALOGUE[0].describe_sound() == "low steady pure tone"
    assert CLASS_CATALOGUE[1].describe_sound() == "high rapidly pulsing hollow buzz"
