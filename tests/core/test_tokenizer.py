"""meerkat_core.tokenizer: the offline tokenizer, its whole-number tokens and the media placeholders."""

from __future__ import annotations

import copy

import pytest

from meerkat_core.prompts import SPECIAL_TOKENS
from meerkat_core.tokenizer import (
    BOX_NUMBERS,
    TIME_NUMBERS,
    build_offline_tokenizer,
    ensure_special_tokens,
    load_tokenizer,
    number_tokens,
)
from tests.fixtures.pretrained import llama_style_tokenizer


@pytest.fixture(scope="module")
def tiny():
    return load_tokenizer(None)


def test_the_offline_tokenizer_is_the_same_on_every_build(tiny):
    assert load_tokenizer(None) is tiny  # built once per process
    again = build_offline_tokenizer.__wrapped__(2048)  # a fresh build, past the cache
    assert again is not tiny and again.get_vocab() == tiny.get_vocab()


def test_numbers_are_one_token_each_and_the_text_round_trips(tiny):
    text = "[0.12, 0.30, 0.55, 0.80] and [3.5, 60.0]"
    ids = tiny(text, add_special_tokens=False)["input_ids"]
    tokens = tiny.convert_ids_to_tokens(ids)
    for number in ("0.12", "0.30", "0.55", "0.80", "3.5", "60.0"):
        assert number in tokens, (number, tokens)
    assert tiny.decode(ids) == text


def test_number_tokens_lists_every_number_in_ascending_order(tiny):
    found = number_tokens(tiny)
    assert [v for _, v in found["box"]] == [float(n) for n in BOX_NUMBERS] and len(found["box"]) == 101
    assert [v for _, v in found["time"]] == [float(n) for n in TIME_NUMBERS] and len(found["time"]) == 601
    assert found["box"][40] == (tiny.convert_tokens_to_ids("0.40"), 0.4)


def test_special_tokens_and_bos(tiny):
    for token in (*SPECIAL_TOKENS, "<s>", "</s>", "<pad>", "<unk>"):
        assert token in tiny.get_vocab()
    assert tiny.pad_token == "<pad>" and tiny.eos_token == "</s>"
    assert tiny("hello")["input_ids"][0] == tiny.bos_token_id


def test_a_pretrained_style_tokenizer_gets_the_placeholders_and_few_number_tokens():
    llama = copy.deepcopy(llama_style_tokenizer())  # the fixture's tokenizer is shared: change a copy
    assert not any(t in llama.get_vocab() for t in SPECIAL_TOKENS) and llama.pad_token is None
    ensured = ensure_special_tokens(llama)
    assert ensured is llama
    assert all(t in llama.get_vocab() for t in SPECIAL_TOKENS)
    assert llama.pad_token == llama.unk_token
    # only the numbers the vocabulary happens to hold as whole tokens (none of the box coordinates)
    found = number_tokens(llama)
    assert found["box"] == [] and len(found["time"]) < 10
    vocab = llama.get_vocab()
    assert all(vocab[f"{value:.1f}"] == i for i, value in found["time"])
    size = len(llama)
    ensure_special_tokens(llama)  # idempotent
    assert len(llama) == size
