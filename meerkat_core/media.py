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
- ``ImageFrontEnd`` is CLIP's resize-shortest-side (bicubic) + centre crop + normalise (after a
  letterbox, below), written with PIL and numpy rather than calling ``CLIPImageProcessor``: in
  transformers 5 that class picks a
  torchvision backend when one is installed (different resize numerics on a cluster image than on a
  laptop), and ``box_to_crop`` must use the very crop geometry the pixels went through. Its
  parameters (size, crop, mean/std, resample) come from a checkpoint's ``preprocessor_config.json``
  with :meth:`ImageFrontEnd.from_pretrained` (read through transformers' PIL-backend CLIP
  processor, which parses every layout of that file), and a test pins the output to that
  processor's exactly. A checkpoint whose crop differs from its resize side, or that skips a step,
  is refused: ``crop_geometry`` is the one geometry the boxes follow.
- **The encoder sees the whole image: letterbox, then CLIP.** A centre crop would cut off the sides
  of a non-square frame (VGG-SS frames are 4:3), and with them parts of boxes or whole objects the
  answer names. So ``ImageFrontEnd`` first pads the image to a square, centred, with the CLIP
  mean colour (LLaVA-1.5's ``expand2square``: ``int(255 * mean)`` per channel, ``pad_geometry``),
  then runs CLIP's resize + centre crop, which on a square is a plain resize (the crop takes it all).
  Parity with the library holds as LLaVA uses it: ours equals transformers' CLIP processor applied
  to the padded image. The alternative, training on crop coordinates and mapping answers back,
  cannot answer about what the crop cut off.
- **Coordinate convention.** Boxes stay normalised ``[x1, y1, x2, y2]`` to the ORIGINAL image
  everywhere in data and text: answers, fact-check statements, ground truth, metrics and Serve's
  answers (which it scales by the image's own width and height). Only what lives on the encoder's
  patch grid (the AVACE box mask, region-prompt features) goes through ``box_to_crop``, the exact
  map into the padded square. ``BOX_CONVENTION`` names this for run records.
- ``AudioFrontEnd`` cuts a clip into ``num_windows`` consecutive windows and computes CLAP's
  log-mel of each as ``ClapFeatureExtractor`` defines it: the checkpoint's own settings and mel
  filters (:meth:`AudioFrontEnd.from_pretrained`, e.g. LAION's 50-14000 Hz and ``repeatpad``), or,
  without a checkpoint, an extractor built with ``rand_trunc`` and ``pad``. No window is longer
  than one window, so the extractor's random crop never applies and features are deterministic. A
  window the clip only partly covers is padded by the extractor's rule (``pad``: silence;
  ``repeatpad``: the part repeated, as CLAP does for a short clip); windows past the clip's end
  are silence. The spectrogram itself is computed here with one batched ``torch.stft`` in float32
  rather than by calling the extractor, which works window by window in float64 numpy: it is the
  largest CPU cost of a training sample and of a served request, and this is about 5x cheaper. The
  same padding, periodic Hann window, centred reflect-padded frames, power spectrum, the
  extractor's own slaney mel filters and ``10 log10(max(1e-10, .))``: tests hold it to the
  extractor's output within float32 rounding (CLAP itself was trained on float32 features). ``truncation="fusion"`` front ends (4 stacked views per clip, for LAION's
  fused checkpoints) are refused: the encoder here is the non-fusion HTSAT over consecutive windows.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import soundfile as sf
import torch
from PIL import Image, ImageFile, UnidentifiedImageError
from transformers import ClapFeatureExtractor

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LOG_MEL_TOLERANCE_DB = 1e-3
"""Largest difference, in dB, between :meth:`AudioFrontEnd.log_mel` (float32) and
``ClapFeatureExtractor`` (float64) that the tests allow; about 3e-4 dB is measured on noise."""

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
    # Imported here, on the first recording that needs it: scipy.signal was 0.6 s of this
    # module's import (python -X importtime), paid by each data-stream worker and Serve replica,
    # and recordings already at the model's rate (the procedural world's) never need it.
    from scipy.signal import resample_poly

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


# Longest side letterboxed as it is; a larger image is shrunk to it first (exact parity with the
# library's processor holds up to this size, every dataset frame included).
_MAX_PAD_SIDE = 2048
BOX_CONVENTION = "xyxy normalised to the original image; encoder input letterboxed to a square (CLIP mean)"


def pad_geometry(width: int, height: int) -> tuple[int, int, int]:
    """``(side, left, top)``: the square LLaVA-1.5's ``expand2square`` pads a ``width`` x ``height``
    image to, and where the image sits on it (centred, the odd pixel on the right or bottom)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"sizes must be positive, got {width} x {height}")
    side = max(width, height)
    return side, (side - width) // 2, (side - height) // 2


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """The RGB ``image`` centred on a square of colour ``fill`` (itself when already square)."""
    image = image.convert("RGB")
    side, left, top = pad_geometry(image.width, image.height)
    if side == image.width == image.height:
        return image
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, (left, top))
    return canvas


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
    """A box normalised to the original ``width`` x ``height`` image -> normalised to the encoder's
    input, the ``image_size`` square ``ImageFrontEnd`` makes (letterbox, then resize).

    The letterbox keeps the whole image, so every box with area maps to a box with area; the
    result is clipped to [0, 1], and None only for a box without area (nothing to point at).
    """
    side, pad_left, pad_top = pad_geometry(width, height)
    resized_w, resized_h, left, top = crop_geometry(side, side, image_size)
    x1, y1, x2, y2 = (float(v) for v in box)

    def to_crop(value: float, extent: int, pad: int, resized: int, offset: int) -> float:
        on_square = (value * extent + pad) / side  # normalised to the padded square
        return min(1.0, max(0.0, (on_square * resized - offset) / image_size))

    cx1, cx2 = (to_crop(v, width, pad_left, resized_w, left) for v in (x1, x2))
    cy1, cy2 = (to_crop(v, height, pad_top, resized_h, top) for v in (y1, y2))
    if not (cx2 > cx1 and cy2 > cy1):
        return None
    return cx1, cy1, cx2, cy2


class ImageFrontEnd:
    """PIL images -> CLIP pixel values [B, 3, S, S] float32 (letterbox, resize, centre crop, normalise)."""

    def __init__(
        self,
        image_size: int = 224,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        resample: Image.Resampling = Image.Resampling.BICUBIC,
        rescale_factor: float = 1 / 255,
    ) -> None:
        self.image_size = image_size
        self.resample = Image.Resampling(resample)
        self.rescale_factor = rescale_factor
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)  # [3, 1, 1]
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)  # [3, 1, 1]
        """Per-channel normalisation constants, float32 ``[3, 1, 1]``: pixels = (x · rescale - mean) / std."""

    @classmethod
    def from_pretrained(cls, name_or_path: str, revision: str | None = None) -> ImageFrontEnd:
        """The front end of a CLIP checkpoint (hub name or directory), from its ``preprocessor_config.json``.

        Raises ValueError naming the setting when the checkpoint asks for something this class does
        not do (no resize or crop, a crop other than the resized short side, no normalisation).
        """
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        proc = CLIPImageProcessorPil.from_pretrained(name_or_path, revision=revision)
        where = f"preprocessor_config.json of {name_or_path}"
        for flag in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
            if not getattr(proc, flag):
                raise ValueError(f"{where}: {flag} is false; the CLIP front end here always does it")
        side = proc.size.get("shortest_edge")
        crop = (proc.crop_size.get("height"), proc.crop_size.get("width"))
        if side is None or crop != (side, side):
            raise ValueError(
                f"{where}: size {dict(proc.size)} and crop_size {dict(proc.crop_size)} are not a resize of the "
                "short side to S followed by an S x S centre crop"
            )
        return cls(
            image_size=side,
            mean=tuple(proc.image_mean),
            std=tuple(proc.image_std),
            resample=Image.Resampling(int(proc.resample)),
            rescale_factor=float(proc.rescale_factor),
        )

    @property
    def fill(self) -> tuple[int, int, int]:
        """The letterbox colour: the normalisation mean in 8-bit, truncated as LLaVA-1.5 does."""
        return tuple(int(255 * float(m)) for m in self.mean.reshape(3))

    def _one(self, image: Image.Image) -> np.ndarray:
        size = self.image_size
        if max(image.size) > _MAX_PAD_SIDE:
            # Padding a 20:1 panorama of 16 MP first would allocate a gigabyte; shrink it to a long
            # side of _MAX_PAD_SIDE (far above any encoder input) before the letterbox.
            scale = _MAX_PAD_SIDE / max(image.size)
            shrunk = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.convert("RGB").resize(shrunk, self.resample)
        square = pad_to_square(image, self.fill)  # the whole image, centred (module docstring)
        resized_w, resized_h, left, top = crop_geometry(square.width, square.height, size)
        resized = square.resize((resized_w, resized_h), self.resample)
        crop = resized.crop((left, top, left + size, top + size))
        # rescaled in float64 then cast, normalised in float32: the numerics of transformers' PIL backend
        pixels = (np.asarray(crop, dtype=np.float64).transpose(2, 0, 1) * self.rescale_factor).astype(
            np.float32
        )  # [3, S, S]
        return (pixels - self.mean) / self.std

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[B, 3, S, S] float32; an empty sequence gives [0, 3, S, S]."""
        size = self.image_size
        batch = np.zeros((len(images), 3, size, size), dtype=np.float32)  # [B, 3, S, S]
        for index, image in enumerate(images):
            batch[index] = self._one(image)
        return torch.from_numpy(batch)


def _check_extractor(
    extractor: ClapFeatureExtractor,
    sampling_rate: int,
    num_mel_bins: int,
    hop_length: int,
    window_samples: int,
) -> None:
    """Raise ValueError naming the setting where a CLAP feature extractor cannot serve these windows."""
    if extractor.truncation == "fusion":
        raise ValueError(
            "CLAP front end has truncation='fusion' (a fused checkpoint's 4 stacked views); the audio "
            "encoder here is the non-fusion HTSAT over consecutive windows: use an unfused checkpoint"
        )
    if extractor.padding not in ("pad", "repeat", "repeatpad"):
        raise ValueError(f"CLAP front end padding {extractor.padding!r} is not pad, repeat or repeatpad")
    for name, theirs, ours in (
        ("sampling_rate", extractor.sampling_rate, sampling_rate),
        ("feature_size", extractor.feature_size, num_mel_bins),
        ("hop_length", extractor.hop_length, hop_length),
        ("max_length_s * sampling_rate", extractor.nb_max_samples, window_samples),
    ):
        if int(theirs) != int(ours):
            raise ValueError(f"CLAP front end {name} is {theirs}, the audio windows need {ours}")


class AudioFrontEnd:
    """Mono waveforms at ``sampling_rate`` -> CLAP log-mel windows [B, W, 1, T, F] float32.

    Each clip is cut into ``num_windows`` consecutive windows of ``window_seconds``: a longer clip is
    truncated to ``num_windows * window_seconds``; in a shorter one the window it partly covers is
    padded by the extractor's ``padding`` and the windows after it are silence. T is
    ``frames_per_window`` (1001 for 10 s at hop 480) and F is ``num_mel_bins``.
    """

    def __init__(
        self,
        sampling_rate: int = 48_000,
        num_mel_bins: int = 64,
        hop_length: int = 480,
        window_seconds: float = 10.0,
        num_windows: int = 1,
        *,
        extractor: ClapFeatureExtractor | None = None,
    ) -> None:
        """``extractor``: a checkpoint's own (see :meth:`from_pretrained`); its settings must agree
        with the other arguments. ``None``: CLAP's defaults with ``rand_trunc`` and ``pad``."""
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
        if extractor is None:
            extractor = ClapFeatureExtractor(
                feature_size=num_mel_bins,
                sampling_rate=sampling_rate,
                hop_length=hop_length,
                max_length_s=window_seconds,
                truncation="rand_trunc",
                padding="pad",
            )
        _check_extractor(extractor, sampling_rate, num_mel_bins, hop_length, self.window_samples)
        self._extractor = extractor
        self.padding = str(extractor.padding)
        self.n_fft = int(extractor.fft_window_size)
        # [n_fft // 2 + 1, F]: the filters the extractor applies outside "fusion" (slaney scale and norm)
        self._mel_filters = torch.from_numpy(np.asarray(extractor.mel_filters_slaney, dtype=np.float32))
        self._window = torch.hann_window(self.n_fft, periodic=True, dtype=torch.float32)
        self.num_mel_bins = num_mel_bins
        self.hop_length = hop_length

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, revision: str | None = None, *, num_windows: int = 1
    ) -> AudioFrontEnd:
        """The front end of a CLAP checkpoint (hub name or directory): its ``ClapFeatureExtractor``
        from ``preprocessor_config.json`` (rate, mels, hop, FFT, frequency range, padding), over
        ``num_windows`` windows of its ``max_length_s``."""
        extractor = ClapFeatureExtractor.from_pretrained(name_or_path, revision=revision)
        return cls(
            sampling_rate=int(extractor.sampling_rate),
            num_mel_bins=int(extractor.feature_size),
            hop_length=int(extractor.hop_length),
            window_seconds=float(extractor.max_length_s),
            num_windows=num_windows,
            extractor=extractor,
        )

    @property
    def frames_per_window(self) -> int:
        """Spectrogram frames per window: the STFT is centred, hence one more than samples // hop."""
        return self.window_samples // self.hop_length + 1

    def __call__(self, waveforms: Sequence[np.ndarray]) -> torch.Tensor:
        """[B, W, 1, T, F] float32 from B mono waveforms [T_b]; an empty sequence gives B = 0."""
        n = self.window_samples
        windows = []
        for wave in waveforms:
            wave = np.asarray(wave, dtype=np.float32)
            if wave.ndim != 1:
                raise ValueError(f"expected a mono waveform [T], got shape {wave.shape}")
            for w in range(self.num_windows):
                part = wave[w * n : (w + 1) * n]  # [<= window]; the extractor pads a short one
                windows.append(part if len(part) else np.zeros(n, dtype=np.float32))
        shape = (len(waveforms), self.num_windows, 1, self.frames_per_window, self.num_mel_bins)
        if not windows:
            return torch.zeros(shape, dtype=torch.float32)
        return self.log_mel(windows).reshape(shape)

    def padded(self, part: np.ndarray) -> np.ndarray:
        """One window's samples [<= window] -> exactly one window, by the extractor's ``padding``
        (``ClapFeatureExtractor``'s rule for a clip shorter than ``max_length``)."""
        n = self.window_samples
        if len(part) >= n:
            return part[:n]
        if self.padding == "repeat":
            return np.tile(part, n // len(part) + 1)[:n]
        if self.padding == "repeatpad":
            part = np.tile(part, n // len(part))
        return np.pad(part, (0, n - len(part)))

    def log_mel(self, windows: Sequence[np.ndarray]) -> torch.Tensor:
        """[N, T, F] float32 log-mel (dB) of N windows of at most ``window_samples`` each."""
        wave = torch.from_numpy(np.stack([self.padded(np.asarray(w, np.float32)) for w in windows]))
        spec = torch.stft(
            wave,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            window=self._window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )  # [N, n_fft // 2 + 1, T]
        power = torch.view_as_real(spec).square().sum(-1)
        mel = torch.matmul(power.transpose(1, 2), self._mel_filters)  # [N, T, F]
        return mel.clamp_min_(1e-10).log10_().mul_(10.0)


# -- lean media: what crosses process boundaries (object store, Serve handles) -----------------------


def lean_media(
    pixel_values: np.ndarray, audio_features: np.ndarray, image: ImageFrontEnd
) -> dict[str, np.ndarray]:
    """The compact form of one row's media, for the object store and between processes: 8-bit
    pixels, 16-bit log-mels, and how to normalise them (about a third of the float32 bytes).

    ``pixel_values [3,S,S]`` float32, normalised by ``image`` (the owner of the constants) -> the
    crop's 8-bit values, exactly (the float was computed from them); ``pixel_norm [3,3]`` = the
    mean, std and rescale factor per channel, so the consumer normalises with the constants the
    row was made with (:func:`normalise_media`). ``audio_features [W,1,T,F]`` -> float16: the
    model trains and is evaluated and served on the same rounding.
    """
    mean, std = image.mean, image.std  # [3,1,1] float32
    scaled = (pixel_values.astype(np.float64) * std + mean) / image.rescale_factor
    norm = np.stack([mean.reshape(3), std.reshape(3), np.full(3, image.rescale_factor, np.float32)])
    return {
        "pixel_values": np.clip(np.rint(scaled), 0, 255).astype(np.uint8),  # [3,S,S]
        "audio_features": audio_features.astype(np.float16),  # [W,1,T,F]
        "pixel_norm": norm.astype(np.float32),  # [3,3]
    }


def normalise_media(batch: dict[str, Any], device: Any = None) -> dict[str, Any]:
    """Lean batch media -> the model's float32 ``pixel_values``/``audio_features``, on ``device``.

    Moves the 8-bit and 16-bit tensors first and converts there, once: the consumer's device does
    the arithmetic and the host-to-device copy is a quarter (pixels) and a half (mels) of float32's.
    Float media pass through (``pixel_norm``, if any, is dropped).
    """
    pixels = batch["pixel_values"].to(device)
    if pixels.dtype == torch.uint8:
        norm = batch.pop("pixel_norm").to(device, torch.float32)  # [B,3,3]
        scaled = pixels.to(torch.float32) * norm[:, 2, :, None, None]
        pixels = (scaled - norm[:, 0, :, None, None]) / norm[:, 1, :, None, None]  # [B,3,S,S]
    batch.pop("pixel_norm", None)
    batch["pixel_values"] = pixels
    batch["audio_features"] = batch["audio_features"].to(device).to(torch.float32)
    return batch


def float_row(row: dict[str, Any]) -> dict[str, Any]:
    """One row with lean media (:func:`lean_media`) -> the same row with float32 media, as
    :class:`meerkat_core.batching.SamplePreprocessor` makes it; a float row is returned as is."""
    if np.asarray(row["pixel_values"]).dtype != np.uint8:
        return row
    one = normalise_media(
        {
            name: torch.from_numpy(np.asarray(row[name]))[None]
            for name in ("pixel_values", "pixel_norm", "audio_features")
        }
    )
    rest = {k: v for k, v in row.items() if k != "pixel_norm"}
    return {
        **rest,
        "pixel_values": one["pixel_values"][0].numpy(),
        "audio_features": one["audio_features"][0].numpy(),
    }
