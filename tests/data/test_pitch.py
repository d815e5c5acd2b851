"""F0 labels: pyin on a synthetic harmonic tone of known pitch, unvoiced frames 0, one label
per mel frame with the mel's framing, and the dataset folder / batches that carry them."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from wavedistill.config import config_from_dict
from wavedistill.data.features import log_mel
from wavedistill.data.pitch import f0_labels, frame_centres

SR, HOP = 16000, 64
CFG = config_from_dict(
    {
        "audio": {
            "sample_rate": SR,
            "n_fft": 256,
            "hop_length": HOP,
            "win_length": 256,
            "n_mels": 20,
        },
        "data": {"segment_length": 1024},
    }
)


def tone(f0: np.ndarray, seed: int = 0) -> np.ndarray:
    """Five harmonics of the per-sample ``f0`` (0 = silence), float32."""
    phase = 2 * np.pi * np.cumsum(f0) / SR
    y = sum(np.sin(k * phase) / k for k in range(1, 6)) * (f0 > 0)
    return (0.3 * y).astype(np.float32)


@pytest.fixture(scope="module")
def clip():
    """0.7 s: 120 Hz, 0.2 s of silence, 200 Hz; and the per-sample truth."""
    n = int(0.7 * SR) // HOP * HOP
    t = np.arange(n) / SR
    f0 = np.where(t < 0.25, 120.0, np.where(t < 0.45, 0.0, 200.0))
    return tone(f0), f0


@pytest.mark.parametrize("centre", ["start", "middle"])
def test_labels_are_the_pitch_within_a_few_cents_and_zero_where_silent(clip, centre):
    audio, truth = clip
    cfg = dataclasses.replace(CFG.audio, frame_center=centre)
    labels = f0_labels(audio, cfg, CFG.data)
    frames = len(audio) // HOP
    assert labels.shape == (frames,) and labels.dtype == np.float32
    # the truth at each frame's centre, away from the edges of the three regions (one
    # analysis window of margin)
    centres = frame_centres(frames, cfg)
    margin = 2048 / 2 / SR
    times = centres / SR
    inside = lambda a, b: (times > a + margin) & (times < b - margin)  # noqa: E731
    for a, b, f in ((0.0, 0.25, 120.0), (0.45, 0.7, 200.0)):
        sel = inside(a, b)
        assert sel.sum() > 5
        cents = 1200 * np.abs(np.log2(labels[sel] / f))
        assert cents.max() < 10, cents.max()
    silent = (times > 0.25 + margin) & (times < 0.45 - margin)
    assert silent.sum() > 0 and np.all(labels[silent] == 0)


def test_noise_is_unvoiced():
    rng = np.random.default_rng(0)
    noise = (0.3 * rng.uniform(-1, 1, 40 * HOP)).astype(np.float32)
    labels = f0_labels(noise, CFG.audio, CFG.data)
    assert (labels == 0).mean() > 0.9


@pytest.mark.parametrize("centre", ["start", "middle"])
def test_one_label_per_mel_frame_centred_where_the_frame_is(clip, centre):
    audio, _ = clip
    cfg = dataclasses.replace(CFG.audio, frame_center=centre)
    mel = log_mel(torch.from_numpy(audio), cfg)
    assert f0_labels(audio, cfg, CFG.data).shape == (mel.shape[-1],)
    assert frame_centres(3, cfg).tolist() == ([0, 64, 128] if centre == "start" else [32, 96, 160])


def test_a_pitch_change_moves_the_labels_at_the_frame_where_it_happens():
    """120 Hz up to sample s, then 200 Hz: label f follows the pitch at frame f's centre."""
    n, switch = 80 * HOP, 40 * HOP
    f0 = np.where(np.arange(n) < switch, 120.0, 200.0)
    labels = f0_labels(tone(f0), CFG.audio, CFG.data)
    centres = frame_centres(80, CFG.audio)
    far = np.abs(centres - switch) > 1024  # half an analysis window
    truth = np.where(centres < switch, 120.0, 200.0)
    cents = 1200 * np.abs(np.log2(labels[far] / truth[far]))
    assert cents.max() < 10


def test_preprocess_writes_labels_and_batches_carry_them(tmp_path, make_wav):
    from wavedistill.config import load_config
    from wavedistill.data.corpora import SegmentDataset, collate
    from wavedistill.data.preprocess import preprocess

    for i in range(2):
        make_wav(tmp_path / "wavs" / f"c{i}.wav", seconds=0.3, seed=i, frequency=180.0 + 40 * i)
    from tests.conftest import TINY_CONFIG

    cfg = load_config(
        None,
        [f"audio.{k}={v}" for k, v in TINY_CONFIG["audio"].items()]
        + [
            "data.segment_length=1024",
            "data.valid_fraction=0",
            "data.valid_min=0",
            "data.pitch=true",
        ],
    )
    report = preprocess(cfg, tmp_path / "wavs", tmp_path / "data")
    assert report.exit_code == 0
    dataset = SegmentDataset(tmp_path / "data", "train", cfg)
    items = [dataset[i] for i in range(len(dataset))]
    for it in items:
        assert it["f0"].shape == (it["mel"].shape[-1],)
        voiced = it["f0"][it["f0"] > 0]
        assert len(voiced) > 0  # a tone plus noise: mostly voiced
    batch = collate(items)
    assert batch["f0"].shape == (2, batch["mel"].shape[-1])
    # entries point at f0/<id>.npy of whole-utterance length
    entry = dataset.entries[0]
    full = np.load(tmp_path / "data" / entry["f0"])
    assert full.dtype == np.float32 and full.shape == (entry["frames"],)
    assert math.isclose(float(np.median(full[full > 0])), 180.0, rel_tol=0.03) or math.isclose(
        float(np.median(full[full > 0])), 220.0, rel_tol=0.03
    )


def test_a_teacher_with_an_excitation_refuses_a_folder_without_labels(tiny_dataset, tiny_config):
    from wavedistill.errors import UserError
    from wavedistill.training.runs import train_teacher

    cfg = dataclasses.replace(
        tiny_config, teacher=dataclasses.replace(tiny_config.teacher, source="harmonic")
    )
    with pytest.raises(UserError, match="data.pitch=true") as info:
        train_teacher(cfg, tiny_dataset, tiny_dataset.parent / "run")
    assert "\n" not in str(info.value)
