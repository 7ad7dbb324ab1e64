"""Converters from the public datasets of the paper's Table 2 to AVFIT samples.

Each source module reads one dataset's annotation files as distributed (quirks included, see the
module docstrings) and exposes::

    iter_samples(root, split, *, seed=0, stats=None) -> Iterator[sample]

yielding samples of ``pipelines.avfit.sample``'s contract. Output is deterministic for a given
``seed``. Records that cannot be used (missing media, garbage boxes, unknown clips, ...) are skipped
and counted in ``stats``, a ``collections.Counter`` the caller may pass in to read the counts.

``SOURCES`` maps the registry name (also the samples' ``source`` field) to ``iter_samples``;
``SPLITS`` maps it to the splits the dataset offers. ``iter_source`` looks a source up by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipelines.avfit.sources import (
    audioset_strong,
    avqa,
    avsbench,
    flickr_soundnet,
    llp,
    music_avqa,
    openimages_audioset,
    openimages_vggsound,
    pascal_sound,
    valor,
    vggss,
)
from pipelines.avfit.sources._common import check_split

_MODULES = (
    vggss,
    flickr_soundnet,
    avsbench,
    pascal_sound,
    llp,
    audioset_strong,
    openimages_audioset,
    openimages_vggsound,
    avqa,
    music_avqa,
    valor,
)

SOURCES: dict[str, Callable[..., Iterator[dict[str, Any]]]] = {m.NAME: m.iter_samples for m in _MODULES}
SPLITS: dict[str, tuple[str, ...]] = {m.NAME: m.SPLITS for m in _MODULES}


def iter_source(name: str, root: str | Path, split: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """The samples of source ``name``; ``kwargs`` (``seed``, ``stats``) go to its ``iter_samples``.

    Raises KeyError naming the known sources when ``name`` is not one of them, and ValueError naming
    the source's splits when ``split`` is not one of them (at once, not when iteration starts).
    """
    if name not in SOURCES:
        raise KeyError(f"unknown AVFIT source {name!r}; known sources: {', '.join(sorted(SOURCES))}")
    check_split(name, split, SPLITS[name])
    return SOURCES[name](root, split, **kwargs)
