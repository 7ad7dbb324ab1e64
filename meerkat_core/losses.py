"""The answer term of the training loss: next-token cross-entropy, with soft labels on numbers.

``loss_ce`` of Eq. 4 is the cross-entropy of the answer tokens (labels are
:data:`~meerkat_core.batching.IGNORE_INDEX` elsewhere), summed here and averaged over the batch's
answer tokens by :meth:`~meerkat_core.model.MeerkatModel.forward`.

Soft number labels (``loss.number_label_sigma = σ > 0``): with a tokenizer that has whole-number
tokens (box coordinates ``0.00 … 1.00``, times ``0.0 … 60.0``, see
:func:`~meerkat_core.tokenizer.number_tokens`), the target of such a token is a Gaussian of width
σ grid steps over the numbers of its kind instead of a one-hot. 0.41 for a true 0.40 is then
nearly right rather than as wrong as 0.90, so a box answer gets a gradient towards the true value
even while the model still answers with the mean box. σ = 0 is plain cross-entropy (the presets'
default); a tokenizer that writes numbers digit by digit (Llama's) has no number tokens, and then
σ changes nothing. The OT and attention-consistency terms live beside their modules
(:func:`~meerkat_core.alignment.ot_loss`, :func:`~meerkat_core.attention.attention_consistency_loss`).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from meerkat_core.batching import IGNORE_INDEX
from meerkat_core.tokenizer import number_tokens


def number_label_targets(
    tokenizer: PreTrainedTokenizerBase, sigma: float, vocab: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The soft number labels of a tokenizer: ``(number_ids [K], number_slot [V], number_targets [K, K])``.

    ``number_ids``: every whole-number token, kind by kind in ascending value. ``number_slot``: a
    token's index in ``number_ids``, -1 for any other token. ``number_targets``: row k is the soft
    label of number k, a softmax over its own kind of ``-(distance in grid steps)² / 2σ²`` (zero on
    the other kind). ``K == 0`` when ``sigma == 0`` or the tokenizer has no number tokens.
    """
    ids, rows = [], []
    for pairs in number_tokens(tokenizer).values() if sigma > 0 else ():
        steps = torch.arange(len(pairs), dtype=torch.float32)
        rows.append(((steps[:, None] - steps[None, :]) ** 2 / (-2 * sigma**2)).softmax(dim=1))  # [n, n]
        ids += [i for i, _ in pairs]
    slot = torch.full((vocab,), -1, dtype=torch.long)
    slot[torch.tensor(ids, dtype=torch.long)] = torch.arange(len(ids))
    targets = torch.block_diag(*rows) if rows else torch.zeros(0, 0)
    return torch.tensor(ids, dtype=torch.long), slot, targets


def answer_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    number_ids: torch.Tensor,
    number_slot: torch.Tensor,
    number_targets: torch.Tensor,
) -> torch.Tensor:
    """Summed next-token cross-entropy over the non-ignored ``targets [B, L]`` of ``logits [B, L, V]``.

    A target that is a whole-number token is scored against its soft label (the three tensors of
    :func:`number_label_targets`); with no number tokens (``len(number_ids) == 0``) this is plain
    cross-entropy. Computed in float32 whatever the logits' dtype.
    """
    keep = targets != IGNORE_INDEX
    logp = logits[keep].float().log_softmax(dim=-1)  # [T, V]
    tgt = targets[keep]  # [T]
    nll = -logp.gather(1, tgt[:, None])[:, 0]  # [T]
    if len(number_ids):
        slot = number_slot[tgt]  # [T], -1 for non-numbers
        is_num = slot >= 0
        if is_num.any():
            soft = number_targets[slot[is_num]]  # [T_num, K]
            nll = nll.clone()
            nll[is_num] = -(soft * logp[is_num][:, number_ids]).sum(dim=1)
    return nll.sum()
