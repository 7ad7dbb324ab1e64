"""meerkat_core.correspondence: how well anything in the picture matches the sound (``av_match``)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from meerkat_core.attention import fourier_features
from meerkat_core.builders import build_model
from meerkat_core.config import PRESETS
from meerkat_core.correspondence import (
    CLASS_SLOTS,
    MATCH_VALUES,
    class_columns,
    class_id,
    match_labels,
    match_loss,
    match_probability,
    match_values,
    pair_scores,
)
from tests.core.batches import make_batch

TINY = PRESETS["tiny"]
NO_MATCH = replace(TINY, av_match=False, loss=replace(TINY.loss, lambda_match=0.0))
SB = torch.tensor([math.log(10.0), -1.0])  # a match loss's log-scale and bias


def test_match_values_by_hand():
    img = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [1, M=2, 2]
    aud = torch.tensor([[[3.0, 0.0], [1.0, 1.0]]])  # [1, N=2, 2]: on patch 0; half way between both
    amap = torch.tensor([[[1.0, 0.5], [0.25, 0.25]]])  # [1, 2, 2]
    got = match_values(img, aud, amap, SB)
    closest = torch.tensor([1.0, 1 / math.sqrt(2)])  # each audio token's best cosine
    mean = closest.mean().item()
    prob = 1 / (1 + math.exp(-(10 * mean - 1)))
    want = torch.tensor([[(1 + 1.0) / 2, (1 + mean) / 2, 2.0 / 4, prob]])
    assert got.shape == (1, MATCH_VALUES)
    torch.testing.assert_close(got, want)
    # the scale of the features does not matter, nor does the order of the patches
    torch.testing.assert_close(match_values(5 * img.flip(1), 0.1 * aud, amap, SB), want)


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
    present, absent = match_values(img, sound(1), amap, SB)[0], match_values(img, sound(3), amap, SB)[0]
    assert present[0] > 0.97  # cos with its own source's patches is near 1
    assert present[0] > absent[0] + 0.1 and present[1] > absent[1] and present[3] > absent[3]


def test_the_spread_is_the_mean_of_the_peak_normalised_map():
    img, aud = torch.randn(1, 49, 8), torch.randn(1, 4, 8)
    peaked = torch.zeros(1, 7, 7)
    peaked[0, 3, 3] = 1.0  # all attention on one patch: 1 / (M · 1)
    assert match_values(img, aud, peaked, SB)[0, 2].item() == pytest.approx(1 / 49)
    assert match_values(img, aud, torch.ones(1, 7, 7), SB)[0, 2].item() == 1.0  # nothing to attend to


def test_match_values_are_float32_from_bfloat16():
    img, aud = torch.randn(2, 49, 8).bfloat16(), torch.randn(2, 4, 8).bfloat16()
    got = match_values(img, aud, torch.rand(2, 7, 7).bfloat16(), SB.bfloat16())
    assert got.dtype == torch.float32 and got.shape == (2, MATCH_VALUES)
    assert ((got >= 0) & (got <= 1)).all()


def test_av_match_starts_as_a_no_op_and_its_loss_reaches_avace():
    assert TINY.av_match and not PRESETS["paper"].av_match
    on = build_model(TINY, pretrained=False, seed=0)
    off = build_model(NO_MATCH, pretrained=False, seed=0)
    assert not any(n.startswith(("av_match", "match_")) for n, _ in off.named_parameters())
    missing = set(on.state_dict()) - set(off.state_dict())
    assert missing == {"av_match_proj.weight", "av_match_proj.bias", "match_scale_bias"}
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
        match = match_values(av.img_proj, av.aud_proj, av.attn_map, on.match_scale_bias)
        added = on.av_match_proj(fourier_features(match))
        aud_on = on.encode_media(batch["pixel_values"], batch["audio_features"]).aud
    torch.testing.assert_close(aud_on, media_off.aud + added[:, None])  # on every audio token
    # now the loss reaches AVACE's projections through the similarities too: other gradients than off's
    trained = grads(on)
    for name in ("avace.img_in.1.weight", "avace.aud_in.1.weight"):
        assert not torch.allclose(trained[name], grads(off)[name]), name


# -- the match loss --------------------------------------------------------------------------------
def _world_meta(objects: list[str], sounds: list[str], **extra) -> dict:
    return {
        "objects": [{"class": c, "box": [0, 0, 1, 1], "sounds": c in sounds} for c in objects],
        "sound_events": [{"class": c, "segment": [0.0, 1.0], "object": None} for c in sounds],
        **extra,
    }


def test_class_columns_from_the_world_and_unlabelled_elsewhere():
    cols = class_columns(_world_meta(["dog", "Bell"], ["bell", "bell"]))
    assert cols["classes_known"]
    assert sorted(cols["image_classes"][:2]) == sorted([class_id("dog"), class_id("bell")])
    assert list(cols["image_classes"][2:]) == [-1] * (CLASS_SLOTS - 2)
    assert cols["sound_classes"][0] == class_id("bell") and (cols["sound_classes"][1:] == -1).all()
    assert cols["image_classes"].dtype == cols["sound_classes"].dtype == np.int64
    assert class_id("bell") >= 0 and class_id("bell") != class_id("dog")
    # nothing but noise in the clip: known, and no sound class
    silent = class_columns(_world_meta(["dog"], []))
    assert silent["classes_known"] and (silent["sound_classes"] == -1).all()
    # a real source that lists neither (or too many classes to hold): unlabelled
    for meta in ({"label_text": ["dog"]}, _world_meta([f"c{i}" for i in range(CLASS_SLOTS + 1)], ["c0"])):
        cols = class_columns(meta)
        assert not cols["classes_known"] and (cols["image_classes"] == -1).all()
    # malformed lists: a ValueError naming the field (the readers count such a sample and skip it)
    with pytest.raises(ValueError, match="objects must be a list of objects"):
        class_columns({"objects": ["dog"], "sound_events": []})
    with pytest.raises(ValueError, match=r"sound_events\[\]\.class must be a string"):
        class_columns(_world_meta(["dog"], []) | {"sound_events": [{"class": 3}]})


def test_match_labels_by_hand():
    ids = {name: class_id(name) for name in ("dog", "bell", "cat")}

    def col(names):
        return torch.tensor([ids[n] for n in names] + [-1] * (CLASS_SLOTS - len(names)))

    image = torch.stack([col(["dog", "bell"]), col(["cat"]), col(["dog"]), col([])])
    sound = torch.stack([col(["bell"]), col(["dog"]), col([]), col([])])
    known = torch.tensor([True, True, True, False])
    paired = torch.tensor([True, False, True, False])
    want = torch.tensor(
        [
            [1, 1, 0, -1],  # dog+bell picture: bell yes, dog yes, silence no
            [0, 0, 0, -1],  # cat picture: sample 1's own sound is a dog (a type-4 negative)
            [0, 1, 0, -1],  # dog picture, a clip with nothing on it: its own pair is a negative
            [-1, -1, -1, 0],  # unlabelled: only its own pairing, here mismatched
        ]
    )
    assert torch.equal(match_labels(image, sound, known, paired), want)
    # the -1 padding never matches itself
    assert match_labels(col([])[None], col([])[None], torch.tensor([True]), torch.tensor([True])).item() == 0


def test_pair_scores_hold_each_pairs_mean_match():
    g = torch.Generator().manual_seed(0)
    img, aud, amap = (
        torch.randn(3, 10, 8, generator=g),
        torch.randn(3, 5, 8, generator=g),
        torch.ones(3, 2, 2),
    )
    scores = pair_scores(img, aud)
    assert scores.shape == (3, 3)
    # the diagonal is match_values' mean match, (1 + s) / 2
    torch.testing.assert_close(2 * match_values(img, aud, amap, SB)[:, 1] - 1, scores.diagonal())
    # image 0 with sound 2, by hand
    cos = torch.nn.functional.normalize(aud[2], dim=-1) @ torch.nn.functional.normalize(img[0], dim=-1).T
    torch.testing.assert_close(scores[0, 2], cos.amax(dim=1).mean())


def test_match_loss_by_hand_and_zero_without_labels():
    scores = torch.tensor([[0.5, 0.1], [0.2, 0.9]])
    labels = torch.tensor([[1, 0], [-1, 1]])
    t, b = 10.0, -1.0

    def sp(x: float) -> float:
        return math.log1p(math.exp(x))

    want = (sp(-(t * 0.5 + b)) + sp(t * 0.1 + b) + sp(-(t * 0.9 + b))) / 3
    got = match_loss(scores, labels, SB)
    assert got.item() == pytest.approx(want, rel=1e-6)
    torch.testing.assert_close(match_probability(scores, SB), torch.sigmoid(t * scores + b))
    sb = SB.clone().requires_grad_()
    none = match_loss(scores, torch.full((2, 2), -1), sb)
    assert none.item() == 0.0 and none.requires_grad  # in the graph for DDP
    # matches alone (real pairs, nothing mismatched) would only push the bias up: no loss
    assert match_loss(scores, torch.tensor([[1, -1], [-1, 1]]), sb).item() == 0.0
    assert match_loss(scores, torch.tensor([[0, 0], [-1, -1]]), sb).item() == 0.0


def test_the_match_loss_tells_present_from_absent_once_trained():
    """Projections trained by the match loss alone on a toy world: sounds of a class score higher
    with pictures that show it than with pictures that do not (the OT loss never asks that)."""
    g = torch.Generator().manual_seed(0)
    looks, sounds = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)  # four classes
    img_proj, aud_proj = torch.nn.Linear(16, 8), torch.nn.Linear(16, 8)
    sb = torch.nn.Parameter(SB.clone())
    opt = torch.optim.Adam([*img_proj.parameters(), *aud_proj.parameters(), sb], lr=0.02)

    def batch(seed: int):
        r = torch.Generator().manual_seed(seed)
        on_screen = torch.stack([torch.randperm(4, generator=r)[:2] for _ in range(8)])  # [B, 2]
        heard = on_screen[torch.arange(8), torch.randint(0, 2, (8,), generator=r)]
        for i in range(2):  # two type-4 negatives: a class off the picture
            heard[i] = next(c for c in range(4) if c not in on_screen[i])
        patches = looks[on_screen].repeat_interleave(3, dim=1) + 0.3 * torch.randn(8, 6, 16, generator=r)
        audio = sounds[heard][:, None].expand(8, 4, 16) + 0.3 * torch.randn(8, 4, 16, generator=r)
        ids = torch.full((8, CLASS_SLOTS), -1)
        ids[:, :2] = on_screen
        snd = torch.full((8, CLASS_SLOTS), -1)
        snd[:, 0] = heard
        labels = match_labels(ids, snd, torch.ones(8, dtype=torch.bool), torch.ones(8, dtype=torch.bool))
        return patches, audio, labels

    def auc(seed: int) -> float:
        patches, audio, labels = batch(seed)
        with torch.no_grad():
            s = pair_scores(img_proj(patches), aud_proj(audio))
        pos, neg = s[labels == 1], s[labels == 0]
        return (pos[:, None] > neg[None, :]).float().mean().item()

    before = auc(999)
    for step in range(150):
        patches, audio, labels = batch(step)
        opt.zero_grad()
        match_loss(pair_scores(img_proj(patches), aud_proj(audio)), labels, sb).backward()
        opt.step()
    after = auc(999)
    assert after > 0.95 and after > before + 0.2, (before, after)


def test_the_match_loss_is_added_and_reaches_avace():
    on = build_model(TINY, pretrained=False, seed=0)
    batch = make_batch(on, ["[0.10, 0.20, 0.50, 0.60]", "[2.3, 5.1]", "yes"], ot_pair=[True, True, False])
    batch.update(
        {
            "image_classes": torch.tensor(
                [[class_id("dog")] + [-1] * 7, [class_id("cat")] + [-1] * 7, [-1] * 8]
            ),
            "sound_classes": torch.tensor(
                [[class_id("dog")] + [-1] * 7, [class_id("dog")] + [-1] * 7, [-1] * 8]
            ),
            "classes_known": torch.tensor([True, True, False]),
        }
    )
    on.zero_grad(set_to_none=True)
    out = on(batch)
    assert out["loss_match"] > 0
    out["loss_match"].backward()
    for name, p in on.named_parameters():
        if name in ("match_scale_bias", "avace.img_in.1.weight", "avace.aud_in.1.weight"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the loss of the labelled pairs: (0,0) 1, (0,1) 1, (1,0) 0, (1,1) 0, and (2,2) 0 by its pairing
    with torch.no_grad():
        media = on.encode_media(batch["pixel_values"], batch["audio_features"])
        scores = pair_scores(media.img_proj, media.aud_proj)
    labels = torch.tensor([[1, 1, -1], [0, 0, -1], [-1, -1, 0]])
    torch.testing.assert_close(
        out["loss_match"].detach(), match_loss(scores, labels, on.match_scale_bias.detach())
    )
    # without the class columns: only each sample's own pairing
    plain = {k: v for k, v in batch.items() if k not in ("image_classes", "sound_classes", "classes_known")}
    with torch.no_grad():
        diag = torch.tensor([[1, -1, -1], [-1, 1, -1], [-1, -1, 0]])
        torch.testing.assert_close(on(plain)["loss_match"], match_loss(scores, diag, on.match_scale_bias))
    # weight 0: still logged, no gradient (the ablation's runs log it too)
    zero = build_model(replace(TINY, loss=replace(TINY.loss, lambda_match=0.0)), pretrained=False, seed=0)
    assert not zero(plain)["loss_match"].requires_grad
    with pytest.raises(ValueError, match="lambda_match > 0 needs model.av_match"):
        replace(TINY, av_match=False)
