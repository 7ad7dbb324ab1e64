"""The on-disk format of a trained Meerkat model and of a training checkpoint (the one owner).

Only what training changes is ever written: the trainable parameters (LoRA, AVACE, projections),
never the frozen base, which is rebuilt from the config's ``name_or_path`` and revision (pretrained)
or from the recorded ``seed`` (random init, the tiny preset).

A **model directory** (what evaluation, Serve and the registry load)::

    config.json    {"format": 2, "model": <ModelConfig>, "seed": int, "pretrained": bool}
    tokenizer/     the model's own tokenizer (save_pretrained)
    trainable.pt   the trainable parameters: full (unsharded) fp32 tensors keyed by their names

A **training checkpoint** (one per reported step; every rank of the run writes its part)::

    config.json, tokenizer/   as above (written by rank 0)
    state.json     step, data position, seed, world size and strategy of the run that wrote it
    dcp/           torch.distributed.checkpoint of {"model": trainable parameters,
                   "optim": optimizer state}, keyed by parameter name

``dcp/`` is written with ``torch.distributed.checkpoint``: each rank writes the shards it holds
(FSDP) or rank 0 writes everything (DDP: replicated tensors are deduplicated), and the metadata
maps every tensor to the pieces that hold it. Names come from
``torch.distributed.checkpoint.state_dict.get_state_dict``, which strips DDP's ``module.`` and
reads FSDP2's sharded parameters as such, so a checkpoint does not depend on the strategy or the
worker count that wrote it: it restores on any number of workers, and a single process without a
process group (evaluation, Serve) reads it as full tensors. A training checkpoint is therefore a
model directory too: :func:`load_trainable` reads ``trainable.pt`` when present, else ``dcp/``.

Nothing is ever half-loaded: before any tensor is copied, the names and shapes on disk are
compared with the model's trainable parameters, and any missing, unexpected or mis-shaped tensor
raises :class:`CheckpointMismatchError` naming them (e.g. a file of one rank's local shards, or a
checkpoint of another LoRA rank or preset).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from meerkat_core.config import ModelConfig, from_dict, to_dict

FORMAT = 2
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
TRAINABLE_FILE = "trainable.pt"
STATE_FILE = "state.json"
DCP_DIR = "dcp"


class CheckpointMismatchError(ValueError):
    """The tensors on disk are not the model's trainable parameters (names or shapes differ)."""


def trainable_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Name -> full (global) shape of every trainable parameter; FSDP2's DTensors count whole."""
    return {n: tuple(p.shape) for n, p in _unwrap(model).named_parameters() if p.requires_grad}


def check_tensors(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], source: str
) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``found`` has exactly ``expected``'s names and shapes."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(
        f"{n}: checkpoint {list(found[n])} vs model {list(expected[n])}"
        for n in set(expected) & set(found)
        if tuple(found[n]) != tuple(expected[n])
    )
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:8])}{more}")
        raise CheckpointMismatchError(
            f"{source} does not hold this model's trainable parameters; " + "; ".join(parts)
        )


# -- model directory ------------------------------------------------------------------------------


def write_model_meta(directory: str | Path, model: nn.Module, *, seed: int, pretrained: bool) -> Path:
    """``config.json`` and ``tokenizer/`` of a model or training-checkpoint directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    inner = _unwrap(model)
    meta = {"format": FORMAT, "model": to_dict(inner.config), "seed": seed, "pretrained": pretrained}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    inner.tokenizer.save_pretrained(directory / TOKENIZER_DIR)
    return directory


def read_model_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a Meerkat model directory: no {CONFIG_FILE}")
    meta = json.loads(path.read_text())
    if meta.get("format", 1) > FORMAT:
        raise CheckpointMismatchError(
            f"{path} has format {meta['format']}; this code reads formats up to {FORMAT}"
        )
    return meta


@dataclass(frozen=True)
class ModelSpec:
    """What rebuilds a model directory's frozen base: its config, seed and whether it is pretrained."""

    config: ModelConfig
    seed: int
    pretrained: bool


def read_model_spec(directory: str | Path) -> ModelSpec:
    """The :class:`ModelSpec` recorded in a model directory's ``config.json``."""
    meta = read_model_meta(directory)
    return ModelSpec(from_dict(ModelConfig, meta["model"]), meta["seed"], meta["pretrained"])


def read_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """The model's own tokenizer, saved in its directory's ``tokenizer/``."""
    return AutoTokenizer.from_pretrained(Path(directory) / TOKENIZER_DIR)


def is_model_dir(directory: str | Path) -> bool:
    d = Path(directory)
    return (d / CONFIG_FILE).is_file() and ((d / TRAINABLE_FILE).is_file() or (d / DCP_DIR).is_dir())


def find_model_dir(root: str | Path) -> Path:
    """The model directory (or training checkpoint) under ``root``, ``root`` itself first."""
    root = Path(root)
    candidates = [root, *sorted(p.parent for p in root.rglob(CONFIG_FILE))]
    for candidate in candidates:
        if is_model_dir(candidate):
            return candidate
    raise FileNotFoundError(
        f"no Meerkat model under {root}: expected {CONFIG_FILE} with {TRAINABLE_FILE} or {DCP_DIR}/"
    )


def save_model_dir(directory: str | Path, model: nn.Module, *, seed: int, pretrained: bool) -> Path:
    """A model directory from an unsharded model in this process (full tensors, fp32)."""
    directory = write_model_meta(directory, model, seed=seed, pretrained=pretrained)
    state = {n: p.detach().float().cpu() for n, p in _unwrap(model).named_parameters() if p.requires_grad}
    _atomic_torch_save(state, directory / TRAINABLE_FILE)
    return directory


def load_trainable(directory: str | Path, model: nn.Module) -> None:
    """Load the trainable parameters of a model directory or training checkpoint into ``model``.

    The model is unsharded and in this process (no process group needed); names and shapes are
    checked before anything is copied.
    """
    directory = Path(directory)
    expected = trainable_shapes(model)
    params = dict(_unwrap(model).named_parameters())
    if (directory / TRAINABLE_FILE).is_file():
        state = torch.load(directory / TRAINABLE_FILE, map_location="cpu", weights_only=True)
        check_tensors(
            expected, {k: tuple(v.shape) for k, v in state.items()}, str(directory / TRAINABLE_FILE)
        )
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)
        return
    check_tensors(expected, _dcp_shapes(directory / DCP_DIR, "model"), str(directory / DCP_DIR))
    # DCP loads in place into the tensors given; fp32 copies, then into the (maybe bf16) params.
    target = {name: torch.empty(shape, dtype=torch.float32) for name, shape in expected.items()}
    dcp.load({"model": target}, checkpoint_id=str(directory / DCP_DIR), no_dist=not _distributed())
    with torch.no_grad():
        for name, value in target.items():
            params[name].copy_(value)


def consolidate(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    """A model directory (``trainable.pt``) from a training checkpoint's ``dcp/``, in one process."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    full = out_dir / "full.tmp"
    dcp_to_torch_save(checkpoint_dir / DCP_DIR, full)
    state = torch.load(full, map_location="cpu", weights_only=True)["model"]
    full.unlink()
    _atomic_torch_save({k: v.float() for k, v in state.items()}, out_dir / TRAINABLE_FILE)
    (out_dir / CONFIG_FILE).write_bytes((checkpoint_dir / CONFIG_FILE).read_bytes())
    _copy_tree(checkpoint_dir / TOKENIZER_DIR, out_dir / TOKENIZER_DIR)
    return out_dir


# -- training checkpoint --------------------------------------------------------------------------


def _train_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``{"model": trainable params, "optim": optimizer state}`` keyed by parameter name."""
    model_sd, optim_sd = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    names = set(trainable_shapes(model))
    # ignore_frozen_params still returns buffers (e.g. HTSAT's position indices): keep parameters.
    return {"model": {k: v for k, v in model_sd.items() if k in names}, "optim": optim_sd}


def save_training_state(
    directory: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: Mapping[str, Any],
    *,
    seed: int,
    pretrained: bool,
) -> None:
    """Write a training checkpoint; with a process group every rank must call this."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dcp.save(
        _train_state(model, optimizer), checkpoint_id=str(directory / DCP_DIR), no_dist=not _distributed()
    )
    if not _distributed() or dist.get_rank() == 0:
        write_model_meta(directory, model, seed=seed, pretrained=pretrained)
        (directory / STATE_FILE).write_text(json.dumps(dict(state)))


def load_training_state(
    directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore parameters and optimizer state (any worker count, any strategy); returns state.json."""
    directory = Path(directory)
    if not (directory / DCP_DIR).is_dir():
        raise CheckpointMismatchError(
            f"{directory} is not a training checkpoint: no {DCP_DIR}/ (a model directory holds only "
            "the weights; start a new run from it instead of resuming)"
        )
    check_tensors(
        trainable_shapes(model), _dcp_shapes(directory / DCP_DIR, "model"), str(directory / DCP_DIR)
    )
    train_state = _train_state(model, optimizer)
    dcp.load(train_state, checkpoint_id=str(directory / DCP_DIR), no_dist=not _distributed())
    set_state_dict(
        model,
        optimizer,
        model_state_dict=train_state["model"],
        optim_state_dict=train_state["optim"],
        options=StateDictOptions(ignore_frozen_params=True, strict=False),
    )
    return json.loads((directory / STATE_FILE).read_text())


# -- helpers --------------------------------------------------------------------------------------


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _unwrap(model: nn.Module) -> nn.Module:
    """The model itself under a DDP wrapper (FSDP2 shards in place and needs no unwrapping)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _dcp_shapes(path: Path, prefix: str) -> dict[str, tuple[int, ...]]:
    """Names and global shapes of the tensors under ``prefix.`` in a DCP checkpoint's metadata."""
    if not (path / ".metadata").is_file():
        raise CheckpointMismatchError(f"{path} is not a complete checkpoint: no .metadata")
    meta = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    head = prefix + "."
    return {
        k[len(head) :]: tuple(v.size) for k, v in meta.items() if k.startswith(head) and hasattr(v, "size")
    }


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _copy_tree(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_dir():
            _copy_tree(item, dst / item.name)
        else:
            (dst / item.name).write_bytes(item.read_bytes())
