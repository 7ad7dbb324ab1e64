"""GPU check: LoRA training steps of the paper-shaped model (random weights, nothing downloaded).

    python tests/benchmarks/gpu_step.py [--steps 6] [--batch 4] [--text 96] [--solver sinkhorn]
    pytest -m gpu tests/benchmarks/gpu_step.py

Builds CLIP ViT-B/16 + CLAP HTSAT + Llama-2-7B shapes with random weights in bf16 on one GPU, LoRA
r=32 on q,k,v,o, and runs full training steps (CE + λ_OT·OT + λ_AC·AC, AdamW on the trainable
state). Prints step time, tokens/s, peak memory and model FLOP utilisation.

MFU counts the LLM only: forward 2·N·T and backward 2·N·T (activation gradients through the frozen
base; the LoRA weight gradients are negligible), N = LLM parameters, T = tokens in the step
(media + text). The peak is the card's dense bf16 figure (H100 SXM 989, H200 989, A100 312 TFLOP/s).
Finishes in a few minutes on an H100.
"""

from __future__ import annotations

import argparse
import random
import time

import pytest
import torch

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def run(steps: int = 6, batch: int = 4, text: int = 96, solver: str = "sinkhorn") -> dict[str, float]:
    from meerkat_core import batching, prompts
    from meerkat_core.config import PRESETS
    from meerkat_core.model import build_model, count_parameters

    if not torch.cuda.is_available():
        raise RuntimeError("gpu_step needs a CUDA device")
    torch.manual_seed(0)
    cfg = PRESETS["paper"]
    t = time.perf_counter()
    model = build_model(cfg, pretrained=False, device="cuda", llm_dtype=torch.bfloat16)
    model.image_encoder.to(torch.bfloat16)
    model.audio_encoder.to(torch.bfloat16)
    build_s = time.perf_counter() - t
    n_llm = count_parameters(model.llm.get_base_model())
    n_lora = count_parameters(model.llm, name_contains="lora_")
    tok = model.tokenizer
    answer = " ".join(["the red circle beeps"] * (text // 4))
    examples = [
        batching.encode_example(tok, prompts.render_instruction("arig", random.Random(i)), answer, 4 * text)
        for i in range(batch)
    ]
    b = batching.pad_text(examples, tok.pad_token_id)
    b.update(batching.box_masks([[[0.1, 0.2, 0.6, 0.7]]] * batch, cfg.image.grid))
    b["pixel_values"] = torch.randn(batch, 3, 224, 224)
    b["audio_features"] = torch.randn(
        batch, cfg.audio.num_windows, 1, cfg.audio.frames_per_window, cfg.audio.num_mel_bins
    )
    b = {k: v.cuda() for k, v in b.items()}
    tokens = batch * (b["input_ids"].shape[1] - 2 + cfg.llm_image_tokens + cfg.audio.num_tokens)
    import dataclasses

    model.config = dataclasses.replace(model.config, loss=dataclasses.replace(cfg.loss, ot_solver=solver))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for i in range(steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(b)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        print(
            f"step {i}: {times[-1] * 1e3:.0f} ms  loss={out['loss'].item():.3f} ce={out['loss_ce'].item():.3f} "
            f"ot={out['loss_ot'].item():.3f} ac={out['loss_ac'].item():.3f}",
            flush=True,
        )
    step_s = sorted(times[1:])[len(times[1:]) // 2]
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), float("nan"))
    flops = 4 * n_llm * tokens
    res = {
        "device": name,
        "build_s": build_s,
        "llm_params": n_llm,
        "lora_params": n_lora,
        "tokens_per_step": tokens,
        "step_ms": step_s * 1e3,
        "tokens_per_s": tokens / step_s,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        "mfu": flops / step_s / (peak * 1e12),
    }
    for k, v in res.items():
        print(f"{k:16s} {v}")
    return res


@pytest.mark.gpu
def test_gpu_step():
    res = run(steps=4)
    assert res["lora_params"] == 33_554_432 and res["step_ms"] > 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--text", type=int, default=96)
    p.add_argument("--solver", default="sinkhorn", choices=["exact", "sinkhorn"])
    a = p.parse_args()
    run(a.steps, a.batch, a.text, a.solver)
