"""Evaluation artefacts: the paper's Tables 3-6 with this run's row, baseline tables, and figures.

Pure functions; the evaluation job computes the metrics (``meerkat_core.metrics``) and logs what
these return to MLflow (markdown with ``mlflow.log_text``, PNG bytes from ``figure_png``).

``results`` is keyed ``results[task][dataset] = metrics dict``: ``task`` one of ``arig``, ``igatl``,
``avfact``, ``avqa``, ``avc``; ``dataset`` a source registry name (``vggss``, ``flickr_soundnet``,
``pascal_sound``, ``avsbench``, ``llp``, ``audioset_strong``, ``avqa``, ``music_avqa``, ``valor``)
or ``world``, the procedural world. The metrics dicts are those of ``meerkat_core.metrics``:

=======  ===========================================================================================
task     metrics dict
=======  ===========================================================================================
arig     ``localization_scores`` (``ciou``, ``auc``, ``mean_ciou``, ``n``), optionally with
         ``box_mean_iou`` (``mean_box_iou``'s ``mean_iou``) and ``sounding_rate`` merged in
igatl    ``f1`` and ``event_f1``: ``avvp_f1``'s ``segment_f1`` and ``event_f1`` (the LLP protocol),
         ``n``; the project's variants beside them (``micro_f1``, ``greedy_event_f1``, ...)
avfact   ``factcheck_scores`` (``f1``, ``accuracy``, ``per_type`` {1..4: {``f1``, ...}}, ``n``)
avqa     ``avqa_accuracy`` (``accuracy``, ``per_category`` {name: {``accuracy``, ``n``}}, ``n``)
avc      ``caption_scores`` (``bleu4``, ``meteor``, ``rouge_l``, ``cider``, ``n``)
=======  ===========================================================================================

Our metrics are fractions; the tables print them in the paper's units: percent for cIoU, AUC,
segment F1, AVQA accuracy and the captioning scores (x100, as the COCO caption evaluation reports
them), [0, 1] for the fact-checking F1 of Table 5. A missing or undefined (``nan``) number is "–".

Figures are built on ``matplotlib.figure.Figure`` directly, not pyplot: no global figure registry
and no backend selection, so the functions are safe in Ray workers and threads.
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import matplotlib
import numpy as np
import soundfile as sf
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from PIL import Image

from meerkat_core.media import pad_geometry

Metrics = Mapping[str, Any]
Results = Mapping[str, Mapping[str, Metrics]]

_THRESHOLDS = np.arange(0, 1.0001, 0.05)  # 0, 0.05, ..., 1.0, as metrics.localization_scores uses

# The paper's reported numbers: PAPER_REFERENCE[task][model][dataset][metric], in the paper's units
# (percent in Tables 3, 4 and 6; F1 in [0, 1] in Table 5). Each table's MEERKAT row and the row of
# its closest generalist baseline, as the paper itself compares them (its Δ rows). The paper's
# fact-checking is evaluated on its own benchmark, without a source dataset: "meerkatbench".
PAPER_REFERENCE: dict[str, dict[str, dict[str, dict[str, float]]]] = {
    "arig": {  # Table 3
        "BuboGPT": {
            "vggss": {"ciou": 40.31, "auc": 39.68},
            "flickr_soundnet": {"ciou": 81.17, "auc": 62.29},
            "pascal_sound": {"ciou": 58.52, "auc": 51.63},
            "avsbench": {"ciou": 74.33, "auc": 59.49},
        },
        "MEERKAT": {
            "vggss": {"ciou": 48.51, "auc": 45.62},
            "flickr_soundnet": {"ciou": 88.35, "auc": 67.88},
            "pascal_sound": {"ciou": 65.23, "auc": 56.10},
            "avsbench": {"ciou": 79.82, "auc": 65.35},
        },
    },
    "igatl": {  # Table 4
        "TimeChat": {"llp": {"f1": 51.28}, "audioset_strong": {"f1": 54.66}},
        "MEERKAT": {"llp": {"f1": 54.96}, "audioset_strong": {"f1": 56.85}},
    },
    "avfact": {  # Table 5
        "TimeChat": {
            "meerkatbench": {"type1_f1": 0.74, "type2_f1": 0.76, "type3_f1": 0.74, "type4_f1": 0.82}
        },
        "MEERKAT": {"meerkatbench": {"type1_f1": 0.85, "type2_f1": 0.83, "type3_f1": 0.84, "type4_f1": 0.88}},
    },
    "avqa": {  # Table 6, left
        "X-InstructBLIP": {
            "avqa": {"exist": 85.53, "localis": 80.09, "temp": 83.91},
            "music_avqa": {"exist": 80.28, "localis": 77.45, "temp": 68.83},
        },
        "MEERKAT": {
            "avqa": {"exist": 88.24, "localis": 86.65, "temp": 86.55},
            "music_avqa": {"exist": 83.62, "localis": 80.51, "temp": 73.33},
        },
    },
    "avc": {  # Table 6, right
        "X-InstructBLIP": {"valor": {"bleu4": 12.31, "meteor": 18.82, "rouge_l": 37.93, "cider": 65.73}},
        "MEERKAT": {"valor": {"bleu4": 16.88, "meteor": 23.18, "rouge_l": 45.67, "cider": 76.84}},
    },
}

# The split of each source dataset that the paper's tables report, named as the converters name
# them: Table 6 reports AVQA on val (its converter writes val_qa.json as split "test", AVQA having
# no public test set), MUSIC-AVQA on the (balanced) test set and VALOR-32K captions on val; the
# others are test sets (Table 2).
PAPER_SPLITS: dict[str, str] = {
    "vggss": "test",
    "flickr_soundnet": "test",
    "pascal_sound": "test",
    "avsbench": "test",
    "llp": "test",
    "audioset_strong": "test",
    "openimages_audioset": "test",
    "avqa": "test",
    "music_avqa": "test",
    "valor": "val",
}

# Evaluation samples per task and dataset in the paper's Table 2 ("# Samples", test side).
PAPER_SAMPLES: dict[str, dict[str, int]] = {
    "arig": {"vggss": 4_380, "flickr_soundnet": 2_780, "pascal_sound": 560, "avsbench": 490},
    "igatl": {"llp": 2_320, "audioset_strong": 24_100},
    "avfact": {"openimages_audioset": 321_000},  # all four types, on Open Images x AudioSet
    "avqa": {"avqa": 16_900, "music_avqa": 7_360},
    "avc": {"valor": 3_500},
}

_DATASET_LABELS = {
    "vggss": "VGG-SS",
    "flickr_soundnet": "Flickr-SoundNet",
    "pascal_sound": "PascalSound",
    "avsbench": "AVSBench",
    "llp": "LLP",
    "audioset_strong": "AudioSet-Strong",
    "avqa": "AVQA",
    "music_avqa": "MUSIC-AVQA",
    "valor": "VALOR-32K",
    "world": "procedural world",
    "meerkatbench": "MeerkatBench",
}
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
_GT_COLOUR = "#00c853"
_PRED_COLOUR = "#ff1744"


def dataset_label(name: str) -> str:
    """The paper's name of a source dataset ("vggss" -> "VGG-SS"); unknown names as they are."""
    return _DATASET_LABELS.get(name, name)


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


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def success_rates(
    cious: Sequence[float], thresholds: Sequence[float] | np.ndarray = _THRESHOLDS
) -> np.ndarray:
    """[T] fraction of samples with cIoU >= t for each threshold t. Raises ValueError for no samples."""
    values = np.asarray(cious, dtype=float)  # [N]
    if values.size == 0:
        raise ValueError("a success-rate curve needs at least one cIoU value")
    t = np.asarray(thresholds, dtype=float)  # [T]
    return (values[None, :] >= t[:, None]).mean(axis=1)


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    # The same trapezoid rule as metrics.localization_scores, so the legend matches the logged AUC.
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def success_curve_figure(
    cious: Sequence[float],
    thresholds: Sequence[float] | np.ndarray = _THRESHOLDS,
    baselines: Mapping[str, Sequence[float]] | None = None,
    *,
    label: str = "model",
) -> Figure:
    """Success rate (fraction of samples with cIoU >= t) against t, AUC in the legend.

    ``cious`` are per-sample cIoUs (``metrics.sample_ciou``); ``baselines`` maps a name to its
    per-sample cIoUs, drawn dashed. The dotted line at t = 0.5 marks the paper's "cIoU".
    """
    t = np.asarray(thresholds, dtype=float)
    fig = Figure(figsize=(5.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    curves = {label: cious, **(baselines or {})}
    for i, (name, values) in enumerate(curves.items()):
        rates = success_rates(values, t)
        ax.plot(
            t,
            rates,
            linestyle="-" if i == 0 else "--",
            linewidth=2.2 if i == 0 else 1.4,
            marker="o" if i == 0 else None,
            markersize=3.5,
            label=f"{name} (AUC {_trapezoid(t, rates):.3f})",
        )
    ax.axvline(0.5, color="0.4", linestyle=":", linewidth=1)
    ax.text(0.515, 1.0, "cIoU in the tables", color="0.4", fontsize=8, rotation=90, va="top")
    ax.set(
        xlim=(float(t.min()), float(t.max())),
        ylim=(0, 1.02),
        xlabel="cIoU threshold t",
        ylabel="success rate (fraction with cIoU ≥ t)",
        title="Audio referred image grounding: success rate",
    )
    ax.grid(alpha=0.3)
    # Every curve starts at 1 and only falls, so the lower left stays free of them.
    ax.legend(loc="lower left", fontsize=9)
    return fig


def _rgb_array(image: object) -> np.ndarray:
    """uint8 [H, W, 3] from encoded bytes, a file path, a PIL image or an array ([0, 1] if float)."""
    if isinstance(image, bytes | bytearray):
        image = Image.open(io.BytesIO(image))
    elif isinstance(image, str | os.PathLike):
        image = Image.open(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"an image array is [H, W, 3], got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        array = np.round(np.clip(array, 0.0, 1.0) * 255)
    return array[..., :3].astype(np.uint8)


def _heat_overlay(attn: object, width: int, height: int) -> np.ndarray:
    """RGBA float [H, W, 4]: the attention map upsampled bilinearly, opacity growing with attention.

    Scaled by its maximum so that softmax-sized weights stay visible; a flat map stays flat.
    """
    grid = np.asarray(attn, dtype=np.float32)  # [h, w]
    if grid.ndim != 2:
        raise ValueError(f"an attention map is [h, w], got shape {grid.shape}")
    peak = float(grid.max())
    grid = np.clip(grid / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(grid)
    upsampled = np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR))
    rgba = matplotlib.colormaps["cividis"](upsampled)  # [H, W, 4]
    # Opacity proportional to attention keeps the image readable where the model does not look.
    rgba[..., 3] = 0.6 * upsampled
    return rgba


def _box_patch(box: Sequence[float], width: int, height: int, *, predicted: bool) -> Rectangle:
    x1, y1, x2, y2 = (float(v) for v in box)
    return Rectangle(
        (x1 * width, y1 * height),
        (x2 - x1) * width,
        (y2 - y1) * height,
        fill=False,
        edgecolor=_PRED_COLOUR if predicted else _GT_COLOUR,
        linestyle="--" if predicted else "-",
        linewidth=2.2,
    )


def grounding_figure(items: Sequence[Mapping[str, Any]], *, cols: int = 4) -> Figure:
    """A grid of images with ground-truth boxes (green), the predicted box (red, dashed) and the
    AVACE attention map (``attn``, [h, w] over the patch grid of the letterboxed square the encoder
    sees) overlaid as a heat map.

    Each item: ``image`` (encoded bytes, path, PIL image or [H, W, 3] array), ``gt_boxes`` (list of
    normalised boxes), ``pred_box`` (normalised box or None, shown as "no box parsed"), optional
    ``attn`` and ``title``. Raises ValueError for no items.
    """
    if not items:
        raise ValueError("grounding_figure needs at least one item")
    cols = max(1, min(cols, len(items)))
    rows = math.ceil(len(items) / cols)
    fig = Figure(figsize=(3.2 * cols, 3.4 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(items) :]:
        ax.remove()
    for ax, item in zip(axes, items, strict=False):
        image = _rgb_array(item["image"])
        height, width = image.shape[:2]
        # extent in pixel edges (0..W, 0..H) so that box corners map to x * W, y * H exactly.
        extent = (0, width, height, 0)
        ax.imshow(image, extent=extent)
        if item.get("attn") is not None:
            # The map covers the encoder's input, the image letterboxed to a square
            # (meerkat_core.media): drawn over that square, of which the axes show the image.
            side, left, top = pad_geometry(width, height)
            square = (-left, side - left, side - top, -top)
            ax.imshow(_heat_overlay(item["attn"], side, side), extent=square)
        for box in item.get("gt_boxes") or ():
            ax.add_patch(_box_patch(box, width, height, predicted=False))
        if item.get("pred_box") is None:
            ax.text(
                0.03,
                0.04,
                "no box parsed",
                transform=ax.transAxes,
                color=_PRED_COLOUR,
                fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
            )
        else:
            ax.add_patch(_box_patch(item["pred_box"], width, height, predicted=True))
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(textwrap.fill(str(item.get("title", "")), 34, max_lines=3, placeholder=" …"), fontsize=9)
    fig.legend(
        handles=[
            Line2D([], [], color=_GT_COLOUR, linewidth=2.2, label="ground truth"),
            Line2D([], [], color=_PRED_COLOUR, linewidth=2.2, linestyle="--", label="prediction"),
            Patch(color=matplotlib.colormaps["cividis"](0.95), label="AVACE attention"),
        ],
        loc="outside lower center",
        ncols=3,
        fontsize=9,
    )
    return fig


def _mono(audio: object, sample_rate: int) -> tuple[np.ndarray, int]:
    """Float [N] samples and their rate from encoded bytes or a path (the file's own rate) or an array."""
    if isinstance(audio, bytes | bytearray | str | os.PathLike):
        source = io.BytesIO(audio) if isinstance(audio, bytes | bytearray) else audio
        data, rate = sf.read(source, dtype="float32", always_2d=True)  # [N, C]
        return data.mean(axis=1), int(rate)
    wave = np.asarray(audio, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"an audio array is 1-D, got shape {wave.shape}")
    return wave, sample_rate


def _draw_envelope(ax: Any, wave: np.ndarray, rate: int, bins: int = 2000) -> None:
    """Min/max envelope per time bin: a 30-s clip has ~10^6 samples, far more than the pixels."""
    per_bin = max(1, math.ceil(len(wave) / bins))
    padded = np.pad(wave, (0, (-len(wave)) % per_bin), mode="edge").reshape(-1, per_bin)  # [B, per_bin]
    times = (np.arange(len(padded)) + 0.5) * per_bin / rate  # [B]
    ax.fill_between(times, padded.min(axis=1), padded.max(axis=1), color="0.25", linewidth=0)


def _log_spectrogram(wave: np.ndarray, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """[n_fft / 2 + 1, frames] power in dB of a Hann-windowed STFT."""
    if len(wave) < n_fft:
        wave = np.pad(wave, (0, n_fft - len(wave)))
    frames = np.lib.stride_tricks.sliding_window_view(wave, n_fft)[::hop]  # [F, n_fft]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2  # [F, n_fft / 2 + 1]
    # The floor keeps digital silence finite (log of 0).
    return 10 * np.log10(power.T + 1e-10)


def _floor_db(spectrogram: np.ndarray) -> float:
    """Bottom of the colour scale: an 80 dB range below the peak (librosa's display default), or
    the median power where that is higher, so that a noisy clip's noise floor is drawn dark and the
    events stand out."""
    return max(float(spectrogram.max()) - 80, float(np.median(spectrogram)))


def segments_figure(items: Sequence[Mapping[str, Any]], *, sample_rate: int) -> Figure:
    """Per item a waveform with ground-truth (green, upper half) and predicted (red, lower half) time
    windows, and a log-power spectrogram under it; time in seconds.

    Each item: ``audio`` (FLAC/WAV bytes or path, read at the file's rate, or a 1-D float array at
    ``sample_rate``), ``gt_segments`` and ``pred_segments`` (lists of ``[t0, t1]`` seconds),
    ``duration`` (seconds; the audio's length when missing) and ``title``. The two kinds of window
    sit in separate halves so that where they agree both stay visible. Raises ValueError for no items.
    """
    if not items:
        raise ValueError("segments_figure needs at least one item")
    fig = Figure(figsize=(10, 3.3 * len(items) + 0.4), layout="constrained")
    axes = fig.subplots(2 * len(items), 1, gridspec_kw={"height_ratios": [1.0, 1.3] * len(items)})
    for i, item in enumerate(items):
        wave_ax, spec_ax = axes[2 * i], axes[2 * i + 1]
        wave, rate = _mono(item["audio"], sample_rate)
        duration = float(item.get("duration") or len(wave) / rate)
        _draw_envelope(wave_ax, wave, rate)
        for t0, t1 in item.get("gt_segments") or ():
            wave_ax.axvspan(t0, t1, ymin=0.5, ymax=1.0, color=_GT_COLOUR, alpha=0.35, linewidth=0)
        for t0, t1 in item.get("pred_segments") or ():
            wave_ax.axvspan(t0, t1, ymin=0.0, ymax=0.5, color=_PRED_COLOUR, alpha=0.35, linewidth=0)
        peak = float(np.abs(wave).max()) if len(wave) else 0.0
        wave_ax.set(xlim=(0, duration), ylim=(-1.05 * peak - 1e-6, 1.05 * peak + 1e-6), yticks=[])
        wave_ax.set_ylabel("GT / pred", fontsize=8)
        wave_ax.tick_params(labelbottom=False)
        wave_ax.set_title(str(item.get("title", "")), fontsize=10, loc="left")
        spectrogram = _log_spectrogram(wave)
        spec_ax.imshow(
            spectrogram,
            origin="lower",
            aspect="auto",
            cmap="magma",
            extent=(0, len(wave) / rate, 0, rate / 2000),
            vmin=_floor_db(spectrogram),
        )
        spec_ax.sharex(wave_ax)
        spec_ax.set(ylabel="kHz", xlabel="time (s)")
    fig.legend(
        handles=[
            Patch(color=_GT_COLOUR, alpha=0.35, label="ground truth"),
            Patch(color=_PRED_COLOUR, alpha=0.35, label="prediction"),
        ],
        loc="outside lower center",
        ncols=2,
        fontsize=9,
    )
    return fig


def figure_png(fig: Figure, *, dpi: int = 100) -> bytes:
    """The figure encoded as PNG (e.g. for ``mlflow.log_image`` or ``log_artifact``)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
