"""The MEERKAT paper's published numbers, against which the report reads this run's.

Each table's MEERKAT row and the row of its closest generalist baseline (as the paper itself
compares them in its Δ rows), the split of each source dataset the tables report, the evaluation
sample counts of Table 2, and the paper's names of the datasets. Numbers are in the paper's units:
percent in Tables 3, 4 and 6, F1 in [0, 1] in Table 5.
"""

from __future__ import annotations

# PAPER_REFERENCE[task][model][dataset][metric]. The paper's fact-checking is evaluated on its own
# benchmark, without a source dataset: "meerkatbench".
PAPER_REFERENCE: dict[str, dict[str, dict[str, dict[str, float]]]] = {
    "arig": {  # Table 3
        "BuboGPT": {
            "vggss": {"ciou": 40.31, "auc": 39.68},
            "flickr_soundnet": {"ciou": 81.17, "auc": 62.29},
            "pascal_sound": {"ciou": 58.52, "auc": 51.63},
            "avsbench": {"ciou": 74.33, "auc": 59.49},
        },
        "MEERKAT": {
            "vggss": {"ciou": 48.51, "auc": 45.62},
            "flickr_soundnet": {"ciou": 88.35, "auc": 67.88},
            "pascal_sound": {"ciou": 65.23, "auc": 56.10},
            "avsbench": {"ciou": 79.82, "auc": 65.35},
        },
    },
    "igatl": {  # Table 4
        "TimeChat": {"llp": {"f1": 51.28}, "audioset_strong": {"f1": 54.66}},
        "MEERKAT": {"llp": {"f1": 54.96}, "audioset_strong": {"f1": 56.85}},
    },
    "avfact": {  # Table 5
        "TimeChat": {
            "meerkatbench": {"type1_f1": 0.74, "type2_f1": 0.76, "type3_f1": 0.74, "type4_f1": 0.82}
        },
        "MEERKAT": {"meerkatbench": {"type1_f1": 0.85, "type2_f1": 0.83, "type3_f1": 0.84, "type4_f1": 0.88}},
    },
    "avqa": {  # Table 6, left
        "X-InstructBLIP": {
            "avqa": {"exist": 85.53, "localis": 80.09, "temp": 83.91},
            "music_avqa": {"exist": 80.28, "localis": 77.45, "temp": 68.83},
        },
        "MEERKAT": {
            "avqa": {"exist": 88.24, "localis": 86.65, "temp": 86.55},
            "music_avqa": {"exist": 83.62, "localis": 80.51, "temp": 73.33},
        },
    },
    "avc": {  # Table 6, right
        "X-InstructBLIP": {"valor": {"bleu4": 12.31, "meteor": 18.82, "rouge_l": 37.93, "cider": 65.73}},
        "MEERKAT": {"valor": {"bleu4": 16.88, "meteor": 23.18, "rouge_l": 45.67, "cider": 76.84}},
    },
}

# The split of each source dataset that the paper's tables report, named as the converters name
# them: Table 6 reports AVQA on val (its converter writes val_qa.json as split "test", AVQA having
# no public test set), MUSIC-AVQA on the (balanced) test set and VALOR-32K captions on val; the
# others are test sets (Table 2).
PAPER_SPLITS: dict[str, str] = {
    "vggss": "test",
    "flickr_soundnet": "test",
    "pascal_sound": "test",
    "avsbench": "test",
    "llp": "test",
    "audioset_strong": "test",
    "openimages_audioset": "test",
    "avqa": "test",
    "music_avqa": "test",
    "valor": "val",
}

# Evaluation samples per task and dataset in the paper's Table 2 ("# Samples", test side).
PAPER_SAMPLES: dict[str, dict[str, int]] = {
    "arig": {"vggss": 4_380, "flickr_soundnet": 2_780, "pascal_sound": 560, "avsbench": 490},
    "igatl": {"llp": 2_320, "audioset_strong": 24_100},
    "avfact": {"openimages_audioset": 321_000},  # all four types, on Open Images x AudioSet
    "avqa": {"avqa": 16_900, "music_avqa": 7_360},
    "avc": {"valor": 3_500},
}

_DATASET_LABELS = {
    "vggss": "VGG-SS",
    "flickr_soundnet": "Flickr-SoundNet",
    "pascal_sound": "PascalSound",
    "avsbench": "AVSBench",
    "llp": "LLP",
    "audioset_strong": "AudioSet-Strong",
    "avqa": "AVQA",
    "music_avqa": "MUSIC-AVQA",
    "valor": "VALOR-32K",
    "world": "procedural world",
    "meerkatbench": "MeerkatBench",
}


def dataset_label(name: str) -> str:
    """The paper's name of a source dataset ("vggss" -> "VGG-SS"); unknown names as they are."""
    return _DATASET_LABELS.get(name, name)
