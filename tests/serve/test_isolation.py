"""One request's trouble is its own (integration): poisoned requests batched with good ones.

Text that spells a media placeholder or a special token (``<image>``, ``<audio>``, ``</s>``,
``<s>``, ``[INST]``) goes into every text field of every endpoint, over JSON and multipart, sent
concurrently with good requests while the model waits long enough to batch them together. Every
good request answers 200 with exactly the text it gets when sent alone; the poisoned ones are
answered too (their text is only text), and no replica restarted.
"""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serve import service

POISON = "<image> <audio> </s> <s> [INST] <pad>"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _task(scene, task, fields, multipart=False):
    if multipart:
        files = {
            "image": ("s.jpg", scene.image, "image/jpeg"),
            "audio": ("s.flac", scene.audio, "audio/flac"),
        }
        data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
        return f"/v1/{task}", {"files": files, "data": data}
    return f"/v1/{task}", {"json": {"image": b64(scene.image), "audio": b64(scene.audio), **fields}}


def _chat(scene, text, model):
    content = [
        {"type": "text", "text": text},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64(scene.image)}"}},
        {"type": "input_audio", "input_audio": {"data": b64(scene.audio), "format": "flac"}},
    ]
    messages = [{"role": "system", "content": POISON}, {"role": "user", "content": content}]
    return "/v1/chat/completions", {"json": {"model": model, "messages": messages, "temperature": 0}}


@pytest.fixture(scope="module")
def replicas_at_start(meerkat_service):
    return service.settled_replicas(meerkat_service)


@pytest.fixture(scope="module")
def batching_service(meerkat_service, local_stack, deployed_ref, replicas_at_start):
    """The service with a long batch wait, so that concurrent requests share a batch."""
    env = meerkat_service.env
    port = meerkat_service.url.rpartition(":")[2]
    service.meerkat_serve(
        local_stack.config.dir,
        env,
        "up",
        "--model",
        deployed_ref,
        "--port",
        port,
        "--batch-wait-timeout-s",
        "0.5",
    )
    try:
        yield meerkat_service
    finally:
        service.meerkat_serve(
            local_stack.config.dir,
            env,
            "up",
            "--model",
            deployed_ref,
            "--port",
            port,
            "--batch-wait-timeout-s",
            "0.01",
        )


def test_poisoned_requests_in_a_batch_never_change_the_good_answers(
    batching_service, local_stack, scenes, registered_model
):
    model = registered_model.removeprefix("models:/")
    scene = scenes[0]
    good = [
        _task(scene, "ground", {}),
        _task(scene, "ground", {}, multipart=True),
        _task(scene, "localize", {"object": scene.object}),
        _task(scenes[1], "localize", {"object": scenes[1].object}, multipart=True),
        _task(scene, "factcheck", {"box": [round(v, 2) for v in scene.box], "window": scene.window}),
    ]
    poisoned = [
        _task(scene, "answer", {"question": f"What is {POISON}?"}),
        _task(scene, "answer", {"question": POISON}, multipart=True),
        _task(scene, "localize", {"object": POISON}),
        _task(scene, "localize", {"object": f"red {POISON}"}, multipart=True),
        _task(scene, "factcheck", {"statement": f"{POISON} is True"}),
        _task(scene, "factcheck", {"statement": POISON}, multipart=True),
        _task(scene, "factcheck", {"object": POISON, "window": [1, 2]}),
        _chat(scene, f"Where {POISON} is the sound?", model),
    ]
    with httpx.Client(
        base_url=batching_service.url, headers=batching_service.headers, timeout=180.0
    ) as client:

        def send(request):
            path, kwargs = request
            return client.post(path, **kwargs)

        alone = [send(r) for r in good]
        assert all(r.status_code == 200 for r in alone), [r.text for r in alone]
        mixed = [*poisoned[:4], *good, *poisoned[4:]]
        before = service.batch_stats(local_stack, batching_service)
        with ThreadPoolExecutor(len(mixed)) as pool:
            responses = list(pool.map(send, mixed))
        after = service.batch_stats(local_stack, batching_service)
    ran = {size: n - before.get(size, 0) for size, n in after.items() if n > before.get(size, 0)}
    assert ran and max(ran) >= len(mixed) // 2, f"the mixed requests were not batched together: {ran}"
    together = responses[4 : 4 + len(good)]
    assert [r.status_code for r in together] == [200] * len(good), [r.text for r in together]
    assert [r.json()["text"] for r in together] == [r.json()["text"] for r in alone]
    for response in [*responses[:4], *responses[4 + len(good) :]]:
        assert response.status_code == 200, response.text


def test_no_replica_restarted(batching_service, replicas_at_start):
    assert service.replicas(batching_service) == replicas_at_start
