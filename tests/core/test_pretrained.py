"""Loading the paper preset from checkpoints in the official layouts (small random ones, written by
:mod:`tests.fixtures.pretrained`): weights, front ends, tokenizer, and the errors for bad ones."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from meerkat_core import batching, media
from tests.fixtures.pretrained import paper_config


def _noise_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _noise_wave(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 48_000)) / 48_000
    return (0.3 * np.sin(2 * np.pi * 700 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Front ends


def test_image_front_end_is_the_checkpoints_exactly(pretrained_dirs):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    reference = CLIPImageProcessorPil.from_pretrained(pretrained_dirs.clip)
    ours = media.ImagePreprocessor.from_pretrained(str(pretrained_dirs.clip))
    assert ours.image_size == 224 and ours.resample == Image.Resampling.BICUBIC
    images = [_noise_image(640, 480, 1), _noise_image(333, 517, 2), _noise_image(224, 224, 3)]
    # the library's processor on the letterboxed image (media.py: LLaVA-1.5's pad to square)
    padded = [media.pad_to_square(image, ours.fill) for image in images]
    theirs = np.asarray(reference(padded, return_tensors="np")["pixel_values"])
    np.testing.assert_array_equal(ours(images).numpy(), theirs)


def test_image_front_end_follows_the_checkpoints_values(pretrained_dirs, tmp_path):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    other = tmp_path / "clip"
    shutil.copytree(pretrained_dirs.clip, other)
    cfg = json.loads((other / "preprocessor_config.json").read_text())
    cfg.update(image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.5, 1.0], resample=2, size=64, crop_size=64)
    (other / "preprocessor_config.json").write_text(json.dumps(cfg))
    ours = media.ImagePreprocessor.from_pretrained(str(other))
    images = [_noise_image(100, 80, 4)]
    padded = [media.pad_to_square(image, ours.fill) for image in images]
    assert ours.fill == (127, 127, 127)  # int(255 * 0.5), the checkpoint's mean
    theirs = np.asarray(
        CLIPImageProcessorPil.from_pretrained(other)(padded, return_tensors="np")["pixel_values"]
    )
    assert ours.image_size == 64 and ours.resample == Image.Resampling.BILINEAR
    np.testing.assert_array_equal(ours(images).numpy(), theirs)
    # a crop that is not the resized short side is a geometry box_to_crop does not follow
    cfg.update(crop_size=48)
    (other / "preprocessor_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="crop_size"):
        media.ImagePreprocessor.from_pretrained(str(other))


@pytest.mark.parametrize("seconds", [10.0, 3.7, 0.5])
def test_audio_front_end_is_the_checkpoints_exactly_up_to_one_window(pretrained_dirs, seconds):
    from transformers import ClapFeatureExtractor

    reference = ClapFeatureExtractor.from_pretrained(pretrained_dirs.clap)
    assert reference.padding == "repeatpad" and reference.frequency_min == 50
    wave = _noise_wave(seconds, 7)
    theirs = reference([wave], sampling_rate=48_000, return_tensors="np")["input_features"]  # [1, 1, T, F]
    ours = media.AudioPreprocessor.from_pretrained(str(pretrained_dirs.clap))([wave])  # [1, 1, 1, T, F]
    assert ours.shape == (1, 1, 1, 1001, 64)
    np.testing.assert_array_equal(ours[0].numpy(), np.asarray(theirs, dtype=np.float32))
    # ... and the class defaults (frequency_min 0, pad) would have given something else
    default = media.AudioPreprocessor()([wave])
    assert not np.allclose(default.numpy(), ours.numpy(), atol=1e-3)


def test_audio_front_end_windows_are_consecutive_and_the_last_is_padded_like_clap(pretrained_dirs):
    from transformers import ClapFeatureExtractor

    reference = ClapFeatureExtractor.from_pretrained(pretrained_dirs.clap)
    three = media.AudioPreprocessor.from_pretrained(str(pretrained_dirs.clap), num_windows=3)
    wave = _noise_wave(14.0, 8)  # one full window, 4 s of the second, nothing of the third
    out = three([wave])[0].numpy()  # [3, 1, T, F]

    def alone(part: np.ndarray) -> np.ndarray:
        return np.asarray(
            reference([part], sampling_rate=48_000, return_tensors="np")["input_features"][0], np.float32
        )

    np.testing.assert_array_equal(out[0], alone(wave[:480_000]))
    np.testing.assert_array_equal(out[1], alone(wave[480_000:]))  # repeat-padded by CLAP's own rule
    np.testing.assert_array_equal(out[2], alone(np.zeros(480_000, np.float32)))  # silence


def test_fusion_front_end_is_refused(pretrained_dirs, tmp_path):
    other = tmp_path / "clap"
    shutil.copytree(pretrained_dirs.clap, other)
    cfg = json.loads((other / "preprocessor_config.json").read_text())
    (other / "preprocessor_config.json").write_text(json.dumps({**cfg, "truncation": "fusion"}))
    with pytest.raises(ValueError, match="fusion"):
        media.AudioPreprocessor.from_pretrained(str(other))


def test_sample_preprocessor_uses_the_named_checkpoints_front_ends(pretrained_dirs, tmp_path):
    config = paper_config(pretrained_dirs)
    image, audio = batching.front_ends(config)
    assert audio._extractor.padding == "repeatpad" and audio._extractor.frequency_min == 50
    wave = _noise_wave(2.0, 9)
    np.testing.assert_array_equal(
        audio([wave]).numpy(),
        media.AudioPreprocessor.from_pretrained(str(pretrained_dirs.clap))([wave]).numpy(),
    )
    # a checkpoint whose front end disagrees with the config's fields is named
    other = tmp_path / "clap"
    shutil.copytree(pretrained_dirs.clap, other)
    cfg = json.loads((other / "preprocessor_config.json").read_text())
    (other / "preprocessor_config.json").write_text(json.dumps({**cfg, "hop_length": 320}))
    from meerkat_core.config import replace_path

    with pytest.raises(ValueError, match="hop_length"):
        batching.front_ends(replace_path(config, "audio.name_or_path", str(other)))
