"""Loading the paper preset from checkpoints in the official layouts (small random ones, written by
:mod:`tests.fixtures.pretrained`): weights, front ends, tokenizer, and the errors for bad ones."""

from __future__ import annotations

import json
import pickle
import random
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from meerkat_core import batching, media, pretrained
from meerkat_core.builders import build_model
from meerkat_core.config import replace_path
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
    ours = media.ImageFrontEnd.from_pretrained(str(pretrained_dirs.clip))
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
    ours = media.ImageFrontEnd.from_pretrained(str(other))
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
        media.ImageFrontEnd.from_pretrained(str(other))


@pytest.mark.parametrize("seconds", [10.0, 3.7, 0.5])
def test_audio_front_end_is_the_checkpoints_exactly_up_to_one_window(pretrained_dirs, seconds):
    from transformers import ClapFeatureExtractor

    reference = ClapFeatureExtractor.from_pretrained(pretrained_dirs.clap)
    assert reference.padding == "repeatpad" and reference.frequency_min == 50
    wave = _noise_wave(seconds, 7)
    theirs = reference([wave], sampling_rate=48_000, return_tensors="np")["input_features"]  # [1, 1, T, F]
    ours = media.AudioFrontEnd.from_pretrained(str(pretrained_dirs.clap))([wave])  # [1, 1, 1, T, F]
    assert ours.shape == (1, 1, 1, 1001, 64)
    np.testing.assert_allclose(
        ours[0].numpy(), np.asarray(theirs, dtype=np.float32), rtol=0, atol=media.LOG_MEL_TOLERANCE_DB
    )
    # ... and the class defaults (frequency_min 0, pad) would have given something else
    default = media.AudioFrontEnd()([wave])
    assert not np.allclose(default.numpy(), ours.numpy(), atol=1e-3)


def test_audio_front_end_windows_are_consecutive_and_the_last_is_padded_like_clap(pretrained_dirs):
    from transformers import ClapFeatureExtractor

    reference = ClapFeatureExtractor.from_pretrained(pretrained_dirs.clap)
    three = media.AudioFrontEnd.from_pretrained(str(pretrained_dirs.clap), num_windows=3)
    wave = _noise_wave(14.0, 8)  # one full window, 4 s of the second, nothing of the third
    out = three([wave])[0].numpy()  # [3, 1, T, F]

    def alone(part: np.ndarray) -> np.ndarray:
        return np.asarray(
            reference([part], sampling_rate=48_000, return_tensors="np")["input_features"][0], np.float32
        )

    np.testing.assert_allclose(out[0], alone(wave[:480_000]), rtol=0, atol=media.LOG_MEL_TOLERANCE_DB)
    # repeat-padded by CLAP's own rule
    np.testing.assert_allclose(out[1], alone(wave[480_000:]), rtol=0, atol=media.LOG_MEL_TOLERANCE_DB)
    np.testing.assert_allclose(
        out[2], alone(np.zeros(480_000, np.float32)), rtol=0, atol=media.LOG_MEL_TOLERANCE_DB
    )  # silence


def test_fusion_front_end_is_refused(pretrained_dirs, tmp_path):
    other = tmp_path / "clap"
    shutil.copytree(pretrained_dirs.clap, other)
    cfg = json.loads((other / "preprocessor_config.json").read_text())
    (other / "preprocessor_config.json").write_text(json.dumps({**cfg, "truncation": "fusion"}))
    with pytest.raises(ValueError, match="fusion"):
        media.AudioFrontEnd.from_pretrained(str(other))


def test_sample_preprocessor_uses_the_named_checkpoints_front_ends(pretrained_dirs, tmp_path):
    config = paper_config(pretrained_dirs)
    image, audio = batching.front_ends(config)
    assert audio._extractor.padding == "repeatpad" and audio._extractor.frequency_min == 50
    wave = _noise_wave(2.0, 9)
    np.testing.assert_array_equal(
        audio([wave]).numpy(),
        media.AudioFrontEnd.from_pretrained(str(pretrained_dirs.clap))([wave]).numpy(),
    )
    # a checkpoint whose front end disagrees with the config's fields is named
    other = tmp_path / "clap"
    shutil.copytree(pretrained_dirs.clap, other)
    cfg = json.loads((other / "preprocessor_config.json").read_text())
    (other / "preprocessor_config.json").write_text(json.dumps({**cfg, "hop_length": 320}))
    with pytest.raises(ValueError, match="hop_length"):
        batching.front_ends(replace_path(config, "audio.name_or_path", str(other)))


# --------------------------------------------------------------------------------------------------
# Weights


@pytest.fixture(scope="module")
def paper_model(pretrained_dirs):
    return build_model(paper_config(pretrained_dirs), pretrained=True)


def _base_params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by their name in a plain (un-peft'd) checkpoint."""
    state = module.state_dict()
    return {k.replace(".base_layer", ""): v for k, v in state.items() if "lora_" not in k}


def _assert_all_landed(saved: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor], dtype: torch.dtype):
    for key, tensor in saved.items():
        assert key in loaded, key
        got = loaded[key]
        want = tensor.to(dtype) if tensor.is_floating_point() else tensor
        if got.shape != want.shape:  # the embedding and head, grown by the media placeholders
            assert got.shape[1:] == want.shape[1:] and got.shape[0] > want.shape[0], key
            got = got[: want.shape[0]]
        assert got.dtype == want.dtype and torch.equal(got, want), key


def test_every_saved_tensor_is_in_the_model_unchanged_in_bf16(pretrained_dirs, paper_model):
    m = paper_model
    bf16 = torch.bfloat16
    clip = load_file(pretrained_dirs.clip / "model.safetensors")
    vision = {k: v for k, v in clip.items() if k.startswith("vision_model.")}
    assert vision and all(k.startswith(pretrained.CLIP_UNUSED) for k in set(clip) - set(vision))
    # transformers 5's CLIPVisionModel holds the tower at its top level: vision_model.X is X
    _assert_all_landed(
        {k.removeprefix("vision_model."): v for k, v in vision.items()},
        m.image_encoder.clip.state_dict(),
        bf16,
    )

    clap = load_file(pretrained_dirs.clap / "model.safetensors")
    audio = {k.removeprefix("audio_model."): v for k, v in clap.items() if k.startswith("audio_model.")}
    assert len(audio) > 50
    unused = {k for k in clap if not k.startswith(("audio_model.", "audio_projection."))}
    assert unused and all(k.startswith(pretrained.CLAP_UNUSED) for k in unused)
    _assert_all_landed(audio, m.audio_encoder.clap.state_dict(), bf16)

    llm = load_file(pretrained_dirs.llm / "model.safetensors")
    _assert_all_landed(llm, _base_params(m.llm.get_base_model()), bf16)
    # shapes are the checkpoints' own, not the paper preset's ViT-B/HTSAT/7B fields
    assert m.image_encoder.dim == 64 and m.audio_encoder.dim == 128
    assert m.llm.get_base_model().config.hidden_size == 128


def test_paper_model_from_checkpoints_trains_in_the_right_dtypes(pretrained_dirs, paper_model):
    m = paper_model
    frozen = {n: p.dtype for n, p in m.named_parameters() if not p.requires_grad}
    trainable = {n: p.dtype for n, p in m.named_parameters() if p.requires_grad}
    assert set(frozen.values()) == {torch.bfloat16} and set(trainable.values()) == {torch.float32}
    assert any(n.startswith("image_encoder") for n in frozen) and any(
        n.startswith("audio_encoder") for n in frozen
    )
    assert any("lora_A" in n for n in trainable) and any(n.startswith("avace.") for n in trainable)
    # the real path: the checkpoint's front ends and tokenizer make a batch the model trains on
    prep = batching.SamplePreprocessor(m.config, m.tokenizer)
    rows = [
        prep(
            _noise_image(320, 240, i),
            _noise_wave(4.0 + i, i),
            {
                "instruction": "Where is the sound?",
                "answer": "[0.10, 0.20, 0.50, 0.60]",
                "task": "arig",
                "boxes": [[0.1, 0.2, 0.5, 0.6]],
            },
        )
        for i in range(2)
    ]
    batch = batching.collate(rows, m.tokenizer.pad_token_id)
    assert batch["has_box"].all()
    out = m(batch)
    assert out["loss_ot"].dtype == out["loss_ac"].dtype == torch.float32
    assert torch.isfinite(out["loss"]) and out["loss_ac"] > 0 and out["loss_ot"] > 0
    out["loss"].backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())
    assert not any(n.startswith(("image_encoder", "audio_encoder")) for n in grads)
    m.zero_grad(set_to_none=True)


def test_a_compatible_checkpoint_of_another_size_loads_with_its_own_shapes(pretrained_dirs, tmp_path):
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
        vision_config={
            "image_size": 224,
            "patch_size": 16,
            "hidden_size": 96,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "intermediate_size": 160,
        },
    )
    CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    image = pretrained.load_clip_vision(
        replace_path(paper_config(pretrained_dirs), "image.name_or_path", str(tmp_path / "clip")).image,
        torch.float32,
    )
    assert image.config.hidden_size == 96 and image.config.num_hidden_layers == 3


# --------------------------------------------------------------------------------------------------
# Bad checkpoints and tokenizers


def _edited_copy(src, dst, edit):
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_a_missing_tensor_is_named(pretrained_dirs, tmp_path):
    key = "audio_model.audio_encoder.layers.2.blocks.0.attention.self.query.weight"
    clap = _edited_copy(pretrained_dirs.clap, tmp_path / "clap", lambda t: t.pop(key))
    config = replace_path(paper_config(pretrained_dirs), "audio.name_or_path", str(clap))
    with pytest.raises(
        pretrained.CheckpointError, match=r"missing: .*layers\.2\.blocks\.0\.attention\.self\.query\.weight"
    ):
        build_model(config, pretrained=True)
    llm = _edited_copy(
        pretrained_dirs.llm, tmp_path / "llm", lambda t: t.pop("model.layers.1.mlp.down_proj.weight")
    )
    config = replace_path(paper_config(pretrained_dirs), "llm.name_or_path", str(llm))
    with pytest.raises(
        pretrained.CheckpointError, match=r"LLM checkpoint .* missing: model\.layers\.1\.mlp\.down_proj"
    ):
        build_model(config, pretrained=True)


def test_an_unexpected_or_mismatched_tensor_is_named(pretrained_dirs, tmp_path):
    def extra(t):
        t["audio_model.audio_encoder.extra_head.weight"] = torch.zeros(3, 3)

    clap = _edited_copy(pretrained_dirs.clap, tmp_path / "clap", extra)
    config = replace_path(paper_config(pretrained_dirs), "audio.name_or_path", str(clap))
    with pytest.raises(
        pretrained.CheckpointError, match=r"unexpected: audio_model\.audio_encoder\.extra_head\.weight"
    ):
        build_model(config, pretrained=True)

    def wider(t):
        t["vision_model.post_layernorm.weight"] = torch.ones(65)

    clip = _edited_copy(pretrained_dirs.clip, tmp_path / "clip", wider)
    config = replace_path(paper_config(pretrained_dirs), "image.name_or_path", str(clip))
    with pytest.raises(
        pretrained.CheckpointError,
        match=r"shape mismatch: (vision_model\.)?post_layernorm\.weight \(checkpoint \(65,\) vs model \(64,\)\)",
    ):
        build_model(config, pretrained=True)


def test_a_checkpoint_the_data_pipeline_cannot_feed_is_named(pretrained_dirs, tmp_path):
    from transformers import CLIPConfig, CLIPModel

    vision = {
        "image_size": 224,
        "patch_size": 32,
        "hidden_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "intermediate_size": 128,
    }
    CLIPModel(CLIPConfig(vision_config=vision)).save_pretrained(tmp_path / "clip32")
    config = replace_path(paper_config(pretrained_dirs), "image.name_or_path", str(tmp_path / "clip32"))
    with pytest.raises(pretrained.CheckpointError, match="patch_size: checkpoint 32, config 16"):
        build_model(config, pretrained=True)


def test_wrong_tokenizers_are_named(pretrained_dirs, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = paper_config(pretrained_dirs)
    # a larger vocabulary than the LLM embeds (not the media placeholders, which the model adds)
    big = AutoTokenizer.from_pretrained(pretrained_dirs.tokenizer)
    big.add_tokens([f"word{i}" for i in range(50)])
    big.save_pretrained(tmp_path / "big")
    with pytest.raises(pretrained.CheckpointError, match=r"50 tokens at ids >= the LLM's vocab_size 400"):
        build_model(replace_path(config, "tokenizer", str(tmp_path / "big")), pretrained=True)
    # another model family's: GPT-2 style, one <|endoftext|> (id 0) for BOS and EOS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(
        ["a few words of text"], trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"])
    )
    gpt2 = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    gpt2.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(
        pretrained.CheckpointError, match=r"BOS id 0 but the LLM's bos_token_id is 1; EOS id 0"
    ):
        build_model(replace_path(config, "tokenizer", str(tmp_path / "gpt2")), pretrained=True)


# --------------------------------------------------------------------------------------------------
# Precision


def test_bf16_base_tiny_model_trains_fp32_parameters_on_fp32_ot_and_ac():
    from meerkat_core.config import PRESETS
    from tests.core.test_model import make_batch

    tiny = PRESETS["tiny"]
    model = build_model(replace_path(tiny, "base_dtype", "bfloat16"), pretrained=False, seed=0)
    frozen = {n: p.dtype for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert set(frozen.values()) == {torch.bfloat16} and set(trainable.values()) == {torch.float32}
    for part in ("image_encoder.", "audio_encoder.", "llm."):
        assert any(n.startswith(part) for n in frozen), part
    for part in ("lora_A", "modules_to_save", "avace.", "img_to_llm", "aud_to_llm", "region_box_proj"):
        assert any(part in n for n in trainable), part
    batch = make_batch(
        model, ["[0.10, 0.20, 0.50, 0.60]", "[0.30, 0.30, 0.90, 0.70]"], boxes=[[[0.1, 0.2, 0.5, 0.6]], None]
    )
    out = model(batch)
    assert out["loss_ot"].dtype == out["loss_ac"].dtype == out["attn_map"].dtype == torch.float32
    assert all(torch.isfinite(out[k]) for k in ("loss", "loss_ce", "loss_ot", "loss_ac"))
    assert out["loss_ot"] > 0 and out["loss_ac"] > 0
    out["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert any("modules_to_save" in n for n in grads) and any("lora_B" in n for n in grads)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())
    # the same weights in float32 give nearly the same loss: bf16 changes precision, not the model
    ref = build_model(tiny, pretrained=False, seed=0)
    assert abs(ref(batch)["loss"].item() - out["loss"].item()) < 0.05 * ref(batch)["loss"].item()
    # the fp32 head's dtype hooks do not stop the model from pickling (Ray ships objects that way)
    again = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(again(batch)["loss"], model(batch)["loss"])
    # and it answers (generation runs through the same bf16 base and fp32 head)
    from meerkat_core import prompts

    prompt = batching.encode_example(
        model.tokenizer, prompts.render_instruction("arig", random.Random(0)), None, tiny.max_text_tokens
    )
    gen = batching.pad_text([prompt], model.tokenizer.pad_token_id, side="left")
    gen["pixel_values"], gen["audio_features"] = batch["pixel_values"][:1], batch["audio_features"][:1]
    (text,) = model.generate(gen, max_new_tokens=4)
    assert isinstance(text, str)
