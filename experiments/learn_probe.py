"""Does the tiny Meerkat learn audio-visual grounding in a few CPU minutes?

In-process, no Ray:

1. render ``--train-scenes`` scenes of the procedural world (``easy`` preset: one or two objects,
   the task mix of ``--task-weights``, by default arig and avfact) and ``--test-scenes`` held-out
   scenes of split "test" with exactly two objects (``min_objects=2``);
2. preprocess every sample once with :class:`meerkat_core.batching.SamplePreprocessor` and run the
   FROZEN encoders once over the result, keeping their token states in memory (and in ``--cache``,
   keyed by the encoder config, the seed and the data; the first run builds it): the encoders are
   frozen, deterministic and in eval mode, so this is the very input AVACE sees at every step,
   without the encoders' share of the step's cost. The model then runs with pass-through
   encoders; everything trainable (AVACE, projections, LoRA, lm_head) and every loss term runs as
   in :class:`MeerkatModel`;
3. train with AdamW (linear warm-up, then cosine decay over the ``--minutes`` budget) on random
   mini-batches, bf16 autocast, one thread (``--threads``);
4. evaluate by greedy generation (:func:`meerkat_core.generation.generate_answers`) on the test
   samples, parsed with ``grounding.parse_box`` and ``prompts.parse_verdict``: arig mean IoU (unparsable = 0), the fraction of arig answers whose
   IoU with the sounding object's box beats their IoU with the other object's ("on sounding";
   chance is 0.5), avfact accuracy overall and per fact type, next to ``world.baselines``
   (random-object and mean-box IoU, majority class). Diagnostics: AVACE's map on the sounding
   object (mean map value in its box above the other object's), and the IoU of the box the map
   implies (``attention.map_box``); for fact-check types 1 and 3 (a box in the statement),
   ``avfact_region``: accuracy by what the statement gets wrong (the box is another object's, on
   the background, or the window is wrong) and how well one threshold on AVACE's map contrast
   inside/outside the written box would separate right boxes from wrong ones (an upper bound).

The tiny preset is trained with ``loss.number_label_sigma = 1.5`` (``--number-sigma``).

    .venv/bin/python experiments/learn_probe.py --minutes 5 --label full --json-out runs/full.json
    .venv/bin/python experiments/learn_probe.py --minutes 5 --label no-OT --set loss.lambda_ot=0 --json-out runs/noot.json
    .venv/bin/python experiments/learn_probe.py --minutes 5 --label no-AC --set loss.lambda_ac=0 --json-out runs/noac.json
    .venv/bin/python experiments/learn_probe.py --minutes 5 --label no-regions --set region_prompts=false --json-out runs/noreg.json
    .venv/bin/python experiments/learn_probe.py --table runs/*.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meerkat_core import batching, generation, grounding, media, prompts  # noqa: E402
from meerkat_core import config as cfgmod  # noqa: E402
from meerkat_core.attention import MAP_BOX_POWER, map_box  # noqa: E402
from meerkat_core.batching import SamplePreprocessor, ac_boxes, encode_example  # noqa: E402
from meerkat_core.builders import build_model  # noqa: E402
from meerkat_core.correspondence import class_columns  # noqa: E402
from meerkat_core.regions import map_agreement  # noqa: E402
from pipelines.avfit.world import WORLD_PRESETS, baselines, iter_samples  # noqa: E402

TASKS = ("arig", "igatl", "avfact", "avqa", "avc")
REGION_COLUMNS = ("region_box", "region_pos", "segment_feat", "segment_pos")
CACHE_VERSION = 2  # 2: rows carry the region-prompt columns


class PassThrough(nn.Module):
    """Stands in for a frozen encoder whose output was computed once and is fed in its place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def parse_weights(text: str) -> dict[str, float]:
    out = {}
    for part in text.split(","):
        k, v = part.split("=")
        if k not in TASKS:
            raise SystemExit(f"unknown task {k!r}")
        out[k] = float(v)
    return out


def parse_value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


# -- data --------------------------------------------------------------------------------------
def prepare(samples, model, pp, *, with_answer: bool, log_prefix: str) -> list[dict]:
    """Samples -> rows holding encoder token states instead of pixels/mel (see module docstring)."""
    rows, media_rows = [], {}
    t0 = time.time()
    for s in samples:
        meta = s["json"]
        key = hashlib.sha1(s["image"] + s["audio"]).hexdigest()
        if key not in media_rows:
            row = pp(s["image"], s["audio"], meta, with_answer=with_answer)
            with torch.no_grad():
                zi = model.image_encoder(torch.from_numpy(row["pixel_values"])[None])[0]
                za = model.audio_encoder(torch.from_numpy(row["audio_features"])[None])[0]
            media_rows[key] = (zi.float().clone(), za.float().clone(), row["audio_features"])
        else:
            # Same image and audio as an earlier sample (the samples of one scene share them): only
            # the text, the box mask and the pairing differ; computed with SamplePreprocessor's own
            # helpers, so the row is what it would have produced.
            text = encode_example(
                pp.tokenizer,
                meta["instruction"],
                meta["answer"] if with_answer else None,
                pp.config.max_text_tokens,
            )
            mask = _mask_for(meta, pp)
            row = {
                "input_ids": np.asarray(text["input_ids"], np.int64),
                "labels": np.asarray(text["labels"], np.int64),
                "box_mask": mask,
                "has_box": bool(mask.any()),
                "ot_pair": bool(meta.get("paired", True)),
                **pp.regions(meta["instruction"], media_rows[key][2], 224, 224),
            }
        zi, za, _ = media_rows[key]
        rows.append(
            {
                "z_img": zi,
                "z_aud": za,
                "input_ids": row["input_ids"],
                "labels": row["labels"],
                "box_mask": torch.from_numpy(np.asarray(row["box_mask"], np.float32)),
                "has_box": bool(row["has_box"]),
                "ot_pair": bool(row["ot_pair"]),
                **class_columns(meta),  # the match loss's labels
                **{c: row[c] for c in REGION_COLUMNS},
                "meta": meta,
            }
        )
    print(
        f"{log_prefix}: {len(rows)} samples, {len(media_rows)} distinct media, {time.time() - t0:.0f}s",
        flush=True,
    )
    return rows


def _mask_for(meta, pp: SamplePreprocessor) -> np.ndarray:
    # As SamplePreprocessor does it; the world's pictures are image_size square.
    size, grid = pp.config.image.image_size, pp.config.image.grid
    w = h = 224
    boxes = [b for b in (media.box_to_crop(b, w, h, size) for b in ac_boxes(meta)) if b]
    return grounding.boxes_to_mask(boxes, grid) if boxes else np.zeros((grid, grid), np.float32)


def encoded_rows(rows) -> list[dict]:
    # rows whose "pixel_values"/"audio_features" are the encoders' outputs
    return [{**r, "pixel_values": r["z_img"].numpy(), "audio_features": r["z_aud"].numpy()} for r in rows]


def collate(rows, pad_id: int) -> dict[str, torch.Tensor]:
    return batching.collate(encoded_rows(rows), pad_id)


def load_or_prepare(path: Path | None, build):
    if path is not None and path.exists():
        t0 = time.time()
        rows = torch.load(path, weights_only=False)
        print(f"loaded {path} ({len(rows)} rows, {time.time() - t0:.0f}s)", flush=True)
        return rows
    rows = build()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(rows, path)
    return rows


# -- evaluation --------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, rows, *, bf16: bool, batch_size: int = 32) -> dict:
    model.eval()
    res = {"arig": [], "avfact": []}
    maps_out: list[torch.Tensor] = []
    fact_maps: list[torch.Tensor] = []
    for task, max_new in (("arig", 14), ("avfact", 3)):
        task_rows = [r for r in rows if r["meta"]["task"] == task]
        for i in range(0, len(task_rows), batch_size):
            chunk = task_rows[i : i + batch_size]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                texts, maps = generation.generate_answers(
                    model, encoded_rows(chunk), max_new_tokens=max_new, return_attention=True
                )
            res[task] += list(zip(chunk, texts, strict=True))
            if task == "arig":
                maps_out += list(maps.float())
            else:
                fact_maps += list(maps.float())
    model.train()

    ious, on_sounding, near, parsed = [], [], [], 0
    for r, text in res["arig"]:
        meta = r["meta"]
        box = grounding.parse_box(text)
        truth = meta["boxes"][0]
        others = [o["box"] for o in meta["objects"] if not o["sounds"]]
        if box is None:
            ious.append(0.0)
            on_sounding.append(False)
            near.append(0.0)
            continue
        parsed += 1
        iou_s = grounding.box_iou(box, truth)
        iou_o = max(grounding.box_iou(box, o) for o in others) if others else 0.0
        ious.append(iou_s)
        on_sounding.append(iou_s > iou_o)
        near.append(max(iou_s, iou_o))
    # Does AVACE's map (trained by L_AC) prefer the sounding object? Mean map value over each
    # object's box cells on the patch grid.
    grid = maps_out[0].shape[-1] if maps_out else 14
    map_pick, map_inside, map_iou = [], [], []
    for (r, _), amap in zip(res["arig"], maps_out, strict=True):
        objs = r["meta"]["objects"]
        vals = [
            float(
                (amap * torch.from_numpy(grounding.boxes_to_mask([o["box"]], grid))).sum()
                / max(grounding.boxes_to_mask([o["box"]], grid).sum(), 1)
            )
            for o in objs
        ]
        s_idx = [i for i, o in enumerate(objs) if o["sounds"]][0]
        map_pick.append(all(vals[s_idx] > v for i, v in enumerate(vals) if i != s_idx))
        m = torch.from_numpy(grounding.boxes_to_mask([objs[s_idx]["box"]], grid))
        map_inside.append(float((amap * m).sum() / amap.sum().clamp_min(1e-9)))
        mbox = map_box((amap.clamp_min(0) ** MAP_BOX_POWER).reshape(1, -1), grid)[0].tolist()
        map_iou.append(grounding.box_iou(mbox, objs[s_idx]["box"]))
    correct, verdicts = 0, 0
    by_type: dict[int, list[bool]] = {}
    by_type_label: dict[str, list[bool]] = {}  # "type/label" -> correct: a bias towards one verdict
    for r, text in res["avfact"]:
        v = prompts.parse_verdict(text)
        verdicts += v is not None
        ok = v is not None and v == bool(r["meta"]["label"])
        correct += ok
        by_type.setdefault(int(r["meta"]["fact_type"]), []).append(ok)
        by_type_label.setdefault(f"{r['meta']['fact_type']}/{bool(r['meta']['label'])}", []).append(ok)
    n_a, n_f = len(res["arig"]), len(res["avfact"])
    # Fact-check Type 4 (is the sound's source in the picture?): the area of the box AVACE's map
    # implies and the map's mean level, for paired audio (True) and a class not in the picture (False).
    t4 = {True: [], False: []}
    for (r, _), amap in zip(res["avfact"], fact_maps, strict=True):
        if int(r["meta"]["fact_type"]) == 4:
            b = map_box((amap.clamp_min(0) ** MAP_BOX_POWER).reshape(1, -1), amap.shape[-1])[0]
            t4[bool(r["meta"]["label"])].append((float((b[2] - b[0]) * (b[3] - b[1])), float(amap.mean())))
    t4_stats = {
        str(k): [round(float(np.mean([a for a, _ in v])), 3), round(float(np.mean([m for _, m in v])), 3)]
        for k, v in t4.items()
        if v
    }
    region_diag = _region_diagnostics(res["avfact"], fact_maps)
    evaluate.last_maps = (maps_out, [r["meta"] for r, _ in res["arig"]])
    return {
        "arig_n": n_a,
        "arig_parse": parsed / max(n_a, 1),
        "arig_miou": float(np.mean(ious)) if ious else float("nan"),
        "arig_sounding_rate": float(np.mean(on_sounding)) if on_sounding else float("nan"),
        "arig_nearest_obj_iou": float(np.mean(near)) if near else float("nan"),
        "map_on_sounding": float(np.mean(map_pick)) if map_pick else float("nan"),
        "map_mass_in_box": float(np.mean(map_inside)) if map_inside else float("nan"),
        "map_box_miou": float(np.mean(map_iou)) if map_iou else float("nan"),
        "avfact_n": n_f,
        "avfact_acc": correct / max(n_f, 1),
        "avfact_parse": verdicts / max(n_f, 1),
        "t4_map_area_mean_true_false": t4_stats,
        "avfact_by_type": {t: round(float(np.mean(v)), 3) for t, v in sorted(by_type.items())},
        "avfact_by_type_label": {t: round(float(np.mean(v)), 3) for t, v in sorted(by_type_label.items())},
        "avfact_true_rate": float(np.mean([prompts.parse_verdict(t) is True for _, t in res["avfact"]]))
        if res["avfact"]
        else float("nan"),
        "examples": [t for _, t in res["arig"][:4]] + [t for _, t in res["avfact"][:4]],
        "avfact_region": region_diag,
    }


def _region_diagnostics(fact_res, fact_maps) -> dict:
    """Fact-check types 1 and 3 (a box written in the statement), by what the statement gets wrong:
    the model's accuracy, and how well AVACE's map alone would tell the written box from a wrong one
    (the mean map inside the box minus outside it, at the best threshold: an upper bound of what the
    region prompt's map features carry)."""
    groups: dict[str, list[bool]] = {}
    contrast: dict[int, list[tuple[float, bool]]] = {1: [], 3: []}
    for (r, text), amap in zip(fact_res, fact_maps, strict=True):
        meta = r["meta"]
        t = int(meta["fact_type"])
        if t not in (1, 3):
            continue
        label = bool(meta["label"])
        wb = meta["boxes"][0]
        sounding = [o["box"] for o in meta["objects"] if o["sounds"]]
        others = [o["box"] for o in meta["objects"] if not o["sounds"]]
        box_right = max(grounding.box_iou(wb, s) for s in sounding) >= 0.5
        if label:
            kind = "true"
        elif not box_right:
            kind = (
                "object" if others and max(grounding.box_iou(wb, o) for o in others) >= 0.5 else "background"
            )
        else:
            kind = "window"
        v = prompts.parse_verdict(text)
        groups.setdefault(f"{t}/{kind}", []).append(v is not None and v == label)
        if kind != "window":
            # the contrast the model's region feature gets (regions.map_agreement), box IoU unused
            agree = map_agreement(torch.tensor([wb]), amap[None], torch.zeros(1, 4))[0]
            contrast[t].append((float(agree[2]), box_right))
    sep = {}
    for t, pairs in contrast.items():
        if not pairs:
            continue
        xs = sorted(pairs)
        best = max(
            sum((x > thr) == y for x, y in xs) / len(xs) for thr in [xs[0][0] - 1] + [x for x, _ in xs]
        )
        sep[str(t)] = round(best, 3)
    return {
        "acc_by_kind": {k: [round(float(np.mean(v)), 3), len(v)] for k, v in sorted(groups.items())},
        "map_contrast_best_acc": sep,
    }


# -- main --------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0, help="training wall time")
    ap.add_argument("--max-steps", type=int, default=100_000)
    ap.add_argument("--train-scenes", type=int, default=1000)
    ap.add_argument("--test-scenes", type=int, default=200)
    ap.add_argument("--task-weights", default="arig=1,avfact=2", help="world task_weights of the train set")
    ap.add_argument(
        "--mix", default="", help="batch task mix, e.g. 'arig=0.4,avfact=0.6' (default: as rendered)"
    )
    ap.add_argument("--world", default="{}", help="JSON overrides of the easy preset for training")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="model init and batch order")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument(
        "--number-sigma",
        type=float,
        default=1.5,
        help="loss.number_label_sigma: soft labels over neighbouring number tokens (0: plain CE)",
    )
    ap.add_argument("--set", action="append", default=[], metavar="a.b=v", help="ModelConfig override")
    ap.add_argument("--cache", default="/tmp/meerkat_learn_probe", help="'' disables the on-disk cache")
    ap.add_argument("--eval-every", type=float, default=0.0, help="minutes between interim evaluations")
    ap.add_argument("--interim-test-scenes", type=int, default=60)
    ap.add_argument("--json-out", default="")
    ap.add_argument("--label", default="", help="name of this run in the table")
    ap.add_argument(
        "--table", nargs="+", metavar="JSON", help="only print the table of earlier --json-out files"
    )
    args = ap.parse_args(argv)
    if args.table:
        print_table([json.loads(Path(f).read_text()) for f in args.table])
        return {}

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    t_start = time.time()

    mcfg = cfgmod.replace_path(cfgmod.TINY, "loss.number_label_sigma", args.number_sigma)
    # all at once, then checked: some fields go together (av_match=false with loss.lambda_match=0)
    data = cfgmod.to_dict(mcfg)
    for item in args.set:
        k, v = item.split("=", 1)
        *parents, leaf = k.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[leaf] = parse_value(v)
    mcfg = cfgmod.from_dict(cfgmod.ModelConfig, data)
    model = build_model(mcfg, pretrained=False, seed=args.seed)
    pp = SamplePreprocessor(mcfg, model.tokenizer)

    train_world = dataclasses.replace(
        WORLD_PRESETS["easy"], task_weights=parse_weights(args.task_weights), **json.loads(args.world)
    )
    test_world = dataclasses.replace(
        WORLD_PRESETS["easy"], min_objects=2, task_weights={"arig": 1.0, "avfact": 2.0}
    )
    # The cache depends on the frozen encoders (image/audio config + seed) and on the data.
    enc_key = json.dumps(
        [cfgmod.to_dict(mcfg.image), cfgmod.to_dict(mcfg.audio), args.seed, CACHE_VERSION], sort_keys=True
    )
    cache = Path(args.cache) if args.cache else None

    def key(*parts) -> str:
        return hashlib.sha1(json.dumps([enc_key, *parts], sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]

    train_rows = load_or_prepare(
        cache / f"train-{key(repr(train_world), args.train_scenes, args.data_seed)}.pt" if cache else None,
        lambda: prepare(
            iter_samples(train_world, "train", args.train_scenes, args.data_seed),
            model,
            pp,
            with_answer=True,
            log_prefix="train",
        ),
    )
    test_samples = list(iter_samples(test_world, "test", args.test_scenes, args.data_seed))
    test_rows = load_or_prepare(
        cache / f"test-{key(repr(test_world), args.test_scenes, args.data_seed)}.pt" if cache else None,
        lambda: prepare(test_samples, model, pp, with_answer=False, log_prefix="test"),
    )
    base = baselines(test_samples)
    t_prep = time.time() - t_start

    # Pass-through encoders: the rows already hold their outputs.
    model.image_encoder = PassThrough()
    model.audio_encoder = PassThrough()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    pad = model.tokenizer.pad_token_id
    counts = {t: sum(r["meta"]["task"] == t for r in train_rows) for t in TASKS}
    print(f"train rows by task {counts}; trainable params {sum(p.numel() for p in params):,}", flush=True)
    print(
        f"config: tiny + loss.number_label_sigma={args.number_sigma} {' '.join(args.set)}  lr {args.lr} "
        f"batch {args.batch} bf16 {args.bf16} seed {args.seed}",
        flush=True,
    )

    by_task = {t: [r for r in train_rows if r["meta"]["task"] == t] for t in TASKS}
    mix = {t: w for t, w in parse_weights(args.mix).items() if w > 0} if args.mix else {}
    if any(not by_task[t] for t in mix):
        raise SystemExit(f"--mix names a task without training rows: {mix}")
    budget = args.minutes * 60
    interim_rows = test_rows[: 3 * args.interim_test_scenes]
    rng = random.Random(args.seed)
    step, t_train, t_eval_total = 0, time.time(), 0.0
    next_eval = args.eval_every * 60 if args.eval_every else math.inf
    ema: dict[str, float] = {}
    # The schedule is set by the time budget: progress = elapsed / budget (or steps / max_steps).
    while True:
        elapsed = time.time() - t_train - t_eval_total
        progress = max(elapsed / budget if budget > 0 else 1.0, step / args.max_steps)
        if progress >= 1.0:
            break
        warm = min(1.0, (step + 1) / max(args.warmup, 1))
        cos = args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        for g in opt.param_groups:
            g["lr"] = args.lr * warm * cos
        if mix:
            picks = rng.choices(list(mix), weights=list(mix.values()), k=args.batch)
            batch = collate([rng.choice(by_task[t]) for t in picks], pad)
        else:
            batch = collate(rng.sample(train_rows, args.batch), pad)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            out = model(batch)
        out["loss"].backward()
        gn = torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        for k in ("loss", "loss_ce", "loss_ot", "loss_ac", "loss_match"):
            if k not in out:
                continue
            ema[k] = 0.95 * ema.get(k, float(out[k])) + 0.05 * float(out[k])
        if step % 100 == 0:
            print(
                f"step {step:5d} {elapsed / 60:5.2f}min lr {opt.param_groups[0]['lr']:.2e} gn {float(gn):.2f} "
                + " ".join(f"{k} {v:.3f}" for k, v in ema.items()),
                flush=True,
            )
        if elapsed >= next_eval:
            t0 = time.time()
            m = evaluate(model, interim_rows, bf16=args.bf16)
            print(
                f"  interim @ {step}: miou {m['arig_miou']:.3f} sounding {m['arig_sounding_rate']:.2f} "
                f"nearest {m['arig_nearest_obj_iou']:.3f} map {m['map_on_sounding']:.2f}/{m['map_mass_in_box']:.2f}/{m['map_box_miou']:.2f} fact {m['avfact_acc']:.3f} {m['avfact_by_type']} "
                f"T-rate {m['avfact_true_rate']:.2f} {m['examples'][:2]}\n  region {m['avfact_region']}",
                flush=True,
            )
            t_eval_total += time.time() - t0
            next_eval += args.eval_every * 60
    train_s = time.time() - t_train - t_eval_total
    t0 = time.time()
    metrics = evaluate(model, test_rows, bf16=args.bf16)
    eval_s = time.time() - t0
    result = {
        "config": args.label or " ".join(args.set) or "full",
        "steps": step,
        "train_min": train_s / 60,
        "prep_s": t_prep,
        "eval_s": eval_s,
        "wall_min": (time.time() - t_start) / 60,
        **{k: v for k, v in metrics.items()},
        "random_object_miou": base["arig_random_object_miou"],
        "mean_box_miou": base["arig_mean_box_miou"],
        "majority_acc": base["avfact_majority_acc"],
        "final_losses": ema,
        "args": vars(args),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "args"}, indent=1), flush=True)
    print_table([result])
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=1))
        torch.save(evaluate.last_maps, Path(args.json_out).with_suffix(".maps.pt"))
    return result


def print_table(results: list[dict]) -> None:
    head = (
        "config",
        "seed",
        "steps",
        "train min",
        "wall min",
        "arig mIoU",
        "on sounding",
        "rand-obj",
        "mean-box",
        "map-box mIoU",
        "avfact acc",
        "avfact by type 1/2/3/4",
        "majority",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        types = "/".join(f"{v:.2f}" for _, v in sorted(r["avfact_by_type"].items()))
        print(
            "| "
            + " | ".join(
                [
                    r["config"],
                    str(r["args"]["seed"]),
                    str(r["steps"]),
                    f"{r['train_min']:.1f}",
                    f"{r['wall_min']:.1f}",
                    f"{r['arig_miou']:.3f}",
                    f"{r['arig_sounding_rate']:.3f}",
                    f"{r['random_object_miou']:.3f}",
                    f"{r['mean_box_miou']:.3f}",
                    f"{r['map_box_miou']:.3f}",
                    f"{r['avfact_acc']:.3f}",
                    types,
                    f"{r['majority_acc']:.3f}",
                ]
            )
            + " |"
        )


if __name__ == "__main__":
    main()
