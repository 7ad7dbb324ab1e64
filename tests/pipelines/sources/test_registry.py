"""The source registry of ``pipelines.avfit.sources``: its names, splits and lookup errors."""

from __future__ import annotations

import pytest

from pipelines.avfit.sources import SOURCES, SPLITS, iter_source


def test_registry_lists_every_table2_source():
    assert set(SOURCES) == {
        "vggss",
        "flickr_soundnet",
        "avsbench",
        "pascal_sound",
        "llp",
        "audioset_strong",
        "openimages_audioset",
        "openimages_vggsound",
        "avqa",
        "music_avqa",
        "valor",
    }
    assert set(SPLITS) == set(SOURCES)


def test_iter_source_rejects_unknown_names_and_splits(tmp_path):
    with pytest.raises(KeyError, match="known sources: audioset_strong, avqa"):
        iter_source("vgg-ss", tmp_path, "test")
    with pytest.raises(ValueError, match=r"no 'train' split; it offers \('test',\)"):
        iter_source("vggss", tmp_path, "train")
