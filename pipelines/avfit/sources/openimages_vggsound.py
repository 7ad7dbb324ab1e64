"""Open Images x VGGSound -> ARIG samples (paper Table 2: 180K training pairs).

Files and layout: see ``_pairing`` (``openimages/`` boxes and images, ``vggsound/vggsound.csv`` and
``vggsound/audio/<ytid>_<start:06d>.wav``). ``vggsound.csv`` has no header and quotes labels that
contain commas (``"female speech, woman speaking"``); its own typo ``eletric blender running`` is
matched verbatim by the lookup table. Splits: train pairs Open Images train with VGGSound train
clips, test pairs Open Images test with VGGSound test clips.

For every image and every table class with a box in it, a VGGSound clip of one of the class's labels
is drawn; the sample holds all boxes of the class and answers with the largest single-object one
(``IsGroupOf`` boxes stay in the ground truth only, see ``_pairing``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pipelines.avfit.sources._common import Sample, SampleWriter, check_split, rng_for
from pipelines.avfit.sources._pairing import AudioPools, load_pairing_table, read_openimages, read_vggsound

NAME = "openimages_vggsound"
SPLITS = ("train", "test")


def iter_samples(
    root: str | Path, split: str, *, seed: int = 0, stats: Counter | None = None
) -> Iterator[Sample]:
    """ARIG samples of ``split``; skipped records are counted in ``stats``."""
    check_split(NAME, split, SPLITS)
    root = Path(root)
    stats = Counter() if stats is None else stats
    writer = SampleWriter(NAME, split, stats)
    classes = [c for c in load_pairing_table() if c.vggsound_labels]
    clips = {
        clip: frozenset((label,))
        for clip, label in read_vggsound(root / "vggsound" / "vggsound.csv", split).items()
    }
    images = read_openimages(root, split, classes, stats)
    pools = AudioPools(clips, classes, lambda c: c.vggsound_labels, root / "vggsound" / "audio", stats)
    for c in classes:
        for item in images.get(c.mid, ()):
            if not pools.has(c):
                stats["no_pair"] += 1
                continue
            record_id = f"{item.image_id}-{c.slug}"
            rng = rng_for(NAME, split, seed, record_id)
            clip = pools.draw(c, rng)
            sample = writer.arig(
                record_id,
                item.path,
                pools.path(clip),
                list(item.boxes),
                rng,
                answer_box=item.answer_box,
                audio_id=clip,
                paired=True,
                label_text=c.name,
            )
            if sample is not None:
                yield sample
