"""Audio in and out: reading any format soundfile reads, 16-bit quantisation, μ-law, WAV writing.

Reading policy (:func:`load_audio`), each step logged at INFO when it changes the signal:

- 16-bit PCM is mapped onto the 16-bit grid exactly: int16 value ``v`` is level ``k = v + 32768``
  and level ``k`` is the float ``2k/65535 - 1`` (65536 levels, both ends ±1 included, see
  :func:`dequantize_16bit`). This keeps every sample of a 16-bit file at the centre of a bin of the
  teacher's discretized output distribution. Other encodings (8/24/32-bit, float, compressed) are
  read as float by libsndfile.
- several channels are mixed down to mono by their mean;
- another sample rate is resampled to the configured one (``librosa.resample``, soxr "HQ");
- samples outside [-1, 1] (float files, resampling overshoot) are clipped.

Missing, unreadable, empty or non-finite files raise :class:`UserError` naming the file.
Silence and length are corpus-level decisions and are checked by ``preprocess``.

The quantisation helpers accept numpy arrays or torch tensors and return the same kind.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch

from wavedistill.errors import UserError
from wavedistill.fileio import atomic_path

log = logging.getLogger(__name__)

LEVELS_16BIT = 65536
_HALF_RANGE = (LEVELS_16BIT - 1) / 2  # 32767.5: level k sits at k / 32767.5 - 1

# File extensions of the formats libsndfile reads, keyed by soundfile's format name.
# Header-less RAW is left out: it cannot be read without being told its encoding.
_FORMAT_EXTENSIONS = {
    "WAV": (".wav",),
    "WAVEX": (".wav",),
    "RF64": (".rf64",),
    "W64": (".w64",),
    "FLAC": (".flac",),
    "OGG": (".ogg", ".oga", ".opus"),
    "MP3": (".mp3",),
    "AIFF": (".aiff", ".aif", ".aifc"),
    "AU": (".au", ".snd"),
    "CAF": (".caf",),
    "NIST": (".nist", ".sph"),
    "IRCAM": (".sf", ".ircam"),
    "VOC": (".voc",),
    "PAF": (".paf",),
    "SVX": (".svx", ".iff"),
    "MAT4": (".mat",),
    "MAT5": (".mat",),
    "PVF": (".pvf",),
    "XI": (".xi",),
    "HTK": (".htk",),
    "SDS": (".sds",),
    "AVR": (".avr",),
    "SD2": (".sd2",),
    "WVE": (".wve",),
    "MPC2K": (".mpc",),
}
AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    ext for name in sf.available_formats() for ext in _FORMAT_EXTENSIONS.get(name, ())
)


def is_audio_file(path: str | Path) -> bool:
    """True when the file name has the extension of a format soundfile can read."""
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


# -- reading and writing ---------------------------------------------------------------------


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read an audio file as mono float32 in [-1, 1] at ``sample_rate``: shape (T,).

    Each conversion is logged at INFO. Raises :class:`UserError` ("<path>: <reason>") for a
    missing, unreadable, empty or non-finite file."""
    audio, changes = read_audio(path, sample_rate)
    for change in changes:
        log.info("%s: %s", path, change)
    return audio


def read_audio(path: str | Path, sample_rate: int) -> tuple[np.ndarray, list[str]]:
    """:func:`load_audio` that returns the conversions it made instead of logging them, as
    short phrases ("resampled from 22050 Hz to 16000 Hz"), so a corpus can summarise them."""
    path = Path(path)
    audio, file_rate = _read(path)
    if audio.shape[0] == 0:
        raise UserError(f"{path}: empty (no samples)")
    if not np.isfinite(audio).all():
        raise UserError(f"{path}: contains NaN or infinite samples")
    changes = []
    if audio.shape[1] > 1:
        changes.append(f"{audio.shape[1]} channels mixed down to mono (mean)")
    audio = audio.mean(axis=1, dtype=np.float32)
    if file_rate != sample_rate:
        changes.append(f"resampled from {file_rate} Hz to {sample_rate} Hz")
        audio = resample(audio, file_rate, sample_rate)
    if np.abs(audio).max() > 1.0:
        changes.append("samples outside [-1, 1] clipped")
        audio = np.clip(audio, -1.0, 1.0)
    return audio, changes


def _read(path: Path) -> tuple[np.ndarray, int]:
    """(T, C) float32 samples and the file's sample rate."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    try:
        info = sf.info(str(path))
        if info.subtype == "PCM_16":
            pcm, rate = sf.read(str(path), dtype="int16", always_2d=True)
            return dequantize_16bit(pcm), rate
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a readable audio file ({reason})") from None
    return audio, rate


def resample(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling (soxr high quality): (T,) -> (round(T * target / orig),)."""
    out = librosa.resample(audio, orig_sr=orig_rate, target_sr=target_rate, res_type="soxr_hq")
    return out.astype(np.float32, copy=False)


def write_wav(path: str | Path, audio: np.ndarray | torch.Tensor, sample_rate: int) -> None:
    """Write mono audio (T,) in [-1, 1] as a 16-bit PCM WAV (values outside are clipped),
    atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().float().cpu().numpy()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"write_wav expects mono audio of shape (T,), got {audio.shape}")
    write_wav_stream(path, [audio], sample_rate, size=44 + 2 * len(audio))


def write_wav_stream(
    path: str | Path, pieces: Iterable[np.ndarray], sample_rate: int, size: int | None = None
) -> int:
    """Write mono audio arriving in pieces (each (n,) in [-1, 1]) as one 16-bit PCM WAV,
    atomically, holding one piece at a time. Returns the samples written. ``size``: the
    file's bytes where known (for the message of a full disk)."""
    written = 0
    with (
        atomic_path(path, size) as tmp,
        sf.SoundFile(tmp, "w", sample_rate, 1, subtype="PCM_16", format="WAV") as out,
    ):
        for piece in pieces:
            out.write(quantize_16bit(np.asarray(piece, dtype=np.float32)))
            written += len(piece)
    return written


# -- 16-bit grid -----------------------------------------------------------------------------


def _as_tensor(x) -> tuple[torch.Tensor, bool]:
    if isinstance(x, torch.Tensor):
        return x, False
    return torch.from_numpy(np.ascontiguousarray(x)), True


def _back(x: torch.Tensor, was_numpy: bool):
    return x.numpy() if was_numpy else x


def to_index_16bit(x):
    """Float audio -> nearest 16-bit level index k in 0..65535 (int64); values outside [-1, 1]
    go to the end levels. Level k is the float 2k/65535 - 1."""
    t, was_numpy = _as_tensor(x)
    k = torch.round((t.double() + 1.0) * _HALF_RANGE).clamp_(0, LEVELS_16BIT - 1).long()
    return _back(k, was_numpy)


def from_index_16bit(k):
    """16-bit level index k in 0..65535 -> float32 audio 2k/65535 - 1."""
    t, was_numpy = _as_tensor(k)
    return _back((t.double() / _HALF_RANGE - 1.0).float(), was_numpy)


def quantize_16bit(x):
    """Float audio -> int16 PCM value of the nearest level (value = level index - 32768)."""
    t, was_numpy = _as_tensor(x)
    return _back((to_index_16bit(t) - LEVELS_16BIT // 2).to(torch.int16), was_numpy)


def dequantize_16bit(pcm):
    """int16 PCM value v -> float32 audio of its level: (2v + 1) / 65535, in [-1, 1]."""
    t, was_numpy = _as_tensor(pcm)
    return _back(from_index_16bit(t.long() + LEVELS_16BIT // 2), was_numpy)


# -- μ-law -----------------------------------------------------------------------------------


def mu_law_encode(x, mu: int = 255):
    """Continuous μ-law companding of audio in [-1, 1]: sign(x) ln(1 + μ|x|) / ln(1 + μ),
    also in [-1, 1]."""
    t, was_numpy = _as_tensor(x)
    y = torch.sign(t) * torch.log1p(mu * t.abs()) / math.log1p(mu)
    return _back(y, was_numpy)


def mu_law_decode(y, mu: int = 255):
    """Inverse of :func:`mu_law_encode`: sign(y) ((1 + μ)^|y| - 1) / μ."""
    t, was_numpy = _as_tensor(y)
    x = torch.sign(t) * torch.expm1(t.abs() * math.log1p(mu)) / mu
    return _back(x, was_numpy)


def mu_law_quantize(x, levels: int = 256):
    """Audio in [-1, 1] -> μ-law class index in 0..levels-1 (int64), with μ = levels - 1."""
    mu = levels - 1
    t, was_numpy = _as_tensor(x)
    y = mu_law_encode(t.clamp(-1.0, 1.0), mu)
    q = torch.round((y + 1.0) / 2.0 * mu).long()
    return _back(q, was_numpy)


def mu_law_dequantize(q, levels: int = 256):
    """μ-law class index in 0..levels-1 -> float32 audio in [-1, 1] (the class's centre in the
    companded domain)."""
    mu = levels - 1
    t, was_numpy = _as_tensor(q)
    y = 2.0 * t.float() / mu - 1.0
    return _back(mu_law_decode(y, mu), was_numpy)


def peak_db(audio: np.ndarray) -> float:
    """Peak level in dBFS (−inf for all-zero audio)."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf
