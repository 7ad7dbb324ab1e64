"""Ablations on the procedural world: train and evaluate each variant, then compare them from MLflow.

    ray job submit -- python -m pipelines.ablate --data s3://meerkat/avfit [--steps 300] \\
        [--variants full no_ot no_ac lora4 lora16 full_ft tasks_arig tasks_arig_igatl ...]

Variants (all start from ``pipelines/configs/tiny.yaml``):

* Table 7, multi-task: ``tasks_arig``, ``tasks_arig_igatl``, ``tasks_arig_igatl_avfact``,
  ``tasks_no_avc`` and ``full`` (all five tasks);
* the alignment losses: ``no_ot`` (λ_OT = 0), ``no_ac`` (λ_AC = 0), ``no_ot_no_ac``;
* ``no_regions``: boxes and windows written in prompts reach the LLM as text only
  (``model.region_prompts = false``, as in the paper);
* Fig. 4, LLM fine-tuning: ``lora4``, ``lora16``, ``lora32`` (``full`` uses the tiny preset's rank)
  and ``full_ft`` (the whole LLM trained, ``lora.r = 0``).

Each variant is a training run and an evaluation run in MLflow, tagged ``meerkat.ablation=<id>``
and ``meerkat.variant=<name>``; at the end the side-by-side table is read back from MLflow
(the same as ``meerkat compare --ablation <id>``).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

VARIANTS: dict[str, list[str]] = {
    "full": [],
    "no_ot": ["model.loss.lambda_ot=0.0"],
    "no_ac": ["model.loss.lambda_ac=0.0"],
    "no_ot_no_ac": ["model.loss.lambda_ot=0.0", "model.loss.lambda_ac=0.0"],
    "no_regions": ["model.region_prompts=false"],
    "no_map_tokens": ["model.avace.map_tokens=false"],
    "no_map_box_tokens": ["model.avace.map_box_tokens=false"],
    "paper_avace": ["model.avace.map_tokens=false", "model.avace.map_box_tokens=false"],
    "tasks_arig": ["data.tasks=[arig]", "data.task_weights={}"],
    "tasks_arig_igatl": ["data.tasks=[arig, igatl]", "data.task_weights={}"],
    "tasks_arig_igatl_avfact": ["data.tasks=[arig, igatl, avfact]", "data.task_weights={}"],
    "tasks_no_avc": ["data.tasks=[arig, igatl, avfact, avqa]", "data.task_weights={}"],
    "lora4": ["model.lora.r=4", "model.lora.alpha=8"],
    "lora16": ["model.lora.r=16", "model.lora.alpha=32"],
    "lora32": ["model.lora.r=32", "model.lora.alpha=64"],
    "full_ft": ["model.lora.r=0", "model.lora.modules_to_save=[]"],
}

COMPARE_METRICS = (
    ("arig mIoU", "eval/arig/world/box_mean_iou"),
    ("arig cIoU", "eval/arig/world/ciou"),
    ("sounding", "eval/arig/world/sounding_rate"),
    ("igatl F1", "eval/igatl/world/f1"),
    ("avfact acc", "eval/avfact/world/accuracy"),
    ("avqa acc", "eval/avqa/world/accuracy"),
    ("avc CIDEr", "eval/avc/world/cider"),
)


def compare(
    ablation: str | None = None, experiment: str = "meerkat", run_ids: list[str] | None = None
) -> str:
    """A markdown table of evaluation runs (of one ablation, or given ids), read back from MLflow."""
    import mlflow

    client = mlflow.MlflowClient()
    if run_ids is None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise SystemExit(f"no MLflow experiment {experiment!r}")
        flt = "tags.`meerkat.kind` = 'evaluation'" + (
            f" and tags.`meerkat.ablation` = '{ablation}'" if ablation else ""
        )
        runs = client.search_runs([exp.experiment_id], flt, order_by=["attributes.start_time ASC"])
    else:
        runs = [client.get_run(r) for r in run_ids]
    header = "| variant | " + " | ".join(n for n, _ in COMPARE_METRICS) + " |"
    lines = [header, "|" + "---|" * (len(COMPARE_METRICS) + 1)]
    for run in runs:
        name = run.data.tags.get("meerkat.variant", run.info.run_name)
        cells = [f"{run.data.metrics[k]:.3f}" if k in run.data.metrics else "–" for _, k in COMPARE_METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if runs:
        first = runs[0].data.metrics
        base = [
            ("mean box", "eval/arig/world/baseline_mean_box/box_mean_iou"),
            ("random object", "eval/arig/world/baseline_random_object/box_mean_iou"),
        ]
        for label, key in base:
            if key in first:
                lines.append(f"| baseline: {label} | {first[key]:.3f} |" + " |" * (len(COMPARE_METRICS) - 1))
        if "eval/avfact/world/baseline_majority/accuracy" in first:
            cells = ["–"] * len(COMPARE_METRICS)
            cells[4] = f"{first['eval/avfact/world/baseline_majority/accuracy']:.3f}"
            lines.append("| baseline: majority | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    import mlflow

    from pipelines import evaluate, train
    from pipelines.config import load_config
    from pipelines.raylib import init_ray

    p = argparse.ArgumentParser(description="Train and evaluate the ablation variants; compare them.")
    p.add_argument("--data", required=True, help="AVFIT root with train/ and test/ splits")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-samples", type=int, default=None)
    p.add_argument("--storage-uri", default="data/runs")
    p.add_argument("--experiment", default="meerkat")
    args = p.parse_args(argv)
    init_ray()
    ablation = f"abl-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    print(f"ablation {ablation}: {len(args.variants)} variants, {args.steps} steps each", flush=True)
    eval_ids = []
    for i, variant in enumerate(args.variants, 1):
        print(f"\n=== [{i}/{len(args.variants)}] {variant}", flush=True)
        name = f"{ablation}-{variant}"
        cfg = load_config(
            train.TrainJobConfig,
            "pipelines/configs/tiny.yaml",
            [
                f"name={name}",
                f"data.uri={args.data}/train",
                f"storage_uri={args.storage_uri}",
                f"optim.max_steps={args.steps}",
                f"mlflow.register_as={name}",
                f"mlflow.experiment={args.experiment}",
                *VARIANTS[variant],
            ],
        )
        trained = train.run(cfg)
        mlflow.MlflowClient().set_tag(trained["mlflow_run_id"], "meerkat.ablation", ablation)
        argv_eval = [
            "--model",
            f"models:/{name}/{trained['registered_version']}",
            "--data",
            f"{args.data}/test",
            "--experiment",
            args.experiment,
            "--run-name",
            f"eval {name}",
        ]
        if args.eval_samples:
            argv_eval += ["--max-samples", str(args.eval_samples)]
        result = evaluate.main(argv_eval)
        client = mlflow.MlflowClient()
        client.set_tag(result["eval_run_id"], "meerkat.ablation", ablation)
        client.set_tag(result["eval_run_id"], "meerkat.variant", variant)
        eval_ids.append(result["eval_run_id"])
    table = compare(run_ids=eval_ids)
    print("\n" + table)
    print(json.dumps({"ablation": ablation, "eval_runs": eval_ids}))
    return table


if __name__ == "__main__":
    from pipelines.ablate import main as _main

    _main()
