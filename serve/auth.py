"""Optional bearer-token authentication of the HTTP API.

The service keeps only the SHA-256 of the token: deploy configs, the Ray dashboard and logs show
the digest, which does not reveal a random token. Clients send ``Authorization: Bearer <token>``
(what the OpenAI clients do with their ``api_key``).
"""

from __future__ import annotations

import hashlib
import hmac
import os

from serve.errors import APIError

TOKEN_ENV = "MEERKAT_API_TOKEN"


def token_digest(token: str) -> str:
    """Hex SHA-256 of an API token."""
    return hashlib.sha256(token.encode()).hexdigest()


def digest_from_env() -> str | None:
    """The digest of ``$MEERKAT_API_TOKEN``, or None when it is unset or empty."""
    token = os.environ.get(TOKEN_ENV)
    return token_digest(token) if token else None


def check(presented: str | None, digest: str | None) -> None:
    """Pass when no token is required or ``presented`` matches ``digest``; 401 otherwise."""
    if digest is None:
        return
    if presented is None or not hmac.compare_digest(token_digest(presented), digest):
        raise APIError(
            401,
            "authentication_error",
            "missing or wrong API token: send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
