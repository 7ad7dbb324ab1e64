"""meerkat_core.encoders: the frozen CLIP and CLAP towers as patch-token encoders (tiny preset shapes)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from meerkat_core.builders import build_model
from meerkat_core.config import PRESETS
from meerkat_core.encoders import AudioEncoder, ImageEncoder

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def model():
    return build_model(TINY, pretrained=False, seed=0)


def _audio(batch: int, windows: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, windows, 1, TINY.audio.frames_per_window, TINY.audio.num_mel_bins, generator=g)


def test_image_tokens_are_cls_then_the_patch_grid(model):
    encoder = model.image_encoder
    assert encoder.grid == TINY.image.grid and encoder.dim == TINY.image.hidden_size
    z = encoder(torch.randn(2, 3, TINY.image.image_size, TINY.image.image_size))
    assert z.shape == (2, 1 + TINY.image.grid**2, TINY.image.hidden_size)


def test_audio_windows_are_encoded_alone_and_concatenated_in_time_order(model):
    encoder = model.audio_encoder
    assert encoder.dim == TINY.audio.token_dim
    x = _audio(2, 2)
    z = encoder(x)
    assert z.shape == (2, 2 * TINY.audio.tokens_per_window, TINY.audio.token_dim)
    alone = torch.cat([encoder(x[:, :1]), encoder(x[:, 1:])], dim=1)
    torch.testing.assert_close(z, alone, rtol=1e-4, atol=1e-5)


def test_audio_input_must_be_five_dimensional(model):
    with pytest.raises(ValueError, match=r"\[B, W, 1, T, F\]"):
        model.audio_encoder(_audio(2, 1)[:, 0])


def test_a_frozen_encoder_has_no_gradients_and_stays_in_eval_mode(model):
    for encoder in (model.image_encoder, model.audio_encoder):
        assert not any(p.requires_grad for p in encoder.parameters())
        model.train()
        assert model.training and not encoder.training
    with torch.enable_grad():
        z = model.image_encoder(torch.randn(1, 3, TINY.image.image_size, TINY.image.image_size))
        a = model.audio_encoder(_audio(1, 1))
    assert not z.requires_grad and not a.requires_grad  # no activations kept for backward


def test_an_unfrozen_encoder_trains(model):
    clip = copy.deepcopy(model.image_encoder.clip).requires_grad_(True)
    encoder = ImageEncoder(clip, freeze=False)
    encoder.train()
    assert encoder.training and all(p.requires_grad for p in encoder.parameters())
    z = encoder(torch.randn(1, 3, TINY.image.image_size, TINY.image.image_size))
    assert z.requires_grad
    clap = copy.deepcopy(model.audio_encoder.clap).requires_grad_(True)
    assert AudioEncoder(clap, freeze=False)(_audio(1, 1)).requires_grad


def test_htsat_tokens_are_frequency_bands_that_each_run_through_the_window():
    from meerkat_core.encoders import audio_token_layout, audio_token_times

    # spec 256 / patch 4 / 2^3 = an 8x8 last map; freq_ratio 256/64 = 4 chunks -> 2 bands of 32 slots
    assert audio_token_layout(TINY.audio) == (2, 32)
    assert audio_token_layout(PRESETS["paper"].audio) == (2, 32)
    starts, ends = audio_token_times(TINY.audio)
    assert starts.shape == ends.shape == (64,)
    step = 10.0 / 32
    assert (starts[0], ends[0]) == (0.0, step)
    assert starts[31] == pytest.approx(31 * step) and ends[31] == pytest.approx(10.0)
    assert (starts[32], ends[32]) == (0.0, step)  # the second band starts the window again
    two = dataclasses.replace(TINY.audio, num_windows=2)
    starts2, _ = audio_token_times(two)
    assert starts2.shape == (128,) and starts2[64] == 10.0 and starts2[95] == pytest.approx(10.0 + 31 * step)


def test_time_stamps_are_the_time_tokens_at_each_tokens_centre(model):
    from meerkat_core.encoders import time_stamp_ids
    from meerkat_core.tokenizer import number_tokens

    times = number_tokens(model.tokenizer)["time"]
    ids = time_stamp_ids(TINY.audio, times)
    by_id = dict(times)
    # centres 0.156 s, 9.844 s, 0.156 s (band 2), 5.156 s -> 0.2, 9.8, 0.2, 5.2 on the 0.1-s grid
    assert [by_id[int(ids[j])] for j in (0, 31, 32, 48)] == [0.2, 9.8, 0.2, 5.2]
    with pytest.raises(ValueError, match="time tokens"):
        time_stamp_ids(TINY.audio, [])
