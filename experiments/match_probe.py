"""Does ``av_match`` tell a sound whose source is in the picture from one whose source is not?

In-process, no Ray, a few CPU minutes (about 6 for 300 scenes and a trained model beside the
untrained one). For the type-4 fact-checks ("is this sound's source in the picture?") of
``--scenes`` held-out scenes of the procedural world's ``easy`` preset with two objects (the demo's
test split), each sample's :func:`meerkat_core.correspondence.match_values` (best and
mean closest-patch cosine, the map's spread, the match loss's probability) is computed from the media tokens the model gives the
LLM, and each value's ROC AUC between the True statements (the clip's own sound) and the False ones
(a sound of a class absent from the picture) is reported, with the class means. An AUC near 0.5
means the value carries nothing about type 4; near 1 (or 0), the LLM has what it needs.

The same values for a freshly built tiny model (random AVACE projections, no training) are the
reference: what the frozen encoders give before AVACE and the answers' loss have shaped anything.

    .venv/bin/python experiments/match_probe.py --scenes 200
    .venv/bin/python experiments/match_probe.py --model models:/meerkat-tiny/1   # with the stack's env
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meerkat_core import config as cfgmod  # noqa: E402
from meerkat_core.batching import SamplePreprocessor  # noqa: E402
from meerkat_core.builders import build_model, load_model  # noqa: E402
from meerkat_core.correspondence import MATCH_BIAS_INIT, match_values  # noqa: E402
from pipelines.avfit.world import WORLD_PRESETS, iter_samples  # noqa: E402

VALUES = ("best", "mean", "spread", "probability")


def type4_samples(n_scenes: int, seed: int) -> list[dict]:
    """The type-4 fact-checks of the first ``n_scenes`` two-object test scenes (both labels)."""
    cfg = dataclasses.replace(WORLD_PRESETS["easy"], min_objects=2)
    return [
        s
        for s in iter_samples(cfg, "test", n_scenes, seed)
        if s["json"]["task"] == "avfact" and s["json"].get("fact_type") == 4
    ]


def values(model, samples: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """``[n, 4]`` match values and ``[n]`` labels (1: the sound's source is in the picture)."""
    model.eval()
    pp = SamplePreprocessor(model.config, model.tokenizer)
    out, labels = [], []
    for s in samples:
        row = pp(s["image"], s["audio"], s["json"], with_answer=False)
        with torch.no_grad():
            media = model.encode_media(
                torch.from_numpy(row["pixel_values"])[None], torch.from_numpy(row["audio_features"])[None]
            )
        # a model without av_match has no match loss scale and bias: the probability at the
        # loss's initial ones (a monotone map of the mean, so the same AUC)
        sb = getattr(model, "match_scale_bias", None)
        sb = sb if sb is not None else torch.tensor([math.log(10.0), -MATCH_BIAS_INIT])
        out.append(match_values(media.img_proj, media.aud_proj, media.attn_map, sb)[0].detach().numpy())
        labels.append(int(bool(s["json"]["label"])))
    return np.stack(out), np.asarray(labels)


def summary(x: np.ndarray, y: np.ndarray) -> dict:
    from sklearn.metrics import roc_auc_score

    return {
        name: {
            "auc": round(float(roc_auc_score(y, x[:, i])), 4),
            "mean_true": round(float(x[y == 1, i].mean()), 4),
            "mean_false": round(float(x[y == 0, i].mean()), 4),
        }
        for i, name in enumerate(VALUES)
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="the world's seed (the demo's AVFIT uses 0)")
    ap.add_argument("--model", default="", help="a trained model (models:/name/version or a directory)")
    ap.add_argument("--json-out", default="")
    args = ap.parse_args(argv)
    samples = type4_samples(args.scenes, args.seed)
    y_count = sum(bool(s["json"]["label"]) for s in samples)
    print(f"{len(samples)} type-4 statements ({y_count} true) from {args.scenes} test scenes")
    models = {"untrained": build_model(cfgmod.PRESETS["tiny"], pretrained=False, seed=0)}
    if args.model:
        if args.model.startswith("models:/"):
            from pipelines import registry

            models[args.model] = registry.load(args.model)
        else:
            models[args.model] = load_model(args.model)
    out = {}
    for name, model in models.items():
        out[name] = summary(*values(model, samples))
        print(name, json.dumps(out[name]))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
