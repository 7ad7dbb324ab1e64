"""The GPU check's own code, kept alive on the CPU: ``gpu_step.py --small`` runs the job's step on
the toy checkpoints (the GPU run itself is opt-in: ``-m gpu``, or the script on a GPU machine)."""

from __future__ import annotations

import pytest
import torch

from tests.benchmarks import gpu_step


def test_gpu_step_runs_the_jobs_step_on_the_real_loading_path(tmp_path, capsys):
    res = gpu_step.main(["--small", "--steps", "2", "--batch", "2", "--dir", str(tmp_path)])
    assert res["device"] == "cpu" and res["lora_params"] > 0 and res["step_ms"] > 0
    assert res["model_total_gib"] > res["model_allocated_gib"] > 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("bench: gpu_step ")


def test_paper_llama_shapes_come_from_the_preset():
    from meerkat_core.config import PRESETS
    from tests.fixtures.pretrained import llama_style_tokenizer

    cfg = gpu_step.paper_llama_config(llama_style_tokenizer())
    llm = PRESETS["paper"].llm
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (4096, 32, 11008)
    assert (cfg.vocab_size, cfg.num_attention_heads) == (llm.vocab_size, llm.num_attention_heads)


@pytest.mark.gpu
def test_gpu_step_on_the_paper_shapes(tmp_path):
    if not torch.cuda.is_available():
        pytest.fail("-m gpu needs a CUDA device")
    res = gpu_step.main(["--steps", "4", "--dir", str(tmp_path)])
    assert res["lora_params"] == 33_554_432 and res["step_ms"] > 0
