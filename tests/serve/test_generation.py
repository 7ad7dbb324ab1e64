"""serve.generation on the tiny model (no Ray): isolation of a failing sample, top_p, seed, stop."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from meerkat_core import batching, prompts
from meerkat_core.builders import build_model
from meerkat_core.config import PRESETS
from serve.generation import Generation, Generator, Sampling, cut_at_stop
from tests.serve import bad_media

INSTRUCTIONS = ("Where is the sound?", "Describe what you hear.", "Is it loud?", "What <image> is </s> this?")


@pytest.fixture(scope="module")
def model():
    return build_model(PRESETS["tiny"], pretrained=False, seed=0).eval()


@pytest.fixture(scope="module")
def rows(model):
    prep = batching.SamplePreprocessor(model.config, model.tokenizer)
    out = []
    for i, instruction in enumerate(INSTRUCTIONS):
        buffer = io.BytesIO()
        Image.new("RGB", (96, 64), (40 * i, 200, 30)).save(buffer, format="PNG")
        out.append(
            prep(buffer.getvalue(), bad_media.wav(1.0 + i), {"instruction": instruction}, with_answer=False)
        )
    return out


def _poisoned(row):
    """A row the model cannot take: a second <image> id, as if it had slipped past the ingress."""
    bad = dict(row)
    ids = np.array(row["input_ids"])
    ids[-2] = 991 if ids[-2] != 991 else ids[-2]
    image_id = 991
    assert (ids == image_id).sum() == 2
    bad["input_ids"] = ids
    return bad


def test_a_failing_sample_costs_only_its_own_answer(model, rows):
    image_id = model.tokenizer.convert_tokens_to_ids(prompts.IMAGE_TOKEN)
    assert image_id == 991  # what _poisoned writes
    generator = Generator(model, "cpu")
    greedy = Sampling(max_new_tokens=6)
    alone = [generator([Generation(row, greedy)])[0] for row in rows]
    assert all(c.error is None for c in alone) and sum(bool(c.text) for c in alone) >= 3
    batch = [
        Generation(rows[0], greedy),
        Generation(_poisoned(rows[1]), greedy),
        *(Generation(r, greedy) for r in rows[2:]),
    ]
    with pytest.raises(ValueError, match="exactly one"):
        generator._generate(batch)  # the model itself rejects the batch as a whole
    out = generator(batch)
    assert out[1].error == "ValueError" and out[1].text == ""
    assert [c.text for i, c in enumerate(out) if i != 1] == [c.text for i, c in enumerate(alone) if i != 1]
    assert all(c.error is None for i, c in enumerate(out) if i != 1)


def test_batched_greedy_answers_equal_the_answers_alone(model, rows):
    generator = Generator(model, "cpu")
    greedy = Sampling(max_new_tokens=6)
    alone = [generator([Generation(row, greedy)])[0].text for row in rows]
    assert [c.text for c in generator([Generation(r, greedy) for r in rows])] == alone


def test_a_tiny_top_p_samples_the_greedy_answer(model, rows):
    generator = Generator(model, "cpu")
    greedy = generator([Generation(rows[0], Sampling(max_new_tokens=8))])[0].text
    nucleus = Sampling(max_new_tokens=8, temperature=2.0, top_p=1e-6)
    assert all(generator([Generation(rows[0], nucleus)])[0].text == greedy for _ in range(3))
    assert "generate" not in model.llm.__dict__  # the wrapper is gone


def test_a_seed_gives_the_same_sample_alone_or_among_others(model, rows):
    generator = Generator(model, "cpu")
    seeded = Sampling(max_new_tokens=12, temperature=1.5, seed=7)
    other = Sampling(max_new_tokens=12, temperature=1.5)
    alone = generator([Generation(rows[0], seeded)])[0].text
    mixed = generator([Generation(rows[1], other), Generation(rows[0], seeded), Generation(rows[2], other)])
    assert mixed[1].text == alone
    texts = {generator([Generation(rows[0], Sampling(12, 1.5, seed=s))])[0].text for s in range(6)}
    assert len(texts) > 1  # the seed matters: an untrained model samples widely at temperature 1.5


def test_stop_cuts_the_answer_and_counts_as_stop(model, rows):
    generator = Generator(model, "cpu")
    full = generator([Generation(rows[0], Sampling(max_new_tokens=10))])[0]
    assert full.finish_reason == "length" and full.tokens == 10 and len(full.text) > 2
    stop = full.text[2:4]
    cut = generator([Generation(rows[0], Sampling(max_new_tokens=10, stop=("zzz-not-there", stop)))])[0]
    assert cut.text == full.text[: full.text.find(stop)] and cut.finish_reason == "stop"
    assert cut.tokens == full.tokens


def test_cut_at_stop_by_hand():
    assert cut_at_stop("abc. def. g", [". ", "g"]) == ("abc", True)
    assert cut_at_stop("abc", ["x", ""]) == ("abc", False)
    assert cut_at_stop("abc", []) == ("abc", False)


def test_lean_rows_from_the_ingress_are_made_float_in_the_replica(model, rows):
    """The ingress sends 8-bit pixels and 16-bit mels; the generator takes them (the model would
    refuse uint8 pixels) and answers them as it answers the float rows they stand for."""
    from meerkat_core import media

    prep = batching.SamplePreprocessor(model.config, model.tokenizer)
    lean = [{**r, **media.lean_media(r["pixel_values"], r["audio_features"], prep.image)} for r in rows[:3]]
    assert lean[0]["pixel_values"].dtype == np.uint8
    generator = Generator(model, "cpu")
    greedy = Sampling(max_new_tokens=6)
    from_lean = generator([Generation(r, greedy) for r in lean])
    from_float = generator([Generation(media.float_row(r), greedy) for r in lean])
    assert [c.text for c in from_lean] == [c.text for c in from_float]
    assert all(c.error is None for c in from_lean)
