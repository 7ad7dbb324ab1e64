"""Tests for meerkat_core.media: decoding untrusted bytes and preprocessing for the encoders."""

import io
import struct
import zlib

import numpy as np
import pytest
import soundfile as sf
from PIL import Image, ImageFile

from meerkat_core.media import (
    CLIP_MEAN,
    CLIP_STD,
    LOG_MEL_TOLERANCE_DB,
    AudioFrontEnd,
    ImageFrontEnd,
    MediaError,
    box_to_crop,
    crop_geometry,
    encode_flac,
    encode_jpeg,
    float_row,
    lean_media,
    load_audio,
    load_image,
    pad_geometry,
    pad_to_square,
)

# --------------------------------------------------------------------------------------------------
# Images


def _noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_load_png_is_lossless_and_rgb():
    image = _noise_image(40, 30)
    loaded = load_image(_png_bytes(image))
    assert loaded.mode == "RGB" and loaded.size == (40, 30)
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(image))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_load_png_other_modes_become_rgb(mode):
    loaded = load_image(_png_bytes(_noise_image(16, 12).convert(mode)))
    assert loaded.mode == "RGB" and loaded.size == (16, 12)


def test_load_jpeg_round_trip():
    image = Image.new("RGB", (64, 48), (200, 40, 90))
    loaded = load_image(encode_jpeg(image))
    assert loaded.mode == "RGB" and loaded.size == (64, 48)
    assert np.abs(np.asarray(loaded).astype(int) - (200, 40, 90)).max() <= 3


def test_truncated_jpeg_raises():
    data = encode_jpeg(_noise_image(120, 100))
    for cut in (len(data) - 2, len(data) - 60, len(data) // 2, 400):
        with pytest.raises(MediaError):
            load_image(data[:cut])


def test_truncated_png_raises():
    data = _png_bytes(_noise_image(120, 100))
    with pytest.raises(MediaError):
        load_image(data[: len(data) // 2])


@pytest.mark.parametrize("data", [b"", b"\x00", np.random.default_rng(0).bytes(5000), b"GIF89a garbage"])
def test_empty_or_garbage_image_raises(data):
    with pytest.raises(MediaError):
        load_image(data)


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` x ``height`` (CRC fixed so PIL reads the header)."""
    data = bytearray(_png_bytes(Image.new("RGB", (8, 8), (1, 2, 3))))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A tiny JPEG whose SOF0 segment claims ``width`` x ``height``."""
    data = bytearray(encode_jpeg(Image.new("RGB", (8, 8), (1, 2, 3))))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("make", [_png_declaring, _jpeg_declaring])
def test_huge_declared_size_is_rejected_before_decoding(make):
    # 8000 x 7000 = 56 MP: above the 40 MP default, below PIL's own bomb limit (89 MP), so the
    # message shows our header check fired, not a failed decode of the tiny pixel data.
    with pytest.raises(MediaError, match="max_pixels"):
        load_image(make(8000, 7000))
    with pytest.raises(MediaError, match="max_pixels"):
        load_image(_png_bytes(_noise_image(20, 10)), max_pixels=199)


def test_pil_decompression_bomb_error_becomes_media_error():
    # 20000 x 10000 = 200 MP is beyond twice PIL's limit: PIL raises while opening.
    with pytest.raises(MediaError):
        load_image(_png_declaring(20000, 10000), max_pixels=10**9)


def test_load_image_refuses_to_run_with_truncated_loading_on(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError):
        load_image(_png_bytes(_noise_image(4, 4)))


# --------------------------------------------------------------------------------------------------
# Audio


def _sine(freq: float, sr: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(sr * seconds)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _encode(wave: np.ndarray, sr: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, sr, format=fmt, subtype=subtype)
    return buffer.getvalue()


def _peak_hz(wave: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[np.argmax(spectrum)])


@pytest.mark.parametrize("sr", [16_000, 44_100, 48_000])
@pytest.mark.parametrize("fmt", ["FLAC", "WAV"])
@pytest.mark.parametrize("stereo", [False, True])
def test_load_audio_length_frequency_and_channel_mean(sr, fmt, stereo):
    tone = _sine(1000.0, sr, 1.5)
    # Stereo: the tone on the left, silence on the right; the mean halves its amplitude.
    wave = np.stack([tone, np.zeros_like(tone)], axis=1) if stereo else tone
    out = load_audio(_encode(wave, sr, fmt))
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - 72_000) <= 1
    assert _peak_hz(out, 48_000) == pytest.approx(1000.0, abs=1.0)
    # Away from the resampler's edge transients the amplitude is the tone's (halved for stereo).
    expected_amplitude = 0.25 if stereo else 0.5
    assert np.abs(out[4800:-4800]).max() == pytest.approx(expected_amplitude, abs=0.01)


def test_load_audio_other_target_rate_and_ogg():
    out = load_audio(_encode(_sine(440.0, 44_100, 2.0), 44_100, "OGG"), target_sr=16_000)
    assert abs(len(out) - 32_000) <= 1
    assert _peak_hz(out, 16_000) == pytest.approx(440.0, abs=1.0)


def test_encode_flac_round_trip():
    wave = _sine(300.0, 48_000, 0.5)
    out = load_audio(encode_flac(wave, 48_000))
    np.testing.assert_allclose(out, wave, atol=1.0 / 2**15)


@pytest.mark.parametrize(
    "data", [b"", b"\x00" * 3, np.random.default_rng(1).bytes(10_000), b"fLaC" + bytes(100)]
)
def test_empty_or_garbage_audio_raises(data):
    with pytest.raises(MediaError):
        load_audio(data)


def test_truncated_flac_raises():
    data = _encode(_sine(440.0, 16_000, 2.0), 16_000, "FLAC")
    for cut in (len(data) - 10, len(data) // 2, 200):
        with pytest.raises(MediaError):
            load_audio(data[:cut])


def _data_chunk_offset(wav: bytes) -> int:
    offset = wav.index(b"data")
    assert struct.unpack("<I", wav[offset + 4 : offset + 8])[0] == len(wav) - offset - 8
    return offset


def test_wav_header_declaring_more_data_than_present_raises():
    data = bytearray(_encode(_sine(440.0, 16_000, 1.0), 16_000, "WAV", "PCM_16"))
    offset = _data_chunk_offset(bytes(data))
    data[offset + 4 : offset + 8] = struct.pack("<I", 2 * (len(data) - offset - 8))
    with pytest.raises(MediaError, match="declares"):
        load_audio(bytes(data))


def test_truncated_wav_raises():
    data = _encode(_sine(440.0, 16_000, 1.0), 16_000, "WAV", "PCM_16")
    with pytest.raises(MediaError):
        load_audio(data[: len(data) // 2 + 1])


def test_streamed_wav_with_unknown_data_size_is_read():
    wave = _sine(440.0, 48_000, 0.5)
    data = bytearray(_encode(wave, 48_000, "WAV", "PCM_16"))
    offset = _data_chunk_offset(bytes(data))
    data[offset + 4 : offset + 8] = struct.pack("<I", 0xFFFFFFFF)
    assert len(load_audio(bytes(data))) == len(wave)


def test_fewer_frames_than_the_decoder_reported_raises(monkeypatch):
    # libsndfile already refuses the lies we can craft in FLAC or WAV bytes; a decoder that reports
    # 100 frames more than it delivers stands in for the formats where it does not.
    class Overreporting(sf.SoundFile):
        frames = property(lambda self: self._info.frames + 100)

    monkeypatch.setattr(sf, "SoundFile", Overreporting)
    with pytest.raises(MediaError, match="declares"):
        load_audio(_encode(_sine(440.0, 16_000, 0.5), 16_000, "FLAC"))


def test_zero_length_audio_raises():
    with pytest.raises(MediaError):
        load_audio(_encode(np.zeros(0, dtype=np.float32), 16_000, "WAV"))


def test_too_long_audio_raises():
    with pytest.raises(MediaError, match="max_seconds"):
        load_audio(_encode(_sine(440.0, 16_000, 2.0), 16_000, "FLAC"), max_seconds=1.5)
    # Exactly at the limit is fine.
    assert len(load_audio(_encode(_sine(440.0, 16_000, 2.0), 16_000, "FLAC"), max_seconds=2.0)) == 96_000


def test_flac_header_claiming_huge_duration_is_rejected_without_reading():
    data = bytearray(_encode(_sine(440.0, 16_000, 1.0), 16_000, "FLAC"))
    # STREAMINFO follows "fLaC" and a 4-byte block header; total samples are its low 36 bits at 10..18.
    start = 8 + 10
    packed = int.from_bytes(data[start : start + 8], "big")
    assert packed & ((1 << 36) - 1) == 16_000
    packed |= (1 << 36) - 1
    data[start : start + 8] = packed.to_bytes(8, "big")
    with pytest.raises(MediaError, match="max_seconds"):
        load_audio(bytes(data))


def test_non_finite_samples_raise():
    wave = _sine(440.0, 16_000, 0.5)
    wave[100] = np.nan
    with pytest.raises(MediaError, match="non-finite"):
        load_audio(_encode(wave, 16_000, "WAV", "FLOAT"))


def test_unsupported_sample_rate_raises():
    with pytest.raises(MediaError, match="sample rate"):
        load_audio(_encode(_sine(100.0, 500, 1.0), 500, "WAV"))


# --------------------------------------------------------------------------------------------------
# Image preprocessing


def test_crop_geometry_and_box_to_crop_hand_cases():
    # CLIP's own geometry (what runs after the letterbox): 640 x 480 -> width int(224 * 640 / 480).
    assert crop_geometry(640, 480, 224) == (298, 224, 37, 0)
    assert crop_geometry(224, 224, 224) == (224, 224, 0, 0)
    # The letterbox: 640 x 480 sits on a 640 square, 80 rows of padding above and below.
    assert pad_geometry(640, 480) == (640, 0, 80)
    assert pad_geometry(300, 501) == (501, 100, 0)  # the odd pixel goes right
    assert pad_geometry(224, 224) == (224, 0, 0)
    # The whole 640 x 480 image is rows 0.125 .. 0.875 of the square.
    assert box_to_crop((0.0, 0.0, 1.0, 1.0), 640, 480, 224) == pytest.approx((0.0, 0.125, 1.0, 0.875))
    assert box_to_crop((0.5, 0.0, 1.0, 1.0), 640, 480, 224) == pytest.approx((0.5, 0.125, 1.0, 0.875))
    # A square image is untouched: the procedural world's boxes map to themselves.
    assert box_to_crop((0.25, 0.5, 0.75, 0.75), 224, 224, 224) == pytest.approx((0.25, 0.5, 0.75, 0.75))
    assert box_to_crop((0.25, 0.5, 0.75, 0.75), 96, 96, 224) == pytest.approx((0.25, 0.5, 0.75, 0.75))
    # A box in the left margin that a centre crop would cut away survives: x 0 .. 0.1, rows 1/8 .. 7/8.
    assert box_to_crop((0.0, 0.0, 0.1, 1.0), 640, 480, 224) == pytest.approx((0.0, 0.125, 0.1, 0.875))
    assert box_to_crop((0.3, 0.3, 0.3, 0.6), 640, 480, 224) is None  # no area


def test_box_outside_the_centre_crop_is_seen_where_box_to_crop_says():
    """A non-square frame with an object in the margin a centre crop cuts away: the encoder input
    shows it, at the place ``box_to_crop`` maps its box to."""
    width, height = 640, 360
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[90:270, 20:100] = 255  # pixel box (20, 90, 100, 270): x < 140, left of a 16:9 centre crop
    box = (20 / width, 90 / height, 100 / width, 270 / height)
    assert box[2] < (width - height) / 2 / width  # wholly outside the centre square
    pixels = ImageFrontEnd()([Image.fromarray(canvas)])[0].numpy()  # [3, 224, 224]
    unnormalised = pixels * np.asarray(CLIP_STD).reshape(3, 1, 1) + np.asarray(CLIP_MEAN).reshape(3, 1, 1)
    bright = unnormalised.mean(axis=0) > 0.75  # [224, 224]; the padding is the mean grey (~0.45)
    x1, y1, x2, y2 = (round(v * 224) for v in box_to_crop(box, width, height, 224))
    # On the 640 square: x 20 .. 100, y 140 + 90 .. 140 + 270, times 224 / 640.
    assert (x1, y1, x2, y2) == (7, 80, 35, 144)
    expected = np.zeros((224, 224), dtype=bool)
    expected[y1:y2, x1:x2] = True
    assert (bright != expected).sum() <= 2 * ((x2 - x1) + (y2 - y1))  # bicubic edges
    assert bright[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].all()
    # The padding above and below is the CLIP mean colour, normalised to ~0.
    assert np.abs(pixels[:, :40, :]).max() < 0.02 and np.abs(pixels[:, -40:, :]).max() < 0.02


def test_a_huge_panorama_is_shrunk_before_the_letterbox():
    # 6000 x 300 would be a 6000 x 6000 canvas; shrunk to 2048 x 102 first, it stays in proportion.
    canvas = np.zeros((300, 6000, 3), dtype=np.uint8)
    canvas[:, :3000] = 255  # left half white
    pixels = ImageFrontEnd()([Image.fromarray(canvas)])[0].numpy()  # [3, 224, 224]
    unnormalised = pixels * np.asarray(CLIP_STD).reshape(3, 1, 1) + np.asarray(CLIP_MEAN).reshape(3, 1, 1)
    row = unnormalised.mean(axis=0)[112]  # the image's band is rows ~106..117
    assert (row[:100] > 0.9).all() and (row[124:] < 0.1).all()
    assert np.abs(pixels[:, :90]).max() < 0.02  # padding above


def test_box_to_crop_matches_the_pixels_the_encoder_sees():
    width, height = 480, 640
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[120:360, 320:460] = 255  # pixel box (320, 120, 460, 360)
    box = (320 / width, 120 / height, 460 / width, 360 / height)
    pixels = ImageFrontEnd()([Image.fromarray(canvas)])[0].numpy()  # [3, 224, 224]
    unnormalised = pixels * np.asarray(CLIP_STD).reshape(3, 1, 1) + np.asarray(CLIP_MEAN).reshape(3, 1, 1)
    bright = unnormalised.mean(axis=0) > 0.75  # [224, 224]
    x1, y1, x2, y2 = (round(v * 224) for v in box_to_crop(box, width, height, 224))
    expected = np.zeros((224, 224), dtype=bool)
    expected[y1:y2, x1:x2] = True
    # Bicubic resampling blurs a pixel or two at the edges.
    assert (bright != expected).sum() <= 2 * ((x2 - x1) + (y2 - y1))
    assert bright[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].all()


def test_image_preprocessor_shape_and_values():
    colour = (255, 0, 128)
    images = [Image.new("RGB", (640, 480), colour), Image.new("RGB", (300, 500), colour)]
    out = ImageFrontEnd()(images)
    assert out.shape == (2, 3, 224, 224) and out.dtype.is_floating_point and out.dtype.itemsize == 4
    for channel in range(3):
        expected = (colour[channel] / 255 - CLIP_MEAN[channel]) / CLIP_STD[channel]
        # The image fills the middle of the letterboxed square (rows 28..196, columns 45..179).
        assert out[0, channel, 40:184].min().item() == pytest.approx(expected, abs=1e-5)
        assert out[1, channel, :, 60:164].max().item() == pytest.approx(expected, abs=1e-5)
        padding = (ImageFrontEnd().fill[channel] / 255 - CLIP_MEAN[channel]) / CLIP_STD[channel]
        assert out[0, channel, :20].max().item() == pytest.approx(padding, abs=1e-5)
        assert out[1, channel, :, :30].min().item() == pytest.approx(padding, abs=1e-5)
    assert ImageFrontEnd(image_size=32)([]).shape == (0, 3, 32, 32)


def test_image_preprocessor_matches_transformers_clip_processor():
    clip_module = pytest.importorskip("transformers.models.clip.image_processing_pil_clip")
    reference = clip_module.CLIPImageProcessorPil(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    )
    images = [_noise_image(640, 480, 1), _noise_image(333, 517, 2), _noise_image(224, 224, 3)]
    ours = ImageFrontEnd()(images).numpy()
    # The library's processor on LLaVA-1.5's letterboxed image (mean colour, truncated to 8 bits).
    fill = tuple(int(255 * m) for m in reference.image_mean)
    assert fill == (122, 116, 104) == ImageFrontEnd().fill
    padded = [pad_to_square(image, fill) for image in images]
    theirs = np.asarray(reference(padded, return_tensors="np")["pixel_values"])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # A square image is not padded: exactly the library's processor on it.
    direct = np.asarray(reference(images[2:], return_tensors="np")["pixel_values"])
    np.testing.assert_allclose(ours[2:], direct, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Audio preprocessing


@pytest.fixture(scope="module")
def clip_30s() -> np.ndarray:
    rng = np.random.default_rng(5)
    # Three different 10-s sections, so that a window taken from the wrong place is noticed.
    sections = [_sine(f, 48_000, 10.0, 0.3) for f in (440.0, 1500.0, 5000.0)]
    return np.concatenate(sections) + 0.01 * rng.standard_normal(480_000 * 3).astype(np.float32)


def test_audio_preprocessor_shapes(clip_30s):
    one, three = AudioFrontEnd(num_windows=1), AudioFrontEnd(num_windows=3)
    assert one.frames_per_window == three.frames_per_window == 1001
    clip_10s = clip_30s[:480_000]
    assert one([clip_10s]).shape == (1, 1, 1, 1001, 64)
    assert one([clip_30s, clip_10s]).shape == (2, 1, 1, 1001, 64)
    assert three([clip_10s]).shape == (1, 3, 1, 1001, 64)
    out = three([clip_30s, clip_10s])
    assert out.shape == (2, 3, 1, 1001, 64) and out.dtype.is_floating_point and out.dtype.itemsize == 4
    assert three([]).shape == (0, 3, 1, 1001, 64)
    small = AudioFrontEnd(num_mel_bins=32, hop_length=240, window_seconds=1.0, num_windows=2)
    assert small.frames_per_window == 201
    assert small([np.zeros(16_000, dtype=np.float32)]).shape == (1, 2, 1, 201, 32)


def test_audio_windows_equal_their_slices_computed_alone(clip_30s):
    one, three = AudioFrontEnd(num_windows=1), AudioFrontEnd(num_windows=3)
    windows = three([clip_30s])[0]  # [3, 1, 1001, 64]
    for k in range(3):
        alone = one([clip_30s[k * 480_000 : (k + 1) * 480_000]])[0, 0]
        np.testing.assert_array_equal(windows[k].numpy(), alone.numpy())
    assert not np.array_equal(windows[0].numpy(), windows[1].numpy())
    # A long clip with one window keeps its first 10 s (no random crop), deterministically.
    first = one([clip_30s])[0, 0]
    np.testing.assert_array_equal(first.numpy(), windows[0].numpy())
    np.testing.assert_array_equal(one([clip_30s])[0, 0].numpy(), first.numpy())


def test_short_clip_is_zero_padded(clip_30s):
    three = AudioFrontEnd(num_windows=3)
    out = three([clip_30s[:600_000]])[0]  # 12.5 s
    silence = AudioFrontEnd()([np.zeros(480_000, dtype=np.float32)])[0, 0]
    padded = np.concatenate([clip_30s[480_000:600_000], np.zeros(360_000, dtype=np.float32)])
    np.testing.assert_array_equal(out[1].numpy(), AudioFrontEnd()([padded])[0, 0].numpy())
    np.testing.assert_array_equal(out[2].numpy(), silence.numpy())


@pytest.mark.parametrize("padding", ["pad", "repeat", "repeatpad"])
@pytest.mark.parametrize("seconds", [10.0, 3.7, 0.3])
def test_audio_preprocessor_matches_clap_feature_extractor(clip_30s, padding, seconds):
    """Our batched float32 STFT against the extractor's float64 numpy, for each padding rule."""
    from transformers import ClapFeatureExtractor

    extractor = ClapFeatureExtractor(truncation="rand_trunc", padding=padding)
    clip = clip_30s[: int(seconds * 48_000)]
    reference = extractor([clip], sampling_rate=48_000, return_tensors="np")[
        "input_features"
    ]  # [1, 1, 1001, 64]
    ours = AudioFrontEnd(extractor=extractor)([clip])[0].numpy()  # [1, 1, 1001, 64]
    np.testing.assert_allclose(
        ours, np.asarray(reference, dtype=np.float32), rtol=0, atol=LOG_MEL_TOLERANCE_DB
    )
    assert np.ptp(ours) > 20  # a real spectrogram, not a constant that would match trivially


def test_log_mel_hand_computed_for_a_pure_tone():
    """A 1 kHz sine: one frame's power spectrum written out with numpy (periodic Hann window,
    rfft), weighted by the mel band that peaks near 1 kHz, is what the batched STFT reads there;
    silence reads the floor, -100 dB."""
    front = AudioFrontEnd(num_mel_bins=64, hop_length=480, window_seconds=1.0)
    t = np.arange(48_000, dtype=np.float64) / 48_000
    tone = np.sin(2 * np.pi * 1000.0 * t).astype(np.float32)
    mel = front.log_mel([tone, np.zeros(48_000, np.float32)])  # [2, 101, 64]
    k = round(1000.0 * 1024 / 48_000)  # the FFT bin nearest 1 kHz (984 Hz: 1 kHz falls between bins)
    filters = front._mel_filters.numpy()  # [513, 64]
    band = int(np.argmax(filters[k]))
    # the tone lies between bins k and k+1: sum its power over the band's bins and weights
    freqs = np.arange(513) * 48_000 / 1024
    leak = (
        np.abs(np.fft.rfft(np.hanning(1025)[:-1] * np.sin(2 * np.pi * 1000.0 * np.arange(1024) / 48_000)))
        ** 2
    )
    expected = 10 * np.log10((leak * filters[:, band]).sum())
    assert freqs[k] < 1000 < freqs[k + 1]
    np.testing.assert_allclose(mel[0, 50, band].item(), expected, atol=0.05)  # a frame away from the edges
    assert mel[0, 50].argmax().item() == band
    np.testing.assert_array_equal(mel[1].numpy(), np.full((101, 64), -100.0, np.float32))


def test_audio_preprocessor_rejects_bad_arguments():
    with pytest.raises(ValueError):
        AudioFrontEnd(window_seconds=0.00001)
    with pytest.raises(ValueError):
        AudioFrontEnd(num_windows=0)
    with pytest.raises(ValueError):
        AudioFrontEnd()([np.zeros((480_000, 2), dtype=np.float32)])


def test_lean_media_round_trip_gives_back_the_float_row():
    """8-bit pixels are exact (the float pixels were computed from them); mels round to float16."""
    front = ImageFrontEnd()
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    pixels = front([img])[0].numpy()  # [3, S, S] float32
    mel = rng.uniform(-100, 0, (1, 1, 1001, 64)).astype(np.float32)
    row = {"pixel_values": pixels, "audio_features": mel, "input_ids": [1, 2]}
    lean = {**row, **lean_media(pixels, mel, front)}
    assert lean["pixel_values"].dtype == np.uint8 and lean["audio_features"].dtype == np.float16
    back = float_row(lean)
    assert "pixel_norm" not in back and back["input_ids"] == [1, 2]
    np.testing.assert_allclose(back["pixel_values"], pixels, rtol=0, atol=2e-6)
    np.testing.assert_allclose(back["audio_features"], mel, rtol=1e-3, atol=0)
    assert back["pixel_values"].dtype == np.float32 and back["audio_features"].dtype == np.float32
    assert float_row(row) is row  # float media pass through
