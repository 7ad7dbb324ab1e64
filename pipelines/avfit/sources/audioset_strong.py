"""AudioSet Strong x Open Images -> IGATL and fact-check samples (paper Table 2).

Files and layout: see ``_pairing`` (``audioset/audioset_{train,eval}_strong.tsv``,
``audioset/audio/<segment_id>.wav``, ``openimages/`` boxes and images). Splits: train pairs the
train strong labels with Open Images train images, test pairs the eval strong labels with Open
Images test images.

The TSV has the header ``segment_id  start_time_seconds  end_time_seconds  label``; ``segment_id`` is
``<ytid>_<clip start in ms>`` and times are seconds from the clip start (10-s clips). The official
files write three decimals and the public re-serialised copies drop trailing zeros (``10.0``,
``4.58``): times are parsed as floats whatever their format.

For every clip and every table class whose AudioSet labels occur in it, an Open Images image with a
box of that class is drawn to show the object, and two samples are made:

- ``igatl``: "when does the <class> in the image sound?", answered with the class's merged events
  (``clip_id`` names the clip, so that evaluation averages per clip over its classes, as LLP does);
- ``avfact`` of type 2 (``{obj}`` + ``{segment}``) or type 3 (``{box}`` + ``{segment}``), drawn at
  random, with a True or False verdict drawn at random. A True statement names one of the class's
  segments; a False one names the longest stretch of at least ``MIN_GAP`` seconds in which the class
  is silent. A clip with no such stretch gets a True statement and is counted under ``no_negative``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from pipelines.avfit.sources._common import (
    Sample,
    SampleWriter,
    Segment,
    check_split,
    clean_segment,
    media_present,
    merge_segments,
    read_rows,
    rng_for,
)
from pipelines.avfit.sources._pairing import load_pairing_table, read_openimages

NAME = "audioset_strong"
SPLITS = ("train", "test")
CLIP_SECONDS = 10.0
MIN_GAP = 1.0  # seconds; a shorter silence is too brief to state "not sounding during ..."
_STRONG_FILES = {"train": "audioset_train_strong.tsv", "test": "audioset_eval_strong.tsv"}


def read_strong(path: Path, stats: Counter) -> dict[str, dict[str, list[Segment]]]:
    """``segment_id -> label MID -> segments`` of a strong-label TSV, clipped to the clip."""
    events: dict[str, dict[str, list[Segment]]] = defaultdict(lambda: defaultdict(list))
    for row in read_rows(path, delimiter="\t"):
        if row[0] == "segment_id":
            continue
        segment_id, start, end, label = row[:4]
        segment = clean_segment(start, end, CLIP_SECONDS, stats)
        if segment is not None:
            events[segment_id][label].append(segment)
    return events


def longest_gap(segments: list[Segment], duration: float) -> Segment | None:
    """The longest stretch of ``[0, duration]`` outside the merged ``segments``, if >= ``MIN_GAP``."""
    edges = [0.0, *(t for segment in segments for t in segment), duration]
    gaps = [[edges[i], edges[i + 1]] for i in range(0, len(edges), 2)]
    gap = max(gaps, key=lambda g: g[1] - g[0])
    return gap if gap[1] - gap[0] >= MIN_GAP else None


def iter_samples(
    root: str | Path, split: str, *, seed: int = 0, stats: Counter | None = None
) -> Iterator[Sample]:
    """IGATL and fact-check samples of ``split``; skipped records are counted in ``stats``."""
    check_split(NAME, split, SPLITS)
    root = Path(root)
    stats = Counter() if stats is None else stats
    writer = SampleWriter(NAME, split, stats)
    classes = [c for c in load_pairing_table() if c.audioset_mids]
    events = read_strong(root / "audioset" / _STRONG_FILES[split], stats)
    images = read_openimages(root, split, classes, stats)
    for segment_id in sorted(events):
        clip_events = events[segment_id]
        matches = [c for c in classes if c.audioset_mids & clip_events.keys()]
        audio = root / "audioset" / "audio" / f"{segment_id}.wav"
        if not matches or not media_present(stats, audio):
            continue
        for c in matches:
            if not images.get(c.mid):
                stats["no_pair"] += 1
                continue
            record_id = f"{segment_id}-{c.slug}"
            rng = rng_for(NAME, split, seed, record_id)
            item = rng.choice(images[c.mid])
            segments = merge_segments(
                [s for mid in sorted(c.audioset_mids & clip_events.keys()) for s in clip_events[mid]]
            )
            common = {"label_text": c.name, "image_id": item.image_id, "paired": True}
            igatl = writer.igatl(
                record_id,
                item.path,
                audio,
                c.obj,
                segments,
                CLIP_SECONDS,
                rng,
                boxes=list(item.boxes),
                clip_id=segment_id,
                **common,
            )
            if igatl is not None:
                yield igatl
            fact_type = rng.choice((2, 3))
            label = rng.random() < 0.5
            segment = rng.choice(segments) if label else longest_gap(segments, CLIP_SECONDS)
            if segment is None:
                stats["no_negative"] += 1
                label, segment = True, rng.choice(segments)
            what = {"obj": c.obj} if fact_type == 2 else {"box": item.answer_box}
            fact = writer.avfact(
                record_id,
                item.path,
                audio,
                fact_type,
                label,
                rng,
                statement={**what, "segment": segment},
                duration=CLIP_SECONDS,
                **common,
            )
            if fact is not None:
                yield fact
