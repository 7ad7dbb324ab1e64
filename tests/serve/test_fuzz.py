"""Fuzz of the request parsers, in process (no Ray): chat message shapes and task bodies.

Hypothesis builds JSON bodies around the shapes the endpoints read (messages with every role,
string and list content, parts of every type with fields of every JSON type, OpenAI parameters
with wild values) plus arbitrary JSON and bytes. Whatever it sends, parsing either succeeds or
raises :class:`serve.errors.APIError` with a 4xx status and a short message: never another
exception, which the service would answer with a 500. A fixed example budget and derandomized
generation keep it repeatable. ``tests/serve/test_schemathesis.py`` fuzzes the deployed service's
whole OpenAPI document.
"""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from serve import inputs, schemas, tasks
from serve.errors import APIError
from serve.ingress import MeerkatAPI
from tests.serve import bad_media

ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}|object at ")
BUDGET = settings(
    max_examples=400, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck), database=None
)
_buffer = io.BytesIO()
Image.new("RGB", (8, 8)).save(_buffer, format="PNG")
PNG = base64.b64encode(_buffer.getvalue()).decode()
WAV = base64.b64encode(bad_media.wav(0.1)).decode()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["<image>", "</s>", "[INST]", "data:image/png;base64," + PNG, WAV, "9" * 5000]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
urls = st.one_of(
    st.just(f"data:image/png;base64,{PNG}"),
    st.just("https://example.com/a.png"),
    st.text(max_size=40).map(lambda t: "data:" + t),
    st.builds(lambda m: f"data:{m};base64,{PNG}", st.text(max_size=80)),
    json_values,
)
parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(st.text(max_size=40), json_values)}),
    st.fixed_dictionaries(
        {
            "type": st.just("image_url"),
            "image_url": st.one_of(st.fixed_dictionaries({"url": urls}), json_values),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("input_audio"),
            "input_audio": st.one_of(
                st.fixed_dictionaries(
                    {
                        "data": st.one_of(st.just(WAV), st.text(max_size=20)),
                        "format": st.sampled_from(["wav", "flac", "aiff", 3]),
                    }
                ),
                json_values,
            ),
        }
    ),
    st.dictionaries(
        st.sampled_from(["type", "text", "image_url", "input_audio", "x"]), json_values, max_size=3
    ),
    json_values,
)
messages = st.fixed_dictionaries(
    {
        "role": st.one_of(st.sampled_from(["system", "developer", "user", "assistant", "tool"]), json_values),
        "content": st.one_of(st.text(max_size=40), st.lists(parts, max_size=4), json_values),
    },
    optional={"name": json_values},
)
chat_bodies = st.fixed_dictionaries(
    {"messages": st.one_of(st.lists(messages, max_size=5), json_values)},
    optional={
        "model": st.one_of(st.just("m"), json_values),
        "stream": json_values,
        "temperature": json_values,
        "top_p": json_values,
        "seed": json_values,
        "stop": st.one_of(st.lists(st.text(max_size=5), max_size=6), json_values),
        "response_format": st.one_of(
            st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])}),
            json_values,
        ),
        "n": json_values,
        "tools": json_values,
        "tool_choice": json_values,
        "logprobs": json_values,
        "max_tokens": json_values,
        "logit_bias": json_values,
    },
)

_chat_sync = MeerkatAPI.func_or_class._chat_sync


def _only_client_errors(call: Any, *args: Any) -> None:
    try:
        call(*args)
    except APIError as err:
        assert 400 <= err.status < 500, (err.status, err.message)
        assert len(err.message) <= 1200 and not ADDRESS.search(err.message), err.message


@BUDGET
@given(chat_bodies)
def test_chat_message_shapes_never_raise_anything_but_4xx(body):
    _only_client_errors(lambda: _chat_sync(json.dumps(body, allow_nan=True).encode()))


@BUDGET
@given(
    st.one_of(
        json_values,
        st.dictionaries(
            st.sampled_from(
                [
                    "image",
                    "audio",
                    "object",
                    "box",
                    "window",
                    "statement",
                    "question",
                    "max_new_tokens",
                    "temperature",
                ]
            ),
            json_values,
        ),
    )
)
def test_task_bodies_never_raise_anything_but_4xx(body):
    for task in tasks.TASKS.values():
        _only_client_errors(inputs.json_task_request, json.dumps(body, allow_nan=True).encode(), task.params)


@BUDGET
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_4xx(body):
    _only_client_errors(_chat_sync, body)
    _only_client_errors(inputs.json_task_request, body, schemas.GroundParams)
