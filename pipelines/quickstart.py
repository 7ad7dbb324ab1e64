"""One training step and one generation of the tiny model on procedural-world samples.

    python -m pipelines.quickstart [--preset tiny] [--samples 4] [--seed 0]

Builds the model (random weights, offline tokenizer: nothing is downloaded), renders a few scenes of
the procedural audio-visual world, runs one optimiser step, prints the four loss terms of Eq. 4 and
what the model says for the first sample. A check that the whole model path works on this machine;
``make demo`` runs it before the distributed pipeline.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from meerkat_core import batching, generation
from meerkat_core.builders import build_model
from meerkat_core.config import PRESETS
from pipelines.avfit.world import WORLD_PRESETS, iter_samples


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    config = PRESETS[args.preset]
    model = build_model(config, pretrained=args.preset != "tiny", seed=args.seed)
    prep = batching.SamplePreprocessor(config, model.tokenizer)
    samples = list(itertools.islice(iter_samples(WORLD_PRESETS["easy"], "train", 4, args.seed), args.samples))
    rows = [prep(s["image"], s["audio"], s["json"]) for s in samples]
    batch = batching.collate(rows, model.tokenizer.pad_token_id)
    print(f"model built and {len(rows)} samples prepared in {time.perf_counter() - t0:.1f}s")

    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    out = model(batch)
    out["loss"].backward()
    opt.step()
    losses = {k: out[k].detach().item() for k in ("loss", "loss_ce", "loss_ot", "loss_ac")}
    print("one training step: " + "  ".join(f"{k}={v:.4f}" for k, v in losses.items()))

    model.eval()
    first = samples[0]["json"]
    row = generation.prompt_row(prep, samples[0]["image"], samples[0]["audio"], first)
    (text,) = generation.generate_answers(model, [row], max_new_tokens=24)
    print(
        f"task:        {first['task']}\ninstruction: {first['instruction']}\nexpected:    {first['answer']}"
    )
    print(f"generated:   {text!r}  (an untrained model: any text is fine here)")
    return losses


if __name__ == "__main__":
    main()
