"""LLP / AVVP (Tian et al., ECCV 2020) -> IGATL samples (val and test; paper Table 2 uses test).

Layout under ``root`` (``YapengTian/AVVP-ECCV20`` ``data/`` plus the LLP release)::

    AVVP_val_pd.csv, AVVP_test_pd.csv            clip lists: filename<TAB>event_labels
    AVVP_eval_audio.csv, AVVP_eval_visual.csv    filename<TAB>onset<TAB>offset<TAB>event_labels
    LLP_dataset/frame/<ytid>/000001.jpg ...      the clip's frames, as released
    LLP_dataset/audio/<ytid>.wav                 the clip's audio, extracted from LLP_dataset/video/<ytid>.mp4

All four files are TAB-separated despite the ``.csv`` suffix. ``filename`` is
``<ytid>_<start>_<end>`` and is split with ``rsplit("_", 2)`` (YouTube ids contain ``_``; 5 clips
have fractional times such as ``AP0061o0Nvk_101.8_111.8``). Onsets and offsets are integer seconds
in the clip with an **exclusive** offset (the loaders set ``GT[label, onset:offset] = 1``), so a row is
the segment ``[onset, offset]``; zero-length rows (``0 0``) and the reversed row (``9 0``) are empty
in that reading and are dropped as ``bad_segment``. Duplicate rows and touching rows merge. Eval rows
of clips not in the split's list (``19jWnmYnlD8_30_400``, short ids such as ``7X3oSVoA_90_100``) are
counted under ``unknown_clip``.

The task asks when the object *in the image* sounds, so one sample is made per clip and event class
that is both heard (audio file) and seen (visual file); the answer is the class's audio segments.
The image is the frame in the middle of the class's first visual segment, so the object is in view;
an audio-only class is counted under ``not_visible``. ``clip_id`` (the ``filename``) names the clip,
so that evaluation can aggregate the classes of one video as the LLP evaluation does. Class names become object words through
``OBJECTS`` (``Frying_(food)`` -> ``frying pan``).
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
    find_frame,
    media_present,
    merge_segments,
    read_rows,
    rng_for,
)

NAME = "llp"
SPLITS = ("val", "test")
_CLIP_LISTS = {"val": "AVVP_val_pd.csv", "test": "AVVP_test_pd.csv"}

# The object a viewer would point at for each of the 25 LLP event classes.
OBJECTS: dict[str, str] = {
    "Speech": "person speaking",
    "Car": "car",
    "Cheering": "cheering crowd",
    "Dog": "dog",
    "Cat": "cat",
    "Frying_(food)": "frying pan",
    "Basketball_bounce": "basketball",
    "Fire_alarm": "fire alarm",
    "Chainsaw": "chainsaw",
    "Cello": "cello",
    "Banjo": "banjo",
    "Singing": "singer",
    "Chicken_rooster": "chicken",
    "Violin_fiddle": "violin",
    "Vacuum_cleaner": "vacuum cleaner",
    "Baby_laughter": "laughing baby",
    "Accordion": "accordion",
    "Lawn_mower": "lawn mower",
    "Motorcycle": "motorcycle",
    "Helicopter": "helicopter",
    "Acoustic_guitar": "acoustic guitar",
    "Telephone_bell_ringing": "telephone",
    "Baby_cry_infant_cry": "crying baby",
    "Blender": "blender",
    "Clapping": "clapping hands",
}


def clip_duration(filename: str) -> float:
    """Clip length in seconds from ``<ytid>_<start>_<end>``."""
    _, start, end = filename.rsplit("_", 2)
    return round(float(end) - float(start), 3)


def read_events(path: Path, clips: set[str], stats: Counter) -> dict[tuple[str, str], list[Segment]]:
    """``(filename, class) -> merged segments`` of the eval rows of ``clips``."""
    events: dict[tuple[str, str], list[Segment]] = defaultdict(list)
    for row in list(read_rows(path, delimiter="\t"))[1:]:
        if len(row) != 4:
            stats["bad_row"] += 1
            continue
        filename, onset, offset, label = row
        if filename not in clips:
            stats["unknown_clip"] += 1
            continue
        segment = clean_segment(onset, offset, clip_duration(filename), stats)
        if segment is not None:
            events[(filename, label)].append(segment)
    return {event: merge_segments(segments) for event, segments in events.items()}


def iter_samples(
    root: str | Path, split: str, *, seed: int = 0, stats: Counter | None = None
) -> Iterator[Sample]:
    """IGATL samples of the LLP clips of ``split``; skipped events are counted in ``stats``."""
    check_split(NAME, split, SPLITS)
    root = Path(root)
    stats = Counter() if stats is None else stats
    writer = SampleWriter(NAME, split, stats)
    clips = {row[0] for row in list(read_rows(root / _CLIP_LISTS[split], delimiter="\t"))[1:]}
    heard = read_events(root / "AVVP_eval_audio.csv", clips, stats)
    seen = read_events(root / "AVVP_eval_visual.csv", clips, stats)
    for (filename, label), segments in sorted(heard.items()):
        if (filename, label) not in seen:
            stats["not_visible"] += 1
            continue
        ytid = filename.rsplit("_", 2)[0]
        duration = clip_duration(filename)
        first_seen = seen[(filename, label)][0]
        image = find_frame(
            root / "LLP_dataset" / "frame", ytid, at=(first_seen[0] + first_seen[1]) / 2 / duration
        )
        audio = root / "LLP_dataset" / "audio" / f"{ytid}.wav"
        if not media_present(stats, image, audio):
            continue
        record_id = f"{filename}-{label}"
        sample = writer.igatl(
            record_id,
            image,
            audio,
            OBJECTS.get(label, label.replace("_", " ").lower()),
            segments,
            duration,
            rng_for(NAME, split, seed, record_id),
            label_text=label,
            clip_id=filename,
        )
        if sample is not None:
            yield sample
