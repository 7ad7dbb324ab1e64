"""Markdown tables: the paper's Tables 3-6 with this run's row, and the model against trivial baselines.

``results`` is keyed ``results[task][dataset] = metrics dict`` (see :mod:`pipelines.report`). Our
metrics are fractions; the tables print them in the paper's units: percent for cIoU, AUC, segment
F1, AVQA accuracy and the captioning scores (x100, as the COCO caption evaluation reports them),
[0, 1] for the fact-checking F1 of Table 5. A missing or undefined (``nan``) number is "–".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from pipelines.report.paper import PAPER_REFERENCE, PAPER_SAMPLES, PAPER_SPLITS, dataset_label

Metrics = Mapping[str, Any]
Results = Mapping[str, Mapping[str, Metrics]]

_TASK_TITLES = {
    "arig": "ARIG (audio referred image grounding)",
    "igatl": "IGATL (image guided audio temporal localisation)",
    "avfact": "AVFact (audio-visual fact-checking)",
    "avqa": "AVQA (audio-visual question answering)",
    "avc": "AVC (audio-visual captioning)",
}
# Question categories pooled into Table 6's columns: our AVQA converter and the procedural world say
# "Localisation", MUSIC-AVQA's own categories say "Location".
_AVQA_COLUMNS = {
    "exist": ("Exist", ("Existential",)),
    "localis": ("Localis", ("Localisation", "Location")),
    "temp": ("Temp", ("Temporal",)),
}
_MISSING = "–"


def _number(value: object) -> float | None:
    """A real number, or None for a missing, non-numeric or nan value."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _scaled(value: object, scale: float) -> float | None:
    number = _number(value)
    return None if number is None else number * scale


def _percent(metrics: Metrics, key: str) -> float | None:
    return _scaled(metrics.get(key), 100)


def _type_f1(metrics: Metrics, fact_type: int) -> float | None:
    per_type = metrics.get("per_type") or {}
    # Integer keys from factcheck_scores become strings once the dict went through JSON.
    scores = per_type.get(fact_type, per_type.get(str(fact_type))) or {}
    return _number(scores.get("f1"))


def _category_accuracy(metrics: Metrics, categories: Sequence[str]) -> float | None:
    """Percent accuracy pooled over the given question categories (weighted by their counts)."""
    per_category = metrics.get("per_category") or {}
    found = [per_category[c] for c in categories if c in per_category and per_category[c].get("n")]
    if not found:
        return None
    return 100 * sum(c["accuracy"] * c["n"] for c in found) / sum(c["n"] for c in found)


@dataclass(frozen=True)
class _Column:
    key: str  # metric name in PAPER_REFERENCE
    header: str
    ours: Callable[[Metrics], float | None]  # this run's number, in the paper's units


_TASK_COLUMNS: dict[str, tuple[_Column, ...]] = {
    "arig": (
        _Column("ciou", "cIoU ↑", partial(_percent, key="ciou")),
        _Column("auc", "AUC ↑", partial(_percent, key="auc")),
    ),
    "igatl": (
        _Column("f1", "F1-score ↑", partial(_percent, key="f1")),
        _Column("event_f1", "event F1@0.5 ↑", partial(_percent, key="event_f1")),
    ),
    "avfact": tuple(
        _Column(f"type{t}_f1", f"Type {t} F1-score ↑", partial(_type_f1, fact_type=t)) for t in range(1, 5)
    ),
    "avqa": tuple(
        _Column(key, f"{header} ↑", partial(_category_accuracy, categories=categories))
        for key, (header, categories) in _AVQA_COLUMNS.items()
    ),
    "avc": tuple(
        _Column(key, header, partial(_percent, key=key))
        for key, header in (
            ("bleu4", "BLEU@4 ↑"),
            ("meteor", "METEOR ↑"),
            ("rouge_l", "ROUGE ↑"),
            ("cider", "CIDEr ↑"),
        )
    ),
}


@dataclass(frozen=True)
class _Table:
    title: str
    tasks: tuple[str, ...]
    reference_models: tuple[str, ...]
    note: str
    # Table 5 has no dataset columns: this run gets one row per evaluated dataset instead.
    row_per_dataset: bool = False


_TABLES = (
    _Table(
        "Table 3: Audio referred image grounding (ARIG)",
        ("arig",),
        ("BuboGPT", "MEERKAT"),
        "cIoU: % of samples whose cIoU is at least 0.5; AUC: area under the success-rate curve, in %.",
    ),
    _Table(
        "Table 4: Image guided audio temporal localisation (IGATL)",
        ("igatl",),
        ("TimeChat", "MEERKAT"),
        "F1 over 1-second segments (and over events, maximal runs of active seconds matched at IoU "
        ">= 0.5) per event class and video, averaged over the video's classes and then over videos, "
        "in %, as the LLP/AVVP evaluation aggregates them, but only over the classes asked about: on "
        "LLP the events both heard and seen (one question per class shown in the image). This is not "
        "the whole audio-only AVVP protocol, which also scores the audio-only events and false "
        "alarms of every other class. The paper reports the segment level.",
    ),
    _Table(
        "Table 5: Audio-visual fact-checking (AVFact)",
        ("avfact",),
        ("TimeChat", "MEERKAT"),
        "F1 of the True class in [0, 1] per statement type. The paper evaluates on its own benchmark; "
        "this run has one row per source dataset.",
        row_per_dataset=True,
    ),
    _Table(
        "Table 6: Audio-visual question answering (AVQA) and captioning (AVC)",
        ("avqa", "avc"),
        ("X-InstructBLIP", "MEERKAT"),
        "AVQA: accuracy per question category in % (Localis pools Localisation and MUSIC-AVQA's "
        "Location). Captioning: BLEU@4, METEOR, ROUGE-L and CIDEr x100.",
    ),
)


def _fmt(value: float | None, digits: int = 2) -> str:
    return _MISSING if value is None else f"{value:.{digits}f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table, the first column left-aligned and the numbers right-aligned."""
    lines = [
        "| " + " | ".join(_cell(h) for h in header) + " |",
        "|" + "|".join([":---", *["---:"] * (len(header) - 1)]) + "|",
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _paper_datasets(task: str) -> list[str]:
    return list(PAPER_REFERENCE[task]["MEERKAT"])


def _count(n: int) -> str:
    return f"{n / 1000:.2f}K" if n >= 1000 else str(n)


def _sample_counts(table: _Table, results: Results) -> str:
    """This run's samples per dataset beside the paper's (Table 2), with the split when it is not
    the one the paper reports."""
    parts = []
    for task in table.tasks:
        paper = PAPER_SAMPLES.get(task, {})
        entries = []
        for dataset, metrics in results.get(task, {}).items():
            text = f"{dataset_label(dataset)} {_fmt(_number(metrics.get('n')), 0)}"
            reference = paper.get(dataset)
            if reference is not None:
                text += f" (paper {_count(reference)})"
            splits = [str(split) for split in metrics.get("splits") or ()]
            wanted = PAPER_SPLITS.get(dataset)
            if wanted and splits and splits != [wanted]:
                text += f" on {'+'.join(splits)}, not the paper's {wanted}"
            entries.append(text)
        counts = ", ".join(entries)
        # A table of two tasks can hold the same dataset twice (the world's AVQA and captions).
        if counts:
            parts.append(f"{task.upper()}: {counts}" if len(table.tasks) > 1 else counts)
    return "This run's samples: " + "; ".join(parts) + "." if parts else "Not evaluated in this run."


def _columns_table(table: _Table, results: Results, run_label: str) -> str:
    columns = []  # (task, dataset, column)
    for task in table.tasks:
        paper = _paper_datasets(task)
        extra = [d for d in results.get(task, {}) if d not in paper]
        columns += [(task, dataset, column) for dataset in paper + extra for column in _TASK_COLUMNS[task]]
    header = ["Model", *(f"{dataset_label(dataset)} {column.header}" for _, dataset, column in columns)]
    rows = [
        [
            f"{model} (paper)",
            *(
                _fmt(PAPER_REFERENCE[task][model].get(dataset, {}).get(column.key))
                for task, dataset, column in columns
            ),
        ]
        for model in table.reference_models
    ]
    ours = [
        column.ours(results[task][dataset]) if dataset in results.get(task, {}) else None
        for task, dataset, column in columns
    ]
    rows.append([run_label, *(_fmt(v) for v in ours)])
    return _md_table(header, rows)


def _rows_table(table: _Table, results: Results, run_label: str) -> str:
    (task,) = table.tasks
    columns = _TASK_COLUMNS[task]
    (benchmark,) = _paper_datasets(task)
    rows = [
        [f"{model} (paper)", *(_fmt(PAPER_REFERENCE[task][model][benchmark][c.key]) for c in columns)]
        for model in table.reference_models
    ]
    evaluated = results.get(task, {})
    rows += [
        [f"{run_label} ({dataset_label(dataset)})", *(_fmt(c.ours(metrics)) for c in columns)]
        for dataset, metrics in evaluated.items()
    ]
    if not evaluated:
        rows.append([run_label, *[_MISSING] * len(columns)])
    return _md_table(["Model", *(c.header for c in columns)], rows)


def _check_tasks(results: Mapping[str, Any]) -> None:
    unknown = set(results) - set(_TASK_COLUMNS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; known: {', '.join(_TASK_COLUMNS)}")


def results_markdown(results: Results, *, run_label: str = "this run") -> str:
    """Markdown tables laid out like the paper's Tables 3-6: its reference rows, then this run's.

    Datasets this run evaluated that the paper does not report (the procedural world) get extra
    columns (rows in Table 5) after the paper's. Raises ValueError for an unknown task.
    """
    _check_tasks(results)
    parts = [
        "# MeerkatBench: this run against the paper",
        "Reference rows: numbers reported in the MEERKAT paper (ECCV 2024) for MEERKAT and its closest "
        f"generalist baseline. {_MISSING}: no number (not evaluated in this run, or not in the paper).",
    ]
    for table in _TABLES:
        render = _rows_table if table.row_per_dataset else _columns_table
        parts += [
            f"## {table.title}",
            render(table, results, run_label),
            f"{table.note} {_sample_counts(table, results)}",
        ]
    return "\n\n".join(parts) + "\n"


# Headline metrics of the baseline comparison: (metrics key, header, scale to the paper's units).
_BASELINE_COLUMNS: dict[str, tuple[tuple[str, str, float], ...]] = {
    "arig": (
        ("box_mean_iou", "mean IoU (%)", 100),
        ("ciou", "cIoU (%)", 100),
        ("auc", "AUC (%)", 100),
        ("sounding_rate", "sounding-object rate (%)", 100),
    ),
    "igatl": (("f1", "segment F1 (%)", 100), ("event_f1", "event F1@0.5 (%)", 100)),
    "avfact": (
        ("accuracy", "accuracy", 1),
        ("f1", "F1", 1),
        *((f"per_type.{t}.accuracy", f"type {t} acc.", 1) for t in (1, 2, 3, 4)),
    ),
    "avqa": (("accuracy", "accuracy (%)", 100),),
    "avc": (("cider", "CIDEr", 100),),
}


def _lookup(metrics: Mapping[str, Any], key: str) -> object:
    """``metrics[key]``, or along a dotted path (``per_type.1.accuracy``) whose parts may be int keys
    (as computed) or str keys (after a JSON round trip); None where any part is missing."""
    if key in metrics:
        return metrics[key]
    value: object = metrics
    for part in key.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part, value.get(int(part)) if part.isdigit() else None)
    return value


def baselines_markdown(results_with_baselines: Mapping[str, Mapping[str, Mapping[str, Metrics]]]) -> str:
    """One markdown table per task and dataset: the model's headline metrics, then each baseline's.

    ``results_with_baselines[task][dataset] = {"model": metrics, "<baseline>": metrics, ...}``. A
    metric appears when any row has it (``box_mean_iou`` and ``sounding_rate`` only where computed);
    units as in ``results_markdown``. A ``baseline_`` prefix is dropped from row names ("baseline_mean_box"
    reads "mean box"). Raises ValueError for an unknown task.
    """
    _check_tasks(results_with_baselines)
    parts = ["# Model against trivial baselines"]
    for task, columns in _BASELINE_COLUMNS.items():
        for dataset, by_model in results_with_baselines.get(task, {}).items():
            # The model first, whatever the dict order: every baseline is read against it.
            names = sorted(by_model, key=lambda name: name != "model")
            present = [c for c in columns if any(_lookup(by_model[name], c[0]) is not None for name in names)]
            rows = [
                [
                    name.removeprefix("baseline_").replace("_", " "),
                    *(_fmt(_scaled(_lookup(by_model[name], key), scale)) for key, _, scale in present),
                ]
                for name in names
            ]
            n = _number(by_model.get("model", {}).get("n"))
            parts += [
                f"## {_TASK_TITLES[task]} · {dataset_label(dataset)} (n = {_fmt(n, 0)})",
                _md_table(["", *(header for _, header, _ in present)], rows),
            ]
    return "\n\n".join(parts) + "\n"
