"""meerkat_core.correspondence: how well anything in the picture matches the sound (``av_match``)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from meerkat_core.attention import fourier_features
from meerkat_core.builders import build_model
from meerkat_core.config import PRESETS
from meerkat_core.correspondence import MATCH_VALUES, match_values
from tests.core.batches import make_batch

TINY = PRESETS["tiny"]


def test_match_values_by_hand():
    img = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [1, M=2, 2]
    aud = torch.tensor([[[3.0, 0.0], [1.0, 1.0]]])  # [1, N=2, 2]: on patch 0; half way between both
    amap = torch.tensor([[[1.0, 0.5], [0.25, 0.25]]])  # [1, 2, 2]
    got = match_values(img, aud, amap)
    closest = torch.tensor([1.0, 1 / math.sqrt(2)])  # each audio token's best cosine
    want = torch.tensor([[(1 + 1.0) / 2, (1 + closest.mean().item()) / 2, 2.0 / 4]])
    assert got.shape == (1, MATCH_VALUES)
    torch.testing.assert_close(got, want)
    # the scale of the features does not matter, nor does the order of the patches
    torch.testing.assert_close(match_values(5 * img.flip(1), 0.1 * aud, amap), want)


@pytest.mark.parametrize("seed", range(5))
def test_a_sound_whose_source_is_absent_matches_less(seed):
    g = torch.Generator().manual_seed(seed)
    classes = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=-1)
    img = torch.cat([classes[0].expand(20, 16), classes[1].expand(29, 16)])[None]  # objects 0 and 1
    img = img + 0.05 * torch.randn(img.shape, generator=g)

    def sound(cls: int) -> torch.Tensor:  # 8 silent tokens, then 8 tokens of the class's sound
        noise = 0.1 * torch.randn(16, 16, generator=g)
        return (torch.cat([torch.zeros(8, 16), classes[cls].expand(8, 16)]) + noise)[None]

    amap = torch.ones(1, 7, 7)
    present, absent = match_values(img, sound(1), amap)[0], match_values(img, sound(3), amap)[0]
    assert present[0] > 0.97  # cos with its own source's patches is near 1
    assert present[0] > absent[0] + 0.1 and present[1] > absent[1]


def test_the_spread_is_the_mean_of_the_peak_normalised_map():
    img, aud = torch.randn(1, 49, 8), torch.randn(1, 4, 8)
    peaked = torch.zeros(1, 7, 7)
    peaked[0, 3, 3] = 1.0  # all attention on one patch: 1 / (M · 1)
    assert match_values(img, aud, peaked)[0, 2].item() == pytest.approx(1 / 49)
    assert match_values(img, aud, torch.ones(1, 7, 7))[0, 2].item() == 1.0  # nothing to attend to


def test_match_values_are_float32_from_bfloat16():
    img, aud = torch.randn(2, 49, 8).bfloat16(), torch.randn(2, 4, 8).bfloat16()
    got = match_values(img, aud, torch.rand(2, 7, 7).bfloat16())
    assert got.dtype == torch.float32 and got.shape == (2, MATCH_VALUES)
    assert ((got >= 0) & (got <= 1)).all()


def test_av_match_starts_as_a_no_op_and_its_loss_reaches_avace():
    assert TINY.av_match and not PRESETS["paper"].av_match
    on = build_model(TINY, pretrained=False, seed=0)
    off = build_model(replace(TINY, av_match=False), pretrained=False, seed=0)
    assert not any(n.startswith("av_match") for n, _ in off.named_parameters())
    missing = set(on.state_dict()) - set(off.state_dict())
    assert missing == {"av_match_proj.weight", "av_match_proj.bias"}
    off.load_state_dict({k: v for k, v in on.state_dict().items() if k not in missing})
    batch = make_batch(on, ["[0.10, 0.20, 0.50, 0.60]", "[2.3, 5.1]"])
    with torch.no_grad():
        media_off = off.encode_media(batch["pixel_values"], batch["audio_features"])
        aud_on = on.encode_media(batch["pixel_values"], batch["audio_features"]).aud
    torch.testing.assert_close(aud_on, media_off.aud)  # zero at init: the same model

    def grads(model) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model(batch)["loss_ce"].backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    at_init = grads(on)
    assert at_init["av_match_proj.weight"].abs().sum() > 0  # the answers' loss reaches the projection
    torch.testing.assert_close(at_init["avace.img_in.1.weight"], grads(off)["avace.img_in.1.weight"])
    with torch.no_grad():  # a projection that has learnt something
        on.av_match_proj.weight.normal_(0, 0.1)
        z_img = on.image_encoder(batch["pixel_values"])[:, 1:]
        av = on.avace(z_img, on.audio_encoder(batch["audio_features"]))
        added = on.av_match_proj(fourier_features(match_values(av.img_proj, av.aud_proj, av.attn_map)))
        aud_on = on.encode_media(batch["pixel_values"], batch["audio_features"]).aud
    torch.testing.assert_close(aud_on, media_off.aud + added[:, None])  # on every audio token
    # now the loss reaches AVACE's projections through the similarities too: other gradients than off's
    trained = grads(on)
    for name in ("avace.img_in.1.weight", "avace.aud_in.1.weight"):
        assert not torch.allclose(trained[name], grads(off)[name]), name
