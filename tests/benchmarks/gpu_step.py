"""GPU check: the training job's own step on the paper model, loaded through the real path.

    python tests/benchmarks/gpu_step.py [--steps 6] [--batch 2] [--dir /tmp/meerkat-paper-random]
    python tests/benchmarks/gpu_step.py --small          # the same code on CPU at toy widths

1. Writes random weights at the paper's shapes in the official layouts to local directories
   (``CLIPModel`` ViT-B/16, ``ClapModel`` HTSAT-unfused, ``LlamaForCausalLM`` 7B, a Llama-style
   tokenizer, the checkpoints' preprocessor configs), once: nothing is downloaded. ``--small``
   writes the test suite's toy checkpoints instead (:mod:`tests.fixtures.pretrained`).
2. Builds the job's model from ``pipelines/configs/paper.yaml`` pointed at them
   (``build_model(pretrained=True)``: the checkpoint loaders, bf16 base, fp32 trainables) and wraps
   it as the job does (``pipelines.train._setup_model``: FSDP2 per decoder layer, bf16 mixed
   precision) in a process group of one.
3. Runs the job's step functions (``_forward_backward`` + ``_optimizer_step``) on procedural-world
   samples preprocessed by the checkpoints' own front ends, and prints step time, tokens/s, peak
   memory and MFU, with the memory model's prediction (:func:`meerkat_core.memory.estimate`) beside
   the measured peak. Last line: ``bench: gpu_step key=value ...``.

MFU counts the LLM only: forward 2·N·T and backward 2·N·T (activation gradients through the frozen
base; LoRA's weight gradients are negligible), N = LLM parameters, T = tokens in the step (media +
text, padding included). The peak is the card's dense bf16 figure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def paper_llama_config(tokenizer: Any) -> Any:
    """The paper preset's LLM shapes as a ``LlamaConfig`` with ``tokenizer``'s special ids
    (:func:`meerkat_core.builders.llama_config`, the one owner of that mapping)."""
    from meerkat_core.builders import llama_config
    from meerkat_core.config import PRESETS

    return llama_config(PRESETS["paper"].llm, tokenizer)


def write_paper_checkpoints(root: Path, device: str) -> None:
    """Random weights at the paper's shapes, saved with ``save_pretrained`` (skipped when present)."""
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapModel,
        ClapTextConfig,
        CLIPConfig,
        CLIPModel,
        LlamaForCausalLM,
    )

    from tests.fixtures import pretrained as fx

    done = root / "done.json"
    if done.is_file():
        return
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = fx.llama_style_tokenizer()
    with torch.device(device):
        clip_cfg = CLIPConfig(vision_config={"patch_size": 16, "image_size": 224})
        CLIPModel(clip_cfg).save_pretrained(root / "clip")
        clap_cfg = ClapConfig(
            text_config=ClapTextConfig().to_dict(),
            audio_config=ClapAudioConfig(enable_fusion=False).to_dict(),
        )
        ClapModel(clap_cfg).save_pretrained(root / "clap")
        llama = LlamaForCausalLM(paper_llama_config(tokenizer)).to(torch.bfloat16)
        llama.save_pretrained(root / "llm")
        del llama
    tokenizer.save_pretrained(root / "tokenizer")
    (root / "clip" / "preprocessor_config.json").write_text(json.dumps(fx.CLIP_PREPROCESSOR))
    (root / "clap" / "preprocessor_config.json").write_text(json.dumps(fx.CLAP_PREPROCESSOR))
    done.write_text("{}")


def _overrides(root: Path, small: bool) -> list[str]:
    from tests.fixtures.pretrained import PretrainedDirs, paper_overrides

    dirs = PretrainedDirs(root / "clip", root / "clap", root / "llm", root / "tokenizer")
    items = paper_overrides(dirs)
    if not small:  # the toy AVACE width is for CPU runs; the paper's is 768 × 8 heads
        items = {k: v for k, v in items.items() if not k.startswith("avace.")}
    return [f"model.{k}={'null' if v is None else v}" for k, v in items.items()]


def run(steps: int, batch: int, directory: Path, small: bool) -> dict[str, float | str]:
    from meerkat_core import memory
    from meerkat_core.model import count_parameters
    from pipelines import train
    from pipelines.avfit.world import WORLD_PRESETS, iter_samples
    from pipelines.config import load_config, resolve_model
    from pipelines.data import MeerkatCollate, ShardRows, _columns

    cuda = torch.cuda.is_available() and not small
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if small:
        from tests.fixtures.pretrained import write_pretrained_checkpoints

        write_pretrained_checkpoints(directory)
    else:
        write_paper_checkpoints(directory, "cuda" if cuda else "cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(s.getsockname()[1]))
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)
    try:
        cfg = load_config(
            train.TrainJobConfig,
            str(REPO / "pipelines/configs/paper.yaml"),
            [*_overrides(directory, small), "scaling.num_workers=1", f"optim.batch_size={batch}",
             "optim.effective_batch=null", "model.lora.dropout=0.0"],
        )  # fmt: skip
        model_cfg = resolve_model(cfg.model)
        t = time.perf_counter()
        model, wrapped = train._setup_model(cfg, model_cfg, device)
        build_s = time.perf_counter() - t
        params, opt, sched = train._setup_optimizer(cfg, model)
        n_llm = count_parameters(model.llm, trainable=False) + count_parameters(model.llm, trainable=True)
        n_lora = count_parameters(model.llm, name_contains="lora_")

        prep = ShardRows(model_cfg, model_cfg.tokenizer)
        rows, counts = [], {}
        for sample in iter_samples(WORLD_PRESETS["easy"], "train", 4 * batch, 0):
            if sample["json"]["task"] in ("arig", "igatl") and len(rows) < batch:
                member = {"jpg": sample["image"], "flac": sample["audio"], "json": json.dumps(sample["json"])}
                rows.append(prep.row({"__key__": sample["__key__"], **member}, counts, 0))
        b = MeerkatCollate(model.tokenizer.pad_token_id)(_columns(rows))
        b.pop("epoch", None)
        tokens = batch * (
            b["input_ids"].shape[1] - 2 + model_cfg.llm_image_tokens + model_cfg.audio.num_tokens
        )

        wrapped.train()
        times = []
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for i in range(steps):
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            losses = train._forward_backward(wrapped, b, 1, device, sync=True)
            grad_norm = train._optimizer_step(cfg, params, opt, sched)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            print(
                f"step {i}: {times[-1] * 1e3:.0f} ms {json.dumps(losses)} grad_norm={grad_norm:.3f}",
                flush=True,
            )
        step_s = sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else times[0]
        name = torch.cuda.get_device_name(device) if cuda else "cpu"
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), float("nan"))
        predicted = memory.estimate(model_cfg, micro_batch=batch, workers=1, strategy="fsdp")
        res: dict[str, float | str] = {
            "device": name.replace(" ", "_"),
            "build_s": round(build_s, 1),
            "llm_params": n_llm,
            "lora_params": n_lora,
            "tokens_per_step": tokens,
            "step_ms": round(step_s * 1e3, 1),
            "tokens_per_s": round(tokens / step_s, 1),
            "mfu": round(4 * n_llm * tokens / step_s / (peak * 1e12), 4),
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            if cuda
            else float("nan"),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
            if cuda
            else float("nan"),
            "model_allocated_gib": round(predicted.allocated / 2**30, 2),
            "model_total_gib": round(predicted.total / 2**30, 2),
        }
        print("bench: gpu_step " + " ".join(f"{k}={v}" for k, v in res.items()), flush=True)
        return res
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> dict[str, float | str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dir", type=Path, default=Path("/tmp/meerkat-paper-random"))
    p.add_argument("--small", action="store_true", help="toy checkpoints on the CPU (a smoke run)")
    a = p.parse_args(argv)
    return run(a.steps, a.batch, a.dir, a.small)


if __name__ == "__main__":
    main()
