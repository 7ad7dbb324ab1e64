"""meerkat_core.builders: building a MeerkatModel from a config or a model directory."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from meerkat_core.builders import _compute_in_float32, build_model, load_model
from meerkat_core.config import PRESETS, replace_path
from meerkat_core.model import base_dtype, count_parameters
from meerkat_core.tokenizer import number_tokens
from tests.core.batches import make_batch

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def model():
    return build_model(TINY, pretrained=False, seed=0)


def test_paper_preset_shapes_on_meta_without_download():
    m = build_model(PRESETS["paper"], pretrained=False, device="meta")
    z = m.image_encoder(torch.empty(1, 3, 224, 224, device="meta"))
    assert tuple(z.shape) == (1, 197, 768)
    llm_cfg = m.llm.get_base_model().config
    assert llm_cfg.hidden_size == 4096 and llm_cfg.num_hidden_layers == 32
    assert count_parameters(m.llm, name_contains="lora_") == 33_554_432
    assert m.audio_encoder.dim == 768


def test_the_seed_reproduces_the_random_frozen_base_and_nothing_else_draws_from_it(model):
    torch.manual_seed(123)
    before = torch.rand(1)
    again = build_model(TINY, pretrained=False, seed=0)
    other = build_model(TINY, pretrained=False, seed=1)
    # the build runs in a forked RNG: the caller's random stream is untouched
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)
    first = dict(model.named_parameters())
    for name, p in again.named_parameters():
        assert torch.equal(p, first[name]), name
    differs = [n for n, p in other.named_parameters() if not p.requires_grad and not torch.equal(p, first[n])]
    assert any(n.startswith("image_encoder") for n in differs) and any(n.startswith("llm") for n in differs)


def test_base_dtype_is_float32_when_the_whole_llm_trains():
    assert base_dtype(replace_path(TINY, "base_dtype", "bfloat16")) == torch.bfloat16
    full = replace_path(replace_path(TINY, "base_dtype", "bfloat16"), "lora.r", 0)
    assert base_dtype(full) == torch.float32


def test_a_float32_module_in_a_bfloat16_base_computes_in_float32_and_hands_bfloat16_on():
    layer = nn.Linear(4, 3)
    _compute_in_float32(layer, torch.bfloat16)
    seen = []  # what the layer itself receives, after the casting hook
    layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
    x = torch.randn(2, 4).to(torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    assert seen == [torch.float32]
    torch.testing.assert_close(
        out.float(), F.linear(x.float(), layer.weight, layer.bias), atol=1e-2, rtol=1e-2
    )


def test_number_rows_are_smooth_in_the_value(model):
    emb = model.llm.get_input_embeddings().weight
    ids = [i for i, _ in number_tokens(model.tokenizer)["box"]]
    rows = F.normalize(emb[ids].float(), dim=1)
    sim = rows @ rows.T  # [101, 101]
    assert sim[40, 41] > 0.95 and sim[40, 41] > sim[40, 50] > sim[40, 90]


def test_save_and_load_round_trip(tmp_path):
    model = build_model(TINY, pretrained=False, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path, seed=0, pretrained=False)
    again = load_model(tmp_path)
    assert not again.training
    batch = make_batch(model, ["[0.10, 0.20, 0.50, 0.60]"], boxes=[[[0.1, 0.2, 0.5, 0.6]]])
    model.eval()
    torch.testing.assert_close(model(batch)["loss"], again(batch)["loss"])
