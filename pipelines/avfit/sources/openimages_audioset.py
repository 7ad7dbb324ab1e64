"""Open Images x AudioSet (weak labels) -> ARIG and fact-check samples (paper Table 2).

Files and layout: see ``_pairing`` (``openimages/`` boxes and images, ``audioset/`` segment CSVs and
``audioset/audio/<ytid>_<start ms>.wav``). Splits: train pairs Open Images train with
``balanced_train_segments.csv`` (plus ``unbalanced_train_segments.csv`` when present); val and test
pair Open Images validation / test with ``eval_segments.csv``.

For every image and every table class with a box in it (boxes of a class in one image are kept
together), a clip carrying one of the class's AudioSet labels is drawn, and two samples are made:

- ``arig``: the boxes of the class, answered with the largest single-object one (group boxes stay in
  the ground truth, see ``_pairing``);
- ``avfact`` of type 1 (``Does the object in {box} make the sound?``, the largest box) or type 4
  (``Is the sound source visible?``), drawn at random, with a True or False verdict drawn at random.
  A False statement swaps in a clip of another class and is marked ``paired: false`` so that the OT
  loss skips it; when no such clip is found the statement is made True and counted under
  ``no_negative``. For type 1 the clip carries none of this class's labels (the boxed object does not
  make it, even if another object in the image does). For type 4 it carries none of the labels of any
  table class the image shows (``BoxedImage.shown``, groups included): a Dog image that also shows a
  man cannot take male speech as "not visible".

This one-fact-per-grounding ratio follows Table 2 (1.07M ARIG, 1.18M fact-check pairs).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pipelines.avfit.sources._common import Sample, SampleWriter, check_split, rng_for
from pipelines.avfit.sources._pairing import (
    AudioPools,
    load_pairing_table,
    read_audioset_segments,
    read_openimages,
)

NAME = "openimages_audioset"
SPLITS = ("train", "val", "test")
_SEGMENT_FILES = {
    "train": ("balanced_train_segments.csv", "unbalanced_train_segments.csv"),
    "val": ("eval_segments.csv",),
    "test": ("eval_segments.csv",),
}


def iter_samples(
    root: str | Path, split: str, *, seed: int = 0, stats: Counter | None = None
) -> Iterator[Sample]:
    """ARIG and fact-check samples of ``split``; skipped records are counted in ``stats``."""
    check_split(NAME, split, SPLITS)
    root = Path(root)
    stats = Counter() if stats is None else stats
    writer = SampleWriter(NAME, split, stats)
    classes = [c for c in load_pairing_table() if c.audioset_mids]
    by_mid = {c.mid: c for c in classes}
    segment_files = [root / "audioset" / name for name in _SEGMENT_FILES[split]]
    segment_files = [path for path in segment_files if path.is_file()]
    if not segment_files:
        raise FileNotFoundError(f"none of {_SEGMENT_FILES[split]} under {root / 'audioset'}")
    images = read_openimages(root, split, classes, stats)
    pools = AudioPools(
        read_audioset_segments(segment_files),
        classes,
        lambda c: c.audioset_mids,
        root / "audioset" / "audio",
        stats,
    )
    for c in classes:
        for item in images.get(c.mid, ()):
            if not pools.has(c):
                stats["no_pair"] += 1
                continue
            record_id = f"{item.image_id}-{c.slug}"
            rng = rng_for(NAME, split, seed, record_id)
            clip = pools.draw(c, rng)
            boxes = list(item.boxes)
            arig = writer.arig(
                record_id,
                item.path,
                pools.path(clip),
                boxes,
                rng,
                answer_box=item.answer_box,
                audio_id=clip,
                paired=True,
                label_text=c.name,
            )
            if arig is not None:
                yield arig
            fact_type = rng.choice((1, 4))
            label = rng.random() < 0.5
            if label:
                fact_clip = clip
            elif fact_type == 1:
                fact_clip = pools.draw_other(c, rng, c.audioset_mids)
            else:
                heard = frozenset().union(*(by_mid[mid].audioset_mids for mid in item.shown))
                fact_clip = pools.draw_other(c, rng, heard, skip=item.shown)
            if fact_clip is None:
                stats["no_negative"] += 1
                label, fact_clip = True, clip
            statement = {"box": item.answer_box} if fact_type == 1 else {}
            extra = {"boxes": boxes} if fact_type == 4 and label else {}
            fact = writer.avfact(
                record_id,
                item.path,
                pools.path(fact_clip),
                fact_type,
                label,
                rng,
                statement=statement,
                audio_id=fact_clip,
                paired=label,
                label_text=c.name,
                **extra,
            )
            if fact is not None:
                yield fact
