"""MeerkatBench evaluation on Ray: batched generation, every metric of the paper, baselines, MLflow.

    ray job submit -- python -m pipelines.evaluate model=models:/meerkat-tiny/1 \\
        data=s3://meerkat/avfit/test ['tasks=[arig, avfact]'] [max_samples=500] [actors=2]
    # the paper's tables, on the paper's splits (VALOR-32K captions on val, the others on test):
    ... 'data=[s3://meerkat/avfit-public/test, s3://meerkat/avfit-public/val]' paper_splits=true

The job is :func:`run` of an :class:`EvaluateConfig` (``--config FILE`` and dotted overrides, as
every job: :func:`pipelines.config.from_argv`); it returns the evaluation run's id and results, and
everything it measured is in that MLflow run, where other jobs read it.

The generation budget (``max_new_tokens``) defaults to 48 new tokens, or to what the longest
captioning reference of the data takes in the model's tokenizer when that is more (a pass over the
``.json`` members of the splits whose manifest counts captions, before generation, with only the
model's tokenizer fetched), so that no reference caption is cut by the budget.

1. Ray Data streams the split's shards (:mod:`pipelines.data`) into a pool of model actors
   (:class:`Answerer`, one per GPU on a cluster, CPU here) that preprocess with the model's own
   tokenizer and generate greedily in batches; bad samples are skipped and counted.
2. The driver parses the answers and scores them per task and per source dataset with
   :mod:`meerkat_core.metrics`, next to trivial baselines scored the same way in the same run:
   the constant mean box and a random object's box (grounding), the whole clip and a random
   window (temporal), the majority class (fact-checking), the majority answer per category (QA)
   and one constant caption. On the procedural world, where every object's box is known, it also
   measures the *sounding-object rate*: how often the predicted box overlaps the sounding object
   more than any other object — the number that shows the model uses the audio.
   Metrics are the published protocols under the published names (``ciou``/``auc`` as EZ-VSL,
   Flickr-SoundNet against its annotators' consensus; ``f1``/``event_f1`` as the LLP evaluation)
   and the project's variants beside them under their own names (``mean_ciou``, ``box_mean_iou``,
   ``micro_f1``, ``greedy_event_f1``); see :mod:`meerkat_core.metrics`.
3. MLflow: an evaluation run nested under the model's training run (``mlflow.parentRunId``), with
   the record behind its scores as params (``run_record``: each split's manifest URI, fingerprint
   and counts, the decoding settings, the prompt templates' version, the box convention and the
   code version, and ``metrics.protocol_version``: what the metric keys mean), metrics
   ``eval/<task>/<dataset>/<metric>`` (baselines under ``.../baseline_<name>/...``), tags
   ``meerkat.kind=evaluation``, ``meerkat.model_ref`` and the config's ``tags``, and artefacts:
   ``results.md`` (tables laid out like the paper's, with its numbers as reference rows),
   ``baselines.md`` (the model against its trivial baselines, per task and dataset),
   ``results.json``, the success-rate curve, boxes and AVACE attention on sample images, time
   windows on waveforms, and every prediction as a table.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from meerkat_core import generation, grounding, metrics

logger = logging.getLogger("pipelines.evaluate")

# Generation budget when no caption needs more (every other answer is a box, a few segments, a
# verdict or a short phrase): the model's own default.
DEFAULT_MAX_NEW_TOKENS = generation.DEFAULT_MAX_NEW_TOKENS

# What the metric keys mean. Logged with every evaluation run as the param ``metrics.protocol_version``
# so that ``meerkat compare`` never puts two meanings in one column (``pipelines.ablate``). "1": runs
# that do not record it, from before the published protocols (``igatl/*/f1`` micro-pooled over all
# one-second bins, ``event_f1`` greedy-matched; Flickr-SoundNet against the union of the annotators'
# boxes). "2": ``f1``/``event_f1`` as the LLP evaluation (per class, per video, averaged over videos),
# the old numbers under ``micro_f1``/``greedy_event_f1``; Flickr-SoundNet against the consensus map.
METRICS_PROTOCOL_VERSION = "2"

BASELINES_ARTIFACT = "baselines.md"
"""The evaluation run's artefact with the model against its trivial baselines (what the job prints)."""


@dataclass(frozen=True)
class EvaluateConfig:
    """What :func:`run` evaluates, on what, and how (``pipelines/configs/evaluate.yaml``)."""

    model: str = ""
    """``models:/<name>/<version>`` (or ``@alias``), ``runs:/<id>/model``, an S3 checkpoint or a
    local model directory."""
    data: str | tuple[str, ...] = ()
    """Shard directories (with ``manifest.json``) of one split or several (e.g. ``test`` and ``val``)."""
    paper_splits: bool = False
    """Keep each source's split the paper reports (VALOR-32K val, AVQA val, the others test)."""
    tasks: tuple[str, ...] | None = None
    """Tasks to evaluate; ``None``: every task in the data."""
    max_samples: int | None = None
    """Samples of the asked ``tasks`` to evaluate, at most (the first read); ``None``: all."""
    actors: int = 1
    """Model actors generating in parallel (one per GPU on a cluster)."""
    batch_size: int = 8
    max_new_tokens: int | None = None
    """Generation budget; ``None``: the default, or more when the longest caption reference needs it."""
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    experiment: str = "meerkat"
    run_name: str | None = None
    """The MLflow run's name; ``None``: ``eval <model>``."""
    tags: dict[str, str] = field(default_factory=dict)
    """Further MLflow tags of the evaluation run (the ablation tags its runs with its id and variant)."""
    seed: int = 0

    @property
    def data_uris(self) -> list[str]:
        return [self.data] if isinstance(self.data, str) else list(self.data)

    def check(self) -> None:
        """ValueError unless a model and at least one split are named."""
        if not self.model:
            raise ValueError(
                "evaluate: no model (model=models:/<name>/<version>, a checkpoint or a directory)"
            )
        if not self.data_uris:
            raise ValueError("evaluate: no data (data=<split directory> or 'data=[<split>, <split>]')")


class Answerer:
    """``map_batches`` actor: raw shard members -> the model's answers (and its AVACE map)."""

    def __init__(
        self,
        model_ref: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        tracking_uri: str | None = None,
    ) -> None:
        import mlflow
        import ray
        import torch

        from meerkat_core.batching import SamplePreprocessor
        from pipelines import registry

        if tracking_uri:  # the driver's MLflow, whatever environment this actor's node started with
            mlflow.set_tracking_uri(tracking_uri)

        # The device this actor holds: Ray sets CUDA_VISIBLE_DEVICES to the GPUs it assigned, so the
        # actor's GPU is "cuda" (its first visible device); no GPU from Ray means CPU, whatever the
        # node has.
        gpus = ray.get_gpu_ids() if ray.is_initialized() else []
        if gpus and not torch.cuda.is_available():
            raise RuntimeError(
                f"Ray gave this actor GPU(s) {gpus}, but torch {torch.__version__} cannot use CUDA"
            )
        self.device = torch.device("cuda" if gpus else "cpu")
        self.model = registry.load(model_ref, device=str(self.device))
        self.prep = SamplePreprocessor(self.model.config, self.model.tokenizer)
        self.max_new_tokens = max_new_tokens

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Decode each sample (:func:`pipelines.avfit.sample.decode_sample`: a damaged one is skipped
        and counted by reason), then generate the kept ones' answers in one batch."""
        from pipelines.avfit.sample import CorruptSample, count_skip, decode_sample
        from pipelines.data import report_skips

        counts: Counter[str] = Counter()
        rows, keys, metas = [], [], []
        for key, jpg, flac, raw in zip(
            batch["__key__"], batch["jpg"], batch["flac"], batch["json"], strict=True
        ):
            try:
                decoded = decode_sample({"jpg": jpg, "flac": flac, "json": raw}, self.prep, with_answer=False)
            except CorruptSample as exc:
                count_skip(counts, key, exc)
                continue
            assert decoded is not None  # no ``wanted``: every sample decodes or raises
            meta, row = decoded
            rows.append(row)
            keys.append(key)
            metas.append(meta)
        report_skips(counts)
        if not rows:
            return {}
        texts, attn = generation.generate_answers(
            self.model, rows, max_new_tokens=self.max_new_tokens, device=self.device, return_attention=True
        )
        return {
            "__key__": np.asarray(keys),
            "task": np.asarray([m["task"] for m in metas]),
            "meta": np.asarray([json.dumps(m) for m in metas]),
            "prediction": np.asarray(texts),
            "attn": attn.float().cpu().numpy(),
        }


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def _sounding_rate(preds: Sequence[str], metas: Sequence[dict]) -> float | None:
    """Among samples with >= 2 objects: how often the box overlaps the sounding object most."""
    hits = []
    for pred, meta in zip(preds, metas, strict=True):
        objects = meta.get("objects") or []
        if len(objects) < 2 or not any(o.get("sounds") for o in objects):
            continue
        box = grounding.parse_box(pred) if isinstance(pred, str) else pred
        if box is None:
            hits.append(False)
            continue
        sounding = max(grounding.box_iou(box, o["box"]) for o in objects if o.get("sounds"))
        other = max((grounding.box_iou(box, o["box"]) for o in objects if not o.get("sounds")), default=0.0)
        hits.append(sounding > other)
    return float(np.mean(hits)) if hits else None


def arig_ground_truth(meta: dict) -> list:
    """The ground truth a grounding sample is scored against: its per-annotator box lists when the
    converter kept annotators apart (Flickr-SoundNet's consensus map, see ``metrics``), else its
    boxes (their union)."""
    return meta.get("annotator_boxes") or meta["boxes"]


def _arig(preds: list, metas: list[dict], rng: random.Random) -> dict[str, dict]:
    gts = [arig_ground_truth(m) for m in metas]

    def score(p: list) -> dict:
        out = {
            **metrics.localization_scores(p, gts),
            **{f"box_{k}": v for k, v in metrics.mean_box_iou(p, gts).items()},
        }
        rate = _sounding_rate(p, metas)
        if rate is not None:
            out["sounding_rate"] = rate
        return out

    mean_box = metrics.constant_box_baseline(gts)
    result = {"model": score(preds), "baseline_mean_box": score([mean_box] * len(metas))}
    if all(m.get("objects") for m in metas):
        result["baseline_random_object"] = score([rng.choice(m["objects"])["box"] for m in metas])
    return result


def _igatl(preds: list, metas: list[dict], rng: random.Random) -> dict[str, dict]:
    gts = [m["segments"] for m in metas]
    durations = [float(m["duration"]) for m in metas]

    # Rows of one clip are its event classes (LLP: one sample per heard-and-seen class); a row
    # without a clip id is a video of its own.
    videos = [m.get("clip_id") or ("row", i) for i, m in enumerate(metas)]

    def score(p: list) -> dict:
        published = metrics.avvp_f1(p, gts, durations, videos)
        micro = metrics.segment_f1(p, gts, durations)
        greedy = metrics.event_f1(p, gts)
        return {
            # The published protocol under the published names (Table 4 reports "f1").
            "f1": published["segment_f1"],
            "event_f1": published["event_f1"],
            "n": published["n"],
            "n_videos": published["n_videos"],
            "n_unparsed": published["n_unparsed"],
            # The project's variants under their own names.
            **{f"micro_{k}": micro[k] for k in ("f1", "precision", "recall", "tp", "fp", "fn")},
            **{f"greedy_event_{k}": greedy[k] for k in ("f1", "precision", "recall")},
        }

    return {
        "model": score(preds),
        "baseline_whole_clip": score([[metrics.whole_clip_segment(d)] for d in durations]),
        "baseline_random_window": score([[metrics.random_segment(d, rng)] for d in durations]),
    }


def _avfact(preds: list, metas: list[dict], rng: random.Random) -> dict[str, dict]:
    labels = [bool(m["label"]) for m in metas]
    types = [int(m["fact_type"]) for m in metas]
    majority = metrics.majority_baseline(labels)
    return {
        "model": metrics.factcheck_scores(preds, labels, types),
        "baseline_majority": metrics.factcheck_scores([majority] * len(labels), labels, types),
    }


def _avqa(preds: list, metas: list[dict], rng: random.Random) -> dict[str, dict]:
    answers = [m["answer"] for m in metas]
    cats = [m["qa_category"] for m in metas]
    per_cat = {
        c: metrics.majority_baseline([a for a, k in zip(answers, cats, strict=True) if k == c])
        for c in set(cats)
    }
    return {
        "model": metrics.avqa_accuracy(preds, answers, cats),
        "baseline_majority": metrics.avqa_accuracy([per_cat[c] for c in cats], answers, cats),
    }


def _avc(preds: list, metas: list[dict], rng: random.Random) -> dict[str, dict]:
    refs = [m["references"] for m in metas]
    constant = metrics.majority_baseline([r[0] for r in refs])
    return {
        "model": metrics.caption_scores(preds, refs),
        "baseline_constant": metrics.caption_scores([constant] * len(refs), refs),
    }


SCORERS = {"arig": _arig, "igatl": _igatl, "avfact": _avfact, "avqa": _avqa, "avc": _avc}


def score(predictions: Sequence[dict], *, seed: int = 0) -> dict[str, dict[str, dict[str, dict]]]:
    """``results[task][dataset][model | baseline_*] = metrics`` from rows with ``prediction`` and ``meta``."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in predictions:
        groups[(row["meta"]["task"], row["meta"]["source"])].append(row)
    results: dict[str, dict[str, dict[str, dict]]] = defaultdict(dict)
    for (task, dataset), rows in sorted(groups.items()):
        rng = random.Random(f"{seed}/{task}/{dataset}")
        results[task][dataset] = SCORERS[task](
            [r["prediction"] for r in rows], [r["meta"] for r in rows], rng
        )
        # Which split the numbers come from, for the tables' comparison with the paper's.
        results[task][dataset]["model"]["splits"] = sorted({str(r["meta"].get("split")) for r in rows})
    return dict(results)


def flatten_metrics(results: dict) -> dict[str, float]:
    """``eval/<task>/<dataset>/<metric>`` (model) and ``eval/<task>/<dataset>/<baseline>/<metric>``."""
    out: dict[str, float] = {}

    def put(prefix: str, values: dict) -> None:
        for k, v in values.items():
            if isinstance(v, dict):
                put(f"{prefix}/{'type' if isinstance(k, int) else ''}{k}", v)
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
                out[f"{prefix}/{k}"] = float(v)

    for task, datasets in results.items():
        for dataset, variants in datasets.items():
            for variant, values in variants.items():
                put(f"eval/{task}/{dataset}" + ("" if variant == "model" else f"/{variant}"), values)
    return out


# --------------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------------


def selected(
    raw_json: bytes | str | None,
    *,
    paper_splits: dict[str, str] | None = None,
    tasks: frozenset[str] | None = None,
) -> bool:
    """Whether a sample's ``json`` member is one to evaluate, parsed once: of the split the paper
    reports for its source (``paper_splits``: ``report.PAPER_SPLITS``; other sources, such as the
    world, are kept) and of one of ``tasks``. One that does not parse is kept, for the Answerer to
    count as bad."""
    if raw_json is None:
        return True
    try:
        meta = json.loads(raw_json)
        split = meta.get("split")
        if paper_splits is not None and split != paper_splits.get(meta.get("source"), split):
            return False
        task = meta.get("task")
    except (ValueError, AttributeError, TypeError):
        return True
    return tasks is None or not isinstance(task, str) or task in tasks


def _read(data_uris: Sequence[str], paper_splits: bool, tasks: Sequence[str] | None = None) -> Any:
    """One Ray dataset of the raw samples of every split directory in ``data_uris`` that
    :func:`selected` keeps: the paper's splits with ``paper_splits``, ``tasks`` only when given (the
    one place tasks are chosen, before any sample limit, so the limit counts evaluated samples)."""
    from pipelines.data import read_samples

    datasets = [read_samples(uri) for uri in data_uris]
    ds = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
    splits, wanted = None, frozenset(tasks) if tasks else None
    if paper_splits:
        from pipelines.report import PAPER_SPLITS

        splits = dict(PAPER_SPLITS)  # captured, so the workers need not import the report module
    if splits is not None or wanted is not None:
        ds = ds.filter(lambda row: selected(row.get("json"), paper_splits=splits, tasks=wanted))
    return ds


def caption_budget(references: Sequence[str], tokenizer: Any, floor: int = 48) -> int:
    """New tokens that fit the longest reference caption as the model was trained to write it
    (``prompts.chat_target(reference)`` and EOS), and at least ``floor``."""
    from meerkat_core.prompts import chat_target

    longest = max(
        (len(tokenizer(chat_target(ref), add_special_tokens=False)["input_ids"]) for ref in references),
        default=0,
    )
    return max(floor, longest + 1)


def caption_splits(data_uris: Sequence[str]) -> list[str]:
    """The split directories whose manifest counts captioning samples (``counts.task.avc``)."""
    from pipelines.avfit.shards import read_manifest

    return [uri for uri in data_uris if (read_manifest(uri).get("counts") or {}).get("task", {}).get("avc")]


def iter_json_members(shard_uri: str) -> Iterator[bytes]:
    """The ``.json`` members of one shard: the media members are passed over, never decoded.

    The shard is fetched in one read (shards are size-capped) and walked in memory: a tar streamed
    from S3 in tarfile's small records would cost one request per record.
    """
    import io
    import tarfile

    from pipelines import storage

    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(shard_uri)), mode="r:") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".json"):
                yield tar.extractfile(member).read()


def measure_caption_budget(
    model_ref: str, data_uris: Sequence[str], *, paper_splits: bool, floor: int = 48
) -> tuple[int, int]:
    """``(budget, n_references)``: ``caption_budget`` over the captioning references of the data,
    with the model's own tokenizer (``registry.fetch_tokenizer``: not the whole model).

    Only the splits whose manifest counts captions are read, and of those only the ``.json``
    members (``iter_json_members``), in this process; with ``paper_splits`` a caption outside its
    source's paper split does not count, as it is not evaluated.
    """
    import shutil
    import tempfile

    from transformers import AutoTokenizer

    from pipelines import registry
    from pipelines.avfit.shards import shard_uris
    from pipelines.report import PAPER_SPLITS

    splits = dict(PAPER_SPLITS)
    references: list[str] = []
    for uri in caption_splits(data_uris):
        for shard in shard_uris(uri):
            for raw in iter_json_members(shard):
                if paper_splits and not selected(raw, paper_splits=splits):
                    continue
                try:
                    meta = json.loads(raw)
                except ValueError:
                    continue  # counted as bad_json by the Answerer
                if isinstance(meta, dict) and meta.get("task") == "avc":
                    references += list(meta.get("references") or [meta.get("answer", "")])
    if not references:
        return floor, 0
    scratch = tempfile.mkdtemp(prefix="meerkat-tokenizer-")
    try:
        tokenizer = AutoTokenizer.from_pretrained(registry.fetch_tokenizer(model_ref, scratch))
        return caption_budget(references, tokenizer, floor), len(references)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def predict(
    model_ref: str,
    data_uri: str | Sequence[str],
    *,
    tasks: Sequence[str] | None,
    max_samples: int | None,
    actors: int,
    batch_size: int,
    max_new_tokens: int,
    cpus_per_actor: float,
    gpus_per_actor: float,
    paper_splits: bool = False,
) -> list[dict]:
    """Every (kept) sample of the split(s) with the model's answer, through a pool of model actors.

    ``data_uri``: one split directory or several (e.g. ``test`` and ``val`` for the paper's
    tables); ``paper_splits`` keeps only each source's split the paper reports.
    """
    import mlflow
    import ray.data

    from pipelines.data import skip_counter

    skip_counter()
    data_uris = [data_uri] if isinstance(data_uri, str) else list(data_uri)
    ds = _read(data_uris, paper_splits, tasks)
    if max_samples:
        ds = ds.limit(max_samples)
    ds = ds.map_batches(
        Answerer,
        fn_constructor_args=(model_ref, max_new_tokens, mlflow.get_tracking_uri()),
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,
    )
    rows = []
    for row in ds.iter_rows():
        rows.append(
            {
                "key": row["__key__"],
                "prediction": row["prediction"],
                "meta": json.loads(row["meta"]),
                "attn": row["attn"],
            }
        )
    return rows


def prompt_templates_version() -> str:
    """A short hash of everything that shapes a prompt or a target: the instruction templates, the
    chat format around them, the answer format and the verdict words (``meerkat_core.prompts``)."""
    import hashlib

    from meerkat_core import prompts

    spec = {
        "templates": prompts.TEMPLATES,
        "chat": prompts.chat_prompt_parts(),
        "target": prompts.chat_target("{answer}"),
        "verdicts": prompts.FACT_ANSWERS,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def code_version() -> str:
    """``git:<commit>`` (``+dirty`` with uncommitted changes) of the checkout this runs from, or
    ``meerkat-ray==<version>`` where there is no git checkout (an installed package, a Ray
    working_dir upload)."""
    import importlib.metadata
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return f"git:{commit}" + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        try:
            return f"meerkat-ray=={importlib.metadata.version('meerkat-ray')}"
        except importlib.metadata.PackageNotFoundError:
            return "unknown"


def run_record(data_uris: Sequence[str], decoding: dict[str, Any], *, paper_splits: bool) -> dict[str, Any]:
    """The MLflow params that say what a score was computed on and how: each split's manifest
    (URI, build fingerprint, sample total and counts per task, source and split), the decoding
    settings, the prompt templates' version, the box coordinate convention and the code version."""
    from meerkat_core.media import BOX_CONVENTION
    from pipelines.avfit.shards import read_manifest

    params: dict[str, Any] = {}
    for i, uri in enumerate(data_uris):
        manifest = read_manifest(uri)
        prefix = "data" if len(data_uris) == 1 else f"data.{i}"
        params[f"{prefix}.uri"] = uri
        params[f"{prefix}.fingerprint"] = str(manifest.get("fingerprint"))
        params[f"{prefix}.total"] = int(manifest["total"])
        for name, counts in (manifest.get("counts") or {}).items():
            params[f"{prefix}.counts.{name}"] = json.dumps(counts, sort_keys=True)
    params["data.paper_splits"] = paper_splits
    params.update({f"decoding.{k}": v for k, v in decoding.items()})
    params["prompt.templates_version"] = prompt_templates_version()
    params["boxes.convention"] = BOX_CONVENTION
    params["code.version"] = code_version()
    return params


def log_to_mlflow(
    results: dict,
    rows: list[dict],
    *,
    model_ref: str,
    data_uri: str | Sequence[str],
    experiment: str,
    run_name: str | None,
    skipped: dict[str, int],
    record: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """One evaluation run, nested under the training run; returns its id.

    ``record`` (``run_record``) is logged as params beside the model and the sample count;
    ``tags`` are added to the run's own.
    """
    import mlflow

    from pipelines import registry, report, storage

    data_uris = [data_uri] if isinstance(data_uri, str) else list(data_uri)
    mlflow.set_experiment(experiment)
    parent = registry.training_run_id(model_ref)
    run_tags = {
        **(tags or {}),
        "meerkat.kind": "evaluation",
        "meerkat.model_ref": model_ref,
        "meerkat.data": " ".join(data_uris),
    }
    if parent:
        run_tags.update({"mlflow.parentRunId": parent, "meerkat.train_run_id": parent})
    with mlflow.start_run(run_name=run_name or f"eval {model_ref}", tags=run_tags) as run:
        mlflow.log_params(
            {
                "model": model_ref,
                "n_samples": len(rows),
                "metrics.protocol_version": METRICS_PROTOCOL_VERSION,
                **(record or {"data": data_uris[0]}),
            }
        )
        mlflow.log_metrics(flatten_metrics(results))
        mlflow.log_metrics({f"eval/skipped/{k}": float(v) for k, v in skipped.items()})
        tables = report.results_markdown(
            {t: {d: v["model"] for d, v in ds.items()} for t, ds in results.items()}
        )
        baselines = report.baselines_markdown(results)
        mlflow.log_text(tables + "\n\n" + baselines, "results.md")
        mlflow.log_text(baselines, BASELINES_ARTIFACT)
        mlflow.log_text(json.dumps(results, indent=1, default=float), "results.json")
        mlflow.log_table(
            {
                "key": [r["key"] for r in rows],
                "task": [r["meta"]["task"] for r in rows],
                "source": [r["meta"]["source"] for r in rows],
                "instruction": [r["meta"]["instruction"] for r in rows],
                "answer": [r["meta"]["answer"] for r in rows],
                "prediction": [r["prediction"] for r in rows],
            },
            "predictions.json",
        )
        arig = [r for r in rows if r["meta"]["task"] == "arig"]
        if arig:
            gts = [arig_ground_truth(r["meta"]) for r in arig]
            cious = [metrics.sample_ciou(r["prediction"], gt) for r, gt in zip(arig, gts, strict=True)]
            mean_box = metrics.constant_box_baseline(gts)
            base = {"mean box": [metrics.sample_ciou(mean_box, gt) for gt in gts]}
            mlflow.log_figure(report.success_curve_figure(cious, baselines=base), "plots/success_curve.png")
            items = []
            for r in arig[:8]:
                items.append(
                    {
                        "image": _member(data_uris, r["key"], "jpg", storage),
                        "gt_boxes": r["meta"]["boxes"],
                        "pred_box": grounding.parse_box(r["prediction"]),
                        "attn": np.asarray(r["attn"]) if r.get("attn") is not None else None,
                        "title": r["prediction"][:40],
                    }
                )
            mlflow.log_figure(report.grounding_figure(items), "plots/grounding.png")
        igatl = [r for r in rows if r["meta"]["task"] == "igatl"][:6]
        if igatl:
            items = [
                {
                    "audio": _member(data_uris, r["key"], "flac", storage),
                    "gt_segments": r["meta"]["segments"],
                    "pred_segments": metrics.parse_segments(r["prediction"]) or [],
                    "duration": float(r["meta"]["duration"]),
                    "title": r["meta"]["instruction"][:60],
                }
                for r in igatl
            ]
            mlflow.log_figure(report.segments_figure(items, sample_rate=48_000), "plots/segments.png")
        return run.info.run_id


def _member(data_uris: Sequence[str], key: str, ext: str, storage: Any) -> bytes:
    """One member of one sample, found through the manifests' shards (for the drawings only)."""
    import io
    import tarfile

    from pipelines.avfit.shards import shard_uris

    for uri in (shard for data_uri in data_uris for shard in shard_uris(data_uri)):
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(uri))) as tar:
            try:
                return tar.extractfile(f"{key}.{ext}").read()
            except KeyError:
                continue
    raise KeyError(f"{key}.{ext} not in {' '.join(data_uris)}")


def generation_budget(cfg: EvaluateConfig) -> tuple[int, str]:
    """``(max_new_tokens, where it comes from)``: the config's, else the default, or the longest
    caption reference of the data when captions are evaluated and need more."""
    if cfg.max_new_tokens is not None:
        return cfg.max_new_tokens, "argument"
    if cfg.tasks and "avc" not in cfg.tasks:
        return DEFAULT_MAX_NEW_TOKENS, "default"
    budget, n_refs = measure_caption_budget(
        cfg.model, cfg.data_uris, paper_splits=cfg.paper_splits, floor=DEFAULT_MAX_NEW_TOKENS
    )
    return budget, (f"longest of {n_refs} caption references" if n_refs else "default")


def run(cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate on the connected Ray cluster and log the MLflow evaluation run.

    Returns ``{"eval_run_id", "n", "skipped", "results"}`` (``results`` as :func:`score`).
    """
    from pipelines import report
    from pipelines.data import skip_counts

    cfg.check()
    max_new_tokens, budget_from = generation_budget(cfg)
    logger.info("max_new_tokens %d (%s)", max_new_tokens, budget_from)
    rows = predict(
        cfg.model,
        cfg.data_uris,
        tasks=cfg.tasks,
        max_samples=cfg.max_samples,
        actors=cfg.actors,
        batch_size=cfg.batch_size,
        max_new_tokens=max_new_tokens,
        cpus_per_actor=cfg.cpus_per_actor,
        gpus_per_actor=cfg.gpus_per_actor,
        paper_splits=cfg.paper_splits,
    )
    results = score(rows, seed=cfg.seed)
    skipped = skip_counts()
    decoding = {
        "strategy": "greedy",
        "num_beams": 1,
        "max_new_tokens": max_new_tokens,
        "max_new_tokens_from": budget_from,
        "batch_size": cfg.batch_size,
        "padding_side": "left",
    }
    run_id = log_to_mlflow(
        results,
        rows,
        model_ref=cfg.model,
        data_uri=cfg.data_uris,
        experiment=cfg.experiment,
        run_name=cfg.run_name,
        skipped=skipped,
        record=run_record(cfg.data_uris, decoding, paper_splits=cfg.paper_splits),
        tags=cfg.tags,
    )
    print(report.baselines_markdown(results))
    return {"eval_run_id": run_id, "n": len(rows), "skipped": skipped, "results": results}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m pipelines.evaluate [--config FILE] [a.b.c=value ...]`` (default: ``evaluate.yaml``)."""
    from pipelines.config import CONFIG_DIR, from_argv
    from pipelines.raylib import init_ray

    cfg = from_argv(
        EvaluateConfig,
        argv,
        default_config=CONFIG_DIR / "evaluate.yaml",
        description="MeerkatBench evaluation of a trained model.",
    )
    cfg.check()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    init_ray()
    out = run(cfg)
    print(json.dumps({k: v for k, v in out.items() if k != "results"}))
    return out


if __name__ == "__main__":
    from pipelines.evaluate import main as _main

    _main()
