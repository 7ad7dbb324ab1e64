"""Figures of an evaluation: the success-rate curve, grounding examples and time windows over audio.

Figures are built on ``matplotlib.figure.Figure`` directly, not pyplot: no global figure registry
and no backend selection, so the functions are safe in Ray workers and threads. The success-rate
curve and its area are :func:`meerkat_core.metrics.success_rates` and
:func:`~meerkat_core.metrics.success_auc`, so the legend shows the AUC that evaluation logs.
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
import soundfile as sf
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from PIL import Image

from meerkat_core.media import pad_geometry
from meerkat_core.metrics import SUCCESS_THRESHOLDS, success_auc, success_rates

GT_COLOUR = "#00c853"
PRED_COLOUR = "#ff1744"


def success_curve_figure(
    cious: Sequence[float],
    thresholds: Sequence[float] | np.ndarray = SUCCESS_THRESHOLDS,
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
            label=f"{name} (AUC {success_auc(values, t):.3f})",
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
        edgecolor=PRED_COLOUR if predicted else GT_COLOUR,
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
                color=PRED_COLOUR,
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
            Line2D([], [], color=GT_COLOUR, linewidth=2.2, label="ground truth"),
            Line2D([], [], color=PRED_COLOUR, linewidth=2.2, linestyle="--", label="prediction"),
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
            wave_ax.axvspan(t0, t1, ymin=0.5, ymax=1.0, color=GT_COLOUR, alpha=0.35, linewidth=0)
        for t0, t1 in item.get("pred_segments") or ():
            wave_ax.axvspan(t0, t1, ymin=0.0, ymax=0.5, color=PRED_COLOUR, alpha=0.35, linewidth=0)
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
            Patch(color=GT_COLOUR, alpha=0.35, label="ground truth"),
            Patch(color=PRED_COLOUR, alpha=0.35, label="prediction"),
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
