"""serve.examples: the demo page's example scenes and the files behind their URLs."""

from __future__ import annotations

import io

import pytest
import soundfile as sf
from PIL import Image

from serve import examples


def test_the_index_lists_each_scene_with_its_files_and_fields():
    index = examples.index()
    assert 0 < len(index) <= examples.N_SCENES
    for i, scene in enumerate(index):
        assert scene["id"] == f"scene-{i}"
        assert (scene["image"], scene["audio"]) == (f"/examples/scene-{i}.jpg", f"/examples/scene-{i}.flac")
        assert scene["object"] and len(scene["box"]) == 4 and len(scene["window"]) == 2
        x1, y1, x2, y2 = scene["box"]
        assert 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1


def test_the_files_are_the_scenes_media():
    image, image_type = examples.file("scene-0.jpg")
    assert image_type == "image/jpeg" and Image.open(io.BytesIO(image)).format == "JPEG"
    audio, audio_type = examples.file("scene-0.flac")
    assert audio_type == "audio/flac" and sf.info(io.BytesIO(audio)).format == "FLAC"


@pytest.mark.parametrize(
    "name", ["scene-0.png", "scene-99.jpg", "scene--1.jpg", "scene-١.jpg", "other-0.jpg", "scene-0", "../x"]
)
def test_any_other_name_is_none(name):
    assert examples.file(name) is None
