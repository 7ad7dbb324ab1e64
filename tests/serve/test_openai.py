"""The official ``openai`` client against /v1/chat/completions (integration): sync, async and
streaming; system messages and history; stop, top_p, seed; json_object; OpenAI's default temperature."""

from __future__ import annotations

import asyncio
import base64
import json

import openai
import pytest

from meerkat_core import grounding
from serve import tasks
from serve.schemas import GroundParams
from tests.serve import bad_media


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _user(scene, text):
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64(scene.image)}"}},
            {
                "type": "input_audio",
                "input_audio": {"data": b64(bad_media.wav_from(scene.audio)), "format": "wav"},
            },
        ],
    }


@pytest.fixture(scope="module")
def client(meerkat_service):
    return openai.OpenAI(
        base_url=f"{meerkat_service.url}/v1", api_key=meerkat_service.token, max_retries=0, timeout=180
    )


@pytest.fixture(scope="module")
def model(client):
    (name,) = [m.id for m in client.models.list()]
    return name


@pytest.fixture(scope="module")
def ground():
    return tasks.instruction("ground", GroundParams())[0]


def test_streaming_sends_deltas_then_usage_and_grounding(client, model, scenes, ground):
    scene = scenes[0]
    plain = client.chat.completions.create(model=model, messages=[_user(scene, ground)], temperature=0)
    stream = client.chat.completions.create(
        model=model,
        messages=[_user(scene, ground)],
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.model == model for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content == grounding.format_box(scene.box)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    last = chunks[-1]
    assert last.usage.total_tokens == plain.usage.total_tokens
    assert last.model_extra["grounding"] == plain.model_extra["grounding"]
    assert last.model_extra["grounding"]["box"]["normalised"] == pytest.approx(
        list(grounding.parse_box(text))
    )


def test_async_client(meerkat_service, model, scenes, ground):
    async def run():
        client = openai.AsyncOpenAI(
            base_url=f"{meerkat_service.url}/v1", api_key=meerkat_service.token, max_retries=0, timeout=180
        )
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(model=model, messages=[_user(s, ground)], temperature=0)
                for s in scenes
            )
        )
        stream = await client.chat.completions.create(
            model=model, messages=[_user(scenes[0], ground)], temperature=0, stream=True
        )
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()
        return replies, streamed

    replies, streamed = asyncio.run(run())
    assert [r.choices[0].message.content for r in replies] == [grounding.format_box(s.box) for s in scenes]
    assert streamed == grounding.format_box(scenes[0].box)


def test_system_message_and_history_are_accepted_as_context(client, model, scenes, ground):
    scene = scenes[0]
    reply = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "You are terse."},
            _user(scene, "Look at this."),
            {"role": "assistant", "content": "I see it."},
            {"role": "user", "content": ground},
        ],
        temperature=0,
        max_tokens=16,
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert (
        reply.usage.prompt_tokens
        > client.chat.completions.create(
            model=model, messages=[_user(scene, ground)], temperature=0, max_tokens=1
        ).usage.prompt_tokens
    )


def test_stop_top_p_seed_and_json_object(client, model, scenes, ground):
    scene = scenes[0]
    box = grounding.format_box(scene.box)
    cut = client.chat.completions.create(
        model=model, messages=[_user(scene, ground)], temperature=0, stop=[","]
    )
    assert cut.choices[0].message.content == box[: box.index(",")] and cut.choices[0].finish_reason == "stop"
    # a nucleus this small is the greedy answer, at any temperature
    narrow = client.chat.completions.create(
        model=model, messages=[_user(scene, ground)], temperature=2.0, top_p=1e-9
    )
    assert narrow.choices[0].message.content == box
    # OpenAI's default temperature (1) samples; a seed makes it repeatable
    seeded = [
        client.chat.completions.create(
            model=model, messages=[_user(scene, "Describe it.")], seed=11, max_tokens=12
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]
    unseeded = {
        client.chat.completions.create(model=model, messages=[_user(scene, "Describe it.")], max_tokens=12)
        .choices[0]
        .message.content
        for _ in range(4)
    }
    assert len(unseeded) > 1, unseeded  # the default temperature is not 0
    as_json = client.chat.completions.create(
        model=model, messages=[_user(scene, ground)], temperature=0, response_format={"type": "json_object"}
    )
    document = json.loads(as_json.choices[0].message.content)
    assert document["text"] == box and document["parsed"] is True
    assert document["box"]["normalised"] == pytest.approx(list(grounding.parse_box(box)))


def test_refusals_are_openai_bad_request_errors(client, model, scenes, ground):
    with pytest.raises(openai.BadRequestError, match="json_schema"):
        client.chat.completions.create(
            model=model,
            messages=[_user(scenes[0], ground)],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "g", "schema": {"type": "object"}},
            },
        )
    with pytest.raises(openai.BadRequestError, match="n: only one choice"):
        client.chat.completions.create(model=model, messages=[_user(scenes[0], ground)], n=2)
