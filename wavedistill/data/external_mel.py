"""Log-mel features made elsewhere (an acoustic model's predictions, another toolkit's
preprocessing), turned into what a model takes: ``(n_mels, F)`` normalised by its statistics.

Three things differ between toolkits and are stated, never guessed where a guess could be
wrong:

- the array layout: ``(n_mels, F)`` (this package, ParallelWaveGAN's ``.npy`` after
  transposition), ``(F, n_mels)`` (Kaldi ``feats.scp``, ESPnet, ParallelWaveGAN's ``.h5``),
  or ``(1, n_mels, F)`` (a Tacotron 2 / FastSpeech 2 batch of one). ``auto`` accepts the
  layouts that only one reading fits and refuses the ambiguous rest (``F == n_mels``);
- the normalisation: features normalised with the model's own statistics are taken as they
  are (``normalized``); features normalised with another toolkit's statistics are first
  un-normalised with those (``stats``);
- the log convention (base, floor): the model's ``audio`` section fixes it; features that
  cannot be in it (values below the log floor, a level far from the model's statistics)
  are refused with a line that says what the model expects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wavedistill.config import AudioConfig
from wavedistill.data.features import FeatureStats, lowest_log_mel
from wavedistill.errors import UserError

LAYOUTS = ("auto", "n_mels,frames", "frames,n_mels", "1,n_mels,frames")

# Mean of normalised saved features, in standard deviations of the training statistics, past
# which they are taken for another convention. For the shipped models, whole utterances of the
# training voice average within ±0.3, another speaker's -0.04 and pure digital silence -3.1.
MAX_LEVEL_OFFSET = 4.0
# SLOPES: the slope of an input's mean spectrum against the model's (channel_slope) and its
# level (offset, in standard deviations) tell conventions apart. Measured with the shipped
# student: its voice and another speaker, whole utterances and 12-frame pieces, slope 0.6-1.4
# at offsets -0.1..0.6; the same as log10 mels, slope 0.26-0.57 at +1.5..+1.8; already
# normalised, slope -0.2..0.13 at +2.6..+2.9; loud white noise (legitimate, if unusual) slope
# 0.12-0.14 at +1.5; natural-log mels given to a log10 model, slope 1.6-2.7.
SLOPE_FRAMES = 8  # fewer frames say too little about the mean spectrum


@dataclass(frozen=True)
class MelConvention:
    """How saved features are laid out and normalised (see the module docstring)."""

    layout: str = "auto"
    stats: FeatureStats | None = None  # another toolkit's statistics that normalised them
    normalized: bool = False  # already normalised with the model's own statistics

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise UserError(
                f"--mel-layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}"
            )
        if self.normalized and self.stats is not None:
            raise UserError(
                "--stats and --no-normalize exclude each other: --stats undoes "
                "another toolkit's normalisation, --no-normalize takes features "
                "normalised with the model's own statistics"
            )


PLAIN = MelConvention()  # this package's own (n_mels, F) un-normalised features


def arrange(name: str, array: np.ndarray, n_mels: int, layout: str = "auto") -> np.ndarray:
    """``array`` in any accepted layout -> ``(n_mels, F)``; a UserError naming ``name`` when the
    shape fits no layout, fits two (``auto`` with ``F == n_mels``), or is empty."""
    shape = tuple(array.shape)
    if layout == "auto":
        fits = [lay for lay in LAYOUTS[1:] if _fits(shape, n_mels, lay)]
        if not fits:
            raise UserError(
                f"{name}: features of shape {shape} fit no layout of {n_mels} mel "
                "channels: expected (n_mels, frames), (frames, n_mels) or "
                "(1, n_mels, frames)"
            )
        if len(fits) > 1:
            raise UserError(
                f"{name}: features of shape {shape} are ambiguous ({' or '.join(fits)}"
                "); give --mel-layout"
            )
        layout = fits[0]
    elif not _fits(shape, n_mels, layout):
        raise UserError(
            f"{name}: features of shape {shape} do not have --mel-layout {layout} "
            f"with {n_mels} mel channels"
        )
    if layout == "frames,n_mels":
        return np.ascontiguousarray(array.T)
    return array.reshape(n_mels, -1)


def _fits(shape: tuple, n_mels: int, layout: str) -> bool:
    if layout == "n_mels,frames":
        return len(shape) == 2 and shape[0] == n_mels and shape[1] > 0
    if layout == "frames,n_mels":
        return len(shape) == 2 and shape[1] == n_mels and shape[0] > 0
    return len(shape) == 3 and shape[0] == 1 and shape[1] == n_mels and shape[2] > 0


def load_npy(path: Path) -> np.ndarray:
    """A ``.npy`` array, read without unpickling; a UserError naming the file otherwise."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{path}: not a readable .npy feature file ({exc})") from None


def read_stats(path: str | Path) -> FeatureStats:
    """Feature statistics of another toolkit: this package's ``stats.npz`` (``mean``, ``std``),
    ESPnet2's ``feats_stats.npz`` (``count``, ``sum``, ``sum_square``) or ParallelWaveGAN's
    ``stats.npy`` (``[mean, scale]``, shape ``(2, n_mels)``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such statistics file")
    if path.suffix.lower() in (".h5", ".hdf5"):
        raise UserError(
            f"{path}: HDF5 statistics are not read; save mean and scale with "
            "np.save('stats.npy', np.stack([mean, scale])) and give that file"
        )
    if path.suffix.lower() == ".npz":
        return _npz_stats(path)
    array = load_npy(path)
    if array.ndim != 2 or array.shape[0] != 2:
        raise UserError(
            f"{path}: statistics must be mean and scale stacked as (2, n_mels), "
            f"got shape {array.shape}"
        )
    if not np.isfinite(array).all() or (array[1] <= 0).any():
        raise UserError(f"{path}: statistics hold a non-finite value or a scale <= 0")
    return FeatureStats(array[0], array[1])


def _npz_stats(path: Path) -> FeatureStats:
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            if {"count", "sum", "sum_square"} <= keys:  # ESPnet2's running sums
                count = float(np.asarray(data["count"]).sum())
                mean = data["sum"] / count
                var = data["sum_square"] / count - mean**2
                return FeatureStats(mean, np.sqrt(np.maximum(var, 1e-20)))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable statistics file ({exc})") from None
    return FeatureStats.load(path)


def finite_mel(name: str, array: np.ndarray, n_mels: int, layout: str = "auto") -> np.ndarray:
    """``array`` arranged to ``(n_mels, F)`` float32 (see :func:`arrange`), refused when it holds
    NaN or inf."""
    mel = arrange(name, np.asarray(array), n_mels, layout)
    if not np.isfinite(mel).all():
        raise UserError(f"{name}: features contain NaN or inf")
    return np.ascontiguousarray(mel, dtype=np.float32)


def check_floor(name: str, mel: torch.Tensor | np.ndarray, audio: AudioConfig, advice: str) -> None:
    """Refuse a log-mel with values below the log of ``audio.log_floor`` (in its base): it was
    made with another floor or base, or normalised. ``advice`` ends the message."""
    lowest, found = lowest_log_mel(audio), float(mel.min())
    if found < lowest - 1e-3:
        raise UserError(
            f"{name}: values down to {found:.2f} lie below the log floor {lowest:.2f}; {advice}"
        )


def model_input(
    name: str,
    array: np.ndarray,
    audio: AudioConfig,
    stats: FeatureStats,
    convention: MelConvention = PLAIN,
) -> torch.Tensor:
    """Saved features -> the model's normalised input ``(n_mels, F)`` float32, checked for
    shape, finiteness and (unless already normalised) the model's log convention."""
    mel = torch.from_numpy(finite_mel(name, array, audio.n_mels, convention.layout))
    if convention.normalized:
        return mel
    if convention.stats is not None:
        if convention.stats.n_mels != audio.n_mels:
            raise UserError(
                f"{name}: --stats has {convention.stats.n_mels} channels, the model {audio.n_mels}"
            )
        mel = convention.stats.denormalize(mel)
    check_convention(name, mel, audio, stats)
    return stats.normalize(mel)


def check_convention(name: str, mel: torch.Tensor, audio: AudioConfig, stats: FeatureStats) -> None:
    """Refuse features that cannot be the model's un-normalised log-mel: values below the log
    floor, or a level many standard deviations away from its statistics (features already
    normalised, another log base, or another toolkit's floor)."""
    expects = (
        f"the model expects un-normalised log{'' if audio.log_base == 'e' else '10'} "
        f"mel magnitudes floored at audio.log_floor = {audio.log_floor:g}, of "
        f"{audio.sample_rate} Hz audio"
    )
    check_floor(name, mel, audio, f"{expects} (--no-normalize or --stats for normalised features)")
    offset = float(stats.normalize(mel).mean())
    if not math.isfinite(offset) or abs(offset) > MAX_LEVEL_OFFSET:
        raise UserError(
            f"{name}: the features sit {offset:+.1f} standard deviations from the "
            f"model's feature statistics (at most ±{MAX_LEVEL_OFFSET:g} expected); "
            f"{expects}"
        )
    slope = channel_slope(mel, audio, stats)
    if slope is not None and _another_convention(slope, offset):
        raise UserError(
            f"{name}: the features' mean spectrum follows the model's with slope "
            f"{slope:.2f} (about 1 expected; about 0.43 for log10 mels given to a "
            "natural-log model, 2.3 the other way round, 0 for mels already "
            f"normalised); {expects}"
        )


def _another_convention(slope: float, offset: float) -> bool:
    """Whether the mean spectrum's slope and level say "another convention" (see SLOPES)."""
    normalised = slope < 0.35 and offset > 2.0
    log10_in_natural = 0.2 <= slope < 0.6 and offset > 1.2
    natural_in_log10 = slope > 1.9
    return normalised or log10_in_natural or natural_in_log10


def channel_slope(mel: torch.Tensor, audio: AudioConfig, stats: FeatureStats) -> float | None:
    """The least-squares slope of the features' per-channel means (values above the floor)
    against the model's per-channel means: the shape of the mean spectrum, which a log base
    scales and a normalisation flattens. None when too few frames, or the statistics are the
    identity, leave nothing to compare."""
    reference = stats.mean.double() - stats.mean.double().mean()
    above = mel > lowest_log_mel(audio) + 1e-3
    counts = above.sum(-1)
    if mel.shape[-1] < SLOPE_FRAMES or bool((counts == 0).any()) or reference.square().sum() < 1e-6:
        return None
    means = (mel.double() * above).sum(-1) / counts
    return float((reference * (means - means.mean())).sum() / reference.square().sum())
