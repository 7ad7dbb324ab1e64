"""The memory model (meerkat_core/memory.py): parameter counts against the built model, the
per-layer activation count against what autograd really saves, and hand-computed estimates."""

from __future__ import annotations

import dataclasses

import peft
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from meerkat_core import memory
from meerkat_core.builders import build_model
from meerkat_core.config import PAPER, TINY, LLMConfig, LoraConfig
from meerkat_core.model import count_parameters

# Paper preset, by hand from its shapes (h 4096, I 11008, 32 layers, LoRA r 32 on q,k,v,o):
LAYER = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096  # 202,383,360 per decoder layer
LORA_LAYER = 4 * 32 * (4096 + 4096)  # 1,048,576
EMBED_HEAD_NORM = 2 * 32064 * 4096 + 4096  # Llama's 32,000 + 3 placeholders, padded to 64
ENCODERS = 85_799_424 + 27_534_488  # CLIP ViT-B/16 vision tower + CLAP HTSAT (pinned below), bf16 base
AVACE = (
    2 * (2 * 768 + 768 * 768 + 768) + 2 * 4 * (768 * 768 + 768) + 2 * 2 * 768
)  # no map/box tokens in paper
ADAPTER = AVACE + 2 * (768 * 4096 + 4096)  # AVACE + the two projections
TRAINABLE = 32 * LORA_LAYER + ADAPTER
SEQ = 512 - 2 + 196 + 64  # text with its two placeholders replaced by image and audio tokens
LAYER_ACT = 28 * 4096 + 6 * 11008 + 8 * 32 + 4 * 32 + 8  # bytes per token, see memory.py


@pytest.fixture(scope="module")
def paper_meta():
    return build_model(PAPER, pretrained=False, device="meta")


def _check_counts(model, counts: memory.ParameterCounts) -> None:
    assert counts.image_encoder == count_parameters(model.image_encoder)
    assert counts.audio_encoder == count_parameters(model.audio_encoder)
    assert counts.llm == count_parameters(model.llm)
    adapter = sum(  # every parameter outside the encoders and the LLM, held by a child or directly
        p.numel()
        for n, p in model.named_parameters()
        if n.split(".")[0] not in ("image_encoder", "audio_encoder", "llm")
    )
    assert counts.adapter == adapter
    assert counts.trainable == count_parameters(model, trainable=True)
    assert counts.total == count_parameters(model)
    lora = count_parameters(model.llm, name_contains="lora_")
    assert counts.llm_layers * counts.llm_layer_trainable == lora


def test_paper_parameter_counts_match_the_built_model(paper_meta):
    rows = paper_meta.llm.get_input_embeddings().num_embeddings  # offline tokenizer: 32,000 rows
    counts = memory.parameter_counts(PAPER, vocab_rows=rows)
    _check_counts(paper_meta, counts)
    assert counts.image_encoder == 85_799_424 and counts.audio_encoder == 27_534_488
    assert counts.llm_layer_frozen == LAYER and counts.llm_layer_trainable == LORA_LAYER
    assert counts.trainable == TRAINABLE == 45_766_144


def test_tiny_parameter_counts_match_the_built_model():
    # modules_to_save (lm_head: a frozen original and a trained copy) and region-prompt projections
    model = build_model(TINY, pretrained=False, device="meta")
    _check_counts(model, memory.parameter_counts(TINY))


def test_vocabulary_rows_and_sequence_length_by_hand():
    assert memory.llm_vocab_rows(PAPER) == 32_064  # 32,000 + <image> <audio> <obj> -> multiple of 64
    assert memory.llm_vocab_rows(TINY) == TINY.llm.vocab_size  # the offline tokenizer is smaller
    assert memory.training_seq_len(PAPER) == SEQ == 770
    assert memory.training_seq_len(TINY) == 160 - 2 + 7 * 7 + 64
    assert memory.layer_activation_bytes(PAPER) == LAYER_ACT == 181_128


def _saved_bytes(llm: LLMConfig, lora: LoraConfig, layers: int, batch: int, seq: int) -> int:
    """Bytes of the distinct storages autograd saves in a bf16 Llama's forward (autocast, peft)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=llm.hidden_size,
            intermediate_size=llm.intermediate_size,
            num_hidden_layers=layers,
            num_attention_heads=llm.num_attention_heads,
            num_key_value_heads=llm.num_key_value_heads,
            tie_word_embeddings=False,
        )
    ).to(torch.bfloat16)
    model.requires_grad_(lora.full_finetune)
    if not lora.full_finetune:
        model = peft.get_peft_model(
            model,
            peft.LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
            ),
        )
    model.train()
    embeds = torch.randn(batch, seq, llm.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        model(inputs_embeds=embeds, attention_mask=torch.ones(batch, seq, dtype=torch.long), logits_to_keep=1)
    return sum(saved.values())


@pytest.mark.parametrize(
    "lora,kv_heads",
    [
        (LoraConfig(r=8, alpha=16, dropout=0.05), 4),  # the paper's layout: q,k,v,o with dropout
        (LoraConfig(r=8, alpha=16, dropout=0.0), 2),  # grouped-query attention, no dropout
        (LoraConfig(r=4, alpha=8, dropout=0.1, target_modules=("q_proj", "v_proj", "down_proj")), 4),
        (LoraConfig(r=0), 4),  # full fine-tuning
    ],
    ids=["qkvo-dropout", "gqa-no-dropout", "qv-down", "full"],
)
def test_layer_activations_are_what_autograd_saves(lora, kv_heads):
    """One decoder layer's saved bytes per token, measured as the difference between a 2-layer and
    a 1-layer model at two sequence lengths (weights and per-forward constants cancel)."""
    llm = LLMConfig(
        hidden_size=128, intermediate_size=352, num_attention_heads=4, num_key_value_heads=kv_heads
    )
    batch, short, long = 2, 16, 48

    def one_layer(seq: int) -> int:
        return _saved_bytes(llm, lora, 2, batch, seq) - _saved_bytes(llm, lora, 1, batch, seq)

    measured = (one_layer(long) - one_layer(short)) / (batch * (long - short))
    cfg = dataclasses.replace(TINY, llm=llm, lora=lora)
    expected = memory.layer_activation_bytes(cfg)
    if lora.dropout > 0 and not lora.full_finetune:
        # CPU's unfused dropout keeps its fp32 noise tensor where CUDA's fused kernel keeps a bool mask
        dims = {"q_proj": 128, "k_proj": 128, "v_proj": 128, "o_proj": 128, "down_proj": 352}
        expected += 3 * sum(dims[t] for t in lora.target_modules)
    assert measured == expected


def test_paper_estimate_by_hand_fsdp():
    e = memory.estimate(PAPER, micro_batch=2, workers=8, strategy="fsdp")
    assert (e.seq_len, e.workers, e.strategy, e.activation_checkpointing) == (SEQ, 8, "fsdp", False)
    # every unit sharded over 8; the encoders (root unit) whole plus their shard; two decoder
    # layers (the largest unit, bigger than the 32,064 x 4096 embedding) gathered in bf16
    frozen = (
        2 * (32 * LAYER + EMBED_HEAD_NORM) / 8 + 2 * ENCODERS * (1 + 1 / 8) + 2 * 2 * (LAYER + LORA_LAYER)
    )
    assert e.frozen_weights == int(frozen)
    assert e.trainable_weights == int(4 * TRAINABLE / 8)
    assert e.gradients == int(4 * TRAINABLE / 8 + 4 * ADAPTER)  # + one unit's unsharded gradients
    assert e.optimizer == int(8 * TRAINABLE / 8)
    tokens = 2 * SEQ
    adapter_act = 4 * (2 * (196 * 768 + 64 * 768) + 14 * (196 + 64) * 768 + 3 * 8 * 196 * 64)
    act = 33 * LAYER_ACT * tokens + 4 * 4096 * tokens + 16 * 2 * 128 * 32_064 + 2 * adapter_act
    assert e.activations == act
    allocated = int(frozen) + int(4 * TRAINABLE / 8) + e.gradients + e.optimizer + act
    assert e.allocated == allocated
    assert e.workspace == int(1.5 * 2**30 + 0.10 * allocated)
    assert e.total == e.allocated + e.workspace


def test_paper_estimate_by_hand_ddp_and_checkpointing():
    e = memory.estimate(PAPER, micro_batch=1, workers=4, strategy="ddp", activation_checkpointing=True)
    assert e.frozen_weights == 2 * (32 * LAYER + EMBED_HEAD_NORM) + 2 * ENCODERS  # nothing sharded, bf16
    assert e.trainable_weights == 4 * TRAINABLE
    assert e.gradients == 2 * 4 * TRAINABLE
    assert e.optimizer == 8 * TRAINABLE
    tokens = SEQ
    adapter_act = 4 * (2 * (196 * 768 + 64 * 768) + 14 * (196 + 64) * 768 + 3 * 8 * 196 * 64)
    # each layer keeps its bf16 input; one layer recomputed, and its gradients, at a time
    act = (
        32 * 2 * 4096 * tokens + 2 * LAYER_ACT * tokens + 4 * 4096 * tokens + 16 * 128 * 32_064 + adapter_act
    )
    assert e.activations == act


def test_sharding_and_checkpointing_save_what_they_should():
    ddp = memory.estimate(PAPER, 2, workers=8, strategy="ddp")
    fsdp = memory.estimate(PAPER, 2, workers=8, strategy="fsdp")
    assert fsdp.frozen_weights < ddp.frozen_weights / 3 and fsdp.optimizer * 8 == ddp.optimizer
    assert fsdp.activations == ddp.activations
    more = memory.estimate(PAPER, 2, workers=16, strategy="fsdp")
    assert more.total < fsdp.total
    ckpt = memory.estimate(PAPER, 2, workers=8, activation_checkpointing=True)
    assert ckpt.activations < fsdp.activations / 5


def test_largest_micro_batch_is_the_boundary():
    for gb in memory.GPU_SIZES_GB:
        for ckpt in (False, True):
            b = memory.largest_micro_batch(PAPER, gb, workers=8, activation_checkpointing=ckpt)
            assert b >= 1
            assert memory.estimate(PAPER, b, workers=8, activation_checkpointing=ckpt).fits(gb)
            assert not memory.estimate(PAPER, b + 1, workers=8, activation_checkpointing=ckpt).fits(gb)
    assert memory.largest_micro_batch(PAPER, 1, workers=8) == 0  # not even the weights fit 1 GB


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="strategy"):
        memory.estimate(PAPER, 1, strategy="zero3")
    with pytest.raises(ValueError, match="micro_batch"):
        memory.estimate(PAPER, 0)
    with pytest.raises(ValueError, match="workers"):
        memory.estimate(PAPER, 1, workers=0)
    with pytest.raises(ValueError, match="target_modules"):
        memory.parameter_counts(dataclasses.replace(PAPER, lora=LoraConfig(target_modules=("qkv",))))
