"""Helpers shared by the source converter tests: fixture copies, generated media, a checked run.

The annotation files under ``tests/fixtures/sources/<source>/`` are committed (their provenance is in
the README there); the media they point to are generated into a copy in ``tmp_path``, so that every
test can also leave a file out on purpose. Expected boxes, segments and answers are worked out by
hand from the fixture values; seeded choices (which audio clip, which fact type) are checked through
the invariants they must satisfy.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from pipelines.avfit.sample import validate_key, validate_meta
from pipelines.avfit.sources import iter_source

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "sources"


def _dataset(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root)
    return root


def _image(path: Path, size: tuple[int, int] = (8, 8)) -> None:
    """A flat image of ``size`` (w, h), encoded as its suffix says (JPEG or PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(path)


def _wav(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(80, dtype=np.float32), 8000)


def _mask(path: Path, rects: list[tuple[int, int, int, int]], size: tuple[int, int] = (20, 10)) -> None:
    """A binary mask of ``size`` (w, h) with the pixel rectangles (col0, row0, col1, row1) inclusive set."""
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    for c0, r0, c1, r1 in rects:
        mask[r0 : r1 + 1, c0 : c1 + 1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


def _run(name: str, root: Path, split: str, seed: int = 0) -> tuple[list[dict], Counter]:
    stats: Counter = Counter()
    samples = list(iter_source(name, root, split, seed=seed, stats=stats))
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys)), "keys must be unique"
    for sample in samples:
        validate_key(sample["__key__"])
        validate_meta(sample["json"])
        assert sample["__key__"].startswith(f"{name}-")
        assert sample["json"]["source"] == name and sample["json"]["split"] == split
        assert Path(sample["image"]).is_file() and Path(sample["audio"]).is_file()
        json.dumps(sample["json"])  # the metadata must be JSON-serialisable as is
    return samples, stats


def _by_key(samples: list[dict]) -> dict[str, dict]:
    return {s["__key__"]: s for s in samples}


def _instructions(samples: list[dict]) -> list[str]:
    return [s["json"]["instruction"] for s in samples]
