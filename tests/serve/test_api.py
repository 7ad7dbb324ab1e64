"""serve.api and the routes on it: the OpenAPI document, event streams, the request timeout."""

from __future__ import annotations

import asyncio

import pytest

from serve import api, ingress, schemas, tasks  # ingress registers the routes on api.api
from serve.errors import APIError
from serve.generation import Completion


def test_openapi_documents_json_and_multipart_bodies_and_errors():
    document = api.api.openapi()
    for task in ("ground", "localize", "factcheck", "answer", "caption"):
        operation = document["paths"][f"/v1/{task}"]["post"]
        content = operation["requestBody"]["content"]
        assert set(content) == {"application/json", "multipart/form-data"}
        assert content["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
        assert {"image", "audio"} <= set(content["application/json"]["schema"]["required"])
        assert {"400", "401", "413", "415", "422", "504"} <= set(operation["responses"])
        assert operation["security"] == [{"HTTPBearer": []}]
    chat = document["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    name = chat["schema"]["$ref"].rpartition("/")[2]
    assert {"ChatCompletionRequest", "ChatMessage", "ImagePart", "AudioPart"} <= set(
        document["components"]["schemas"]
    )
    assert name == "ChatCompletionRequest"
    assert "/" not in document["paths"]  # the demo page is not part of the API


def test_task_routes_are_one_per_row_of_the_task_table():
    assert ingress.MeerkatAPI is not None
    document = api.api.openapi()
    task_paths = [
        p
        for p in document["paths"]
        if p.startswith("/v1/") and p not in ("/v1/models", "/v1/chat/completions")
    ]
    assert task_paths == [task.path for task in tasks.TASKS.values()]
    for task in tasks.TASKS.values():
        operation = document["paths"][task.path]["post"]
        assert operation["operationId"] == f"{task.name}_v1_{task.name}_post"
        assert operation["summary"] == task.name.title() and operation["description"] == task.description
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert set(schema["properties"]) == {"image", "audio", *task.params.model_fields}
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/TaskResponse"
        }
        assert "parameters" not in operation  # ``self`` is the replica, not a query parameter


def test_streamed_chunks_parse_as_openai_chunks_and_end_with_usage_and_grounding():
    from openai.types.chat import ChatCompletionChunk

    completion = Completion("[0.10, 0.20, 0.50, 0.60] is it", 9, "stop")
    usage = schemas.Usage(prompt_tokens=10, completion_tokens=9, total_tokens=19)
    grounding = schemas.Grounding(parsed=True, verdict=None)
    events = api.sse_chunks("c1", 5, "m", completion, completion.text, usage, grounding)
    assert events[-1] == "data: [DONE]\n\n" and all(
        e.startswith("data: ") and e.endswith("\n\n") for e in events
    )
    chunks = [ChatCompletionChunk.model_validate_json(e[len("data: ") :]) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == completion.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 19
    assert chunks[-1].model_extra["grounding"] == grounding.model_dump()


def test_request_timeout_is_a_504_and_cancels_the_work():
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def run() -> None:
        with pytest.raises(APIError) as info:
            await api.within_timeout(slow(), 0.05)
        assert info.value.status == 504 and "0.05 s" in info.value.message
        assert cancelled.is_set()
        assert await api.within_timeout(asyncio.sleep(0, result="ok"), 1) == "ok"

    asyncio.run(run())
