"""Audio: the reading policy (mono by mean, resampling, 16-bit onto the grid, refusals that name
the file), the 16-bit grid of 65536 levels, μ-law, and 16-bit WAV writing."""

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from wavedistill.data.audio import (
    AUDIO_EXTENSIONS,
    dequantize_16bit,
    from_index_16bit,
    load_audio,
    mu_law_decode,
    mu_law_dequantize,
    mu_law_encode,
    mu_law_quantize,
    peak_db,
    quantize_16bit,
    to_index_16bit,
    write_wav,
)
from wavedistill.errors import UserError


def round_to_16bit(x):
    """Float audio -> float32 audio rounded onto the 16-bit grid (clipped to [-1, 1])."""
    return from_index_16bit(to_index_16bit(x))


# -- 16-bit grid -----------------------------------------------------------------------------


def test_level_k_is_2k_over_65535_minus_1():
    k = np.arange(65536)
    expected = 2.0 * k / 65535 - 1.0
    np.testing.assert_allclose(from_index_16bit(k), expected, atol=1e-7)
    assert from_index_16bit(np.array([0, 65535])).tolist() == [-1.0, 1.0]


def test_every_int16_value_round_trips_exactly():
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    audio = dequantize_16bit(pcm)
    assert audio.dtype == np.float32
    assert np.array_equal(quantize_16bit(audio), pcm)
    assert np.array_equal(to_index_16bit(audio), pcm.astype(np.int64) + 32768)


def test_quantisation_rounds_to_the_nearest_level_and_clips():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.2, 1.2, 10000)
    rounded = round_to_16bit(x)
    # on the grid, and within half a bin (1/65535) of the clipped input: the nearest level
    # (float32 storage of the level adds ~1e-7)
    assert np.array_equal(from_index_16bit(to_index_16bit(rounded)), rounded)
    assert np.abs(rounded - np.clip(x, -1, 1)).max() <= 1 / 65535 + 1e-7
    assert rounded.min() >= -1 and rounded.max() <= 1


def test_quantisation_accepts_torch_and_returns_torch():
    x = torch.linspace(-1, 1, 101)
    q = quantize_16bit(x)
    assert isinstance(q, torch.Tensor) and q.dtype == torch.int16
    assert torch.equal(quantize_16bit(dequantize_16bit(q)), q)
    assert to_index_16bit(x).dtype == torch.int64


# -- μ-law -----------------------------------------------------------------------------------


def test_mu_law_encode_matches_the_formula_and_decodes_back():
    x = np.linspace(-1, 1, 2001)
    y = mu_law_encode(x, 255)
    np.testing.assert_allclose(y, np.sign(x) * np.log1p(255 * np.abs(x)) / np.log(256), atol=1e-12)
    np.testing.assert_allclose(mu_law_decode(y, 255), x, atol=1e-12)
    assert y.min() == -1 and y.max() == 1


def test_mu_law_classes_round_trip_exactly():
    q = torch.arange(256)
    assert torch.equal(mu_law_quantize(mu_law_dequantize(q, 256), 256), q)
    assert mu_law_quantize(torch.tensor([-1.0, 1.0])).tolist() == [0, 255]
    assert mu_law_quantize(torch.zeros(1)).dtype == torch.int64


def test_mu_law_quantisation_error_is_within_half_a_companded_bin():
    x = torch.linspace(-1, 1, 20001, dtype=torch.float64)
    back = mu_law_dequantize(mu_law_quantize(x, 256), 256).double()
    companded_error = (mu_law_encode(back, 255) - mu_law_encode(x, 255)).abs()
    assert companded_error.max() <= 1 / 255 + 1e-6  # half of a bin of width 2/255


# -- reading ---------------------------------------------------------------------------------


def test_16bit_file_reads_exactly_onto_the_grid(tmp_path):
    pcm = np.array([-32768, -1, 0, 1, 32767, 1234], dtype=np.int16)
    sf.write(tmp_path / "a.wav", pcm, 16000, subtype="PCM_16")
    audio = load_audio(tmp_path / "a.wav", 16000)
    assert audio.dtype == np.float32 and audio.shape == (6,)
    np.testing.assert_array_equal(audio, dequantize_16bit(pcm))
    assert audio[0] == -1.0 and audio[4] == 1.0


def test_24bit_file_is_read_like_float(tmp_path, make_wav):
    path = make_wav(tmp_path / "a.wav", seconds=0.1, subtype="PCM_24")
    reference, _ = sf.read(path, dtype="float64")
    np.testing.assert_allclose(load_audio(path, 16000), reference, atol=1e-7)


def test_stereo_is_mixed_down_by_the_mean_and_logged(tmp_path, make_wav, caplog):
    path = make_wav(tmp_path / "s.wav", seconds=0.1, channels=2, subtype="FLOAT")
    stereo, _ = sf.read(path, dtype="float32")
    with caplog.at_level(logging.INFO, logger="wavedistill.data.audio"):
        audio = load_audio(path, 16000)
    np.testing.assert_allclose(audio, stereo.mean(axis=1), atol=1e-7)
    assert "2 channels mixed down to mono" in caplog.text and str(path) in caplog.text


@pytest.mark.parametrize("rate", [8000, 48000])
def test_other_rates_are_resampled_keeping_a_tone(tmp_path, rate, caplog):
    seconds, freq = 0.5, 1000.0
    t = np.arange(int(seconds * rate)) / rate
    sf.write(tmp_path / "t.wav", 0.5 * np.sin(2 * np.pi * freq * t), rate, subtype="FLOAT")
    with caplog.at_level(logging.INFO, logger="wavedistill.data.audio"):
        audio = load_audio(tmp_path / "t.wav", 16000)
    assert abs(len(audio) - seconds * 16000) <= 1
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    assert abs(np.argmax(spectrum) / seconds - freq) <= 2  # bin width 2 Hz
    assert f"resampled from {rate} Hz to 16000 Hz" in caplog.text


def test_float_samples_beyond_full_scale_are_clipped(tmp_path):
    sf.write(
        tmp_path / "loud.wav", np.array([0.5, 1.5, -2.0], dtype=np.float32), 16000, subtype="FLOAT"
    )
    assert load_audio(tmp_path / "loud.wav", 16000).tolist() == [0.5, 1.0, -1.0]


def _bad_files(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("this is not audio\n")
    sf.write(tmp_path / "good.wav", np.zeros(1000, np.int16), 16000, subtype="PCM_16")
    (tmp_path / "truncated.wav").write_bytes((tmp_path / "good.wav").read_bytes()[:20])
    sf.write(tmp_path / "nosamples.wav", np.zeros(0, np.int16), 16000, subtype="PCM_16")
    sf.write(tmp_path / "nan.wav", np.array([0.1, np.nan, 0.2], np.float32), 16000, subtype="FLOAT")
    sf.write(tmp_path / "inf.wav", np.array([0.1, np.inf, 0.2], np.float32), 16000, subtype="FLOAT")
    return {
        "missing.wav": "no such file",
        "empty.wav": "not a readable audio file",
        "text.wav": "not a readable audio file",
        "truncated.wav": "not a readable audio file",
        "nosamples.wav": "empty",
        "nan.wav": "NaN or infinite",
        "inf.wav": "NaN or infinite",
    }


def test_bad_files_raise_one_line_user_errors_naming_the_file(tmp_path):
    for name, reason in _bad_files(tmp_path).items():
        with pytest.raises(UserError) as info:
            load_audio(tmp_path / name, 16000)
        message = str(info.value)
        assert message.startswith(f"{tmp_path / name}: "), message
        assert reason in message and "\n" not in message


def test_every_soundfile_format_extension_is_known():
    assert {".wav", ".flac", ".ogg", ".aiff"} <= AUDIO_EXTENSIONS
    assert ".raw" not in AUDIO_EXTENSIONS  # header-less: cannot be read unguided


def test_flac_is_read(tmp_path, make_wav):
    path = make_wav(tmp_path / "a.flac", seconds=0.1, subtype="PCM_16")
    assert load_audio(path, 16000).shape == (1600,)


# -- writing ---------------------------------------------------------------------------------


def test_write_wav_is_16bit_and_reads_back_exactly(tmp_path):
    audio = round_to_16bit(np.random.default_rng(1).uniform(-1, 1, 800).astype(np.float32))
    path = tmp_path / "out" / "x.wav"
    write_wav(path, torch.from_numpy(audio), 16000)
    info = sf.info(path)
    assert (info.subtype, info.samplerate, info.channels) == ("PCM_16", 16000, 1)
    np.testing.assert_array_equal(load_audio(path, 16000), audio)
    assert [p.name for p in path.parent.iterdir()] == ["x.wav"]  # no temporary left behind


def test_write_wav_clips_out_of_range_values(tmp_path):
    write_wav(tmp_path / "c.wav", np.array([2.0, -3.0, 0.0], np.float32), 8000)
    pcm, _ = sf.read(tmp_path / "c.wav", dtype="int16")
    assert pcm.tolist()[:2] == [32767, -32768]


def test_peak_db():
    assert peak_db(np.array([0.0, -0.5, 0.25])) == pytest.approx(20 * np.log10(0.5))
    assert peak_db(np.zeros(4)) == -np.inf
