"""Shared test helpers: small audio files, a tiny corpus, a tiny config and its dataset folder.

- ``make_wav(path, seconds, sr, channels, subtype)`` writes a clip (a tone plus noise, peak ~0.5)
  in any format and subtype soundfile writes, and returns its path.
- ``tiny_config``: 16 kHz audio with small FFT/hop/mel sizes and tiny networks, for CPU tests;
  the function ``tiny_config(**sections)`` makes variants of it.
- ``tiny_corpus``: a folder of six short clips that ``tiny_config`` accepts.
- ``tiny_dataset``: ``tiny_corpus`` preprocessed with ``tiny_config`` (a dataset folder).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wavedistill.config import Config, config_from_dict

# The models under test are tiny: one thread avoids the per-op synchronisation that makes two
# threads slower than one on them (and keeps timings steady on a shared machine).
torch.set_num_threads(1)

TINY_CONFIG = {
    "audio": {
        "sample_rate": 16000,
        "n_fft": 256,
        "hop_length": 64,
        "win_length": 256,
        "n_mels": 20,
        "fmin": 0.0,
        "fmax": 8000.0,
    },
    "data": {"segment_length": 1024, "valid_fraction": 0.2, "valid_min": 1, "batch_size": 2},
    "teacher": {
        "layers": 4,
        "stacks": 2,
        "residual_channels": 8,
        "gate_channels": 16,
        "skip_channels": 8,
        "num_mixtures": 2,
    },
    "student": {"flow_layers": [2, 2], "channels": 8, "dilation_cycle": 2},
    "distill": {
        "num_draws": 4,
        "power_fft_sizes": [256, 128],
        "power_hop_sizes": [64, 32],
        "power_win_lengths": [256, 128],
    },
    "train": {
        "steps": 2,
        "warmup_steps": 0,
        "log_every": 1,
        "valid_every": 2,
        "valid_batches": 1,
        "checkpoint_every": 2,
    },
}


def rebuilt(ckpt: dict, use_ema: bool = True):
    """``(model, Config, FeatureStats)`` of a loaded checkpoint dict, via the loader the
    package uses."""
    from wavedistill.store.loading import from_checkpoint

    loaded = from_checkpoint(ckpt, use_ema)
    return loaded.model, loaded.cfg, loaded.stats


def write_clip(
    path: str | Path,
    seconds: float = 0.5,
    sr: int = 16000,
    channels: int = 1,
    subtype: str | None = "PCM_16",
    amplitude: float = 0.5,
    seed: int = 0,
    frequency: float = 220.0,
) -> Path:
    """Write a tone plus noise (peak about ``amplitude``) of ``seconds`` to ``path``; the format
    follows the file extension (``subtype=None``: that format's default, e.g. Vorbis for .ogg).
    Channels differ (each has its own noise)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    tone = np.sin(2 * np.pi * frequency * t)[:, None]
    signal = 0.7 * tone + 0.3 * rng.uniform(-1, 1, size=(n, channels))
    sf.write(str(path), (amplitude * signal).astype(np.float32), sr, subtype=subtype)
    return path


@pytest.fixture
def make_wav():
    """``make_wav(path, seconds=0.5, sr=16000, channels=1, subtype="PCM_16", ...) -> Path``
    (see :func:`write_clip`)."""
    return write_clip


def tiny_config(*bases: dict, **sections: dict) -> Config:
    """``TINY_CONFIG`` with each partial config of ``bases`` laid over it in turn, then each
    section's keys: ``tiny_config(train={"steps": 4}, teacher={"output": "gaussian"})``. The
    one factory of test configs."""
    data = copy.deepcopy(TINY_CONFIG)
    for layer in (*bases, sections):
        for section, values in layer.items():
            data.setdefault(section, {}).update(copy.deepcopy(values))
    return config_from_dict(data)


@pytest.fixture(name="tiny_config")
def tiny_config_fixture() -> Config:
    """:func:`tiny_config` without overrides."""
    return tiny_config()


def write_tiny_corpus(root: Path) -> Path:
    """Six 16 kHz 16-bit mono clips of 0.3-0.55 s in ``root``, each a different tone."""
    for i in range(6):
        write_clip(
            root / f"clip{i}.wav", seconds=0.3 + 0.05 * i, seed=i, frequency=150.0 + 70.0 * i
        )
    return root


def write_tiny_dataset(root: Path) -> Path:
    """``root/corpus`` (:func:`write_tiny_corpus`) preprocessed with ``TINY_CONFIG`` into
    ``root/data``, which is returned."""
    from wavedistill.data.preprocess import preprocess

    corpus = write_tiny_corpus(root / "corpus")
    assert preprocess(tiny_config(), corpus, root / "data").exit_code == 0
    return root / "data"


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    """``corpus/`` with six 16 kHz 16-bit mono clips of 0.3-0.55 s, each a different tone."""
    return write_tiny_corpus(tmp_path / "corpus")


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """The dataset folder written by ``preprocess`` from ``tiny_corpus`` with ``tiny_config``."""
    return write_tiny_dataset(tmp_path)
