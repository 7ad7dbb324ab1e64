"""Data-parallel strategies for training Meerkat: DDP for small models, FSDP2 for the 7B base.

Torch only (no Ray): the training job calls these inside an initialised process group.

* ``"ddp"`` (:func:`replicate`): every worker holds the whole model and gradients are all-reduced.
  Right when the whole model fits on one device with room for activations: the tiny preset, or a
  7B base on 80 GB GPUs at a small micro-batch. One all-reduce of the trainable gradients per step,
  nothing else on the wire.
* ``"fsdp"`` (:func:`shard`): ``torch.distributed.fsdp.fully_shard`` (FSDP2). Right when the base
  does not fit beside its activations, or to free memory for a larger micro-batch: every decoder
  layer of the LLM is its own unit, so each worker keeps 1/N of the frozen base (bf16) and of the
  trainable state, and gathers one layer at a time. FSDP2 shards parameter by parameter
  (DTensor): frozen and trainable tensors never share a flat buffer, so LoRA's fp32 weights beside a
  bf16 base need no ``use_orig_params`` workaround, and ``requires_grad`` decides alone what gets
  gradients and optimizer state.

Mixed precision under FSDP: decoder layers, the token embedding and the LLM's root unit
(final norm, ``lm_head``) compute in bf16 (``MixedPrecisionPolicy(param_dtype=bfloat16)``) with
gradients reduced in fp32. AVACE and the projections are their own units with no policy, so they
keep fp32 parameters and compute: the OT and AC terms are fp32 (the encoders' bf16 tokens are cast
up in :meth:`~meerkat_core.model.MeerkatModel.encode_media`). The frozen encoders are left to the
root unit (small next to the LLM: one gather per step, no gradient traffic), with the few small
trainable layers of the tiny preset's own switches (the time map's, ``av_match_proj``, the match
loss's ``match_scale_bias``): fp32 too.
The embedding gets a unit of its own because the model calls it outside the LLM's forward (to
splice media tokens in).

Helpers that work the same for both strategies: :func:`grad_sync` (skip the gradient reduction on
accumulation micro-steps), :func:`clip_grad_norm` (the global norm over all ranks' shards),
:func:`mean_over_ranks` (logged losses) and :func:`shard_fraction` (what a rank holds).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

STRATEGIES = ("ddp", "fsdp")

_FP32_UNITS = (
    "avace",
    "img_to_llm",
    "aud_to_llm",
    "region_box_proj",
    "region_match_proj",
    "region_segment_proj",
)


def decoder_layers(llm: nn.Module) -> list[nn.Module]:
    """The LLM's transformer blocks (``model.layers`` of a Llama, under a peft wrapper or not)."""
    for name, module in llm.named_modules():
        if name.endswith("layers") and isinstance(module, nn.ModuleList):
            return list(module)
    raise ValueError("no decoder layers (a ModuleList named '...layers') found in the LLM")


def shard(model: nn.Module, *, compute_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """FSDP2 in place: one unit per decoder layer, the embedding, the LLM root, fp32 units, the root.

    Returns the same module (now an ``FSDPModule``). Needs an initialised process group.
    """
    bf16 = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    fp32 = MixedPrecisionPolicy()
    for layer in decoder_layers(model.llm):
        fully_shard(layer, mp_policy=bf16)
    fully_shard(model.llm.get_input_embeddings(), mp_policy=bf16)
    fully_shard(model.llm, mp_policy=bf16)
    for name in _FP32_UNITS:
        unit = getattr(model, name, None)
        if unit is not None:
            fully_shard(unit, mp_policy=fp32)
    # The root unit holds what is left (the frozen encoders): gathered once per step.
    fully_shard(model, mp_policy=fp32)
    return model


def replicate(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around ``model`` (which stays reachable as ``.module``)."""
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


@contextlib.contextmanager
def grad_sync(wrapped: nn.Module, enabled: bool) -> Iterator[None]:
    """Reduce gradients in this forward/backward only when ``enabled`` (the last micro-step)."""
    if isinstance(wrapped, FSDPModule):
        wrapped.set_requires_gradient_sync(enabled)
        yield
    elif isinstance(wrapped, nn.parallel.DistributedDataParallel) and not enabled:
        with wrapped.no_sync():
            yield
    else:
        yield


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """Clip by the norm of the whole gradient over all ranks; returns that norm (before clipping).

    Sharded gradients (DTensor) make ``clip_grad_norm_`` reduce over the mesh, so the norm is the
    global one, not one shard's; replicated (DDP) gradients are equal on every rank already.
    """
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return float(norm)


def mean_over_ranks(values: Mapping[str, float]) -> dict[str, float]:
    """The mean of each value over the ranks (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def shard_fraction(model: nn.Module, *, frozen: bool = True) -> float:
    """The fraction of the (frozen or trainable) sharded parameters' elements this rank holds.

    Counts only sharded parameters (DTensor); 1.0 for a model that is not sharded.
    """
    local = total = 0
    for p in model.parameters():
        if isinstance(p, DTensor) and p.requires_grad != frozen:
            local += p.to_local().numel()
            total += p.numel()
    return local / total if total else 1.0
