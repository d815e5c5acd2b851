"""The presets of other toolkits' log-mel conventions (``wavedistill/presets/``, ``--preset``).

Each preset is checked against its toolkit's own feature recipe, rewritten here from the
toolkit's code: ParallelWaveGAN's ``logmelfilterbank`` (numpy and librosa) and HiFi-GAN's
``mel_spectrogram`` (torch). ``log_mel`` with the preset's config must give the same log-mel
within 1e-4 on a speech clip and on a clip with near-silent and digitally silent stretches,
where the floor and the magnitude epsilon decide the values. Both sides run in float64 (the
toolkits run in float32), so that the comparison measures the convention, not rounding.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wavedistill.cli import build_parser, main
from wavedistill.config import PRESETS_DIR, config_from_dict, load_config, preset_path, read_yaml
from wavedistill.data.audio import dequantize_16bit
from wavedistill.data.features import log_mel
from wavedistill.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("hifigan", "parallelwavegan")
RATE = 22050
TOLERANCE = 1e-4
# every key of the log-mel convention: a preset states each, so a change of the defaults
# cannot change what a preset means
CONVENTION_KEYS = (
    "sample_rate",
    "n_fft",
    "hop_length",
    "win_length",
    "n_mels",
    "fmin",
    "fmax",
    "log_base",
    "log_floor",
    "frame_center",
    "magnitude_eps",
)


# -- the toolkits' recipes -------------------------------------------------------------------
# Each toolkit's settings, copied from its own config (not from our presets, which they check).

# ParallelWaveGAN, egs/ljspeech/voc1/conf/parallel_wavegan.v1.yaml
PARALLELWAVEGAN_V1 = {
    "sampling_rate": 22050,
    "fft_size": 1024,
    "hop_size": 256,
    "win_length": None,
    "window": "hann",
    "num_mels": 80,
    "fmin": 80,
    "fmax": 7600,
}
# HiFi-GAN, config_v1.json
HIFIGAN_V1 = {
    "sampling_rate": 22050,
    "n_fft": 1024,
    "hop_size": 256,
    "win_size": 1024,
    "num_mels": 80,
    "fmin": 0,
    "fmax": 8000,
}
# NVIDIA Tacotron 2, hparams.py
TACOTRON2 = {
    "sampling_rate": 22050,
    "filter_length": 1024,
    "hop_length": 256,
    "win_length": 1024,
    "n_mel_channels": 80,
    "mel_fmin": 0.0,
    "mel_fmax": 8000.0,
}


def parallelwavegan_log_mel(audio: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    """ParallelWaveGAN's ``logmelfilterbank`` (parallel_wavegan/bin/preprocess.py): librosa's
    centred STFT with reflection padding, magnitude, librosa's (float32) mel basis,
    ``log10(maximum(eps, mel))``. Returns (n_mels, 1 + T // hop)."""
    import librosa

    c = PARALLELWAVEGAN_V1
    stft = librosa.stft(
        audio,
        n_fft=c["fft_size"],
        hop_length=c["hop_size"],
        win_length=c["win_length"],
        window=c["window"],
        pad_mode="reflect",
    )
    spc = np.abs(stft).T  # (#frames, #bins)
    basis = librosa.filters.mel(
        sr=c["sampling_rate"],
        n_fft=c["fft_size"],
        n_mels=c["num_mels"],
        fmin=c["fmin"],
        fmax=c["fmax"],
    )
    mel = np.maximum(eps, np.dot(spc, basis.T))
    return np.log10(mel).T


def hifigan_log_mel(audio: np.ndarray) -> np.ndarray:
    """HiFi-GAN's ``mel_spectrogram`` (meldataset.py): reflection padding of
    int((n_fft - hop) / 2) on each side, ``torch.stft(center=False)``, magnitude
    ``sqrt(re^2 + im^2 + 1e-9)``, librosa's mel basis, ``log(clamp(mel, min=1e-5) * 1)``.
    Returns (n_mels, T // hop)."""
    import librosa

    c = HIFIGAN_V1
    n_fft, hop_size, win_size = c["n_fft"], c["hop_size"], c["win_size"]
    basis = torch.from_numpy(
        librosa.filters.mel(
            sr=c["sampling_rate"], n_fft=n_fft, n_mels=c["num_mels"], fmin=c["fmin"], fmax=c["fmax"]
        )
    )
    y = torch.from_numpy(audio).unsqueeze(0)
    pad = int((n_fft - hop_size) / 2)
    y = torch.nn.functional.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(
        y,
        n_fft,
        hop_length=hop_size,
        win_length=win_size,
        window=torch.hann_window(win_size, dtype=torch.float64),
        center=False,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    spec = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-9)
    spec = torch.matmul(basis.to(spec.dtype), spec)
    return torch.log(torch.clamp(spec, min=1e-5) * 1)[0].numpy()


def tacotron2_log_mel(audio: np.ndarray) -> np.ndarray:
    """NVIDIA Tacotron 2's ``TacotronSTFT.mel_spectrogram`` (stft.py, layers.py): reflection
    padding of filter_length / 2, a strided convolution with the Hann-windowed Fourier basis,
    magnitude ``sqrt(re^2 + im^2)``, librosa's mel basis, ``log(clamp(mel, min=1e-5))``.
    Returns (n_mels, 1 + T // hop)."""
    import librosa
    from scipy.signal import get_window

    c = TACOTRON2
    n_fft = c["filter_length"]
    fourier = np.fft.fft(np.eye(n_fft))
    cutoff = n_fft // 2 + 1
    basis = np.vstack([np.real(fourier[:cutoff]), np.imag(fourier[:cutoff])])
    window = librosa.util.pad_center(get_window("hann", c["win_length"], fftbins=True), size=n_fft)
    forward = torch.from_numpy(basis[:, None, :] * window)
    y = torch.from_numpy(audio).view(1, 1, -1)
    y = torch.nn.functional.pad(
        y.unsqueeze(1), (n_fft // 2, n_fft // 2, 0, 0), mode="reflect"
    ).squeeze(1)
    out = torch.nn.functional.conv1d(y, forward, stride=c["hop_length"])
    magnitude = torch.sqrt(out[:, :cutoff] ** 2 + out[:, cutoff:] ** 2)
    mel_basis = torch.from_numpy(
        librosa.filters.mel(
            sr=c["sampling_rate"],
            n_fft=n_fft,
            n_mels=c["n_mel_channels"],
            fmin=c["mel_fmin"],
            fmax=c["mel_fmax"],
        )
    )
    mel = torch.matmul(mel_basis.to(magnitude.dtype), magnitude)
    return torch.log(torch.clamp(mel, min=1e-5))[0].numpy()


TOOLKITS = {"parallelwavegan": parallelwavegan_log_mel, "hifigan": hifigan_log_mel}


# -- clips -----------------------------------------------------------------------------------


def _speech(path: Path, seconds: float | None = None) -> np.ndarray:
    """A bundled 16 kHz recording, resampled to 22.05 kHz with librosa, float64."""
    import librosa

    audio, rate = sf.read(str(path), dtype="float64")
    if seconds is not None:
        audio = audio[: int(seconds * rate)]
    return librosa.resample(audio, orig_sr=rate, target_sr=RATE)


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    """``speech``: an ARCTIC sentence. ``near_silent``: a sentence of the bundled voice cut in
    four, the second quarter 60 dB down, the third 80 dB down and the last 90 dB down, with
    0.3 s of digital silence at the start, after the second and third quarters and at the end:
    frames at the floor, frames just above it, and frames whose windows straddle speech and
    silence."""
    speech = _speech(ROOT / "data/arctic/arctic_a0007.wav")
    other = _speech(ROOT / "data/alice/wavs/alice_001.flac", seconds=3.0)
    quarter = len(other) // 4
    silence = np.zeros(int(0.3 * RATE))
    near_silent = np.concatenate(
        [
            silence,
            other[:quarter],
            other[quarter : 2 * quarter] * 1e-3,
            silence,
            other[2 * quarter : 3 * quarter] * 1e-4,
            silence,
            other[3 * quarter :] * 10**-4.5,
            silence,
        ]
    )
    return {"speech": speech, "near_silent": near_silent}


def preset_audio(name: str):
    return load_config(preset=name).audio


def compare(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Max abs difference over the frames both define. Ours has F = T // hop frames and frame f
    is centred where the toolkit's frame f is (sample f*hop for the centred STFT of
    ParallelWaveGAN and Tacotron 2, f*hop + hop/2 for HiFi-GAN's padding of (n_fft - hop) / 2
    without centring), so frame f is compared with frame f. A centred STFT has one more frame,
    centred on the clip's last sample (T // hop)*hop, which ours drops."""
    frames = ours.shape[-1]
    assert theirs.shape[-1] in (frames, frames + 1)
    return float(np.abs(ours - theirs[:, :frames]).max())


# -- the presets match their toolkits --------------------------------------------------------


@pytest.mark.parametrize("clip", ["speech", "near_silent"])
@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_computes_its_toolkits_log_mel(clips, name, clip):
    a = preset_audio(name)
    audio = clips[clip]
    theirs = TOOLKITS[name](audio)
    ours = log_mel(torch.from_numpy(audio), a).numpy()
    assert ours.shape == (80, len(audio) // 256)
    assert compare(ours, theirs) < TOLERANCE
    if clip == "near_silent":  # the clip reaches the floor, so the floor is checked too
        lowest = math.log10(1e-10) if name == "parallelwavegan" else math.log(1e-5)
        assert (theirs <= lowest + 1e-9).mean() > 0.1


@pytest.mark.parametrize("name", PRESETS)
def test_any_other_convention_misses_the_toolkits_log_mel(clips, name):
    """The comparison above has teeth: changing any one key of the convention moves some
    frame of the near-silent clip by far more than the tolerance."""
    a = preset_audio(name)
    audio = clips["near_silent"]
    theirs = TOOLKITS[name](audio)
    changes = {
        "log_base": "e" if a.log_base == "10" else "10",
        "log_floor": a.log_floor * 10,
        "frame_center": "middle" if a.frame_center == "start" else "start",
        "magnitude_eps": 0.0 if a.magnitude_eps else 1e-9,
        "fmin": 0.0 if a.fmin else 80.0,
        "fmax": 7000.0,
        "win_length": 800,
    }
    for key, value in changes.items():
        other = dataclasses.replace(a, **{key: value})
        ours = log_mel(torch.from_numpy(audio), other).numpy()
        assert compare(ours, theirs) > 100 * TOLERANCE, key


def test_tacotron2_mels_are_the_hifigan_preset_with_centred_frames(clips):
    """What the HiFi-GAN preset's comment says: NVIDIA Tacotron 2's features are HiFi-GAN's with
    frames centred on f * hop and no epsilon in the magnitude."""
    a = dataclasses.replace(preset_audio("hifigan"), frame_center="start", magnitude_eps=0.0)
    for audio in clips.values():
        assert (
            compare(log_mel(torch.from_numpy(audio), a).numpy(), tacotron2_log_mel(audio))
            < TOLERANCE
        )


# -- the preset files ------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_is_a_valid_config_that_states_its_whole_convention(name):
    data = read_yaml(preset_path(name))
    assert set(CONVENTION_KEYS) <= set(data["audio"])
    cfg = config_from_dict(data)
    assert cfg.audio.sample_rate == RATE and cfg.audio.hop_length == 256
    assert cfg.data.segment_length % cfg.audio.hop_length == 0
    for section in (cfg.teacher, cfg.student):
        assert math.prod(section.upsample_factors) == 256


def test_the_presets_are_package_data_and_in_recipes():
    assert sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")) == sorted(PRESETS)
    assert sorted(p.name for p in PRESETS_DIR.iterdir()) == sorted(f"{n}.yaml" for n in PRESETS)
    assert '"presets/*.yaml"' in (ROOT / "pyproject.toml").read_text()  # package-data
    link = ROOT / "recipes" / "presets"
    assert link.is_symlink() and link.resolve() == PRESETS_DIR.resolve()


def test_a_config_file_and_overrides_apply_on_top_of_the_preset(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("audio:\n  fmax: 7000.0\n  n_mels: 64\ntrain:\n  steps: 5\n")
    cfg = load_config(config, ["audio.n_mels=40"], preset="hifigan")
    a = cfg.audio
    assert (a.log_base, a.log_floor, a.frame_center, a.magnitude_eps) == ("e", 1e-5, "middle", 1e-9)
    assert (a.fmax, a.n_mels, cfg.train.steps) == (7000.0, 40, 5)
    assert load_config(preset="hifigan") == load_config(preset_path("hifigan"))
    config.write_text("audio:\n  # sample_rate: 16000\ntrain:\n  steps: 5\n")  # empty section
    assert load_config(config, preset="hifigan").audio == preset_audio("hifigan")


def test_an_unknown_preset_is_refused_listing_the_presets():
    with pytest.raises(UserError, match="unknown preset 'hifigun'.*hifigan, parallelwavegan"):
        load_config(preset="hifigun")


# -- the command line ------------------------------------------------------------------------


def test_preprocess_with_a_preset_writes_features_of_that_convention(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        t = np.arange(int(0.5 * RATE)) / RATE
        clip = 0.4 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.01 * rng.standard_normal(len(t))
        sf.write(str(corpus / f"clip{i}.wav"), clip.astype(np.float32), RATE, subtype="PCM_16")
    out = tmp_path / "data"
    assert (
        main(
            [
                "--quiet",
                "preprocess",
                "--preset",
                "parallelwavegan",
                "--data",
                str(corpus),
                "--out",
                str(out),
                "data.valid_fraction=0.5",
            ]
        )
        == 0
    )
    written = load_config(out / "config.yaml")
    for key, value in read_yaml(preset_path("parallelwavegan"))["audio"].items():
        assert getattr(written.audio, key) == value, key
    assert (written.audio.log_base, written.audio.fmin) == ("10", 80.0)
    assert written.data.valid_fraction == 0.5
    for path in (out / "mel").glob("*.npy"):  # the stored features are the preset's log-mel
        pcm = np.load(out / "audio" / path.name)
        expected = log_mel(torch.from_numpy(dequantize_16bit(pcm)), written.audio).numpy()
        np.testing.assert_array_equal(np.load(path), expected)


@pytest.mark.parametrize("command", ["preprocess", "train-teacher", "distill"])
def test_every_command_that_reads_a_config_takes_a_preset(command):
    extra = ["--teacher", "t.pt"] if command == "distill" else []
    args = build_parser().parse_args(
        [command, "--preset", "hifigan", "--data", "d", "--out", "o", *extra]
    )
    assert args.preset == "hifigan"


def test_an_unknown_preset_is_one_line_and_exit_status_2(tmp_path, capsys):
    code = main(
        [
            "preprocess",
            "--preset",
            "tacotron",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "unknown preset 'tacotron'" in err
    assert "hifigan, parallelwavegan" in err
    assert not (tmp_path / "out").exists()
