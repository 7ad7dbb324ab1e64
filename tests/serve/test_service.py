"""The deployed application, end to end (integration): every endpoint, JSON and multipart, with
media from the procedural world, answered by the overfit grounding model; the official ``openai``
client on ``/v1/chat/completions``; auth, health, models, docs and the demo page's HTML."""

from __future__ import annotations

import base64
import json

import httpx
import openai
import pytest

from meerkat_core import grounding, prompts
from serve import tasks
from serve.schemas import GroundParams
from tests.serve import bad_media

TIMEOUT = httpx.Timeout(120.0)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def client(meerkat_service):
    with httpx.Client(base_url=meerkat_service.url, headers=meerkat_service.headers, timeout=TIMEOUT) as c:
        yield c


def _post(client, task, scene, fields, multipart):
    if multipart:
        files = {
            "image": ("scene.jpg", scene.image, "image/jpeg"),
            "audio": ("scene.flac", scene.audio, "audio/flac"),
        }
        form = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in fields.items()}
        response = client.post(f"/v1/{task}", files=files, data=form)
    else:
        response = client.post(
            f"/v1/{task}", json={"image": b64(scene.image), "audio": b64(scene.audio), **fields}
        )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("multipart", [False, True], ids=["json", "multipart"])
def test_ground_returns_the_box_normalised_and_in_pixels(client, scenes, multipart):
    for scene in scenes:
        body = _post(client, "ground", scene, {}, multipart)
        expected = grounding.parse_box(grounding.format_box(scene.box))
        assert body["grounding"]["parsed"] is True, body
        assert body["grounding"]["box"]["normalised"] == pytest.approx(list(expected))
        assert body["grounding"]["box"]["pixels"] == list(
            grounding.normalised_box_to_pixels(expected, 224, 224)
        )
        assert body["image"] == {"width": 224, "height": 224}
        assert body["text"] == grounding.format_box(scene.box)


@pytest.mark.parametrize("multipart", [False, True], ids=["json", "multipart"])
def test_localize_returns_the_window_in_seconds(client, scenes, multipart):
    for scene in scenes:
        body = _post(client, "localize", scene, {"object": scene.object}, multipart)
        assert body["grounding"]["parsed"] is True, body
        assert body["grounding"]["window"] == {"start_s": scene.window[0], "end_s": scene.window[1]}
        assert body["audio"]["seconds"] == pytest.approx(10.0)


@pytest.mark.parametrize("multipart", [False, True], ids=["json", "multipart"])
def test_factcheck_returns_the_verdict(client, scenes, multipart):
    scene = next(s for s in scenes if s.distractor_box is not None)
    box = [round(v, 2) for v in scene.box]
    other = [round(v, 2) for v in scene.distractor_box]
    for claim_box in (box, other):
        body = _post(client, "factcheck", scene, {"box": claim_box, "window": scene.window}, multipart)
        assert body["fact_type"] == 3
        # The typed verdict is what the raw text says; whether the briefly trained model is right
        # about the claim is the evaluation job's business, not the service's.
        verdict = prompts.parse_verdict(body["text"])
        assert verdict is not None, body["text"]
        assert body["grounding"] == {"parsed": True, "box": None, "window": None, "verdict": verdict}


@pytest.mark.parametrize(
    ("task", "fields"), [("answer", {"question": "How many objects make a sound?"}), ("caption", {})]
)
def test_free_text_tasks_answer(client, scenes, task, fields):
    body = _post(client, task, scenes[0], fields, multipart=False)
    assert body["task"] == task and isinstance(body["text"], str)
    assert body["grounding"]["parsed"] is bool(body["text"].strip())
    assert (
        body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )


def test_openai_client_gets_text_and_grounding(meerkat_service, scenes):
    client = openai.OpenAI(base_url=f"{meerkat_service.url}/v1", api_key=meerkat_service.token, max_retries=0)
    (model,) = [m.id for m in client.models.list()]
    instruction, _ = tasks.instruction("ground", GroundParams())
    scene = scenes[0]
    completion = client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": instruction},
                    {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64(scene.image)}"}},
                    {
                        "type": "input_audio",
                        "input_audio": {"data": b64(bad_media.wav_from(scene.audio)), "format": "wav"},
                    },
                ],
            }
        ],
        max_tokens=32,
        temperature=0,
    )
    assert completion.object == "chat.completion" and completion.model == model
    assert completion.choices[0].message.content == grounding.format_box(scene.box)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens > 0
    chat_grounding = completion.model_extra["grounding"]
    assert chat_grounding["parsed"] is True
    assert chat_grounding["box"]["normalised"] == pytest.approx(
        list(grounding.parse_box(grounding.format_box(scene.box)))
    )
    assert chat_grounding["window"] is None


def test_openai_client_sees_errors_as_openai_errors(meerkat_service):
    client = openai.OpenAI(base_url=f"{meerkat_service.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_auth_is_required_everywhere_but_health_and_pages_take_basic(meerkat_service):
    with httpx.Client(base_url=meerkat_service.url, timeout=TIMEOUT) as anonymous:
        for path in ("/v1/models",):
            response = anonymous.get(path)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]["type"] == "authentication_error"
        response = anonymous.post("/v1/ground", json={}, headers={"Authorization": "Bearer nope"})
        assert response.status_code == 401
        assert anonymous.get("/healthz").json()["status"] == "ok"
        for path in ("/", "/docs", "/openapi.json", "/examples"):
            response = anonymous.get(path)
            assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Basic"), (
                path
            )
        basic = httpx.BasicAuth("anyone", meerkat_service.token)
        assert "swagger" in anonymous.get("/docs", auth=basic).text.lower()
        assert "/v1/chat/completions" in anonymous.get("/openapi.json", auth=basic).json()["paths"]
        page = anonymous.get("/", auth=basic)
        assert page.status_code == 200 and 'id="image-canvas"' in page.text
        assert anonymous.get("/v1/models", auth=basic).status_code == 200


def test_examples_are_held_out_scenes_served_as_files(client, scenes):
    listed = client.get("/examples").json()
    assert len(listed) >= 2
    first = listed[0]
    image, audio = client.get(first["image"]), client.get(first["audio"])
    assert image.headers["content-type"] == "image/jpeg" and image.content == scenes[0].image
    assert audio.headers["content-type"] == "audio/flac" and audio.content == scenes[0].audio
    assert first["object"] == scenes[0].object and first["window"] == scenes[0].window
    assert client.get("/examples/scene-99.jpg").status_code == 404
    assert client.get("/examples/..%2Fapp.py").status_code == 404


def test_models_lists_the_version_latest_resolved_to_at_deploy(client, registered_model, deployed_ref):
    assert deployed_ref.endswith("/latest")
    (card,) = client.get("/v1/models").json()["data"]
    assert card["id"] == registered_model.removeprefix("models:/")  # models:/<name>/<n>, not latest
