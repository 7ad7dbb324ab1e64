"""meerkat_core.losses: the answer cross-entropy and its soft labels on whole-number tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from meerkat_core.batching import IGNORE_INDEX
from meerkat_core.losses import answer_cross_entropy, number_label_targets
from meerkat_core.tokenizer import load_tokenizer, number_tokens


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


def test_soft_labels_are_gaussians_over_the_numbers_of_their_kind(tokenizer):
    vocab = len(tokenizer)
    ids, slot, targets = number_label_targets(tokenizer, 1.5, vocab)
    kinds = number_tokens(tokenizer)
    n_box, n_time = len(kinds["box"]), len(kinds["time"])
    assert ids.tolist() == [i for i, _ in kinds["box"]] + [i for i, _ in kinds["time"]]
    assert targets.shape == (n_box + n_time, n_box + n_time) and slot.shape == (vocab,)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(len(ids)))
    k = int(slot[tokenizer.convert_tokens_to_ids("0.40")])
    assert ids[k] == tokenizer.convert_tokens_to_ids("0.40")
    row = targets[k]
    assert row.argmax() == k and row[k + 1] > row[k + 3] > row[k + 10] > 0
    torch.testing.assert_close(row[k - 2], row[k + 2])  # symmetric in the distance
    # ratio of neighbours exp(-1 / (2 sigma^2)) for one grid step
    assert (row[k + 1] / row[k]).item() == pytest.approx(torch.exp(torch.tensor(-1 / 4.5)).item(), rel=1e-5)
    assert not row[n_box:].any()  # a box coordinate puts no mass on times
    assert int(slot[tokenizer.convert_tokens_to_ids("<pad>")]) == -1
    assert int((slot >= 0).sum()) == len(ids)


def test_zero_sigma_has_no_number_labels(tokenizer):
    ids, slot, targets = number_label_targets(tokenizer, 0.0, len(tokenizer))
    assert len(ids) == 0 and targets.shape == (0, 0) and not (slot >= 0).any()


def _small_case():
    # vocabulary of 6: tokens 3, 4, 5 are the numbers of one kind
    number_ids = torch.tensor([3, 4, 5])
    number_slot = torch.tensor([-1, -1, -1, 0, 1, 2])
    number_targets = torch.tensor([[0.8, 0.2, 0.0], [0.1, 0.8, 0.1], [0.0, 0.2, 0.8]])
    logits = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[1, 4, IGNORE_INDEX], [IGNORE_INDEX, 5, 0]])
    return logits, targets, number_ids, number_slot, number_targets


def test_without_number_tokens_it_is_the_summed_cross_entropy():
    logits, targets, *_ = _small_case()
    none = (torch.zeros(0, dtype=torch.long), torch.full((6,), -1), torch.zeros(0, 0))
    got = answer_cross_entropy(logits, targets, *none)
    expected = F.cross_entropy(logits.reshape(-1, 6), targets.reshape(-1), reduction="sum")
    torch.testing.assert_close(got, expected)


def test_a_number_target_is_scored_against_its_soft_label():
    logits, targets, number_ids, number_slot, number_targets = _small_case()
    got = answer_cross_entropy(logits, targets, number_ids, number_slot, number_targets)
    logp = logits.log_softmax(dim=-1)
    expected = (
        -logp[0, 0, 1]  # token 1: not a number, plain CE
        - (number_targets[1] * logp[0, 1, 3:]).sum()  # token 4 is number slot 1
        - (number_targets[2] * logp[1, 1, 3:]).sum()  # token 5 is number slot 2
        - logp[1, 2, 0]
    )
    torch.testing.assert_close(got, expected)
    # a near miss costs less than a far one under soft labels, unlike one-hot CE's equal treatment
    near = torch.full((1, 1, 6), -10.0)
    near[0, 0, 3] = 10.0  # predicts number 0 for a true number 1
    far = torch.full((1, 1, 6), -10.0)
    far[0, 0, 0] = 10.0  # predicts a non-number token
    truth = torch.tensor([[4]])
    soft = (number_ids, number_slot, number_targets)
    assert answer_cross_entropy(near, truth, *soft) < answer_cross_entropy(far, truth, *soft)


def test_the_loss_is_computed_in_float32():
    logits, targets, *rest = _small_case()
    out = answer_cross_entropy(logits.to(torch.bfloat16), targets, *rest)
    assert out.dtype == torch.float32
