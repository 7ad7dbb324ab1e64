"""AVACE: Eq. 3 on hand-computed cases, and a map that is spatial, in [0, 1], and learnable."""

import pytest
import torch

from meerkat_core.attention import AVACE, attention_consistency_loss


def _mask() -> torch.Tensor:
    m = torch.zeros(1, 4, 4)
    m[0, 1:3, 0:2] = 1.0  # 4 cells inside, 12 outside
    return m


def test_attention_equal_to_mask_costs_zero():
    m = _mask()
    assert attention_consistency_loss(m, m).item() == pytest.approx(0.0, abs=1e-5)


def test_attention_opposite_to_mask_costs_lambda_sum():
    m = _mask()
    loss = attention_consistency_loss(1 - m, m, lambda1=0.3, lambda2=0.6)
    assert loss.item() == pytest.approx(0.9, abs=1e-5)


@pytest.mark.parametrize("c", [0.0, 0.25, 0.8, 1.0])
def test_constant_attention(c):
    m = _mask()
    loss = attention_consistency_loss(torch.full_like(m, c), m, lambda1=0.5, lambda2=0.5)
    assert loss.item() == pytest.approx(0.5 * (1 - c) + 0.5 * c, abs=1e-5)


def test_hand_computed_partial_overlap():
    m = _mask()
    a = torch.zeros(1, 4, 4)
    a[0, 1, 0] = 1.0  # one inside cell fully attended
    a[0, 0, 3] = 0.6  # one outside cell
    # inside: 1/4 ; outside: 0.6/12
    expected = 0.7 * (1 - 0.25) + 0.2 * (0.6 / 12)
    assert attention_consistency_loss(a, m, 0.7, 0.2, 0.0, 0.0).item() == pytest.approx(expected, rel=1e-6)


def test_eps_terms_enter_denominators():
    m = _mask()
    a = m.clone()
    loss = attention_consistency_loss(a, m, 0.5, 0.5, eps1=4.0, eps2=0.0)
    assert loss.item() == pytest.approx(0.5 * (1 - 4 / 8), rel=1e-6)


def test_per_sample_output_and_shape_check():
    m = torch.stack([_mask()[0], 1 - _mask()[0]])
    a = torch.stack([_mask()[0], _mask()[0]])
    loss = attention_consistency_loss(a, m)
    assert loss.shape == (2,)
    assert loss[0].item() == pytest.approx(0.0, abs=1e-5) and loss[1].item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError):
        attention_consistency_loss(a, m[:, :3])


def test_avace_map_is_normalised_and_input_dependent():
    torch.manual_seed(0)
    avace = AVACE(img_dim=12, aud_dim=10, dim=16, num_heads=4, grid=4)
    out = avace(torch.randn(3, 16, 12), torch.randn(3, 5, 10))
    assert out.attn_map.shape == (3, 4, 4)
    assert out.attn_map.min() >= 0 and torch.allclose(out.attn_map.amax(dim=(1, 2)), torch.ones(3))
    # not the constant map that averaging softmax rows over keys would give
    assert (out.attn_map.amax(dim=(1, 2)) - out.attn_map.amin(dim=(1, 2))).min() > 1e-3
    assert out.img.shape == (3, 16, 16) and out.aud.shape == (3, 5, 16)


def test_ac_loss_moves_avace_attention_into_the_box():
    """Minimising L_AC alone must put the audio->image attention on the box: the map is trainable."""
    torch.manual_seed(0)
    avace = AVACE(img_dim=12, aud_dim=10, dim=16, num_heads=2, grid=4)
    img, aud = torch.randn(8, 16, 12), torch.randn(8, 5, 10)
    mask = _mask().expand(8, 4, 4)
    opt = torch.optim.Adam(avace.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        loss = attention_consistency_loss(avace(img, aud).attn_map, mask).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    attn = avace(img, aud).attn_map
    assert (attn * mask).sum() / mask.sum() > 2 * (attn * (1 - mask)).sum() / (1 - mask).sum()


def test_map_box_recovers_a_uniform_box_and_ignores_scale():
    from meerkat_core.attention import map_box

    grid = 14
    m = torch.zeros(2, grid, grid)
    m[0, 3:9, 5:12] = 1.0  # rows 3..8, columns 5..11: the box [5, 3, 12, 9] / 14
    m[1, 0:14, 0:7] = 7.0  # the left half, any scale
    box = map_box(m.flatten(1), grid)
    torch.testing.assert_close(box[0], torch.tensor([5, 3, 12, 9]) / grid, atol=0.1 / grid, rtol=0)
    torch.testing.assert_close(box[1], torch.tensor([0.0, 0.0, 0.5, 1.0]), atol=0.1 / grid, rtol=0)


def test_where_channel_starts_at_zero_and_reaches_the_map():
    torch.manual_seed(0)
    avace = AVACE(img_dim=12, aud_dim=10, dim=16, num_heads=2, grid=4)
    img, aud = torch.randn(2, 16, 12), torch.randn(2, 5, 10)
    out = avace(img, aud)
    assert out.map_box.shape == (2, 4) and (out.map_box >= 0).all() and (out.map_box <= 1).all()
    assert (out.map_box[:, 2:] >= out.map_box[:, :2]).all()
    # zero-initialised projection: the box features add nothing before training ...
    assert torch.count_nonzero(avace.where.weight) == 0
    # ... yet a loss on the image tokens reaches the audio->image attention through the box
    with torch.no_grad():
        avace.where.weight.normal_()
    avace.sound_embed.requires_grad_(False)
    avace.zero_grad()
    avace(img, aud).img.square().sum().backward()
    assert avace.aud_to_img.q.weight.grad.abs().sum() > 0


def test_map_write_backs_are_switches_and_off_means_the_unfused_tokens():
    img, aud = torch.randn(2, 16, 12, generator=torch.Generator().manual_seed(1)), torch.randn(2, 5, 10)
    torch.manual_seed(0)
    both = AVACE(img_dim=12, aud_dim=10, dim=16, num_heads=2, grid=4)
    torch.manual_seed(0)
    off = AVACE(img_dim=12, aud_dim=10, dim=16, num_heads=2, grid=4, map_tokens=False, map_box_tokens=False)
    names = {n for n, _ in off.named_parameters()}
    assert not any(n.startswith(("sound_embed", "where")) for n in names)
    assert {n for n, _ in both.named_parameters()} - names == {"sound_embed", "where.weight", "where.bias"}
    out = off(img, aud)
    # the image tokens are the LayerNorm of step 3 alone ...
    x = off.img_in(img) + off.img_pos
    ctx, _ = off.img_to_aud(x, off.aud_in(aud))
    torch.testing.assert_close(out.img, off.norm_img(x + ctx), rtol=0, atol=0)
    # ... which is what the write-backs add to (zero at init: the same tokens; not once trained)
    torch.testing.assert_close(both(img, aud).img, out.img)
    for switch in ("map_tokens", "map_box_tokens"):
        torch.manual_seed(0)
        one = AVACE(img_dim=12, aud_dim=10, dim=16, num_heads=2, grid=4, **{switch: False})
        with torch.no_grad():
            for p in (getattr(one, "sound_embed", None), getattr(one, "where", None)):
                if isinstance(p, torch.nn.Parameter):
                    p.normal_()
                elif p is not None:
                    p.weight.normal_()
        assert not torch.allclose(one(img, aud).img, out.img)
        torch.testing.assert_close(one(img, aud).attn_map, out.attn_map)


def test_map_and_consistency_loss_are_float32_in_a_bf16_avace():
    torch.manual_seed(0)
    avace = AVACE(img_dim=12, aud_dim=10, dim=16, num_heads=2, grid=4).to(torch.bfloat16)
    out = avace(torch.randn(2, 16, 12, dtype=torch.bfloat16), torch.randn(2, 5, 10, dtype=torch.bfloat16))
    assert out.attn_map.dtype == torch.float32 and out.img.dtype == torch.bfloat16
    torch.testing.assert_close(out.attn_map.flatten(1).amax(dim=1), torch.ones(2))
    loss = attention_consistency_loss(out.attn_map.to(torch.bfloat16), _mask().expand(2, 4, 4))
    assert loss.dtype == torch.float32
