"""Tests for meerkat_core.metrics: hand-computed cases for every metric, pycocoevalcap parity.

Localisation cases use ``image_size=10`` so that pixel counts can be done by hand: a box
``[0, 0, 0.5, 0.5]`` covers 5 x 5 = 25 pixels.
"""

import math
import random

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from meerkat_core.metrics import (
    answer_matches,
    avqa_accuracy,
    avvp_f1,
    caption_scores,
    constant_box_baseline,
    event_f1,
    factcheck_scores,
    localization_scores,
    majority_baseline,
    mean_box_iou,
    normalise_answer,
    random_segment,
    sample_ciou,
    segment_f1,
    success_auc,
    success_rates,
    whole_clip_segment,
)

TOP_LEFT = (0.0, 0.0, 0.5, 0.5)  # 25 px at size 10
BOTTOM_RIGHT = (0.5, 0.5, 1.0, 1.0)  # 25 px
LEFT_HALF = (0.0, 0.0, 0.5, 1.0)  # 50 px
WHOLE = (0.0, 0.0, 1.0, 1.0)  # 100 px


# ---------------------------------------------------------------------------------------------
# Localisation
# ---------------------------------------------------------------------------------------------


def test_sample_ciou_hand_computed():
    assert sample_ciou("[0.00, 0.00, 0.50, 0.50]", [TOP_LEFT], 10) == 1.0
    # 25 px inside G, 25 px of background: 25 / (25 + 25).
    assert sample_ciou(LEFT_HALF, [TOP_LEFT], 10) == 0.5
    # 25 / (25 + 75).
    assert sample_ciou(WHOLE, TOP_LEFT, 10) == 0.25
    # Several ground-truth boxes: G is their union (50 px), the prediction covers one of them.
    assert sample_ciou(BOTTOM_RIGHT, [TOP_LEFT, BOTTOM_RIGHT], 10) == 0.5
    # Overlapping ground-truth boxes are united, not counted twice.
    assert sample_ciou(TOP_LEFT, [TOP_LEFT, (0.0, 0.0, 0.3, 0.3)], 10) == 1.0


def test_sample_ciou_rasterises_like_ez_vsl():
    # At 224, 0.1 -> pixel 22, 0.2 -> 44 (int(44.8)), 0.3 -> 67 (int(67.2)): G is 22 x 22 = 484 px and
    # P is 45 x 22 = 990 px containing it, so cIoU = 484 / 990, below 0.5 although the exact IoU is 0.5.
    assert sample_ciou((0.1, 0.1, 0.3, 0.2), [(0.1, 0.1, 0.2, 0.2)]) == pytest.approx(484 / 990, abs=1e-15)


def test_sample_ciou_annotator_consensus():
    # Two annotators: top-left agreed by both (G = 1, 25 px), bottom-left by one (G = 0.5, 25 px).
    gt = [[TOP_LEFT], [LEFT_HALF]]
    assert sample_ciou(TOP_LEFT, gt, 10) == pytest.approx(25 / 37.5)
    # Predicting the half-agreed region costs nothing: it is not background.
    assert sample_ciou(LEFT_HALF, gt, 10) == 1.0
    # Whole image: 37.5 / (37.5 + 50 background px).
    assert sample_ciou(WHOLE, gt, 10) == pytest.approx(37.5 / 87.5)
    # One annotator alone gives 0.5 everywhere; three agreeing are clipped to 1.
    assert sample_ciou(LEFT_HALF, [[TOP_LEFT]], 10) == pytest.approx(12.5 / (12.5 + 25))
    assert sample_ciou(LEFT_HALF, [[TOP_LEFT]] * 3, 10) == pytest.approx(25 / 50)
    # One annotator's two overlapping boxes are one vote, not two.
    assert sample_ciou(TOP_LEFT, [[TOP_LEFT, TOP_LEFT]], 10) == 1.0
    assert sample_ciou(WHOLE, [[TOP_LEFT, TOP_LEFT]], 10) == pytest.approx(12.5 / (12.5 + 75))


@pytest.mark.parametrize(
    "pred",
    [None, "", "no idea", "[0.5, 0.5]", "[0.6, 0.0, 0.4, 1.0]", (0.6, 0.0, 0.4, 1.0), (math.nan, 0, 1, 1), 3],
)
def test_unparseable_box_scores_zero(pred):
    assert sample_ciou(pred, [TOP_LEFT], 10) == 0.0
    assert localization_scores([pred], [[TOP_LEFT]], 10)["n_unparsed"] == 1


def test_localization_scores_hand_computed():
    preds = ["[0.00, 0.00, 0.50, 0.50]", LEFT_HALF, "I cannot tell", WHOLE]
    gts = [[TOP_LEFT]] * 4
    # cIoUs 1, 0.5, 0, 0.25. Success rate: 1 at t = 0; 0.75 for t in 0.05..0.25; 0.5 for 0.3..0.5;
    # 0.25 for 0.55..1. Trapezoids of width 0.05:
    # (1 + .75)/2*.05 + 4*.75*.05 + (.75 + .5)/2*.05 + 4*.5*.05 + (.5 + .25)/2*.05 + 9*.25*.05 = 0.45625
    scores = localization_scores(preds, gts, image_size=10)
    assert scores["ciou"] == 0.5  # cIoU exactly 0.5 counts as a success
    assert scores["auc"] == pytest.approx(0.45625, abs=1e-12)
    assert scores["mean_ciou"] == pytest.approx(1.75 / 4)
    assert (scores["n"], scores["n_unparsed"]) == (4, 1)


def test_success_curve_and_its_auc_by_hand():
    # cIoUs 1, 0.5, 0, 0.25 as above: the same curve and area as localization_scores reports
    cious = [1.0, 0.5, 0.0, 0.25]
    np.testing.assert_allclose(success_rates(cious, [0.0, 0.25, 0.5, 0.75]), [1.0, 0.75, 0.5, 0.25])
    assert success_auc(cious) == pytest.approx(0.45625, abs=1e-12)
    # the trapezoid rule on uneven thresholds: (1 + 0.75) / 2 * 0.25 + (0.75 + 0.25) / 2 * 0.75
    assert success_auc(cious, [0.0, 0.25, 1.0]) == pytest.approx(0.59375)
    assert success_auc([1.0, 1.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one"):
        success_rates([])


def test_localization_scores_perfect_and_empty():
    perfect = localization_scores([TOP_LEFT, BOTTOM_RIGHT], [[TOP_LEFT], [[BOTTOM_RIGHT], [BOTTOM_RIGHT]]])
    assert perfect == {"ciou": 1.0, "auc": pytest.approx(1.0), "mean_ciou": 1.0, "n": 2, "n_unparsed": 0}
    empty = localization_scores([], [])
    assert empty["n"] == 0 and all(math.isnan(empty[k]) for k in ("ciou", "auc", "mean_ciou"))


@pytest.mark.parametrize("gt", [[], [[], []], [(0.6, 0.0, 0.4, 1.0)], [(0, 0, 1)], [TOP_LEFT, [TOP_LEFT]]])
def test_invalid_ground_truth_box_raises(gt):
    with pytest.raises(ValueError):
        sample_ciou(TOP_LEFT, gt, 10)


def test_lengths_must_match():
    with pytest.raises(ValueError, match="same length"):
        localization_scores([TOP_LEFT], [])


def test_mean_box_iou_best_match_and_misses():
    preds = ["[0.00, 0.00, 0.50, 0.50]", None, (0.0, 0.0, 1.0, 0.5)]
    gts = [[WHOLE, LEFT_HALF], [WHOLE], [[TOP_LEFT], [WHOLE]]]
    # Best IoUs: max(0.25, 0.5); a miss; max over the flattened annotators (0.5, 0.5).
    scores = mean_box_iou(preds, gts)
    assert scores["mean_iou"] == pytest.approx((0.5 + 0.0 + 0.5) / 3)
    assert (scores["n"], scores["n_unparsed"]) == (3, 1)
    assert math.isnan(mean_box_iou([], [])["mean_iou"])


# ---------------------------------------------------------------------------------------------
# Segment-level F1
# ---------------------------------------------------------------------------------------------


def test_segment_f1_hand_computed():
    preds = [
        "[2.5, 5.5]",  # bins 2..5 (0.5 s of bin 2 and of bin 5 count)
        [(-2.0, 0.5), (8.6, 15.0)],  # clipped to [0, 0.5] -> bin 0; [8.6, 10] -> bin 9 only (0.4 s of bin 8)
        "I don't know",  # unparseable: no prediction
        [],  # nothing predicted, nothing there
    ]
    gts = [[(2.0, 5.0)], [(0.0, 1.0), (9.0, 12.0)], (4.0, 6.0), []]
    # Clip 1: TP 3, FP 1. Clip 2: TP 2. Clip 3: FN 2. Clip 4: nothing.
    scores = segment_f1(preds, gts, duration=10)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (5, 1, 2)
    assert scores["precision"] == pytest.approx(5 / 6)
    assert scores["recall"] == pytest.approx(5 / 7)
    assert scores["f1"] == pytest.approx(10 / 13)
    assert (scores["n"], scores["n_unparsed"]) == (4, 1)


def test_segment_f1_bin_rules():
    # Two segments that together cover 0.6 s of bin 0 activate it; 0.4 s of bin 1 does not.
    assert segment_f1([[(0.0, 0.3), (0.7, 1.4)]], [(0.0, 1.0)], 3)["f1"] == 1.0
    # Several segments in one text answer.
    assert segment_f1(["[1.0, 2.0] and later [5.0, 6.0]"], [[(1, 2), (5, 6)]], 10)["tp"] == 2
    # A last bin shorter than a second ([9, 9.3)) is active from half its length (0.15 s).
    scores = segment_f1([(9.2, 9.3), (9.1, 9.3)], [(9.0, 9.3), (9.0, 9.3)], [9.3, 9.3])
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 0, 1)
    # A segment wholly beyond the clip is no prediction at all.
    assert segment_f1([(12.0, 14.0)], [(0.0, 1.0)], 10)["fp"] == 0


def test_segment_f1_perfect_and_no_positives():
    assert segment_f1(["[0.0, 30.0]"], [(0.0, 30.0)], 30)["f1"] == 1.0
    nothing = segment_f1([[]], [[]], 10)
    assert math.isnan(nothing["f1"]) and math.isnan(nothing["precision"]) and math.isnan(nothing["recall"])
    false_alarm = segment_f1([(1.0, 2.0)], [[]], 10)
    assert (false_alarm["f1"], false_alarm["precision"]) == (0.0, 0.0)
    assert math.isnan(false_alarm["recall"])
    assert segment_f1([], [], 10)["n"] == 0


def test_segment_f1_rejects_bad_inputs():
    with pytest.raises(ValueError):
        segment_f1([[]], [(5.0, 1.0)], 10)
    with pytest.raises(ValueError):
        segment_f1([[]], [[]], 0)
    with pytest.raises(ValueError):
        segment_f1([[], []], [[], []], [10])


# ---------------------------------------------------------------------------------------------
# Event-level F1
# ---------------------------------------------------------------------------------------------


def test_event_f1_iou_exactly_half_matches():
    assert event_f1([[(0.0, 2.0)]], [[(1.0, 2.0)]])["tp"] == 1
    # 0.2 / 0.4 is 0.4999999999999997 in floating point; written with one decimal it is 0.5.
    assert event_f1(["[1.2, 1.6]"], [(1.2, 1.4)])["tp"] == 1
    below = event_f1([(0.0, 2.1)], [(1.0, 2.0)])  # IoU 1 / 2.1
    assert (below["tp"], below["fp"], below["fn"]) == (0, 1, 1)


def test_event_f1_greedy_by_iou():
    gts = [[(0.0, 4.0), (1.0, 5.0)]]
    # IoUs: p0-g1 3.5/4.5, p0-g0 2.5/5.5; p1-g1 3.8/4.2, p1-g0 3.2/4.8. The best pair (p1, g1) goes
    # first, and p0 is then left with g0 at IoU < 0.5: one match, where matching in prediction order
    # would have found two.
    scores = event_f1([[(1.5, 5.5), (0.8, 4.8)]], gts)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 1, 1)
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.5, 0.5, 0.5)


def test_event_f1_one_to_one_micro_over_clips():
    preds = [
        [(0.0, 4.4), (0.0, 4.0), (5.0, 9.5)],  # two candidates for the first event: one is a FP
        None,  # unparseable: both events missed
        "[3.0, 4.0]",  # no event in this clip: a FP
        [],  # nothing and nothing
    ]
    gts = [[(0.0, 4.0), (5.0, 9.0)], [(1.0, 2.0), (6.0, 7.0)], [], []]
    scores = event_f1(preds, gts)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (2, 2, 2)
    assert scores["f1"] == pytest.approx(4 / 8)
    assert (scores["n"], scores["n_unparsed"]) == (4, 1)


def test_event_f1_perfect_and_empty():
    assert event_f1(["[3.0, 7.5]"], [(3.0, 7.5)])["f1"] == 1.0
    assert math.isnan(event_f1([[]], [[]])["f1"])
    assert math.isnan(event_f1([], [])["f1"])


# ---------------------------------------------------------------------------------------------
# LLP/AVVP protocol (Table 4): per class, per video, averaged over videos
# ---------------------------------------------------------------------------------------------


def test_avvp_f1_hand_computed_per_class_per_video():
    preds = [
        "[0.0, 2.0], [6.0, 9.0]",  # video A, dog: bins 0 1 6 7 8
        "no idea",  # video A, car: unparsed, nothing predicted
        [(1.0, 3.0)],  # video B: bins 1 2
        [],  # video C: nothing predicted, nothing there
    ]
    gts = [[(0, 3), (6, 8)], [(4, 5)], [(2, 6)], []]
    videos = ["A", "A", "B", "C"]
    scores = avvp_f1(preds, gts, 10, videos)
    # Segment level. A/dog: TP 4 (0 1 6 7), FP 1 (8), FN 1 (2) -> 8/10; A/car: FN 1 -> 0; A = 0.4.
    # B: TP 1 (2), FP 1 (1), FN 3 (3 4 5) -> 2/6. C: no prediction, no truth -> left out -> 1.0.
    assert scores["segment_f1"] == pytest.approx((0.4 + 1 / 3 + 1.0) / 3)
    # Event level. A/dog: runs [0,2) and [6,9) against [0,3) and [6,8): IoU 2/3 each -> F1 1; A/car:
    # one missed event -> 0; A = 0.5. B: [1,3) vs [2,6) has IoU 1/5 -> FP 1, FN 1 -> 0. C: 1.0.
    assert scores["event_f1"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert (scores["n"], scores["n_videos"], scores["n_unparsed"]) == (4, 3, 1)


def test_avvp_f1_events_are_maximal_runs_matched_at_iou_half():
    # IoU exactly 0.5 matches: [0,2) against [0,4).
    assert avvp_f1([[(0.0, 2.0)]], [[(0, 4)]], 10)["event_f1"] == 1.0
    # Adjacent predicted segments are one run ([0,3)), whatever the model wrote.
    assert avvp_f1([[(0.0, 1.0), (1.0, 3.0)]], [[(0, 3)]], 10)["event_f1"] == 1.0
    # One run across two ground-truth events ([0,5) vs [0,2) and [3,5), IoU 2/5 each): FP 1, FN 2.
    across = avvp_f1([[(0.0, 5.0)]], [[(0, 2), (3, 5)]], 10)
    assert across["event_f1"] == 0.0
    assert across["segment_f1"] == pytest.approx(8 / 9)  # TP 4, FP 1 (bin 2)
    # An extra run is a FP: TP 1, FP 1, FN 0 -> 2/3.
    assert avvp_f1([[(0.0, 3.0), (5.0, 6.0)]], [[(0, 4)]], 10)["event_f1"] == pytest.approx(2 / 3)
    # Continuous predictions activate the bins they cover at least half of: [2.5, 5.5] -> bins 2..5.
    assert avvp_f1(["[2.5, 5.5]"], [[(2, 6)]], 10)["segment_f1"] == 1.0


def test_avvp_f1_differs_from_micro_pooling():
    # A long clip with many positives and a short miss: micro pooling weighs bins, LLP weighs videos.
    preds = [[(0.0, 10.0)], []]
    gts = [[(0, 10)], [(0, 1)]]
    assert avvp_f1(preds, gts, 10)["segment_f1"] == pytest.approx(0.5)
    assert segment_f1(preds, gts, 10)["f1"] == pytest.approx(20 / 21)


def test_avvp_f1_edge_cases():
    empty = avvp_f1([], [], 10)
    assert math.isnan(empty["segment_f1"]) and empty["n"] == 0
    # A false alarm in a video without events scores 0, not "undefined".
    assert avvp_f1([[(1.0, 2.0)]], [[]], 10)["segment_f1"] == 0.0
    with pytest.raises(ValueError, match="one video per row"):
        avvp_f1([[], []], [[], []], 10, ["A"])
    with pytest.raises(ValueError):
        avvp_f1([[]], [(5.0, 1.0)], 10)


# ---------------------------------------------------------------------------------------------
# Fact-checking
# ---------------------------------------------------------------------------------------------


def test_factcheck_scores_hand_computed():
    preds = ["True", "False", "false.", "maybe", True, None]
    labels = [True, True, False, False, True, False]
    types = [1, 1, 1, 1, 2, 2]
    scores = factcheck_scores(preds, labels, types)
    # Type 1: TP 1, FN 1, TN 1, and the unparseable answer on a False label is a FP.
    type1 = scores["per_type"][1]
    assert (type1["f1"], type1["precision"], type1["recall"], type1["accuracy"]) == (0.5, 0.5, 0.5, 0.5)
    assert (type1["n"], type1["n_unparsed"]) == (4, 1)
    # Type 2: TP 1, FP 1 (None on a False label): F1 = 2 / 3.
    type2 = scores["per_type"][2]
    assert type2["f1"] == pytest.approx(2 / 3) and type2["accuracy"] == 0.5
    # Overall: TP 2, FP 2, FN 1, TN 1.
    assert scores["f1"] == pytest.approx(4 / 7)
    assert scores["accuracy"] == 0.5
    assert (scores["n"], scores["n_unparsed"]) == (6, 2)
    assert scores["mean_type_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert set(scores["per_type"]) == {1, 2}


def test_factcheck_unparseable_on_true_label_is_a_miss():
    scores = factcheck_scores(["Yesterday", "True"], [True, True], [3, 3])
    assert (scores["recall"], scores["precision"], scores["accuracy"]) == (0.5, 1.0, 0.5)


def test_factcheck_no_positives_and_perfect():
    none = factcheck_scores(["False", "No"], [False, "False"], [4, 4])
    assert math.isnan(none["f1"]) and none["accuracy"] == 1.0
    assert factcheck_scores(["False"], [False], [4])["per_type"][4]["accuracy"] == 1.0
    perfect = factcheck_scores(["True", "False"], [True, False], [1, 2])
    assert (perfect["f1"], perfect["accuracy"]) == (1.0, 1.0)
    assert math.isnan(factcheck_scores([], [], [])["f1"])


def test_factcheck_rejects_bad_labels_and_types():
    with pytest.raises(ValueError):
        factcheck_scores(["True"], ["perhaps"], [1])
    with pytest.raises(ValueError):
        factcheck_scores(["True"], [True], [5])


# ---------------------------------------------------------------------------------------------
# AVQA
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("The Two guitars!", "2 guitars"),
        ("2.5", "2.5"),
        ("1,000 people.", "1000 people"),
        ("An accordion", "accordion"),
        ("Don't know", "dont know"),
        ("  left-hand   side ", "left hand side"),
    ],
)
def test_normalise_answer(text, normalised):
    assert normalise_answer(text) == normalised


def test_answer_matches():
    assert answer_matches("three", "3")
    assert answer_matches("Yes, it is.", "yes")
    assert answer_matches("No.", "no")
    assert not answer_matches("Yesterday", "yes")
    assert not answer_matches("yeah", "yes")
    assert not answer_matches("There are two.", "2")
    assert not answer_matches("left or right", "left")
    assert not answer_matches(None, "no")


def test_avqa_accuracy_per_category():
    preds = ["Two", "Yes, it is.", "yesterday", "the violin", "left", None]
    answers = ["2", "yes", "yes", "Violin", "right", "no"]
    categories = ["Count", "Exist", "Exist", "Localis", "Localis", None]
    scores = avqa_accuracy(preds, answers, categories)
    assert (scores["accuracy"], scores["n"]) == (0.5, 6)
    assert scores["per_category"] == {
        "Count": {"accuracy": 1.0, "n": 1},
        "Exist": {"accuracy": 0.5, "n": 2},
        "Localis": {"accuracy": 0.5, "n": 2},
    }
    assert math.isnan(avqa_accuracy([], [], [])["accuracy"])


# ---------------------------------------------------------------------------------------------
# Captioning
# ---------------------------------------------------------------------------------------------

REFERENCES = [
    ["a dog barks at a cat in the garden", "a dog is barking loudly"],
    ["a man plays the guitar on a stage"],
    ["rain falls on a tin roof", "heavy rain is falling on a roof"],
]


@pytest.fixture(scope="module")
def meteor():
    """One METEOR process for the module; its JVM exits when the test process closes the pipe to it."""
    return Meteor()


@pytest.fixture
def shared_meteor(meteor, monkeypatch):
    """``caption_scores`` scores with the module's METEOR process rather than starting its own: each
    start is a JVM loading METEOR's paraphrase tables, 5-10 s on two cores."""
    monkeypatch.setattr("pycocoevalcap.meteor.meteor.Meteor", lambda: meteor)
    return meteor


def _pycocoevalcap_direct(preds, references, meteor):
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(references)})
    res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(preds)})
    return {
        "bleu4": Bleu(4).compute_score(gts, res)[0][3],
        "meteor": meteor.compute_score(gts, res)[0],
        "rouge_l": Rouge().compute_score(gts, res)[0],
        "cider": Cider().compute_score(gts, res)[0],
        "n": len(preds),
    }


def test_caption_scores_equal_pycocoevalcap(shared_meteor):
    preds = ["A dog is barking at a cat.", "a man is playing a guitar", ""]
    ours = caption_scores(preds, REFERENCES)
    assert ours == _pycocoevalcap_direct(preds, REFERENCES, shared_meteor)
    assert 0.0 < ours["bleu4"] < 1.0 and 0.0 < ours["meteor"] < 1.0


def test_perfect_captions_score_higher_than_wrong_ones(shared_meteor):
    perfect = caption_scores([refs[0] for refs in REFERENCES], REFERENCES)
    wrong = caption_scores(["an old clock ticks", "children sing songs", None], REFERENCES)
    for key in ("bleu4", "meteor", "rouge_l", "cider"):
        assert perfect[key] > wrong[key], key
    assert perfect["bleu4"] == pytest.approx(1.0)


def test_caption_scores_without_java_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="default-jre-headless"):
        caption_scores(["a dog"], [["a dog barks"]])


def test_caption_scores_empty_and_invalid():
    empty = caption_scores([], [])
    assert empty["n"] == 0 and math.isnan(empty["cider"])
    with pytest.raises(ValueError):
        caption_scores(["a dog"], [[]])


# ---------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------


def test_majority_baseline():
    assert majority_baseline([False, True, True]) is True
    assert majority_baseline(["left", "right", "right", "left"]) == "left"  # tie: first seen
    with pytest.raises(ValueError):
        majority_baseline([])


def test_constant_box_baseline_is_the_mean_box():
    box = constant_box_baseline([[TOP_LEFT], [BOTTOM_RIGHT, WHOLE]])
    assert box == pytest.approx((1 / 6, 1 / 6, 5 / 6, 5 / 6))
    # It is a valid prediction for the localisation metrics.
    assert localization_scores([box], [[TOP_LEFT]], 10)["n_unparsed"] == 0
    with pytest.raises(ValueError):
        constant_box_baseline([])


def test_segment_baselines():
    assert whole_clip_segment(30) == (0.0, 30.0)
    assert segment_f1([whole_clip_segment(10)], [(0.0, 5.0)], 10)["precision"] == 0.5
    rng = random.Random(0)
    draws = [random_segment(30.0, rng) for _ in range(200)]
    assert all(0.0 <= start <= end <= 30.0 for start, end in draws)
    assert 8.5 < sum(end - start for start, end in draws) / len(draws) < 11.5  # expected 30 / 3
    assert random_segment(30.0, random.Random(0)) == draws[0]
