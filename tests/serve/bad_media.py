"""Hostile and broken media for the input-validation tests, built with the real encoders."""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile as sf
from PIL import Image


def wav(seconds: float, sample_rate: int = 16_000) -> bytes:
    """A 16-bit mono WAV of silence."""
    buffer = io.BytesIO()
    sf.write(
        buffer, np.zeros(int(seconds * sample_rate), np.float32), sample_rate, format="WAV", subtype="PCM_16"
    )
    return buffer.getvalue()


def flac(seconds: float, sample_rate: int = 16_000) -> bytes:
    """A mono FLAC of silence (ten minutes of it is a few kilobytes)."""
    buffer = io.BytesIO()
    sf.write(
        buffer, np.zeros(int(seconds * sample_rate), np.float32), sample_rate, format="FLAC", subtype="PCM_16"
    )
    return buffer.getvalue()


def lying_wav() -> bytes:
    """A one-second WAV whose data chunk claims ten times the bytes the file holds."""
    data = bytearray(wav(1.0))
    offset = data.index(b"data")
    (size,) = struct.unpack("<I", data[offset + 4 : offset + 8])
    data[offset + 4 : offset + 8] = struct.pack("<I", size * 10)
    return bytes(data)


def zero_length_wav() -> bytes:
    """A well-formed WAV with no samples."""
    return wav(0.0)


def truncated(jpeg: bytes) -> bytes:
    """The first half of an image file."""
    return jpeg[: len(jpeg) // 2]


def png(width: int, height: int) -> bytes:
    """A black PNG of ``width`` x ``height`` (50 megapixels compress to ~50 kB)."""
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def wav_from(audio: bytes) -> bytes:
    """``audio`` (any format libsndfile reads) re-encoded as 16-bit WAV."""
    wave, sample_rate = sf.read(io.BytesIO(audio), dtype="float32")
    buffer = io.BytesIO()
    sf.write(buffer, wave, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
