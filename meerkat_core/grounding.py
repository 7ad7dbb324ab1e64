"""Boxes and time segments as text, and back; a box as a mask over the image patch grid.

This module is the one place where the text formats of the paper's Sec. 3.4 are defined:

- a box is ``[x1, y1, x2, y2]``: left, top, right, bottom, normalised to [0, 1] by the size of the
  image it belongs to, written with two decimals (``"[0.12, 0.30, 0.55, 0.80]"``);
- a time segment is ``[t_start, t_end]`` in seconds, one decimal (``"[3.5, 7.0]"``).

``validate_box`` is the one rule for a valid box, used by every caller in the project: our own data
(here and in ``metrics``), model text (``parse_box``) and the serving API's requests, which differ only
in how far past [0, 1] a value may lie and still be clamped. Formatting is for our own data and
raises ``ValueError`` on an invalid box or segment. Parsing is for model output and never raises:
anything malformed gives ``None``, which the metrics count as a miss.

Decisions made here:

- The parser takes the *first* bracketed group that holds exactly four (box) or two (segment)
  numbers and validates it; it does not look further when that group is invalid, so a model cannot
  score by listing several guesses.
- Values up to half a rounding step outside [0, 1] (``1.004``) are accepted and clamped, because a
  two-decimal model output can legitimately round past the border; anything further is rejected.
- ``box_to_mask`` marks a patch cell when its centre lies inside the box (the cell overlaps the box
  by at least half a cell on each axis). Along an axis where no cell centre falls inside the box, the
  cell holding the box's centre is marked instead, so a valid box never gives an all-zero mask.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

# Half of the last printed digit: a value this far outside [0, 1] is a rounding artefact, not an error.
_BOX_TOLERANCE = 0.005

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
# A bracketed group without nested brackets; its content is checked separately so that the scan stays
# linear in the length of the text whatever the model wrote.
BRACKET_GROUP = re.compile(r"\[([^\[\]]*)\]")
_NUMBER_LIST = re.compile(rf"\s*({_NUMBER})\s*(?:,\s*({_NUMBER})\s*)*")


def _clamp01(value: float) -> float:
    return min(1.0, max(0.0, value))


def validate_box(box: object, *, tolerance: float = 0.0) -> tuple[float, float, float, float]:
    """The one validity rule for a normalised box ``[x1, y1, x2, y2]``; returns it as four floats.

    Raises ValueError, naming the box, when it is not a sequence of four real numbers, a value is
    not finite, a value lies outside [0, 1] by more than ``tolerance``, or its corners are out of
    order (``x1 > x2`` or ``y1 > y2``). A value outside [0, 1] by at most ``tolerance`` is clamped
    to [0, 1] before the order is checked. A zero-width or zero-height box (``x1 == x2``) is valid:
    a pixel box of one column normalises to it, and it covers nothing rather than being an error.

    ``tolerance`` is 0 for boxes from outside (the serving API: exactly [0, 1]), half a printed
    digit for model text (``parse_box``), and ``math.inf`` for our own boxes, whose values past
    the image border are clamped to it.
    """
    if isinstance(box, str | bytes) or not hasattr(box, "__len__"):
        raise ValueError(f"a box is a sequence of 4 numbers [x1, y1, x2, y2], got {box!r}")
    if len(box) != 4:
        raise ValueError(f"a box has 4 values [x1, y1, x2, y2], got {len(box)}: {box!r}")
    try:
        if any(isinstance(v, str | bytes | bool) for v in box):
            raise TypeError
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        raise ValueError(f"box values must be numbers, got {box!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"box has non-finite values: {box!r}")
    if not all(-tolerance <= v <= 1.0 + tolerance for v in values):
        raise ValueError(f"box values must be normalised to [0, 1]: {box!r}")
    x1, y1, x2, y2 = (_clamp01(v) for v in values)
    if x1 > x2 or y1 > y2:
        raise ValueError(f"box corners are out of order (need x1 <= x2 and y1 <= y2): {box!r}")
    return x1, y1, x2, y2


def format_box(box: Sequence[float]) -> str:
    """``[x1, y1, x2, y2]`` normalised -> ``"[0.12, 0.30, 0.55, 0.80]"`` (clamped to [0, 1]).

    Raises ValueError for a box without four finite values or with corners out of order.
    """
    return "[" + ", ".join(f"{v:.2f}" for v in validate_box(box, tolerance=math.inf)) + "]"


def format_segment(seg: Sequence[float]) -> str:
    """``[t_start, t_end]`` in seconds -> ``"[3.5, 7.0]"``.

    Raises ValueError for a segment without two finite values, a negative start or start > end.
    """
    if len(seg) != 2:
        raise ValueError(f"a segment has 2 values [start, end], got {len(seg)}: {seg!r}")
    start, end = float(seg[0]), float(seg[1])
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or start > end:
        raise ValueError(f"invalid segment (need 0 <= start <= end, finite): {seg!r}")
    # Adding 0.0 turns a -0.0 into 0.0 so that "-0.0" is never written.
    return f"[{start + 0.0:.1f}, {end + 0.0:.1f}]"


def _first_number_group(text: object, count: int) -> list[float] | None:
    """The numbers of the first bracketed group holding exactly ``count`` numbers, or None."""
    if not isinstance(text, str):
        return None
    for match in BRACKET_GROUP.finditer(text):
        content = match.group(1)
        if _NUMBER_LIST.fullmatch(content) is None:
            continue
        parts = content.split(",")
        if len(parts) == count:
            return [float(p) for p in parts]
    return None


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    """The first bracketed four-number group in ``text`` as a normalised box, or None.

    None when there is no such group, or when that group has a non-finite value, a value outside
    [0, 1] by more than rounding, or corners out of order. Never raises.
    """
    values = _first_number_group(text, 4)
    if values is None:
        return None
    try:
        return validate_box(values, tolerance=_BOX_TOLERANCE)
    except ValueError:
        return None


def parse_segment(text: str) -> tuple[float, float] | None:
    """The first bracketed two-number group in ``text`` as ``(start, end)`` seconds, or None.

    None when there is no such group, or when a value is non-finite, start < 0 or start > end.
    Never raises.
    """
    values = _first_number_group(text, 2)
    if values is None:
        return None
    start, end = values
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or start > end:
        return None
    return start + 0.0, end + 0.0


def _grid_shape(grid: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (grid, grid) if isinstance(grid, int) else grid
    if height <= 0 or width <= 0:
        raise ValueError(f"grid must be positive, got {grid!r}")
    return height, width


def _axis_cells(low: float, high: float, cells: int) -> np.ndarray:
    """Boolean [cells]: the cells of one axis whose centre lies in [low, high]."""
    centres = (np.arange(cells) + 0.5) / cells  # [cells]
    inside = (centres >= low) & (centres <= high)
    if not inside.any():
        # A box thinner than a cell: keep the cell that holds its centre rather than lose the box.
        inside[min(int((low + high) / 2 * cells), cells - 1)] = True
    return inside


def box_to_mask(box: Sequence[float], grid: int | tuple[int, int]) -> np.ndarray:
    """Float32 [h, w] mask of the patch cells covered by a normalised box.

    ``grid`` is ``n`` for an n x n grid or ``(h, w)``. Cell (i, j) (row i, column j) is 1 when its
    centre ``((j + 0.5) / w, (i + 0.5) / h)`` lies inside the box; see the module docstring for
    boxes thinner than a cell. Raises ValueError for an invalid box or grid.
    """
    x1, y1, x2, y2 = validate_box(box, tolerance=math.inf)
    height, width = _grid_shape(grid)
    rows = _axis_cells(y1, y2, height)  # [h]
    cols = _axis_cells(x1, x2, width)  # [w]
    return np.outer(rows, cols).astype(np.float32)  # [h, w]


def boxes_to_mask(boxes: Sequence[Sequence[float]], grid: int | tuple[int, int]) -> np.ndarray:
    """Float32 [h, w] union of ``box_to_mask`` over ``boxes``; all zeros for no boxes."""
    mask = np.zeros(_grid_shape(grid), dtype=np.float32)  # [h, w]
    for box in boxes:
        np.maximum(mask, box_to_mask(box, grid), out=mask)
    return mask


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes ``[x1, y1, x2, y2]``.

    0.0 when the boxes do not overlap and when the union has no area (two degenerate boxes), since
    a zero-area box covers nothing. Corners out of order count as zero extent on that axis.
    """
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    inter_w = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    inter_h = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = inter_w * inter_h
    area_a = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1)
    area_b = max(0.0, bx2 - bx1) * max(0.0, by2 - by1)
    union = area_a + area_b - inter
    if not union > 0.0:
        return 0.0
    return inter / union


def _check_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width} x {height}")


def pixel_box_to_normalised(
    box: Sequence[float], width: int, height: int
) -> tuple[float, float, float, float]:
    """Pixel ``[x1, y1, x2, y2]`` (edges, 0..width and 0..height) -> normalised, clamped to [0, 1].

    Raises ValueError for a non-positive image size or a box that is invalid after normalising.
    """
    _check_size(width, height)
    x1, y1, x2, y2 = (float(v) for v in box)
    return validate_box((x1 / width, y1 / height, x2 / width, y2 / height), tolerance=math.inf)


def normalised_box_to_pixels(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Normalised ``[x1, y1, x2, y2]`` -> pixel edges rounded to the nearest integer, within the image.

    Raises ValueError for a non-positive image size or an invalid box.
    """
    _check_size(width, height)
    x1, y1, x2, y2 = validate_box(box, tolerance=math.inf)
    return round(x1 * width), round(y1 * height), round(x2 * width), round(y2 * height)
