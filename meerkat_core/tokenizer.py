"""Tokenizers: the paper's Llama-2 tokenizer, or an offline one built deterministically in code.

No package ships a Llama tokenizer, and nothing may download here, so the ``tiny`` preset trains a
small byte-level BPE with the ``tokenizers`` library on a fixed corpus (the instruction templates,
the chat template, answer words and a short English word list) and wraps it in
``PreTrainedTokenizerFast``. Same code, same corpus order → same vocabulary (a test checks it).

On top of the BPE it adds, as whole tokens:

* the special tokens ``<s> </s> <unk> <pad>`` and the media placeholders ``<image> <audio> <obj>``;
* every box coordinate ``0.00 … 1.00`` and every time ``0.0 … 60.0``: one token per number, so a
  box is four tokens. A small random model has to learn the value of a digit-by-digit number from
  its parts, and tends to settle on the mean box instead; one token per number gives each value a
  row of its own, which :mod:`meerkat_core.builders` starts as a smooth function of the value. The
  text format does not change: ``"[0.12, 0.30, 0.55, 0.80]"`` is still what is written and parsed;
  the paper preset's Llama tokenizer splits it into digits.

Whichever tokenizer is used, :func:`ensure_special_tokens` makes sure the placeholders exist.
"""

from __future__ import annotations

import functools
import itertools

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from meerkat_core import prompts

BASE_SPECIAL = ("<unk>", "<s>", "</s>", "<pad>")
BOX_NUMBERS = tuple(f"{i / 100:.2f}" for i in range(101))
TIME_NUMBERS = tuple(f"{i / 10:.1f}" for i in range(601))

_WORDS = """
the a an of in on at to from and or is are was were be it this that there which what where when how
who why with without for by as into inside outside left right top bottom middle center centre above
below before after first second third last between during while sound sounds sounding object objects
image picture photo audio clip audio-clip time window seconds second box bounding region area yes no
true false one two three four five six seven eight nine ten zero none red green blue yellow orange
purple pink white black gray grey cyan brown circle square triangle star cross diamond hexagon ring
heart bar beep hum buzz whistle drum bell tone chirp ping click noise silence music instrument
playing speaking singing barking man woman dog cat car bird piano guitar violin people person
loud quiet high low pitch rhythm fast slow count many several visible hear heard see seen
""".split()


def _corpus() -> list[str]:
    lines: list[str] = []
    for task in sorted(prompts.TEMPLATES):
        lines.extend(prompts.TEMPLATES[task])
    lines.append(prompts.SYSTEM_PROMPT)
    lines.append(prompts.chat_prompt("What makes the sound?"))
    lines.extend(" ".join(_WORDS[i : i + 12]) for i in range(0, len(_WORDS), 12))
    lines.extend(
        f"The {a} {b} makes a {c} sound."
        for a, b, c in itertools.product(_WORDS[60:72], _WORDS[72:84], _WORDS[84:96])
    )
    return lines


@functools.lru_cache(maxsize=4)
def build_offline_tokenizer(vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train the deterministic byte-level BPE of the ``tiny`` preset (once per process and size)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(BASE_SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in prompts.SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(n, normalized=False) for n in (*BOX_NUMBERS, *TIME_NUMBERS)])
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=list(prompts.SPECIAL_TOKENS),
    )
    return fast


def number_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, list[tuple[int, float]]]:
    """The whole-number tokens a tokenizer holds: ``{"box": [(id, value)...], "time": [...]}``.

    Values are in ascending order. Empty lists for a tokenizer that writes numbers digit by digit
    (Llama's), so callers can use it unconditionally.
    """
    vocab = tokenizer.get_vocab()
    return {
        kind: [(vocab[n], float(n)) for n in numbers if n in vocab]
        for kind, numbers in (("box", BOX_NUMBERS), ("time", TIME_NUMBERS))
    }


def ensure_special_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add the media placeholders (and a pad token) to a pretrained tokenizer that lacks them."""
    missing = [t for t in prompts.SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load_tokenizer(
    name_or_path: str | None, revision: str | None = None, *, vocab_size: int = 2048
) -> PreTrainedTokenizerBase:
    """The tokenizer at ``name_or_path`` (hub name or directory, at ``revision``; ``None``: the
    default branch) with the media placeholders added, or, for ``None``, the offline one."""
    if name_or_path is None:
        return build_offline_tokenizer(vocab_size)
    return ensure_special_tokens(AutoTokenizer.from_pretrained(name_or_path, revision=revision))
