"""serve.auth: token digests, bearer and basic credentials."""

from __future__ import annotations

import pytest

from serve import auth
from serve.errors import APIError


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


def test_auth_digest_from_the_environment(monkeypatch):
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    assert auth.digest_from_env() is None
    monkeypatch.setenv(auth.TOKEN_ENV, "s3cret")
    assert auth.digest_from_env() == auth.token_digest("s3cret")
