"""Ablations on the procedural world: train and evaluate each variant, then compare them from MLflow.

    ray job submit -- python -m pipelines.ablate data=s3://meerkat/avfit [steps=300] \\
        ['variants=[full, no_ot, no_ac, lora4, lora16, full_ft, tasks_arig, tasks_arig_igatl]'] \\
        [ablation=<id of an earlier ablation, to add these variants to it>] \\
        ['data_variants={<name>: <AVFIT root to train that variant on>}']

The job is :func:`run` of an :class:`AblateConfig` (``pipelines/configs/ablate.yaml`` and dotted
overrides, as every job). :data:`VARIANTS` is the one list of the variants: each is the training
config ``train_config`` (``pipelines/configs/tiny.yaml``) with its dotted overrides applied.

* Table 7, multi-task: ``tasks_arig``, ``tasks_arig_igatl``, ``tasks_arig_igatl_avfact``,
  ``tasks_no_avc`` and ``full`` (all five tasks);
* the alignment losses: ``no_ot`` (λ_OT = 0), ``no_ac`` (λ_AC = 0), ``no_ot_no_ac``;
* ``no_regions``: boxes and windows written in prompts reach the LLM as text only
  (``model.region_prompts = false``, as in the paper);
* ``no_time_stamps``: audio tokens without the time tokens' embeddings, and the time tokens' rows
  with the plain harmonics (``model.audio_time_stamps = false``, as in the paper); ``no_time_map``:
  no time map (``model.audio_time_map = false``, as in the paper); ``no_time``: neither;
* ``no_av_match``: audio tokens without how well the picture matches the sound, and no match
  loss (``model.av_match = false``, ``model.loss.lambda_match = 0``, as in the paper;
  :mod:`meerkat_core.correspondence`); ``no_match_loss``: the match features without the loss
  that sees mismatched pairs (``model.loss.lambda_match = 0``);
* data ablations (``data_variants``): ``full``'s recipe trained on another AVFIT root's train split,
  e.g. the procedural world built with one of its knobs set otherwise, evaluated on ``data``'s test
  split beside the rest;
* Fig. 4, LLM fine-tuning: ``lora4``, ``lora16``, ``lora32`` (``full`` uses the tiny preset's rank)
  and ``full_ft`` (the whole LLM trained, ``lora.r = 0``).

Each variant is a training run (``pipelines.train.run``) and an evaluation run
(``pipelines.evaluate.run``) in MLflow, both tagged ``meerkat.ablation=<id>`` and
``meerkat.variant=<name>``; the evaluation reads the model the training registered. At the end the
side-by-side table is read back from MLflow (the same as ``meerkat compare --ablation <id>``).
"""

from __future__ import annotations

import fnmatch
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipelines.config import CONFIG_DIR

if TYPE_CHECKING:
    from pipelines.evaluate import EvaluateConfig
    from pipelines.train import TrainJobConfig

VARIANTS: dict[str, tuple[str, ...]] = {
    "full": (),
    "no_ot": ("model.loss.lambda_ot=0.0",),
    "no_ac": ("model.loss.lambda_ac=0.0",),
    "no_ot_no_ac": ("model.loss.lambda_ot=0.0", "model.loss.lambda_ac=0.0"),
    "no_regions": ("model.region_prompts=false",),
    "no_time_stamps": ("model.audio_time_stamps=false",),
    "no_time_map": ("model.audio_time_map=false",),
    "no_time": ("model.audio_time_stamps=false", "model.audio_time_map=false"),
    "no_av_match": ("model.av_match=false", "model.loss.lambda_match=0.0"),
    "no_match_loss": ("model.loss.lambda_match=0.0",),
    "no_map_tokens": ("model.avace.map_tokens=false",),
    "no_map_box_tokens": ("model.avace.map_box_tokens=false",),
    "paper_avace": ("model.avace.map_tokens=false", "model.avace.map_box_tokens=false"),
    "tasks_arig": ("data.tasks=[arig]", "data.task_weights={}"),
    "tasks_arig_igatl": ("data.tasks=[arig, igatl]", "data.task_weights={}"),
    "tasks_arig_igatl_avfact": ("data.tasks=[arig, igatl, avfact]", "data.task_weights={}"),
    "tasks_no_avc": ("data.tasks=[arig, igatl, avfact, avqa]", "data.task_weights={}"),
    "lora4": ("model.lora.r=4", "model.lora.alpha=8"),
    "lora16": ("model.lora.r=16", "model.lora.alpha=32"),
    "lora32": ("model.lora.r=32", "model.lora.alpha=64"),
    "full_ft": ("model.lora.r=0", "model.lora.modules_to_save=[]"),
}


@dataclass(frozen=True)
class AblateConfig:
    """The ablation job (``pipelines/configs/ablate.yaml``)."""

    data: str = ""
    """AVFIT root with ``train/`` and ``test/`` splits (``s3://meerkat/avfit``)."""
    variants: tuple[str, ...] = tuple(VARIANTS)
    """Names of :data:`VARIANTS` to run, in order."""
    steps: int = 300
    """Optimizer steps of each variant's training (``optim.max_steps``)."""
    eval_samples: int | None = None
    """Held-out samples each variant is evaluated on, at most (``None``: the whole test split)."""
    train_config: str = str(CONFIG_DIR / "tiny.yaml")
    """The training config every variant starts from."""
    storage_uri: str = "data/runs"
    """Where the variants' checkpoints go (``storage_uri`` of each training run)."""
    experiment: str = "meerkat"
    ablation: str | None = None
    """An earlier ablation's id to add these variants to (its table then lists every variant
    evaluated under that id, read from MLflow); ``None``: a new id."""
    eval: dict[str, Any] = field(default_factory=dict)
    """Further fields of each variant's ``EvaluateConfig`` (``eval.actors=2``)."""
    data_variants: dict[str, str] = field(default_factory=dict)
    """Data ablations, run after ``variants``: a variant name -> an AVFIT root whose ``train/`` split
    that variant trains on, with the training config of ``full``; evaluated on ``data``'s test split
    like every variant. For a change to the data itself, e.g. the procedural world built with one
    knob set otherwise: ``'data_variants={whose_off: s3://meerkat/avfit-plain}'``."""

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown ablation variant(s) {unknown}; known: {list(VARIANTS)}")
        taken = sorted(set(self.data_variants) & set(VARIANTS))
        if taken:
            raise ValueError(f"data variant name(s) {taken} are config variants' names; pick others")
        empty = sorted(name for name, root in self.data_variants.items() if not root)
        if empty:
            raise ValueError(f"data variant(s) {empty} name no AVFIT root")

    @property
    def all_variants(self) -> tuple[str, ...]:
        """The config variants, then the data variants: the order they run in."""
        return (*self.variants, *self.data_variants)


def new_ablation_id() -> str:
    return f"abl-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def variant_train_config(cfg: AblateConfig, ablation: str, variant: str) -> TrainJobConfig:
    """The training config of one variant: ``train_config``, the job's settings, the variant's
    overrides; run and registered model named ``<ablation>-<variant>``, tagged with both."""
    from pipelines import train
    from pipelines.config import load_config

    name = f"{ablation}-{variant}"
    root = cfg.data_variants.get(variant, cfg.data)
    overrides = VARIANTS["full" if variant in cfg.data_variants else variant]
    return load_config(
        train.TrainJobConfig,
        cfg.train_config,
        [
            f"name={name}",
            f"data.uri={root}/train",
            f"storage_uri={cfg.storage_uri}",
            f"optim.max_steps={cfg.steps}",
            f"mlflow.register_as={name}",
            f"mlflow.experiment={cfg.experiment}",
            f"mlflow.tags={{meerkat.ablation: {ablation}, meerkat.variant: {variant}}}",
            *overrides,
        ],
    )


def variant_eval_config(cfg: AblateConfig, ablation: str, variant: str, model_ref: str) -> EvaluateConfig:
    """The evaluation config of one variant's registered model on the test split, tagged as its training."""
    from meerkat_core.config import from_dict
    from pipelines import evaluate

    return from_dict(
        evaluate.EvaluateConfig,
        {
            **cfg.eval,
            "model": model_ref,
            "data": f"{cfg.data}/test",
            "max_samples": cfg.eval_samples,
            "experiment": cfg.experiment,
            "run_name": f"eval {ablation}-{variant}",
            "tags": {"meerkat.ablation": ablation, "meerkat.variant": variant},
        },
    )


# The metrics a comparison shows by default, per task (whichever datasets the runs were evaluated
# on); ``meerkat compare --metrics`` picks others. Names as ``pipelines.evaluate`` logs them.
COMPARE_METRICS: dict[str, tuple[str, ...]] = {
    "arig": ("ciou", "auc", "box_mean_iou", "sounding_rate"),
    "igatl": ("f1", "event_f1"),
    "avfact": ("accuracy", "f1"),
    "avqa": ("accuracy",),
    "avc": ("cider",),
}


def _split_key(key: str) -> tuple[str, str, str | None, str] | None:
    """``eval/<task>/<dataset>[/<baseline>]/<metric>`` -> (task, dataset, baseline or None, metric)."""
    parts = key.split("/")
    if len(parts) < 4 or parts[0] != "eval" or parts[1] == "skipped":
        return None
    task, dataset, rest = parts[1], parts[2], parts[3:]
    if rest[0].startswith("baseline_"):
        return (task, dataset, rest[0], "/".join(rest[1:])) if len(rest) > 1 else None
    return task, dataset, None, "/".join(rest)


def compare_table(
    runs: Sequence[tuple[str, Mapping[str, float]]],
    patterns: Sequence[str] | None = None,
    *,
    protocols: Sequence[str] | None = None,
) -> str:
    """A markdown table of evaluation runs ``(name, MLflow metrics)``: one row per run, one column per
    (task, dataset, metric) that any run holds, then the first run's baselines on those columns.

    Columns: the ``COMPARE_METRICS`` of each task, for every dataset found; with ``patterns``, every
    ``<task>/<dataset>/<metric>`` matching one of them (``fnmatch``: ``"arig/*/mean_ciou"``, ``"*"``).
    ``protocols``: each run's ``metrics.protocol_version`` (``pipelines.evaluate``), shown beside its
    name; runs of different versions are refused (``ValueError``), since a key such as
    ``igatl/llp/f1`` does not mean the same number in both.
    """
    if protocols is not None:
        if len(protocols) != len(runs):
            raise ValueError(f"{len(protocols)} protocol versions for {len(runs)} runs")
        if len(set(protocols)) > 1:
            by_version: dict[str, list[str]] = {}
            for (name, _), version in zip(runs, protocols, strict=True):
                by_version.setdefault(version, []).append(name)
            listed = "; ".join(f"version {v}: {', '.join(names)}" for v, names in sorted(by_version.items()))
            raise ValueError(
                "these runs hold metrics of different protocol versions (metrics.protocol_version; "
                f"{listed}): the same key means a different number in each (see "
                "pipelines.evaluate.METRICS_PROTOCOL_VERSION); compare runs of one version (--runs) "
                "or re-evaluate the older models"
            )
    columns: set[tuple[str, str, str]] = set()
    for _, values in runs:
        for key in values:
            split = _split_key(key)
            if split is None or split[2] is not None:
                continue
            task, dataset, _, metric = split
            name = f"{task}/{dataset}/{metric}"
            wanted = (
                any(fnmatch.fnmatchcase(name, p) for p in patterns)
                if patterns
                else metric in COMPARE_METRICS.get(task, ())
            )
            if wanted:
                columns.add((task, dataset, metric))
    if not columns:
        return (
            "no evaluation metrics" + (f" matching {list(patterns)}" if patterns else "") + " in these runs"
        )
    order = {task: i for i, task in enumerate(COMPARE_METRICS)}
    ordered = sorted(
        columns,
        key=lambda c: (
            order.get(c[0], len(order)),
            c[0],
            c[1],
            COMPARE_METRICS.get(c[0], ()).index(c[2]) if c[2] in COMPARE_METRICS.get(c[0], ()) else 99,
            c[2],
        ),
    )

    def cell(values: Mapping[str, float], key: str) -> str:
        return f"{values[key]:.3f}" if key in values else "–"

    lead = ["variant", "protocol"] if protocols is not None else ["variant"]
    header = [*lead, *(f"{t} {d} {m}" for t, d, m in ordered)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, (name, values) in enumerate(runs):
        first_cells = [name] if protocols is None else [name, protocols[i]]
        cells = [*first_cells, *(cell(values, f"eval/{t}/{d}/{m}") for t, d, m in ordered)]
        lines.append("| " + " | ".join(cells) + " |")
    if runs:
        first = runs[0][1]
        baselines = sorted({s[2] for s in map(_split_key, first) if s is not None and s[2] is not None})
        for baseline in baselines:
            cells = [cell(first, f"eval/{t}/{d}/{baseline}/{m}") for t, d, m in ordered]
            if any(c != "–" for c in cells):
                label = baseline.removeprefix("baseline_").replace("_", " ")
                lead_cells = [f"baseline: {label}"] + ([protocols[0]] if protocols is not None else [])
                lines.append("| " + " | ".join([*lead_cells, *cells]) + " |")
    return "\n".join(lines)


def compare(
    ablation: str | None = None,
    experiment: str = "meerkat",
    run_ids: list[str] | None = None,
    patterns: Sequence[str] | None = None,
) -> str:
    """``compare_table`` of evaluation runs (of one ablation, or given ids), read back from MLflow,
    with each run's ``metrics.protocol_version`` ("1" for a run that does not record it, which
    predates the param); runs of different versions stop the command with a message naming them."""
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
    named = [(run.data.tags.get("meerkat.variant", run.info.run_name), run.data.metrics) for run in runs]
    protocols = [run.data.params.get("metrics.protocol_version", "1") for run in runs]
    try:
        return compare_table(named, patterns, protocols=protocols)
    except ValueError as err:
        raise SystemExit(f"meerkat compare: {err}") from None


def run(cfg: AblateConfig) -> dict[str, Any]:
    """Train and evaluate every variant on the connected Ray cluster, then compare them.

    Returns ``{"ablation", "eval_runs", "table"}``: the ablation's id, the evaluation runs' ids (in
    the variants' order) and the comparison read back from MLflow.
    """
    from pipelines import evaluate, train

    if not cfg.data:
        raise ValueError("ablate: no data (data=<AVFIT root with train/ and test/>)")
    ablation = cfg.ablation or new_ablation_id()
    variants = cfg.all_variants
    print(f"ablation {ablation}: {len(variants)} variants, {cfg.steps} steps each", flush=True)
    eval_ids = []
    for i, variant in enumerate(variants, 1):
        print(f"\n=== [{i}/{len(variants)}] {variant}", flush=True)
        train_cfg = variant_train_config(cfg, ablation, variant)
        trained = train.run(train_cfg)
        model_ref = f"models:/{train_cfg.mlflow.register_as}/{trained['registered_version']}"
        evaluated = evaluate.run(variant_eval_config(cfg, ablation, variant, model_ref))
        eval_ids.append(evaluated["eval_run_id"])
    table = compare(ablation, cfg.experiment)  # every variant evaluated under the id, earlier ones too
    print("\n" + table)
    return {"ablation": ablation, "eval_runs": eval_ids, "table": table}


def main(argv: list[str] | None = None) -> str:
    """``python -m pipelines.ablate [--config FILE] [a.b.c=value ...]`` (default: ``ablate.yaml``)."""
    from pipelines.config import from_argv
    from pipelines.raylib import init_ray

    cfg = from_argv(
        AblateConfig,
        argv,
        default_config=CONFIG_DIR / "ablate.yaml",
        description="Train and evaluate the ablation variants; compare them.",
    )
    init_ray()
    out = run(cfg)
    print(json.dumps({"ablation": out["ablation"], "eval_runs": out["eval_runs"]}))
    return out["table"]


if __name__ == "__main__":
    from pipelines.ablate import main as _main

    _main()
