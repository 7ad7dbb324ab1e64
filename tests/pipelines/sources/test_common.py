"""The converters' shared helpers in ``pipelines.avfit.sources._common``."""

from __future__ import annotations

from collections import Counter

import pytest

from pipelines.avfit.sample import SampleError
from pipelines.avfit.sources._common import SampleWriter, clean_box, find_frame, merge_segments
from tests.pipelines.sources.helpers import _image


def test_clean_box_drops_garbage_and_degenerate_boxes_and_counts_them():
    stats: Counter = Counter()
    assert clean_box([0.1, 0.2, 0.3, 0.4], stats) == [0.1, 0.2, 0.3, 0.4]
    assert clean_box([-0.02, 0, 1.03, 1], stats) == [0.0, 0.0, 1.0, 1.0]  # border slop is clipped
    assert clean_box([0.3, 0.8, 0.6, -2.8823037615171176e16], stats) is None  # VGG-SS sentinel
    assert clean_box([0.5, 0.5, 0.5, 0.9], stats) is None  # zero width
    assert clean_box([0.6, 0.1, 0.4, 0.3], stats) is None  # corners swapped
    assert clean_box(["nan", 0, 1, 1], stats) is None
    assert clean_box([10, 20, 110, 70], stats, width=200, height=100) == [0.05, 0.2, 0.55, 0.7]
    assert stats == Counter(bad_box=4)


def test_sample_writer_builds_dot_free_keys_and_skips_duplicates(tmp_path):
    stats: Counter = Counter()
    writer = SampleWriter("valor", "test", stats)
    fields = {"instruction": "Describe it.", "answer": "A dog barks.", "references": ["A dog barks."]}
    sample = writer.make("CEfOX4fYlsY_20.000_30.000", tmp_path / "a.jpg", tmp_path / "a.wav", "avc", **fields)
    assert sample["__key__"] == "valor-CEfOX4fYlsY_20_000_30_000-avc"
    assert sample["json"] == {"task": "avc", "source": "valor", "split": "test", **fields}
    assert (
        writer.make("CEfOX4fYlsY_20.000_30.000", tmp_path / "b.jpg", tmp_path / "b.wav", "avc", **fields)
        is None
    )
    assert stats == Counter(duplicate=1)
    with pytest.raises(SampleError):  # the contract is checked as samples are made
        writer.make("other", tmp_path / "a.jpg", tmp_path / "a.wav", "avc", instruction="x", answer="y")


def test_merge_segments_joins_overlapping_and_touching_intervals():
    assert merge_segments([[5.0, 6.0], [1.0, 2.0], [2.0, 3.0], [5.5, 8.0], [9.0, 10.0]]) == [
        [1.0, 3.0],
        [5.0, 8.0],
        [9.0, 10.0],
    ]


def test_find_frame_prefers_a_chosen_frame_then_the_folder_frame_at_a_time(tmp_path):
    for i in range(1, 11):
        _image(tmp_path / "clip" / f"{i:06d}.jpg")
    assert find_frame(tmp_path, "clip") == tmp_path / "clip" / "000006.jpg"
    assert find_frame(tmp_path, "clip", at=0.0) == tmp_path / "clip" / "000001.jpg"
    assert find_frame(tmp_path, "clip", at=1.0) == tmp_path / "clip" / "000010.jpg"
    _image(tmp_path / "clip.jpg")
    assert find_frame(tmp_path, "clip") == tmp_path / "clip.jpg"
    assert find_frame(tmp_path, "absent") is None
