"""The model-directory and training-checkpoint format: round trips, and refusals that load nothing."""

from __future__ import annotations

import json

import pytest
import torch

from meerkat_core import checkpoint
from meerkat_core.builders import build_model, load_model
from meerkat_core.config import PRESETS, replace_path

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model whose trainable tensors differ from a fresh build, saved both ways."""
    model = build_model(TINY, pretrained=False, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    root = tmp_path_factory.mktemp("ckpt")
    checkpoint.save_model_dir(root / "model", model, seed=0, pretrained=False)
    checkpoint.save_training_state(root / "train", model, opt, {"step": 7}, seed=0, pretrained=False)
    return model, root


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_model_dir_and_training_checkpoint_load_the_same_weights(trained):
    model, root = trained
    want = _trainable(model)
    for kind in ("model", "train"):
        assert checkpoint.is_model_dir(root / kind)
        got = _trainable(load_model(root / kind))
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], msg=f"{kind}: {name}")
    meta = json.loads((root / "model" / checkpoint.CONFIG_FILE).read_text())
    assert meta["format"] == checkpoint.FORMAT and meta["seed"] == 0
    assert checkpoint.find_model_dir(root / "train") == root / "train"


def test_the_spec_and_tokenizer_a_model_directory_records(trained):
    model, root = trained
    for kind in ("model", "train"):
        spec = checkpoint.read_model_spec(root / kind)
        assert spec == checkpoint.ModelSpec(config=TINY, seed=0, pretrained=False)
        tokenizer = checkpoint.read_tokenizer(root / kind)
        assert tokenizer.get_vocab() == model.tokenizer.get_vocab()
    with pytest.raises(FileNotFoundError, match="not a Meerkat model directory"):
        checkpoint.read_model_spec(root)


def test_consolidated_checkpoint_equals_the_training_checkpoint(trained, tmp_path):
    model, root = trained
    out = checkpoint.consolidate(root / "train", tmp_path / "consolidated")
    assert (out / checkpoint.TRAINABLE_FILE).is_file() and not (out / checkpoint.DCP_DIR).exists()
    got = _trainable(load_model(out))
    for name, value in _trainable(model).items():
        torch.testing.assert_close(got[name], value, msg=name)


def test_local_shard_views_are_refused_naming_the_tensors_and_nothing_is_copied(trained, tmp_path):
    """What rank 0 alone saving its FSDP shard views wrote: half of every tensor's rows."""
    model, root = trained
    state = torch.load(root / "model" / checkpoint.TRAINABLE_FILE, weights_only=True)
    halves = {k: v[: max(1, v.shape[0] // 2)] for k, v in state.items()}
    bad = tmp_path / "bad"
    checkpoint.write_model_meta(bad, model, seed=0, pretrained=False)
    torch.save(halves, bad / checkpoint.TRAINABLE_FILE)
    fresh = build_model(TINY, pretrained=False, seed=0)
    before = _trainable(fresh)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="wrong shape: .*checkpoint \\[") as err:
        checkpoint.load_trainable(bad, fresh)
    assert "avace" in str(err.value) or "lora" in str(err.value)
    for name, value in _trainable(fresh).items():  # not half-loaded: nothing was copied
        assert torch.equal(value, before[name]), name


def test_checkpoint_of_another_model_is_refused_with_missing_and_unexpected(trained, tmp_path):
    _, root = trained
    other = build_model(replace_path(TINY, "lora.r", 4), pretrained=False, seed=0)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="wrong shape"):
        checkpoint.load_trainable(root / "train", other)
    no_regions = build_model(replace_path(TINY, "region_prompts", False), pretrained=False, seed=0)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="unexpected: region_box_proj"):
        checkpoint.load_trainable(root / "model", no_regions)
    # a model saved without the audio-visual match is refused by one with it, and the other way
    no_match_cfg = replace_path(replace_path(TINY, "loss.lambda_match", 0.0), "av_match", False)
    no_match = build_model(no_match_cfg, pretrained=False, seed=0)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="unexpected: av_match_proj"):
        checkpoint.load_trainable(root / "model", no_match)
    checkpoint.save_model_dir(tmp_path / "no_match", no_match, seed=0, pretrained=False)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="missing: av_match_proj"):
        checkpoint.load_trainable(tmp_path / "no_match", build_model(TINY, pretrained=False, seed=0))
    # a model directory written before the switch existed (no av_match key) is read as without it
    meta_path = tmp_path / "no_match" / checkpoint.CONFIG_FILE
    meta = json.loads(meta_path.read_text())
    del meta["model"]["av_match"]
    del meta["model"]["loss"]["lambda_match"]
    meta_path.write_text(json.dumps(meta))
    assert checkpoint.read_model_spec(tmp_path / "no_match").config == no_match.config


def test_resuming_needs_a_training_checkpoint_and_restores_the_optimizer(trained):
    model, root = trained
    fresh = build_model(TINY, pretrained=False, seed=0)
    opt = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=1e-3)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="not a training checkpoint"):
        checkpoint.load_training_state(root / "model", fresh, opt)
    assert checkpoint.load_training_state(root / "train", fresh, opt)["step"] == 7
    for name, value in _trainable(model).items():
        torch.testing.assert_close(dict(fresh.named_parameters())[name].detach(), value, msg=name)


def test_incomplete_checkpoint_is_refused(trained, tmp_path):
    model, root = trained
    broken = tmp_path / "broken"
    checkpoint.write_model_meta(broken, model, seed=0, pretrained=False)
    (broken / checkpoint.DCP_DIR).mkdir()  # a writer that died before the metadata
    with pytest.raises(checkpoint.CheckpointMismatchError, match="no .metadata"):
        checkpoint.load_trainable(broken, build_model(TINY, pretrained=False, seed=0))
