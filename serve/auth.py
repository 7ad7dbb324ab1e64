"""Optional bearer-token authentication of the HTTP API.

The service keeps only the SHA-256 of the token: deploy configs, the Ray dashboard and logs show
the digest, which does not reveal a random token. Clients send ``Authorization: Bearer <token>``
(what the OpenAI clients do with their ``api_key``); browsers, for the demo page and the API docs,
HTTP Basic with the token as the password (any user name): a page refused with
``WWW-Authenticate: Basic`` makes the browser ask for it once and send it with the page's own
requests.
"""

from __future__ import annotations

import base64
import binascii
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


def presented_token(header: str | None) -> str | None:
    """The token of an ``Authorization`` header: ``Bearer <token>`` or Basic with it as password."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


def check(presented: str | None, digest: str | None, *, page: bool = False) -> None:
    """Pass when no token is required or ``presented`` matches ``digest``; 401 otherwise.

    ``page``: the 401 asks a browser for HTTP Basic credentials (the token as password).
    """
    if digest is None:
        return
    if presented is None or not hmac.compare_digest(token_digest(presented), digest):
        challenge = 'Basic realm="meerkat", charset="UTF-8"' if page else "Bearer"
        raise APIError(
            401,
            "authentication_error",
            "missing or wrong API token: send Authorization: Bearer <token>"
            + (" (or sign in with the token as password)" if page else ""),
            headers={"WWW-Authenticate": challenge},
        )
