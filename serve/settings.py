"""The application's settings: the arguments of the builder (``args:`` in ``serve/config.yaml``).

The builder (:func:`serve.app.app`) reads them once and hands them to the ingress
(:class:`serve.ingress.MeerkatAPI`), which enforces the limits; the model replica takes only the
model reference, its public name and the device. Light to import (pydantic only), so that
:mod:`serve.deploy` reads :data:`MODEL_REF_ENV` from here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MODEL_REF_ENV = "MEERKAT_MODEL_REF"
"""The environment variable holding the model reference when the arguments give none."""


class AppArgs(BaseModel):
    """Arguments of the application builder (``args:`` in ``serve/config.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    """Model reference for :func:`pipelines.registry.load`; None: ``$MEERKAT_MODEL_REF``."""
    served_model_name: str | None = None
    """The ``model`` name of the OpenAI API; None: derived from the reference."""
    device: str = "auto"
    """Torch device of the model replica; ``auto``: CUDA when the replica was given a GPU."""
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    """Largest request body (413 beyond): base64 media take 4/3 of their size."""
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    """Largest image, width x height, checked from the header before decoding (400 beyond)."""
    max_aspect_ratio: float = Field(20.0, ge=1.0)
    """Longest over shortest image side: the encoder's resize scales the short side to the crop
    size, so a 1 x 10000 image would otherwise be resized to a 224 x 2 240 000 one."""
    max_audio_seconds: float = Field(60.0, gt=0)
    """Longest audio clip, checked from the header before decoding; the model itself reads the
    first ``num_windows * window_seconds`` (10 s for the presets)."""
    max_audio_samples: int = Field(60 * 48_000 * 2, ge=1)
    """Most decoded audio samples, channels x frames, checked from the header before decoding
    (default: a minute of 48 kHz stereo, 23 MB as float32)."""
    max_prompt_chars: int = Field(2000, ge=1)
    """Longest instruction text; the model's token budget (``max_text_tokens``) applies after."""
    default_max_new_tokens: int = Field(48, ge=1)
    max_new_tokens_limit: int = Field(256, ge=1)
    request_timeout_s: float = Field(60.0, gt=0)
    """Per request, from the first byte read to the answer (504 beyond)."""
    api_token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    """Hex SHA-256 of the bearer token clients must send; None: ``$MEERKAT_API_TOKEN`` or no auth."""
