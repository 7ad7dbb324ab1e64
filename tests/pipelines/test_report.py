"""pipelines.report: the paper's tables with this run's row, the baseline tables, and the figures."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import soundfile as sf
from matplotlib.colors import to_rgb
from PIL import Image

from meerkat_core.metrics import localization_scores, sample_ciou
from pipelines import report
from pipelines.report import PAPER_REFERENCE

RED = tuple(round(255 * c) for c in to_rgb(report.figures.PRED_COLOUR))
GREEN = to_rgb(report.figures.GT_COLOUR)


def _table(markdown: str, title_prefix: str) -> list[dict[str, str]]:
    """The rows of the markdown table under the heading starting with ``title_prefix``, header -> cell."""
    section = markdown.split(f"## {title_prefix}", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]
    ]


def _row(rows: list[dict[str, str]], model: str) -> dict[str, str]:
    (row,) = [r for r in rows if r["Model"] == model]
    return row


# ---------------------------------------------------------------------------------------------
# The paper's numbers
# ---------------------------------------------------------------------------------------------

# The paper's own Δ rows (relative gain of MEERKAT over the baseline, in %), as printed: an
# independent check of every transcribed number.
PAPER_GAINS = {
    "arig": {
        ("vggss", "ciou"): 20.34,
        ("vggss", "auc"): 14.97,
        ("flickr_soundnet", "ciou"): 8.85,
        ("flickr_soundnet", "auc"): 8.97,
        ("pascal_sound", "ciou"): 11.47,
        ("pascal_sound", "auc"): 8.66,
        ("avsbench", "ciou"): 7.39,
        ("avsbench", "auc"): 9.85,
    },
    "igatl": {("llp", "f1"): 7.18, ("audioset_strong", "f1"): 4.01},
    "avfact": {
        ("meerkatbench", f"type{t}_f1"): g
        for t, g in zip((1, 2, 3, 4), (14.86, 9.21, 13.51, 7.32), strict=True)
    },
    "avqa": {
        ("avqa", "exist"): 3.17,
        ("avqa", "localis"): 8.19,
        ("avqa", "temp"): 3.15,
        ("music_avqa", "exist"): 4.16,
        ("music_avqa", "localis"): 3.95,
        ("music_avqa", "temp"): 6.54,
    },
    "avc": {
        ("valor", "bleu4"): 37.12,
        ("valor", "meteor"): 23.17,
        ("valor", "rouge_l"): 20.41,
        ("valor", "cider"): 16.9,
    },
}


def test_paper_reference_matches_the_papers_relative_gains():
    for task, gains in PAPER_GAINS.items():
        baseline, meerkat = PAPER_REFERENCE[task]
        assert meerkat == "MEERKAT"
        reported = {
            (dataset, metric)
            for dataset, metrics in PAPER_REFERENCE[task][meerkat].items()
            for metric in metrics
        }
        assert reported == set(gains)
        for (dataset, metric), gain in gains.items():
            ours = PAPER_REFERENCE[task][meerkat][dataset][metric]
            theirs = PAPER_REFERENCE[task][baseline][dataset][metric]
            assert 100 * (ours / theirs - 1) == pytest.approx(gain, abs=0.006), (task, dataset, metric)


def test_paper_rows_printed_as_in_the_paper():
    markdown = report.results_markdown({})
    assert "| MEERKAT (paper) | 48.51 | 45.62 | 88.35 | 67.88 | 65.23 | 56.10 | 79.82 | 65.35 |" in markdown
    assert "| BuboGPT (paper) | 40.31 | 39.68 | 81.17 | 62.29 | 58.52 | 51.63 | 74.33 | 59.49 |" in markdown
    # Table 4: segment-level F1 (the paper's column), then the event level the paper does not report.
    assert "| MEERKAT (paper) | 54.96 | – | 56.85 | – |" in markdown
    assert "| TimeChat (paper) | 51.28 | – | 54.66 | – |" in markdown
    assert "| MEERKAT (paper) | 0.85 | 0.83 | 0.84 | 0.88 |" in markdown
    assert "| TimeChat (paper) | 0.74 | 0.76 | 0.74 | 0.82 |" in markdown
    assert (
        "| MEERKAT (paper) | 88.24 | 86.65 | 86.55 | 83.62 | 80.51 | 73.33 | 16.88 | 23.18 | 45.67 | 76.84 |"
        in markdown
    )
    assert (
        "| X-InstructBLIP (paper) | 85.53 | 80.09 | 83.91 | 80.28 | 77.45 | 68.83 | 12.31 | 18.82 | 37.93 | 65.73 |"
        in markdown
    )
    # Nothing evaluated: this run's rows are all dashes, and no extra columns appear.
    assert "| this run | – | – | – | – | – | – | – | – |" in markdown
    assert "procedural world" not in markdown


# ---------------------------------------------------------------------------------------------
# This run's row
# ---------------------------------------------------------------------------------------------

RESULTS = {
    "arig": {
        "vggss": {"ciou": 0.4234, "auc": 0.41236, "mean_ciou": 0.39, "n": 200, "n_unparsed": 3},
        "world": {"ciou": 0.9, "auc": 0.7, "mean_ciou": 0.8, "n": 64, "n_unparsed": 0},
    },
    "igatl": {"llp": {"f1": 0.5, "event_f1": 0.25, "micro_f1": 0.6, "n": 40, "splits": ["test"]}},
    "avfact": {
        "world": {
            "f1": 0.8,
            "accuracy": 0.75,
            "per_type": {1: {"f1": 0.8125}, 2: {"f1": 0.5}, 4: {"f1": math.nan}},
            "n": 32,
        }
    },
    "avqa": {
        "music_avqa": {
            "accuracy": 0.7,
            "n": 10,
            # Localis pools Localisation and Location: (2 * 0.5 + 2 * 1.0) / 4 = 75 %.
            "per_category": {
                "Existential": {"accuracy": 0.25, "n": 4},
                "Localisation": {"accuracy": 0.5, "n": 2},
                "Location": {"accuracy": 1.0, "n": 2},
                "Count": {"accuracy": 1.0, "n": 2},
            },
        }
    },
    "avc": {"valor": {"bleu4": 0.1688, "meteor": 0.2, "rouge_l": 0.3, "cider": 1.2345, "n": 50}},
}


def test_this_run_in_the_papers_units():
    markdown = report.results_markdown(RESULTS, run_label="run 7")
    arig = _row(_table(markdown, "Table 3"), "run 7")
    assert arig["VGG-SS cIoU ↑"] == "42.34"
    assert arig["VGG-SS AUC ↑"] == "41.24"
    assert arig["Flickr-SoundNet cIoU ↑"] == "–"
    assert arig["AVSBench AUC ↑"] == "–"

    igatl = _row(_table(markdown, "Table 4"), "run 7")
    assert igatl == {
        "Model": "run 7",
        "LLP F1-score ↑": "50.00",
        "LLP event F1@0.5 ↑": "25.00",
        "AudioSet-Strong F1-score ↑": "–",
        "AudioSet-Strong event F1@0.5 ↑": "–",
    }

    # The caption says what the LLP number covers: the heard-and-seen classes asked, not all of AVVP.
    caption = " ".join(markdown.split("## Table 4", 1)[1].split("\n## ", 1)[0].split())
    assert "only over the classes asked about" in caption and "both heard and seen" in caption
    assert "not the whole audio-only AVVP protocol" in caption

    avfact = _row(_table(markdown, "Table 5"), "run 7 (procedural world)")
    assert [avfact[f"Type {t} F1-score ↑"] for t in (1, 2, 3, 4)] == ["0.81", "0.50", "–", "–"]

    table6 = _row(_table(markdown, "Table 6"), "run 7")
    assert table6["MUSIC-AVQA Exist ↑"] == "25.00"
    assert table6["MUSIC-AVQA Localis ↑"] == "75.00"
    assert table6["MUSIC-AVQA Temp ↑"] == "–"
    assert table6["AVQA Exist ↑"] == "–"
    assert table6["VALOR-32K BLEU@4 ↑"] == "16.88"
    assert table6["VALOR-32K CIDEr ↑"] == "123.45"


def test_world_gets_its_own_columns_after_the_papers():
    markdown = report.results_markdown(RESULTS)
    rows = _table(markdown, "Table 3")
    assert list(rows[0])[-2:] == ["procedural world cIoU ↑", "procedural world AUC ↑"]
    assert _row(rows, "MEERKAT (paper)")["procedural world cIoU ↑"] == "–"
    assert _row(rows, "this run")["procedural world cIoU ↑"] == "90.00"
    assert _row(rows, "this run")["procedural world AUC ↑"] == "70.00"
    assert "This run's samples: VGG-SS 200 (paper 4.38K), procedural world 64." in markdown
    # No world column where the world was not evaluated.
    assert not any("procedural world" in h for h in _table(markdown, "Table 4")[0])


def test_sample_counts_beside_the_papers_and_the_split_checked():
    results = {
        "avc": {"valor": {"cider": 0.5, "n": 50, "splits": ["test"]}},
        "avqa": {"avqa": {"accuracy": 0.5, "n": 12, "splits": ["test"], "per_category": {}}},
        "avfact": {"world": {"f1": 0.5, "n": 32}},
    }
    markdown = report.results_markdown(results)
    # VALOR-32K captions are read on val in the paper; AVQA's "test" is its val_qa.json, as the paper.
    assert (
        "AVQA: AVQA 12 (paper 16.90K); AVC: VALOR-32K 50 (paper 3.50K) on test, not the paper's val."
        in markdown
    )
    assert "procedural world 32." in markdown  # no paper count for the world
    assert report.PAPER_SPLITS["valor"] == "val" and report.PAPER_SPLITS["music_avqa"] == "test"


def test_per_type_keys_survive_a_json_round_trip():
    markdown = report.results_markdown(json.loads(json.dumps({"avfact": RESULTS["avfact"]})))
    avfact = _row(_table(markdown, "Table 5"), "this run (procedural world)")
    assert avfact["Type 1 F1-score ↑"] == "0.81"


def test_unknown_task_is_an_error():
    with pytest.raises(ValueError, match="unknown tasks"):
        report.results_markdown({"grounding": {}})


def test_baselines_table():
    markdown = report.baselines_markdown(
        {
            "arig": {
                "world": {
                    "baseline_mean_box": {"box_mean_iou": 0.21, "ciou": 0.1, "auc": 0.2},
                    "model": {"box_mean_iou": 0.55, "ciou": 0.6, "auc": 0.5, "sounding_rate": 0.875, "n": 64},
                }
            },
            "igatl": {"llp": {"model": {"f1": 0.5, "n": 3}, "whole clip": {"f1": 0.25}}},
            "avfact": {
                "world": {
                    "model": {
                        "accuracy": 0.8,
                        "f1": 0.7,
                        "n": 9,
                        "per_type": {1: {"accuracy": 0.75}, 2: {"accuracy": 1.0}},
                    },
                    # as read back from JSON: str keys
                    "majority": {"accuracy": 0.5, "per_type": {"1": {"accuracy": 0.5}}},
                }
            },
        }
    )
    rows = _table(markdown, "ARIG (audio referred image grounding) · procedural world (n = 64)")
    assert [r[""] for r in rows] == ["model", "mean box"]
    assert rows[0] == {
        "": "model",
        "mean IoU (%)": "55.00",
        "cIoU (%)": "60.00",
        "AUC (%)": "50.00",
        "sounding-object rate (%)": "87.50",
    }
    assert rows[1]["sounding-object rate (%)"] == "–"
    # Event F1 was computed for no row, so it has no column.
    assert list(_table(markdown, "IGATL")[0]) == ["", "segment F1 (%)"]
    # per-type accuracy where some row has it (types 3 and 4: none, no column)
    assert _table(markdown, "AVFact") == [
        {"": "model", "accuracy": "0.80", "F1": "0.70", "type 1 acc.": "0.75", "type 2 acc.": "1.00"},
        {"": "majority", "accuracy": "0.50", "F1": "–", "type 1 acc.": "0.50", "type 2 acc.": "–"},
    ]


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _png(fig) -> Image.Image:
    image = Image.open(io.BytesIO(report.figure_png(fig)))
    image.load()
    return image


def test_success_curve_data_and_auc():
    cious = [0.0, 0.3, 0.5, 0.75, 1.0]
    fig = report.success_curve_figure(
        cious, thresholds=[0, 0.25, 0.5, 0.75, 1.0], baselines={"random": [0.1, 0.2]}
    )
    ax = fig.axes[0]
    (model,) = [line for line in ax.lines if line.get_label().startswith("model")]
    np.testing.assert_allclose(model.get_ydata(), [1.0, 0.8, 0.6, 0.4, 0.2])
    # Trapezoids of width 0.25: 0.25 * (0.9 + 0.7 + 0.5 + 0.3) = 0.6.
    assert model.get_label() == "model (AUC 0.600)"
    (baseline,) = [line for line in ax.lines if line.get_label().startswith("random")]
    np.testing.assert_allclose(baseline.get_ydata(), [1.0, 0.0, 0.0, 0.0, 0.0])
    image = _png(fig)
    assert image.format == "PNG" and 400 <= image.width <= 1200 and 300 <= image.height <= 1000


def test_success_curve_auc_is_the_logged_auc():
    rng = np.random.default_rng(0)
    gt = [[0.2, 0.2, 0.6, 0.6]] * 30
    preds = [list(np.clip([0.2, 0.2, 0.6, 0.6] + rng.normal(0, 0.1, 4), 0, 1)) for _ in gt]
    preds = [[min(p[0], p[2]), min(p[1], p[3]), max(p[0], p[2]), max(p[1], p[3])] for p in preds]
    cious = [sample_ciou(p, g) for p, g in zip(preds, gt, strict=True)]
    fig = report.success_curve_figure(cious)
    expected = localization_scores(preds, gt)["auc"]
    assert fig.axes[0].lines[0].get_label() == f"model (AUC {expected:.3f})"


def test_success_curve_needs_values():
    with pytest.raises(ValueError, match="at least one"):
        report.success_curve_figure([])


def _jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (128, 128, 128)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_grounding_figure_draws_the_prediction_in_red_where_it_is():
    pred = [0.2, 0.3, 0.6, 0.7]
    items = [
        {"image": _jpeg(160, 120), "gt_boxes": [[0.1, 0.1, 0.5, 0.5]], "pred_box": pred, "title": "a"},
        {
            "image": np.zeros((64, 64, 3), dtype=np.uint8),
            "gt_boxes": [[0.0, 0.0, 1.0, 1.0]],
            "pred_box": None,
            "attn": np.eye(4),
            "title": "b",
        },
    ]
    fig = report.grounding_figure(items, cols=4)
    ax, ax_none = fig.axes[:2]
    (red,) = [p for p in ax.patches if p.get_linestyle() == "--"]
    assert red.get_edgecolor()[:3] == pytest.approx(to_rgb(report.figures.PRED_COLOUR))
    assert (red.get_x(), red.get_y(), red.get_width(), red.get_height()) == pytest.approx((32, 36, 64, 48))
    (green,) = [p for p in ax.patches if p.get_linestyle() == "-"]
    assert green.get_edgecolor()[:3] == pytest.approx(GREEN)
    assert [t.get_text() for t in ax_none.texts] == ["no box parsed"]
    assert len(ax_none.images) == 2  # the image and the attention overlay

    image = _png(fig)
    assert image.size == (int(fig.get_figwidth() * 100), int(fig.get_figheight() * 100))
    # Pixels of the prediction's colour lie on the outline of the box, where the axes put it.
    # Only inside the first axes: the legend and "no box parsed" are red too.
    height = image.height
    frame = ax.get_window_extent()
    pixels = np.asarray(image.convert("RGB")).astype(int)[
        int(height - frame.y1) : int(height - frame.y0), int(frame.x0) : int(frame.x1)
    ]
    red_rows, red_cols = np.nonzero(np.abs(pixels - RED).sum(axis=2) < 60)
    red_rows, red_cols = red_rows + int(height - frame.y1), red_cols + int(frame.x0)
    assert len(red_rows) > 50
    corners = [(pred[0] * 160, pred[3] * 120), (pred[2] * 160, pred[1] * 120)]
    (left, bottom), (right, top) = ax.transData.transform(corners)
    assert red_cols.min() == pytest.approx(left, abs=3)
    assert red_cols.max() == pytest.approx(right, abs=3)
    assert red_rows.min() == pytest.approx(height - top, abs=3)
    assert red_rows.max() == pytest.approx(height - bottom, abs=3)


def test_grounding_figure_needs_items():
    with pytest.raises(ValueError, match="at least one"):
        report.grounding_figure([])


def _flac(wave: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="FLAC")
    return buffer.getvalue()


def _spans(ax, colour: tuple[float, float, float]) -> list[tuple[float, float]]:
    return sorted(
        (round(p.get_x(), 6), round(p.get_x() + p.get_width(), 6))
        for p in ax.patches
        if p.get_facecolor()[:3] == pytest.approx(colour)
    )


def test_segments_figure_draws_each_window():
    rate = 8000
    t = np.arange(rate * 4) / rate
    wave = (0.5 * np.sin(2 * np.pi * 440 * t) * ((t > 1) & (t < 2))).astype(np.float32)
    items = [
        {
            "audio": _flac(wave, rate),
            "gt_segments": [[1.0, 2.0]],
            "pred_segments": [[0.9, 2.1], [3.0, 3.5]],
            "duration": 4.0,
            "title": "flac",
        },
        {"audio": wave, "gt_segments": [[0.0, 1.0], [2.5, 4.0]], "pred_segments": [], "title": "array"},
    ]
    fig = report.segments_figure(items, sample_rate=rate)
    wave_ax, spec_ax, wave_ax2, _ = fig.axes
    red = to_rgb(report.figures.PRED_COLOUR)
    assert _spans(wave_ax, GREEN) == [(1.0, 2.0)]
    assert _spans(wave_ax, red) == [(0.9, 2.1), (3.0, 3.5)]
    assert _spans(wave_ax2, GREEN) == [(0.0, 1.0), (2.5, 4.0)]
    assert _spans(wave_ax2, red) == []
    assert spec_ax.get_xlim() == pytest.approx((0.0, 4.0))  # shared with the waveform
    assert wave_ax2.get_xlim() == pytest.approx((0.0, 4.0))  # the duration from the array's length
    assert spec_ax.get_xlabel() == "time (s)"
    image = _png(fig)
    assert 800 <= image.width <= 1200 and 500 <= image.height <= 1000
