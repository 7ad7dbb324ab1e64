"""Image and audio bytes -> encoder inputs, with one named error for bad media.

Decoding (``load_image``, ``load_audio``) treats its input as untrusted: anything empty, garbage,
truncated, lying about its size or too large raises ``MediaError`` (a ``ValueError``), so that a
shard writer can skip the sample and a server can answer 400.

Decisions made here:

- Images: the pixel count is checked against ``max_pixels`` from the header, before any pixel is
  decoded, and that limit is the only one this module applies. PIL's own ``DecompressionBombError``
  still becomes ``MediaError``; its ``DecompressionBombWarning`` is not escalated, because doing so
  means swapping the process-wide warning filters (not thread-safe before Python 3.14) and
  ``max_pixels`` already rejects every image that would warn unless a caller raised the limit on
  purpose. Truncated images are rejected by refusing to run while PIL's process-wide
  ``LOAD_TRUNCATED_IMAGES`` is on. EXIF orientation is not applied: pixels come back as stored,
  the order the dataset annotations use.
- Audio: libsndfile trims a WAV whose header declares more data than the file holds and reports the
  trimmed length, so RIFF chunk sizes are checked here. Data are read in blocks, so a header that
  claims a huge length cannot make us allocate memory the file does not back, and the frame count
  read is compared with the count declared.
- ``ImagePreprocessor`` is CLIP's resize-shortest-side (bicubic) + centre crop + normalise, written
  with PIL and numpy rather than calling ``CLIPImageProcessor``: in transformers 5 that class picks a
  torchvision backend when one is installed (different resize numerics on a cluster image than on a
  laptop), and ``box_to_crop`` must use the very crop geometry the pixels went through. A test pins
  the output to transformers' PIL backend exactly.
- Boxes stay normalised to the ORIGINAL image everywhere in data and text. The encoder sees the
  centre crop, so the attention target on the patch grid is computed from ``box_to_crop``.
- ``AudioPreprocessor`` cuts a clip into ``num_windows`` consecutive windows and computes CLAP's
  log-mel of each with ``ClapFeatureExtractor`` (``rand_trunc``, ``pad``): every window handed to it
  is exactly one window long, so its random crop never fires and features are deterministic.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Sequence

import numpy as np
import soundfile as sf
import torch
from PIL import Image, ImageFile, UnidentifiedImageError
from scipy.signal import resample_poly
from transformers import ClapFeatureExtractor

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Far outside this range resample_poly designs filters with millions of taps; no real recording is.
_MIN_SAMPLE_RATE = 1_000
_MAX_SAMPLE_RATE = 384_000
_READ_BLOCK_FRAMES = 1 << 16
# A RIFF data chunk of this size is the convention for "length unknown" (streamed writers).
_RIFF_UNKNOWN_SIZE = 0xFFFFFFFF
# What PIL raises on bad data: truncation and format errors surface as OSError, SyntaxError,
# ValueError or EOFError depending on the plugin.
_PIL_ERRORS = (
    Image.DecompressionBombError,
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
)


class MediaError(ValueError):
    """Image or audio bytes that cannot be decoded into a usable, bounded input."""


def load_image(data: bytes, *, max_pixels: int = 40_000_000) -> Image.Image:
    """Decodes image bytes (any format PIL reads) into an RGB image.

    Raises MediaError for empty, unreadable or truncated data and for more than ``max_pixels``
    pixels (checked from the header, before decoding).
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on in this process; load_image would accept "
            "truncated images silently. Leave it off."
        )
    if not data:
        raise MediaError("empty image data")
    try:
        image = Image.open(io.BytesIO(data))
    except _PIL_ERRORS as err:
        raise MediaError(f"cannot read image header: {err}") from err
    width, height = image.size
    if width * height > max_pixels:
        raise MediaError(f"image of {width} x {height} pixels exceeds max_pixels={max_pixels}")
    try:
        image.load()
        return image.convert("RGB")
    except _PIL_ERRORS as err:
        raise MediaError(f"cannot decode image: {err}") from err


def encode_jpeg(img: Image.Image, quality: int = 92) -> bytes:
    """JPEG bytes of ``img`` (converted to RGB)."""
    buffer = io.BytesIO()
    img.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _check_riff_sizes(data: bytes) -> None:
    """Raises MediaError when a RIFF/WAVE chunk declares more bytes than the data hold."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        body = offset + 8
        if chunk_id == b"data" and size == _RIFF_UNKNOWN_SIZE:
            return
        if size > len(data) - body:
            raise MediaError(
                f"WAV chunk {chunk_id!r} declares {size} bytes but only {len(data) - body} are present"
            )
        # Chunks are padded to an even size.
        offset = body + size + (size & 1)


def _resample(wave: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """[T] at ``sr`` -> [T * target_sr / sr] at ``target_sr`` (polyphase, exact rational ratio)."""
    if sr == target_sr:
        return wave
    g = math.gcd(sr, target_sr)
    return resample_poly(wave, target_sr // g, sr // g)


def load_audio(data: bytes, *, target_sr: int = 48_000, max_seconds: float = 600.0) -> np.ndarray:
    """Decodes audio bytes (FLAC, WAV, OGG and whatever libsndfile reads) into float32 mono [T].

    Channels are averaged and the result is resampled to ``target_sr``. Raises MediaError for empty,
    unreadable, truncated or zero-length audio, a header that declares more data than present,
    more than ``max_seconds`` (checked from the header before reading) and non-finite samples.
    """
    if not data:
        raise MediaError("empty audio data")
    _check_riff_sizes(data)
    try:
        with sf.SoundFile(io.BytesIO(data)) as audio:
            sr, frames, channels = audio.samplerate, audio.frames, audio.channels
            if not _MIN_SAMPLE_RATE <= sr <= _MAX_SAMPLE_RATE:
                raise MediaError(f"unsupported sample rate {sr} Hz")
            if frames <= 0 or channels <= 0:
                raise MediaError("audio has no samples")
            if frames > max_seconds * sr:
                raise MediaError(f"audio of {frames / sr:.1f} s exceeds max_seconds={max_seconds}")
            blocks = []
            read = 0
            while read < frames:
                block = audio.read(min(_READ_BLOCK_FRAMES, frames - read), dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                blocks.append(block)  # [n, C]
                read += len(block)
    except (sf.SoundFileError, RuntimeError) as err:
        raise MediaError(f"cannot decode audio: {err}") from err
    if read != frames:
        raise MediaError(f"audio header declares {frames} frames but {read} could be read")
    samples = np.concatenate(blocks)  # [T, C]
    if not np.isfinite(samples).all():
        raise MediaError("audio has non-finite samples")
    mono = samples.mean(axis=1)  # [T]
    return np.ascontiguousarray(_resample(mono, sr, target_sr), dtype=np.float32)


def encode_flac(wave: np.ndarray, sr: int) -> bytes:
    """16-bit FLAC bytes of a float waveform [T] (mono) or [T, C] in [-1, 1]; libsndfile clips beyond."""
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(wave, dtype=np.float32), sr, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def crop_geometry(width: int, height: int, image_size: int) -> tuple[int, int, int, int]:
    """``(resized_width, resized_height, left, top)`` of CLIP's resize + centre crop.

    The shortest side becomes ``image_size``, the other ``floor(image_size * long / short)``; the
    crop of ``image_size`` x ``image_size`` starts at ``(left, top)`` in the resized image. Same
    rounding as transformers' CLIP image processor.
    """
    if width <= 0 or height <= 0 or image_size <= 0:
        raise ValueError(f"sizes must be positive, got {width} x {height} -> {image_size}")
    if width <= height:
        resized_w, resized_h = image_size, int(image_size * height / width)
    else:
        resized_w, resized_h = int(image_size * width / height), image_size
    return resized_w, resized_h, (resized_w - image_size) // 2, (resized_h - image_size) // 2


def box_to_crop(
    box: Sequence[float], width: int, height: int, image_size: int
) -> tuple[float, float, float, float] | None:
    """A box normalised to the original ``width`` x ``height`` image -> normalised to the crop.

    The crop is the ``image_size`` square ``ImagePreprocessor`` feeds the encoder. The result is
    clipped to [0, 1]; None when nothing of the box is left inside the crop (no area), since then the
    encoder does not see the object at all.
    """
    resized_w, resized_h, left, top = crop_geometry(width, height, image_size)
    x1, y1, x2, y2 = (float(v) for v in box)

    def to_crop(value: float, resized: int, offset: int) -> float:
        return min(1.0, max(0.0, (value * resized - offset) / image_size))

    cx1, cx2 = to_crop(x1, resized_w, left), to_crop(x2, resized_w, left)
    cy1, cy2 = to_crop(y1, resized_h, top), to_crop(y2, resized_h, top)
    if not (cx2 > cx1 and cy2 > cy1):
        return None
    return cx1, cy1, cx2, cy2


class ImagePreprocessor:
    """PIL images -> CLIP pixel values [B, 3, S, S] float32 (resize, centre crop, normalise)."""

    def __init__(
        self,
        image_size: int = 224,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        self.image_size = image_size
        self._mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)  # [3, 1, 1]
        self._std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)  # [3, 1, 1]

    def _one(self, image: Image.Image) -> np.ndarray:
        size = self.image_size
        resized_w, resized_h, left, top = crop_geometry(image.width, image.height, size)
        resized = image.convert("RGB").resize((resized_w, resized_h), Image.Resampling.BICUBIC)
        crop = resized.crop((left, top, left + size, top + size))
        pixels = np.asarray(crop, dtype=np.float32).transpose(2, 0, 1) / 255.0  # [3, S, S]
        return (pixels - self._mean) / self._std

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[B, 3, S, S] float32; an empty sequence gives [0, 3, S, S]."""
        size = self.image_size
        batch = np.zeros((len(images), 3, size, size), dtype=np.float32)  # [B, 3, S, S]
        for index, image in enumerate(images):
            batch[index] = self._one(image)
        return torch.from_numpy(batch)


class AudioPreprocessor:
    """Mono waveforms at ``sampling_rate`` -> CLAP log-mel windows [B, W, 1, T, F] float32.

    Each clip is cut into ``num_windows`` consecutive windows of ``window_seconds``: a longer clip is
    truncated to ``num_windows * window_seconds``, a shorter one zero-padded. T is
    ``frames_per_window`` (1001 for 10 s at hop 480) and F is ``num_mel_bins``.
    """

    def __init__(
        self,
        sampling_rate: int = 48_000,
        num_mel_bins: int = 64,
        hop_length: int = 480,
        window_seconds: float = 10.0,
        num_windows: int = 1,
    ) -> None:
        window_samples = window_seconds * sampling_rate
        if window_samples <= 0 or window_samples != int(window_samples):
            raise ValueError(
                f"window_seconds * sampling_rate must be a positive whole number of samples, got {window_samples}"
            )
        if num_windows < 1:
            raise ValueError(f"num_windows must be >= 1, got {num_windows}")
        self.sampling_rate = sampling_rate
        self.num_windows = num_windows
        self.window_samples = int(window_samples)
        self._extractor = ClapFeatureExtractor(
            feature_size=num_mel_bins,
            sampling_rate=sampling_rate,
            hop_length=hop_length,
            max_length_s=window_seconds,
            truncation="rand_trunc",
            padding="pad",
        )
        self.num_mel_bins = num_mel_bins
        self.hop_length = hop_length

    @property
    def frames_per_window(self) -> int:
        """Spectrogram frames per window: the STFT is centred, hence one more than samples // hop."""
        return self.window_samples // self.hop_length + 1

    def __call__(self, waveforms: Sequence[np.ndarray]) -> torch.Tensor:
        """[B, W, 1, T, F] float32 from B mono waveforms [T_b]; an empty sequence gives B = 0."""
        clip_samples = self.num_windows * self.window_samples
        windows = []
        for wave in waveforms:
            wave = np.asarray(wave, dtype=np.float32)
            if wave.ndim != 1:
                raise ValueError(f"expected a mono waveform [T], got shape {wave.shape}")
            clip = np.zeros(clip_samples, dtype=np.float32)  # [W * window]
            used = min(len(wave), clip_samples)
            clip[:used] = wave[:used]
            windows.extend(np.split(clip, self.num_windows))  # W x [window]
        shape = (len(waveforms), self.num_windows, 1, self.frames_per_window, self.num_mel_bins)
        if not windows:
            return torch.zeros(shape, dtype=torch.float32)
        features = self._extractor(
            windows,
            sampling_rate=self.sampling_rate,
            max_length=self.window_samples,
            return_tensors="np",
        )["input_features"]  # [B * W, 1, T, F]
        return torch.from_numpy(np.asarray(features, dtype=np.float32).reshape(shape))
