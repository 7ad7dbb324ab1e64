"""The ingress's request path without Ray: overload, a failed sample, the start-up warning."""

from __future__ import annotations

import asyncio

import pytest

from serve import auth
from serve import ingress as ingress_module
from serve.errors import APIError
from serve.ingress import MeerkatAPI
from serve.replica import ModelInfo
from serve.settings import AppArgs


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

    cls = MeerkatAPI.func_or_class
    ingress = types.SimpleNamespace(
        model=_Handle(outcome),
        settings=AppArgs(model="m"),
        pool=ThreadPoolExecutor(max_workers=1),
        _prepare_sync=lambda instruction, raw: ingress_module._Prepared({"input_ids": [1, 2, 3]}, 8, 8, 1.0),
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
    info = ModelInfo("m/1", PRESETS["tiny"], load_tokenizer(None))
    handle = types.SimpleNamespace(describe=types.SimpleNamespace(remote=lambda: _Response(info)))
    user_class = MeerkatAPI.func_or_class.__mro__[1]  # the class as written, under Serve's wrapper
    ingress = object.__new__(user_class)
    settings = AppArgs(model="m", api_token_sha256=auth.token_digest(token) if token else None)
    with caplog.at_level(logging.WARNING, logger="serve.ingress"):
        asyncio.run(user_class.__init__(ingress, handle, settings))
    warned = [r for r in caplog.records if "no API token" in r.getMessage()]
    assert bool(warned) is (token is None) and ingress.name == "m/1"
    ingress.pool.shutdown()
