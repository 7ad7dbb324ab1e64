"""Tests for meerkat_core.grounding: text formats of boxes and segments, patch masks, IoU."""

import math
import random

import numpy as np
import pytest

from meerkat_core.grounding import (
    box_iou,
    box_to_mask,
    boxes_to_mask,
    format_box,
    format_segment,
    normalised_box_to_pixels,
    parse_box,
    parse_segment,
    pixel_box_to_normalised,
    validate_box,
)


def test_format_box_exact_strings():
    assert format_box((0.123, 0.3, 0.549, 0.8)) == "[0.12, 0.30, 0.55, 0.80]"
    assert format_box([0, 0, 1, 1]) == "[0.00, 0.00, 1.00, 1.00]"
    # Clamped to the image, and never a "-0.00".
    assert format_box([-0.2, -0.0, 1.3, 0.6]) == "[0.00, 0.00, 1.00, 0.60]"


@pytest.mark.parametrize(
    "box",
    [(0.1, 0.2, 0.3), (0.1, 0.2, 0.3, 0.4, 0.5), (math.nan, 0, 1, 1), (0, 0, math.inf, 1), (0.5, 0, 0.4, 1)],
)
def test_format_box_rejects_invalid(box):
    with pytest.raises(ValueError):
        format_box(box)


def test_validate_box_accepts_and_returns_floats():
    assert validate_box([0, 0.25, 1, 1]) == (0.0, 0.25, 1.0, 1.0)
    assert validate_box(np.array([0.1, 0.2, 0.3, 0.4], np.float32)) == pytest.approx((0.1, 0.2, 0.3, 0.4))
    # A zero-width or zero-height box is valid: it covers nothing.
    assert validate_box((0.3, 0.3, 0.3, 0.8)) == (0.3, 0.3, 0.3, 0.8)


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ((0.1, 0.2, 0.3), "4 values"),
        ("0.1, 0.2, 0.3, 0.4", "sequence of 4 numbers"),
        (0.5, "sequence of 4 numbers"),
        (("0", 0, 1, 1), "numbers"),
        ((True, 0, 1, 1), "numbers"),
        ((math.nan, 0, 1, 1), "non-finite"),
        ((0, 0, math.inf, 1), "non-finite"),
        ((0, 0, 1.01, 1), r"\[0, 1\]"),
        ((-0.001, 0, 1, 1), r"\[0, 1\]"),
        ((0.5, 0, 0.4, 1), "out of order"),
        ((0, 0.6, 1, 0.5), "out of order"),
    ],
)
def test_validate_box_rejects_with_a_reason(box, message):
    with pytest.raises(ValueError, match=message):
        validate_box(box)


def test_validate_box_tolerance_clamps_small_overshoot_only():
    assert validate_box((-0.004, 0, 1.004, 1), tolerance=0.005) == (0.0, 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        validate_box((0, 0, 1.006, 1), tolerance=0.005)
    assert validate_box((-3, 0, 7, 1), tolerance=math.inf) == (0.0, 0.0, 1.0, 1.0)
    # Clamping happens before the order check: both corners past the border collapse onto it.
    assert validate_box((1.2, 0, 1.1, 1), tolerance=math.inf) == (1.0, 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        validate_box((0, 0, math.inf, 1), tolerance=math.inf)


def test_format_segment_exact_strings_and_errors():
    assert format_segment((3.54, 7)) == "[3.5, 7.0]"
    assert format_segment([-0.0, 0.04]) == "[0.0, 0.0]"
    assert format_segment((12.25, 29.96)) == "[12.2, 30.0]"
    for bad in [(1.0,), (-0.5, 2.0), (5.0, 4.0), (0.0, math.nan), (1.0, 2.0, 3.0)]:
        with pytest.raises(ValueError):
            format_segment(bad)


def test_box_round_trip_200_random():
    rng = random.Random(0)
    for _ in range(200):
        x1, x2 = sorted(rng.random() for _ in range(2))
        y1, y2 = sorted(rng.random() for _ in range(2))
        parsed = parse_box(format_box((x1, y1, x2, y2)))
        assert parsed is not None
        for got, want in zip(parsed, (x1, y1, x2, y2), strict=True):
            assert abs(got - want) <= 0.005 + 1e-9


def test_segment_round_trip_200_random():
    rng = random.Random(1)
    for _ in range(200):
        start, end = sorted(rng.uniform(0, 30) for _ in range(2))
        parsed = parse_segment(format_segment((start, end)))
        assert parsed is not None
        assert abs(parsed[0] - start) <= 0.05 + 1e-9
        assert abs(parsed[1] - end) <= 0.05 + 1e-9


def test_parse_box_in_a_sentence_and_variants():
    text = "The barking comes from the dog at [0.12, 0.30, 0.55, 0.80], on the left."
    assert parse_box(text) == (0.12, 0.30, 0.55, 0.80)
    assert parse_box("[0.1,0.2,0.3,0.4]") == (0.1, 0.2, 0.3, 0.4)
    assert parse_box("[ 0 , 0 , 1 , 1 ]") == (0.0, 0.0, 1.0, 1.0)
    assert parse_box("[.5, .25, 1., 1]") == (0.5, 0.25, 1.0, 1.0)
    # Within half a rounding step of the border: accepted and clamped.
    assert parse_box("[-0.004, 0.0, 1.004, 1.0]") == (0.0, 0.0, 1.0, 1.0)
    # Degenerate but ordered boxes are well-formed.
    assert parse_box("[0.3, 0.3, 0.3, 0.3]") == (0.3, 0.3, 0.3, 0.3)
    # Groups that are not four numbers are skipped on the way to the first box...
    assert parse_box("at [3.5] near [dog] the box [0.1, 0.2, 0.3, 0.4]") == (0.1, 0.2, 0.3, 0.4)
    # ...but the first box is the answer: an invalid one is not replaced by a later guess.
    assert parse_box("[0.5, 0.2, 0.1, 0.9] or [0.1, 0.2, 0.3, 0.4]") is None


MALFORMED_BOXES = [
    "",
    "   ",
    "no box here",
    "[]",
    "[0.1, 0.2, 0.3]",
    "[0.1, 0.2, 0.3, 0.4, 0.5]",
    "[a, b, c, d]",
    "[0.1, 0.2, 0.3, x]",
    "[0.5, 0.2, 0.1, 0.9]",
    "[0.1, 0.9, 0.3, 0.2]",
    "[1.5, 0, 0.2, 0.3]",
    "[0.1, 0.2, 0.3, 1.01]",
    "[-0.1, 0.2, 0.3, 0.4]",
    "[nan, 0.2, 0.3, 0.4]",
    "[0.1, inf, 0.3, 0.4]",
    "[0.1, 0.2, 0.3, 1e999]",
    "[0.1, 0.2, 0.3, 0.4",
    "0.1, 0.2, 0.3, 0.4]",
    "(0.1, 0.2, 0.3, 0.4)",
    "[0.1 0.2 0.3 0.4]",
    "[0.1, 0.2,, 0.3, 0.4]",
    "[0.1, 0.2, 0.3, 0.4,]",
    "[3.5]",
    "[3.5, 7.0]",
    "[0.1.2, 0.2, 0.3, 0.4]",
    "[[0.1, 0.2], [0.3, 0.4]]",
]


@pytest.mark.parametrize("text", MALFORMED_BOXES)
def test_parse_box_malformed_gives_none(text):
    assert parse_box(text) is None


def test_malformed_box_list_is_large_and_distinct():
    assert len(set(MALFORMED_BOXES)) == len(MALFORMED_BOXES) >= 20


@pytest.mark.parametrize("value", [None, 0.5, 123, b"[0.1, 0.2, 0.3, 0.4]", ["[0.1, 0.2, 0.3, 0.4]"]])
def test_parsers_reject_non_strings(value):
    assert parse_box(value) is None
    assert parse_segment(value) is None


def test_parse_segment_in_a_sentence():
    assert parse_segment("The dog barks during [3.5, 7.0] seconds.") == (3.5, 7.0)
    assert parse_segment("[0, 30]") == (0.0, 30.0)
    assert parse_segment("[2.0, 2.0]") == (2.0, 2.0)
    # A box in the text is not a segment; the first two-number group is.
    assert parse_segment("box [0.1, 0.2, 0.3, 0.4] at [1.5, 2.5]") == (1.5, 2.5)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[3.5]",
        "[7.0, 3.5]",
        "[-1.0, 2.0]",
        "[nan, 2.0]",
        "[1.0, inf]",
        "[1.0, 1e999]",
        "[a, b]",
        "[1.0, 2.0",
        "[1.0 2.0]",
        "[1.0, 2.0, 3.0]",
        "3.5 to 7.0 seconds",
    ],
)
def test_parse_segment_malformed_gives_none(text):
    assert parse_segment(text) is None


def test_parsers_never_raise_on_random_text():
    rng = random.Random(2)
    alphabet = "[]0123456789.,-+eE naif\n\t()é€"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        box = parse_box(text)
        segment = parse_segment(text)
        if box is not None:
            assert all(0.0 <= v <= 1.0 for v in box) and box[0] <= box[2] and box[1] <= box[3]
        if segment is not None:
            assert 0.0 <= segment[0] <= segment[1]


def _grid(rows: list[str]) -> np.ndarray:
    return np.array([[float(c) for c in row] for row in rows], dtype=np.float32)


def test_box_to_mask_hand_cases_on_4x4():
    # Cell centres on each axis: 0.125, 0.375, 0.625, 0.875.
    cases = {
        (0.0, 0.0, 0.5, 0.5): ["1100", "1100", "0000", "0000"],
        (0.3, 0.1, 0.7, 0.9): ["0110", "0110", "0110", "0110"],
        (0.2, 0.6, 1.0, 0.7): ["0000", "0000", "0111", "0000"],
        # Centres on the border count as inside.
        (0.125, 0.375, 0.375, 0.375): ["0000", "1100", "0000", "0000"],
        (0.0, 0.0, 1.0, 1.0): ["1111", "1111", "1111", "1111"],
    }
    for box, rows in cases.items():
        mask = box_to_mask(box, 4)
        assert mask.dtype == np.float32 and mask.shape == (4, 4)
        np.testing.assert_array_equal(mask, _grid(rows), err_msg=str(box))


def test_box_smaller_than_a_cell_marks_the_cell_of_its_centre():
    # Centre (0.565, 0.81) lies in column 2, row 3.
    np.testing.assert_array_equal(
        box_to_mask((0.55, 0.80, 0.58, 0.82), 4), _grid(["0000", "0000", "0000", "0010"])
    )
    # Thin along one axis only: the whole row holding its centre (0.46 -> row 1).
    np.testing.assert_array_equal(
        box_to_mask((0.0, 0.45, 1.0, 0.47), 4), _grid(["0000", "1111", "0000", "0000"])
    )
    # A point on the far corner stays inside the grid.
    np.testing.assert_array_equal(box_to_mask((1.0, 1.0, 1.0, 1.0), 2), _grid(["00", "01"]))


def test_box_to_mask_rectangular_grid_is_rows_by_columns():
    # Grid (h=2, w=3): column centres 1/6, 1/2, 5/6; row centres 1/4, 3/4.
    mask = box_to_mask((0.0, 0.5, 0.5, 1.0), (2, 3))
    np.testing.assert_array_equal(mask, _grid(["000", "110"]))


def test_boxes_to_mask_union_and_empty():
    mask = boxes_to_mask([(0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)], 4)
    np.testing.assert_array_equal(mask, _grid(["1100", "1100", "0011", "0011"]))
    empty = boxes_to_mask([], (3, 5))
    assert empty.shape == (3, 5) and empty.dtype == np.float32 and not empty.any()


@pytest.mark.parametrize("box", [(0.5, 0.0, 0.4, 1.0), (0.0, math.nan, 1.0, 1.0), (0.0, 0.0, 1.0)])
def test_box_to_mask_rejects_invalid_box(box):
    with pytest.raises(ValueError):
        box_to_mask(box, 4)


def test_box_to_mask_rejects_empty_grid():
    with pytest.raises(ValueError):
        box_to_mask((0.0, 0.0, 1.0, 1.0), 0)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0.0, 0.0, 0.5, 0.5), (0.0, 0.0, 0.5, 0.5), 1.0),
        ((0.0, 0.0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75), 0.0625 / 0.4375),
        ((0.0, 0.0, 1.0, 1.0), (0.25, 0.25, 0.75, 0.75), 0.25),
        ((0.0, 0.0, 0.5, 1.0), (0.25, 0.0, 1.0, 1.0), 0.25 / 1.0),
        ((0.0, 0.0, 0.2, 0.2), (0.5, 0.5, 0.9, 0.9), 0.0),
        ((0.0, 0.0, 0.5, 0.5), (0.5, 0.0, 1.0, 0.5), 0.0),
        ((0.3, 0.3, 0.3, 0.3), (0.3, 0.3, 0.3, 0.3), 0.0),
        ((0.3, 0.3, 0.3, 0.8), (0.0, 0.0, 1.0, 1.0), 0.0),
    ],
)
def test_box_iou_hand_cases(a, b, expected):
    assert box_iou(a, b) == pytest.approx(expected)
    assert box_iou(b, a) == pytest.approx(expected)


def test_pixel_box_conversions():
    assert pixel_box_to_normalised([64, 48, 320, 240], 640, 480) == pytest.approx((0.1, 0.1, 0.5, 0.5))
    assert normalised_box_to_pixels((0.1, 0.1, 0.5, 0.5), 640, 480) == (64, 48, 320, 240)
    # Pixel boxes past the image are clamped to it.
    assert pixel_box_to_normalised([-10, 0, 700, 480], 640, 480) == (0.0, 0.0, 1.0, 1.0)
    rng = random.Random(3)
    for _ in range(100):
        width, height = rng.randint(1, 4000), rng.randint(1, 4000)
        x1, x2 = sorted(rng.randint(0, width) for _ in range(2))
        y1, y2 = sorted(rng.randint(0, height) for _ in range(2))
        normalised = pixel_box_to_normalised((x1, y1, x2, y2), width, height)
        assert normalised_box_to_pixels(normalised, width, height) == (x1, y1, x2, y2)


def test_pixel_box_conversions_reject_bad_sizes():
    with pytest.raises(ValueError):
        pixel_box_to_normalised((0, 0, 1, 1), 0, 10)
    with pytest.raises(ValueError):
        normalised_box_to_pixels((0.0, 0.0, 1.0, 1.0), 10, -1)
