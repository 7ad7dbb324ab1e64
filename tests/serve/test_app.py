"""The application's wiring without starting Ray: builder, deploy config, OpenAPI document, auth."""

from __future__ import annotations

import asyncio

import pytest
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from serve import app as serve_app
from serve import auth, deploy
from serve.errors import APIError


def test_config_yaml_is_a_valid_serve_deploy_config_for_the_builder():
    config = ServeDeploySchema.model_validate(deploy.load_config())
    assert config.http_options.host == "127.0.0.1"
    (application,) = config.applications
    assert application.import_path == "serve.app:app"
    args = serve_app.AppArgs.model_validate(application.args)
    assert args.model.startswith("models:/")
    deployments = {d.name: d for d in application.deployments}
    assert set(deployments) == {"MeerkatModel", "MeerkatAPI"}
    batching = serve_app.BatchingConfig.model_validate(deployments["MeerkatModel"].user_config)
    assert deployments["MeerkatModel"].max_ongoing_requests > batching.max_batch_size
    for deployment in deployments.values():
        # overload is a 503 at once; admitted requests outlive a shutdown
        assert deployment.max_queued_requests > 0
        assert deployment.graceful_shutdown_timeout_s >= args.request_timeout_s


def test_load_config_overrides():
    config = deploy.load_config(
        model="models:/m@prod",
        port=18000,
        max_batch_size=1,
        batch_wait_timeout_s=0.0,
        api_token_sha256="ab" * 32,
    )
    (application,) = config["applications"]
    assert (
        application["args"]["model"] == "models:/m@prod"
        and application["args"]["api_token_sha256"] == "ab" * 32
    )
    assert config["http_options"]["port"] == 18000 and deploy.base_url(config) == "http://127.0.0.1:18000"
    (model,) = [d for d in application["deployments"] if d["name"] == "MeerkatModel"]
    assert model["user_config"] == {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}
    ServeDeploySchema.model_validate(config)


def test_builder_binds_the_model_under_the_ingress(monkeypatch):
    monkeypatch.delenv(serve_app.MODEL_REF_ENV, raising=False)
    with pytest.raises(ValueError, match="no model reference"):
        serve_app.app({})
    monkeypatch.setenv(serve_app.MODEL_REF_ENV, "models:/meerkat-tiny/3")
    assert isinstance(serve_app.app({"max_audio_seconds": "30"}), Application)
    assert isinstance(serve_app.app(serve_app.AppArgs(model="/tmp/model")), Application)
    with pytest.raises(ValueError):
        serve_app.app({"model": "x", "no_such_arg": 1})


@pytest.mark.parametrize(
    ("ref", "name"),
    [
        ("models:/meerkat-tiny/3", "meerkat-tiny/3"),
        ("models:/meerkat-tiny@prod", "meerkat-tiny@prod"),
        ("runs:/abc123/model", "abc123/model"),
        ("s3://bucket/runs/checkpoint_000004/", "checkpoint_000004"),
        ("/tmp/models/tiny", "tiny"),
    ],
)
def test_served_name(ref, name):
    assert serve_app.served_name(ref) == name


def test_openapi_documents_json_and_multipart_bodies_and_errors():
    document = serve_app.api.openapi()
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


def test_auth_compares_digests():
    digest = auth.token_digest("s3cret")
    auth.check(None, None)
    auth.check("s3cret", digest)
    for presented in (None, "", "s3cret ", "other"):
        with pytest.raises(APIError) as info:
            auth.check(presented, digest)
        assert info.value.status == 401 and "s3cret" not in info.value.message


def test_auth_reads_bearer_and_basic_and_asks_browsers_for_basic():
    import base64

    basic = "Basic " + base64.b64encode(b"anyone:s3cret").decode()
    assert auth.presented_token("Bearer s3cret") == "s3cret" and auth.presented_token(basic) == "s3cret"
    for header in (None, "", "Basic %%%", "Token s3cret"):
        assert auth.presented_token(header) is None
    digest = auth.token_digest("s3cret")
    auth.check(auth.presented_token(basic), digest, page=True)
    with pytest.raises(APIError) as info:
        auth.check(None, digest, page=True)
    assert info.value.headers["WWW-Authenticate"].startswith("Basic")
    with pytest.raises(APIError) as info:
        auth.check(None, digest)
    assert info.value.headers["WWW-Authenticate"] == "Bearer"


def test_streamed_chunks_parse_as_openai_chunks_and_end_with_usage_and_grounding():
    from openai.types.chat import ChatCompletionChunk

    from serve import schemas
    from serve.generation import Completion

    completion = Completion("[0.10, 0.20, 0.50, 0.60] is it", 9, "stop")
    usage = schemas.Usage(prompt_tokens=10, completion_tokens=9, total_tokens=19)
    grounding = schemas.Grounding(parsed=True, verdict=None)
    events = serve_app.sse_chunks("c1", 5, "m", completion, completion.text, usage, grounding)
    assert events[-1] == "data: [DONE]\n\n" and all(
        e.startswith("data: ") and e.endswith("\n\n") for e in events
    )
    chunks = [ChatCompletionChunk.model_validate_json(e[len("data: ") :]) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == completion.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 19
    assert chunks[-1].model_extra["grounding"] == grounding.model_dump()


def test_auth_digest_from_the_environment(monkeypatch):
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    assert auth.digest_from_env() is None
    monkeypatch.setenv(auth.TOKEN_ENV, "s3cret")
    assert auth.digest_from_env() == auth.token_digest("s3cret")


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
            await serve_app.within_timeout(slow(), 0.05)
        assert info.value.status == 504 and "0.05 s" in info.value.message
        assert cancelled.is_set()
        assert await serve_app.within_timeout(asyncio.sleep(0, result="ok"), 1) == "ok"

    asyncio.run(run())


class _Response:
    """What ``handle.generate.remote(...)`` returns: awaitable, cancellable."""

    def __init__(self, outcome):
        self.outcome = outcome

    def __await__(self):
        async def result():
            if isinstance(self.outcome, Exception):
                raise self.outcome
            return self.outcome

        return result().__await__()

    def cancel(self):
        pass


class _Handle:
    def __init__(self, outcome):
        self.generate = type("Method", (), {"remote": lambda _, generation: _Response(outcome)})()


def _ingress(outcome):
    """The ingress's request path without Ray: its methods on a plain object and a fake model handle."""
    import types
    from concurrent.futures import ThreadPoolExecutor

    cls = serve_app.MeerkatAPI.func_or_class
    ingress = types.SimpleNamespace(
        model=_Handle(outcome),
        settings=serve_app.AppArgs(model="m"),
        pool=ThreadPoolExecutor(max_workers=1),
        _prepare_sync=lambda instruction, raw: serve_app._Prepared({"input_ids": [1, 2, 3]}, 8, 8, 1.0),
    )
    ingress._offload = types.MethodType(cls._offload, ingress)
    ingress._run = types.MethodType(cls._run, ingress)
    return ingress


@pytest.mark.parametrize(
    ("outcome", "status", "type_"),
    [
        (None, 503, "service_unavailable"),
        ("error", 500, "server_error"),
    ],
    ids=["model-queue-full", "model-failed-on-this-request"],
)
def test_model_overload_is_503_at_once_and_a_failed_sample_its_own_500(outcome, status, type_):
    from ray.serve.exceptions import BackPressureError

    from serve.generation import Completion, Sampling

    result = (
        BackPressureError(num_queued_requests=64, max_queued_requests=64)
        if outcome is None
        else Completion(error="ValueError")
    )
    ingress = _ingress(result)
    with pytest.raises(APIError) as info:
        asyncio.run(ingress._run("Where?", None, Sampling(4)))
    assert info.value.status == status and info.value.type == type_
    ok = _ingress(Completion("[0.1, 0.2, 0.3, 0.4]", 5, "stop"))
    _, completion = asyncio.run(ok._run("Where?", None, Sampling(4)))
    assert completion.text == "[0.1, 0.2, 0.3, 0.4]"
    with pytest.raises(APIError, match="not valid Unicode"):
        asyncio.run(ok._run("why \ud800", None, Sampling(4)))


@pytest.mark.parametrize("token", [None, "s3cret"], ids=["no-token", "token"])
def test_the_ingress_warns_at_start_when_no_token_is_set(monkeypatch, caplog, token):
    import logging
    import types

    from meerkat_core.config import PRESETS
    from meerkat_core.tokenizer import load_tokenizer

    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    info = serve_app.ModelInfo("m/1", PRESETS["tiny"], load_tokenizer(None))
    handle = types.SimpleNamespace(describe=types.SimpleNamespace(remote=lambda: _Response(info)))
    user_class = serve_app.MeerkatAPI.func_or_class.__mro__[1]  # the class as written, under Serve's wrapper
    ingress = object.__new__(user_class)
    settings = serve_app.AppArgs(model="m", api_token_sha256=auth.token_digest(token) if token else None)
    with caplog.at_level(logging.WARNING, logger="serve.app"):
        asyncio.run(user_class.__init__(ingress, handle, settings))
    warned = [r for r in caplog.records if "no API token" in r.getMessage()]
    assert bool(warned) is (token is None) and ingress.name == "m/1"
    ingress.pool.shutdown()
