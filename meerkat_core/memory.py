"""Per-GPU training memory of a Meerkat model: a closed-form model from the config's shapes.

:func:`estimate` returns a :class:`MemoryEstimate` (bytes per GPU): frozen weights, trainable
weights, gradients, optimizer state, activations and workspace, for a micro-batch size, a sequence
length, a worker count and a strategy. ``python -m pipelines.memory`` prints it for GPU sizes; the
cluster configs are sized by it and ``tests/infra/test_cluster_configs.py`` keeps them so.

Parameters (:func:`parameter_counts`): exact, from the config's shapes (CLIP's vision tower, CLAP's
HTSAT, Llama with the vocabulary rows its tokenizer needs, peft's LoRA, AVACE, the projections);
``tests/core/test_memory.py`` pins them against the built model on the meta device.

Weights, gradients and optimizer state, per GPU with ``N`` workers:

* ``fsdp`` (FSDP2, as the training job wraps the model): every decoder layer, the token embedding
  and the LLM's root (final norm, output head) are units computing in bf16 (mixed-precision
  ``param_dtype``), AVACE and the projections fp32 units, the frozen encoders left to the model's
  root unit. Each rank stores 1/N of every unit in its own dtype: the frozen base in
  ``config.base_dtype`` (bf16 in ``paper``), the trainable parameters as fp32 masters with fp32
  gradients and AdamW's two fp32 moments. A unit is all-gathered while it runs, with the next one
  prefetched: two of the largest bf16 units (a decoder layer) in flight. The model's root unit is
  never resharded during the step (FSDP2 sets ``reshard_after_forward=False`` on the root), so
  the encoders count in full plus their shard; the gradients of one unit are held unsharded until
  their reduce-scatter.
* ``ddp``: everything replicated: the base in its dtype, trainable fp32 weights, their gradients twice
  (``param.grad`` and DDP's flat all-reduce buckets, with DDP's default
  ``gradient_as_bucket_view=False``) and AdamW's moments.

Activations, per token of the LLM's sequence (``tokens = micro_batch × seq_len``), in bytes. The
accounting follows Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models", §4.1: 34h + 5as per layer and token with 16-bit activations for a GPT layer), redone for a
Llama layer as this model trains it (bf16 autocast, SDPA's fused attention, frozen base, LoRA):

* the fused attention kernels keep no ``a × s`` score matrix (the 5as term goes), only q, k, v,
  the output and the fp32 log-sum-exp: ``4h + 4h_kv + 4a``;
* a frozen linear layer needs no input for a weight gradient, and autograd saves only what the
  gradients it must compute need: the q/k/v/o and MLP projections keep nothing of their own;
* but the backward still has to reach the LoRA adapters of earlier layers, so every layer keeps
  what the gradient *with respect to its input* needs: each RMSNorm its fp32 upcast input and
  its fp32 reciprocal RMS (4h + 4), SwiGLU its gate output, SiLU output and up output (6I), and each LoRA module the bf16 input of
  ``lora_A`` (2·in), its dropout mask (1·in, bool, when dropout > 0) and the input of ``lora_B``
  (2r);
* a fully fine-tuned LLM (``lora.r == 0``) also keeps what its weight gradients need: each
  RMSNorm's normalised bf16 input (2h each), the inputs of q/k/v (2h, shared) and gate/up (2h,
  shared) and of down (2I); o's input is a view of the attention output, already kept.

So a LoRA layer on ``q,k,v,o`` with dropout keeps ``28h + 6I + 8r + 4a + 8`` bytes per token (h:
hidden, I: MLP width, r: LoRA rank, a: heads), :func:`layer_activation_bytes`;
``tests/core/test_memory.py`` measures what autograd saves for one Llama layer through peft and
checks this count. On top of the layers:

* the final norm's fp32 input (4h per token) and the logits, for ``answer_tokens`` positions per
  sample: bf16 logits, the fp32 log-softmax and its gradients, 16 bytes per position and vocabulary
  row. ``MeerkatModel.forward`` keeps logits from the batch's earliest answer start on
  (``logits_to_keep``), so the positions kept are the longest answer plus the prompt-length
  spread of the batch: ``answer_tokens`` is an assumption about the data (short answers, prompts
  of similar length), not a bound; a batch mixing long captions with short prompts keeps more;
* AVACE and the two projections: every fp32 tensor they keep, per sample
  ``4 × (2(M·D_I + N·D_A) + 14(M + N)·d + 3·heads·M·N)`` (M image patches, N audio tokens);
* the backward's transient: the gradients of one layer's activations, as large as that layer's
  saved activations;
* the encoders run under ``no_grad`` and keep nothing; their transient forward memory is small
  beside the LLM's and is left to the workspace allowance.

With activation checkpointing per decoder layer, each layer keeps only its bf16 input (2h per
token) and one layer's activations are recomputed at a time in the backward (plus the transient).
The training job has no such switch today; :func:`estimate` reports both so that the choice is made
with the figures.

Workspace: ``context_bytes`` for the CUDA context, cuBLAS and NCCL workspaces, and
``fragmentation`` × the allocated total for the caching allocator's fragmentation. Both are stated
allowances, not derived: the GPU check compares :attr:`MemoryEstimate.allocated` with
``torch.cuda.max_memory_allocated`` and the total with what the device reports.

Sequence length (:func:`training_seq_len`): the longest tokenized prompt + answer
(``max_text_tokens``) with its two placeholders replaced by the image tokens the LLM reads and the
audio tokens; batches are padded to their longest sample, so this is the worst case.

A GPU of "N GB" is taken as N × 10⁹ bytes (:func:`gpu_bytes`), no more than what such cards report.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from meerkat_core.config import ModelConfig
from meerkat_core.prompts import SPECIAL_TOKENS

GiB = 1 << 30
BF16, FP32 = 2, 4
STRATEGIES = ("fsdp", "ddp")
GPU_SIZES_GB = (24, 40, 80)
CONTEXT_BYTES = int(1.5 * GiB)
"""CUDA context, cuBLAS and NCCL workspaces: a stated allowance."""
FRAGMENTATION = 0.10
"""The caching allocator's fragmentation, as a fraction of the allocated total: a stated allowance."""
ANSWER_TOKENS = 128
"""Positions per sample assumed to get logits (see the module docstring: an assumption, not a bound)."""
ATTN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
_MB_SEARCH_LIMIT = 4096


def gpu_bytes(gb: float) -> int:
    """The memory of an "N GB" GPU, as this model counts it: N × 10⁹ bytes."""
    return int(gb * 1e9)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def llm_vocab_rows(config: ModelConfig) -> int:
    """Rows of the LLM's embedding and output head.

    A pretrained tokenizer (``config.tokenizer`` set: Llama's) lacks the media placeholders; they are
    added and the embeddings resized to a multiple of 64 (see ``_llama`` in
    :mod:`meerkat_core.builders`). The offline tokenizer (``None``) is smaller than the preset's
    ``vocab_size``, which the LLM then keeps.
    """
    if config.tokenizer is None:
        return config.llm.vocab_size
    return _round_up(config.llm.vocab_size + len(SPECIAL_TOKENS), 64)


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts by part (elements, not bytes)."""

    image_encoder: int
    audio_encoder: int
    llm_layer_frozen: int
    """Frozen parameters of one decoder layer (all of its base weights with LoRA)."""
    llm_layer_trainable: int
    """Trainable parameters of one decoder layer (its LoRA matrices, or all of it in full FT)."""
    llm_layers: int
    llm_other_frozen: int
    """Embeddings, final norm, output head (and peft's frozen originals of ``modules_to_save``)."""
    llm_other_trainable: int
    """``modules_to_save`` copies (or, in full FT, embeddings, final norm and head)."""
    adapter: int
    """AVACE, the two projections into the LLM and the region-prompt projections: all trainable."""

    @property
    def llm(self) -> int:
        return (
            self.llm_layers * (self.llm_layer_frozen + self.llm_layer_trainable)
            + self.llm_other_frozen
            + self.llm_other_trainable
        )

    @property
    def trainable(self) -> int:
        return self.llm_layers * self.llm_layer_trainable + self.llm_other_trainable + self.adapter

    @property
    def frozen(self) -> int:
        return self.image_encoder + self.audio_encoder + self.llm + self.adapter - self.trainable

    @property
    def total(self) -> int:
        return self.frozen + self.trainable


def _clip_params(config: ModelConfig) -> int:
    c = config.image
    d, i = c.hidden_size, c.intermediate_size
    embeddings = d + 3 * c.patch_size**2 * d + c.num_tokens * d  # class token, patch conv, positions
    layer = 4 * (d * d + d) + d * i + i + i * d + d + 2 * 2 * d  # attention, MLP, two LayerNorms
    return embeddings + 2 * d + c.num_hidden_layers * layer + 2 * d  # pre- and post-LayerNorm


def _htsat_params(config: ModelConfig) -> int:
    c = config.audio
    c0 = c.patch_embeds_hidden_size
    total = c0 * c.patch_size**2 + c0 + 2 * c0  # patch conv (1 channel) + its LayerNorm
    total += 2 * c.num_mel_bins  # the BatchNorm over mel bins
    stages = len(c.depths)
    for s, (depth, heads) in enumerate(zip(c.depths, c.num_attention_heads, strict=True)):
        d = c0 * 2**s
        block = (
            2 * d  # LayerNorm before
            + (2 * c.window_size - 1) ** 2 * heads  # relative position bias table
            + 4 * (d * d + d)  # query, key, value, output
            + 2 * d  # LayerNorm after
            + d * 4 * d
            + 4 * d
            + 4 * d * d
            + d  # MLP, ratio 4
        )
        total += depth * block
        if s < stages - 1:
            total += 4 * d * 2 * d + 2 * 4 * d  # patch merging: Linear(4d -> 2d, no bias) + LayerNorm(4d)
    return total + 2 * c0 * 2 ** (stages - 1)  # final LayerNorm


def _proj_dims(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """``name -> (in, out)`` of a Llama layer's projections."""
    lc = config.llm
    h, i = lc.hidden_size, lc.intermediate_size
    kv = lc.num_key_value_heads * (h // lc.num_attention_heads)
    return {
        "q_proj": (h, h),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (h, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }


def _avace_params(config: ModelConfig) -> int:
    d, di, da = config.avace.dim, config.image.hidden_size, config.audio.token_dim
    where_features = 4 * 2 * 8  # four box coordinates x (cos, sin) x WHERE_FREQUENCIES
    return (
        2 * di
        + di * d
        + d  # image input: LayerNorm + Linear
        + 2 * da
        + da * d
        + d  # audio input: LayerNorm + Linear
        + 2 * 4 * (d * d + d)  # two cross-attentions
        + 2 * 2 * d  # their LayerNorms
        + (d if config.avace.map_tokens else 0)  # sound embedding
        + ((where_features + 1) * d if config.avace.map_box_tokens else 0)  # the implied box's projection
    )


def parameter_counts(config: ModelConfig, *, vocab_rows: int | None = None) -> ParameterCounts:
    """Exact parameter counts of ``build_model(config)``; ``vocab_rows``: the LLM's embedding rows
    (default :func:`llm_vocab_rows`)."""
    lc, lora = config.llm, config.lora
    h = lc.hidden_size
    v = llm_vocab_rows(config) if vocab_rows is None else vocab_rows
    dims = _proj_dims(config)
    layer = sum(i * o for i, o in dims.values()) + 2 * h  # bias-free projections + two RMSNorms
    embed, head, norm = v * h, v * h, h
    if lora.full_finetune:
        layer_frozen, layer_trainable = 0, layer
        other_frozen, other_trainable = 0, embed + head + norm
    else:
        unknown = set(lora.target_modules) - set(dims)
        if unknown:
            raise ValueError(f"lora.target_modules {sorted(unknown)} are not Llama projections")
        layer_frozen = layer
        layer_trainable = sum(lora.r * (dims[t][0] + dims[t][1]) for t in lora.target_modules)
        saved = {"lm_head": head, "embed_tokens": embed, "norm": norm}
        unknown = set(lora.modules_to_save) - set(saved)
        if unknown:
            raise ValueError(
                f"lora.modules_to_save {sorted(unknown)}: this model counts only {sorted(saved)}"
            )
        # peft keeps the original (frozen) and trains a copy of each module to save
        other_frozen = embed + head + norm
        other_trainable = sum(saved[m] for m in lora.modules_to_save)
    adapter = _avace_params(config) + 2 * (config.avace.dim * h + h)
    if config.region_prompts:
        # box (pooled tokens + map inside/outside), map agreement (regions.MATCH_FEATURES values
        # x (cos, sin) x WHERE_FREQUENCIES), window; numbers as above: this module imports no torch
        adapter += (h + 2) * h + h + (4 * 2 * 8 + 1) * h + 2 * config.audio.num_mel_bins * h + h
    if config.audio_time_stamps:
        adapter += 1  # the stamps' gain
    if config.audio_time_map:
        # time_head (AVACE dim -> 1), time_embed [h], time_where (window start/end x (cos, sin) x 8 -> h)
        adapter += (config.avace.dim + 1) + h + (2 * 2 * 8 + 1) * h
    if config.av_match:
        # av_match_proj (correspondence.MATCH_VALUES values x (cos, sin) x 8 -> h; numbers as above)
        # and the match loss's log-scale and bias
        # (4 is correspondence.MATCH_VALUES, written out: this module imports no torch;
        # tests/core/test_memory.py checks the count against the built model)
        adapter += (4 * 2 * 8 + 1) * h + 2
    return ParameterCounts(
        image_encoder=_clip_params(config),
        audio_encoder=_htsat_params(config),
        llm_layer_frozen=layer_frozen,
        llm_layer_trainable=layer_trainable,
        llm_layers=lc.num_hidden_layers,
        llm_other_frozen=other_frozen,
        llm_other_trainable=other_trainable,
        adapter=adapter,
    )


def base_bytes(config: ModelConfig) -> int:
    """Bytes per frozen base parameter (encoders and the LLM's base): ``config.base_dtype``."""
    return BF16 if config.base_dtype == "bfloat16" else FP32


def training_seq_len(config: ModelConfig) -> int:
    """The LLM's longest training sequence: ``max_text_tokens`` with ``<image>`` and ``<audio>``
    replaced by the image tokens the LLM reads and the audio tokens."""
    return config.max_text_tokens - 2 + config.llm_image_tokens + config.audio.num_tokens


def layer_activation_bytes(config: ModelConfig) -> int:
    """Bytes one decoder layer keeps for the backward, per token (see the module docstring)."""
    lc, lora = config.llm, config.lora
    h, i, a = lc.hidden_size, lc.intermediate_size, lc.num_attention_heads
    kv = lc.num_key_value_heads * (h // a)
    total = 2 * FP32 * (h + 1)  # two RMSNorms: fp32 upcast input and reciprocal RMS
    total += 2 * BF16 * h + 2 * BF16 * kv + FP32 * a  # SDPA: q, k, v, output, log-sum-exp
    total += 3 * BF16 * i  # SwiGLU: gate output, SiLU output, up output
    if lora.full_finetune:
        total += BF16 * (2 * h + h + h + i)  # norms' outputs, q/k/v (shared), gate/up (shared), down inputs
        return total
    dims = _proj_dims(config)
    mask = 1 if lora.dropout > 0 else 0
    for t in lora.target_modules:
        fan_in = dims[t][0]
        total += BF16 * fan_in + mask * fan_in + BF16 * lora.r
    return total


def _adapter_activation_bytes(config: ModelConfig) -> int:
    """Per sample: the fp32 tensors AVACE and the projections keep."""
    m, n = config.image.grid**2, config.audio.num_tokens
    d, heads = config.avace.dim, config.avace.num_heads
    di, da = config.image.hidden_size, config.audio.token_dim
    return FP32 * (2 * (m * di + n * da) + 14 * (m + n) * d + 3 * heads * m * n)


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-GPU memory of one training step, in bytes."""

    frozen_weights: int
    trainable_weights: int
    gradients: int
    optimizer: int
    activations: int
    workspace: int
    micro_batch: int
    seq_len: int
    workers: int
    strategy: str
    activation_checkpointing: bool

    BREAKDOWN = (
        "frozen_weights",
        "trainable_weights",
        "gradients",
        "optimizer",
        "activations",
        "workspace",
    )

    @property
    def allocated(self) -> int:
        """What the tensors need at the peak (comparable to ``torch.cuda.max_memory_allocated``)."""
        return self.total - self.workspace

    @property
    def total(self) -> int:
        return sum(getattr(self, f) for f in self.BREAKDOWN)

    def fits(self, gpu_gb: float) -> bool:
        return self.total <= gpu_bytes(gpu_gb)

    def as_dict(self) -> dict[str, int | str | bool]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(allocated=self.allocated, total=self.total)
        return out


def estimate(
    config: ModelConfig,
    micro_batch: int,
    seq_len: int | None = None,
    workers: int = 1,
    strategy: str = "fsdp",
    *,
    activation_checkpointing: bool = False,
    answer_tokens: int = ANSWER_TOKENS,
    vocab_rows: int | None = None,
    context_bytes: int = CONTEXT_BYTES,
    fragmentation: float = FRAGMENTATION,
) -> MemoryEstimate:
    """Per-GPU memory of a training step (see the module docstring for every term).

    Args:
        config: the model.
        micro_batch: samples per GPU per forward/backward.
        seq_len: the LLM's sequence length; default :func:`training_seq_len`.
        workers: data-parallel workers (GPUs) that FSDP shards over.
        strategy: ``"fsdp"`` or ``"ddp"``.
        activation_checkpointing: recompute each decoder layer in the backward.
        answer_tokens: positions per sample that get logits.
        vocab_rows: the LLM's vocabulary rows; default :func:`llm_vocab_rows`.
        context_bytes, fragmentation: the workspace allowance.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    for name, value in (("micro_batch", micro_batch), ("workers", workers)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    seq_len = training_seq_len(config) if seq_len is None else seq_len
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    p = parameter_counts(config, vocab_rows=vocab_rows)
    n = workers if strategy == "fsdp" else 1
    h = config.llm.hidden_size
    vocab = llm_vocab_rows(config) if vocab_rows is None else vocab_rows
    base = base_bytes(config)
    if strategy == "fsdp":
        largest_unit = max(p.llm_layer_frozen + p.llm_layer_trainable, vocab * h)  # a layer, or the embedding
        frozen = (
            base * (p.llm_layers * p.llm_layer_frozen + p.llm_other_frozen) / n
            + base * (p.image_encoder + p.audio_encoder) * (1 + 1 / n)  # the root unit: encoders
            + 2 * BF16 * largest_unit  # two units all-gathered at a time
        )
        trainable = FP32 * p.trainable / n
        # + one unit's unsharded gradients before their reduce-scatter (the adapter as one: an upper bound)
        grads = FP32 * p.trainable / n + FP32 * max(p.llm_layer_trainable, p.adapter)
    else:
        frozen = base * (
            p.llm_layers * p.llm_layer_frozen + p.llm_other_frozen + p.image_encoder + p.audio_encoder
        )
        trainable = FP32 * p.trainable
        grads = 2 * FP32 * p.trainable  # param.grad + DDP's buckets
    optimizer = 2 * FP32 * p.trainable / n

    tokens = micro_batch * seq_len
    layer = layer_activation_bytes(config) * tokens
    if activation_checkpointing:
        layers = config.llm.num_hidden_layers * BF16 * h * tokens + layer
    else:
        layers = config.llm.num_hidden_layers * layer
    keep = min(answer_tokens, seq_len)
    activations = (
        layers
        + layer  # the backward's transient: one layer's activation gradients
        + FP32 * h * tokens  # final norm
        + 16 * micro_batch * keep * vocab  # logits
        + micro_batch * _adapter_activation_bytes(config)
    )
    allocated = frozen + trainable + grads + optimizer + activations
    return MemoryEstimate(
        frozen_weights=int(frozen),
        trainable_weights=int(trainable),
        gradients=int(grads),
        optimizer=int(optimizer),
        activations=int(activations),
        workspace=int(context_bytes + fragmentation * allocated),
        micro_batch=micro_batch,
        seq_len=seq_len,
        workers=workers,
        strategy=strategy,
        activation_checkpointing=activation_checkpointing,
    )


def largest_micro_batch(
    config: ModelConfig,
    gpu_gb: float,
    seq_len: int | None = None,
    workers: int = 1,
    strategy: str = "fsdp",
    **kwargs: object,
) -> int:
    """The largest micro-batch whose :func:`estimate` fits a GPU of ``gpu_gb``; 0 when none does."""
    best = 0
    while best < _MB_SEARCH_LIMIT and estimate(
        config,
        best + 1,
        seq_len,
        workers,
        strategy,
        **kwargs,  # type: ignore[arg-type]
    ).fits(gpu_gb):
        best += 1
    return best
