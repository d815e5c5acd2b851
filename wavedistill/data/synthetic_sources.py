"""Synthetic sources whose entropy rate is known exactly, to check that training reaches it.

Each source is an autoregressive process of order p at 16 kHz,

    x_t = sum_i a_i(t) x_{t-i} + e_t,   e_t ~ N(0, s_t^2)  or  Logistic(0, s_t),

with coefficients built from poles inside the unit circle (so every frame's filter is stable).
Its exact conditional entropy per sample is that of the innovation: ``log(2 pi e s^2) / 2``
(Gaussian) or ``log s + 2`` (logistic), so the differential entropy rate is their mean over
samples and the entropy rate of the 16-bit file is that minus ``log(2 / 65535)`` (valid while
the scale is far above the bin width, as it is here: s ~ 1e-2, bin 3e-5).

Kinds:

- ``ar``: stationary Gaussian AR(4), stationary std 0.1 (clipping at 10 std: rate ~1e-23);
- ``ar-logistic``: the same filter driven by logistic innovations;
- ``ar-conditioned``: the poles and the scale follow a slowly varying control signal (one
  value per frame of ``hop_length`` samples); the control is written as the clip's features,
  so a model reaches the entropy rate only by using its conditioning.

Every clip starts in the stationary state of its first frame: the filter runs ``BURN_IN``
samples (discarded) with the first frame's parameters, which leaves the initial state
stationary up to ``r_max ** BURN_IN`` < 1e-30. :func:`path_log_density` scores a float path
either conditioned on its first p samples (any innovation) or with them drawn from the
stationary Gaussian (Gaussian kinds); the 16-bit file's discrete log-probability is the float
path's log-density plus ``log(2 / 65535)`` per scored sample, to O(bin^2 / s^2).

:func:`teacher_gap` and :func:`student_kl` measure trained models against these exact densities
(teacher NLL minus the entropy rate; KL(student || source) from the student's exact density of
its own samples), with standard errors; ``recipes/synthetic`` reports them as a table.

The output folder is a dataset folder as ``preprocess`` writes it (``config.yaml``,
``stats.npz``, ``train.jsonl``, ``audio/<id>.npy``, ``mel/<id>.npy``, ...), with
``wav/<id>.wav`` and ``source.json`` (every parameter, the seed and the entropy rates) beside.
The features are an encoding of the control signal (constant for the stationary kinds, so
they carry no information); they are not log-mel, and ``config.yaml`` records their count as
``audio.n_mels``.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import numpy as np
import scipy.linalg
import scipy.signal

from wavedistill.config import Config, config_from_dict, save_config
from wavedistill.data.audio import LEVELS_16BIT, dequantize_16bit, quantize_16bit, write_wav
from wavedistill.data.corpora import SINGLE_SPEAKER, split_utterances
from wavedistill.data.features import FeatureStats
from wavedistill.errors import UserError
from wavedistill.fileio import atomic_write, atomic_write_text

KINDS = ("ar", "ar-conditioned", "ar-logistic")
BURN_IN = 4096  # samples run before each clip so that it starts in the stationary state
LOG_BIN_WIDTH = math.log(2.0 / (LEVELS_16BIT - 1))  # log of a 16-bit bin, 2 / 65535
NUM_FEATURES = 16  # channels of the control encoding (audio.n_mels of the written config)

# Stationary kinds: two resonances (radius, Hz), like two formants, and the signal's std.
# Moderate radii keep the spectrum's dynamic range, and so the condition number of the
# regression a model must solve, small: a first-order optimiser then reaches the exact
# coefficients in minutes (radius 0.95 leaves it ~1 nat/sample short after thousands of steps).
STATIONARY_POLES = ((0.8, 1000.0), (0.7, 3000.0))
STATIONARY_STD = 0.1
# Conditioned kind: control c in [0, 1] moves the resonances and the level linearly.
CONDITIONED_POLES_LO = ((0.90, 300.0), (0.85, 1200.0))
CONDITIONED_POLES_HI = ((0.97, 800.0), (0.92, 2400.0))
CONDITIONED_STD = (0.03, 0.13)  # stationary std of each frame's process at c = 0 and c = 1
CONTROL_KNOT_SECONDS = 0.25  # the control passes through a random value every this often


# -- AR building blocks ------------------------------------------------------------------------


def coefficients_from_poles(poles: list[tuple[float, float]], sample_rate: int) -> np.ndarray:
    """AR coefficients ``a`` (p,) of ``x_t = sum_i a_i x_{t-i} + e_t`` whose characteristic
    polynomial has a conjugate pair at each ``(radius, frequency in Hz)``; stable if radius < 1."""
    roots = []
    for radius, freq in poles:
        if not 0 <= radius < 1:
            raise UserError(f"pole radius {radius} must lie in [0, 1) for a stable process")
        z = radius * np.exp(2j * np.pi * freq / sample_rate)
        roots += [z, np.conj(z)]
    return -np.real(np.poly(roots))[1:]


def companion(a: np.ndarray) -> np.ndarray:
    """State transition of (x_t, ..., x_{t-p+1}) for AR coefficients ``a`` (p,) -> (p, p)."""
    p = len(a)
    A = np.zeros((p, p))
    A[0] = a
    A[1:, :-1] = np.eye(p - 1)
    return A


def stationary_covariance(a: np.ndarray, scale: float, size: int) -> np.ndarray:
    """Covariance (size, size) of ``size`` consecutive samples of the stationary Gaussian
    AR process with coefficients ``a`` and innovation std ``scale``."""
    p = len(a)
    Q = np.zeros((p, p))
    Q[0, 0] = scale**2
    state = scipy.linalg.solve_discrete_lyapunov(companion(a), Q)
    acov = list(state[0])
    while len(acov) < size:  # Yule-Walker recursion beyond lag p - 1
        acov.append(float(np.dot(a, acov[-1 : -p - 1 : -1])))
    return scipy.linalg.toeplitz(acov[:size])


def stationary_std(a: np.ndarray, scale: float) -> float:
    """Standard deviation of the stationary process (innovation std ``scale``)."""
    return float(math.sqrt(stationary_covariance(a, scale, 1)[0, 0]))


# -- one source --------------------------------------------------------------------------------


@dataclass
class ARSource:
    """One clip's process. ``coefficients`` (F, p) and ``scales`` (F,) hold per-frame values
    (F = 1 for a stationary source); ``innovation`` is ``gaussian`` (scale = std) or
    ``logistic`` (scale s, std s pi / sqrt 3); frame ``f`` covers samples
    ``[f * hop, (f + 1) * hop)``."""

    coefficients: list[list[float]]
    scales: list[float]
    innovation: str
    hop: int

    @property
    def order(self) -> int:
        return len(self.coefficients[0])

    def per_sample(self, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients (T, p) and scales (T,) of every sample."""
        frame = np.minimum(np.arange(num_samples) // self.hop, len(self.scales) - 1)
        return np.asarray(self.coefficients)[frame], np.asarray(self.scales)[frame]

    def innovation_log_density(self, e: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Log-density of innovations ``e`` with per-sample ``scale`` (same shapes)."""
        if self.innovation == "gaussian":
            return -0.5 * (e / scale) ** 2 - np.log(scale) - 0.5 * math.log(2 * math.pi)
        z = e / scale
        return -np.abs(z) - 2 * np.log1p(np.exp(-np.abs(z))) - np.log(scale)

    def conditional_entropy(self, scale: np.ndarray) -> np.ndarray:
        """Differential entropy in nats of one innovation with scale ``scale``."""
        if self.innovation == "gaussian":
            return 0.5 * np.log(2 * math.pi * math.e * scale**2)
        return np.log(scale) + 2.0

    def entropy_rate(self, num_samples: int) -> float:
        """Differential entropy rate in nats/sample: the mean per-sample conditional entropy."""
        return float(self.conditional_entropy(self.per_sample(num_samples)[1]).mean())

    def frames(self, start: int, stop: int) -> ARSource:
        """The process of frames ``[start, stop)`` of the clip (itself when stationary)."""
        if len(self.scales) == 1:
            return self
        return ARSource(
            self.coefficients[start:stop], self.scales[start:stop], self.innovation, self.hop
        )

    def draw_innovations(self, scale: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.innovation == "gaussian":
            return scale * rng.standard_normal(scale.shape)
        return scale * rng.logistic(size=scale.shape)

    def generate(self, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        """A float64 path (T,), started in the stationary state of the first frame."""
        burn = self.draw_innovations(np.full(BURN_IN, self.scales[0]), rng)
        past = _run_filter(np.asarray(self.coefficients[0]), burn, np.zeros(self.order))
        e = self.draw_innovations(self.per_sample(num_samples)[1], rng)
        out = np.empty(num_samples)
        starts = range(0, num_samples, self.hop) if len(self.scales) > 1 else [0]
        for f, start in enumerate(starts):
            stop = num_samples if len(self.scales) == 1 else min(start + self.hop, num_samples)
            a = np.asarray(self.coefficients[min(f, len(self.scales) - 1)])
            out[start:stop] = _run_filter(a, e[start:stop], past[-self.order :])
            past = np.concatenate([past, out[start:stop]])[-self.order :]
        return out


def _run_filter(a: np.ndarray, e: np.ndarray, past: np.ndarray) -> np.ndarray:
    """``x_t = sum_i a_i x_{t-i} + e_t`` over ``e``, continuing from outputs ``past``
    (oldest first, at least p of them)."""
    den = np.concatenate([[1.0], -a])
    zi = scipy.signal.lfiltic([1.0], den, past[::-1][: len(a)])
    return scipy.signal.lfilter([1.0], den, e, zi=zi)[0]


def conditional_log_densities(x: np.ndarray, source: ARSource) -> np.ndarray:
    """``log p(x_t | x_<t)`` in nats for ``t = p .. T-1`` of the float path ``x`` ``(..., T)``
    -> ``(..., T - p)``: the innovation log-densities of ``x_t - sum_i a_i(t) x_{t-i}``."""
    x = np.asarray(x, dtype=np.float64)
    p, T = source.order, x.shape[-1]
    a, scale = source.per_sample(T)
    e = x[..., p:].copy()
    for i in range(1, p + 1):
        e -= a[p:, i - 1] * x[..., p - i : T - i]
    return source.innovation_log_density(e, scale[p:])


def path_log_density(x: np.ndarray, source: ARSource, initial: str = "conditional") -> float:
    """Exact log-density in nats of the float path ``x`` (T,) under ``source``.

    ``initial="conditional"`` scores samples ``p..T-1`` given the first p (sum of innovation
    log-densities); ``"stationary"`` adds the stationary Gaussian log-density of the first p
    samples under the first frame (Gaussian innovations only), giving the full joint density.
    """
    x = np.asarray(x, dtype=np.float64)
    p = source.order
    total = float(conditional_log_densities(x, source).sum())
    if initial == "conditional":
        return total
    if initial != "stationary" or source.innovation != "gaussian":
        raise UserError(
            f"initial={initial!r}: use 'conditional', or 'stationary' with Gaussian innovations"
        )
    cov = stationary_covariance(np.asarray(source.coefficients[0]), source.scales[0], p)
    sign, logdet = np.linalg.slogdet(cov)
    quad = float(x[:p] @ np.linalg.solve(cov, x[:p]))
    return total - 0.5 * (quad + logdet + p * math.log(2 * math.pi))


# -- the three kinds ---------------------------------------------------------------------------


def stationary_source(innovation: str, sample_rate: int, hop: int) -> ARSource:
    """The ``ar`` / ``ar-logistic`` process: fixed resonances, stationary std 0.1."""
    a = coefficients_from_poles(list(STATIONARY_POLES), sample_rate)
    std = STATIONARY_STD / stationary_std(a, 1.0)  # innovation std giving that level
    scale = std if innovation == "gaussian" else std * math.sqrt(3) / math.pi
    return ARSource([a.tolist()], [scale], innovation, hop)


def control_signal(frames: int, frames_per_knot: int, rng: np.random.Generator) -> np.ndarray:
    """A piecewise-smooth control in [0, 1], (frames,): uniform random knots joined by
    half-cosine ramps."""
    knots = rng.uniform(0.0, 1.0, size=frames // frames_per_knot + 2)
    pos = np.arange(frames) / frames_per_knot
    i = pos.astype(int)
    w = 0.5 - 0.5 * np.cos(np.pi * (pos - i))
    return (1 - w) * knots[i] + w * knots[i + 1]


def conditioned_source(control: np.ndarray, sample_rate: int, hop: int) -> ARSource:
    """The ``ar-conditioned`` process for a control signal (F,) in [0, 1]."""
    coefficients, scales = [], []
    lo_std, hi_std = CONDITIONED_STD
    for c in control:
        poles = [
            ((1 - c) * r0 + c * r1, (1 - c) * f0 + c * f1)
            for (r0, f0), (r1, f1) in zip(CONDITIONED_POLES_LO, CONDITIONED_POLES_HI, strict=True)
        ]
        a = coefficients_from_poles(poles, sample_rate)
        target = lo_std * (hi_std / lo_std) ** c  # level moves geometrically with c
        coefficients.append(a.tolist())
        scales.append(target / stationary_std(a, 1.0))
    return ARSource(coefficients, scales, "gaussian", hop)


def encode_control(control: np.ndarray, num_features: int = NUM_FEATURES) -> np.ndarray:
    """Features (num_features, F) float32 of a control (F,) in [0, 1]: Gaussian bumps centred
    on an even grid over [0, 1], one grid step wide (a smooth, invertible code)."""
    centres = np.linspace(0.0, 1.0, num_features)[:, None]
    width = 1.0 / (num_features - 1)
    return np.exp(-0.5 * ((control[None, :] - centres) / width) ** 2).astype(np.float32)


# -- writing a source folder -------------------------------------------------------------------


def synthetic_config() -> Config:
    """The config written beside the data: defaults with ``audio.n_mels`` = feature count."""
    return config_from_dict({"audio": {"n_mels": NUM_FEATURES}})


def make_clip(
    kind: str, num_samples: int, cfg: Config, rng: np.random.Generator
) -> tuple[ARSource, np.ndarray, np.ndarray]:
    """One clip: its source, float path (T,) and control (F,) with F = T / hop."""
    sr, hop = cfg.audio.sample_rate, cfg.audio.hop_length
    frames = num_samples // hop
    if kind == "ar-conditioned":
        knot = max(1, round(CONTROL_KNOT_SECONDS * sr / hop))
        control = control_signal(frames, knot, rng)
        source = conditioned_source(control, sr, hop)
    else:
        control = np.zeros(frames)
        source = stationary_source("gaussian" if kind == "ar" else "logistic", sr, hop)
    return source, source.generate(num_samples, rng), control


def make_synthetic(kind: str, out_dir: str | Path, seconds: float, clips: int, seed: int) -> dict:
    """Write ``clips`` clips of ``kind`` to ``out_dir`` (see the module docstring) and return
    the contents of its ``source.json``."""
    if kind not in KINDS:
        raise UserError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    cfg = synthetic_config()
    hop = cfg.audio.hop_length
    num_samples = int(seconds * cfg.audio.sample_rate) // hop * hop
    assert cfg.data.segment_length is not None  # synthetic_config sets it
    if num_samples < cfg.data.segment_length or clips < 2:
        raise UserError(
            f"--seconds {seconds:g} --clips {clips}: need clips of at least "
            f"data.segment_length = {cfg.data.segment_length} samples and two clips "
            "(one is held out)"
        )
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    entries, records = [], []
    for n in range(clips):
        uid = f"{kind}-{n:04d}"
        source, x, control = make_clip(kind, num_samples, cfg, rng)
        records.append(_write_clip(out_dir, uid, source, x, control, cfg))
        entries.append(
            {
                "id": uid,
                "audio": f"audio/{uid}.npy",
                "mel": f"mel/{uid}.npy",
                "speaker": 0,
                "samples": num_samples,
                "frames": num_samples // hop,
            }
        )
    summary = _summary(kind, seed, cfg, records)
    _write_dataset(out_dir, entries, cfg)
    atomic_write_text(out_dir / "source.json", json.dumps(summary, indent=1) + "\n")
    return summary


def _save_npy(f: IO, array: np.ndarray) -> None:
    np.save(f, array)


def _write_clip(
    out_dir: Path, uid: str, source: ARSource, x: np.ndarray, control: np.ndarray, cfg: Config
) -> dict:
    clipped = int(np.sum(np.abs(x) > 1.0))
    pcm = quantize_16bit(np.clip(x, -1.0, 1.0).astype(np.float32))
    for sub, array in (("audio", pcm), ("mel", encode_control(control))):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / sub / f"{uid}.npy", functools.partial(_save_npy, array=array))
    write_wav(out_dir / "wav" / f"{uid}.wav", dequantize_16bit(pcm), cfg.audio.sample_rate)
    h = source.entropy_rate(len(x))
    return {
        "id": uid,
        "clipped_samples": clipped,
        "samples": len(x),
        "entropy_rate_nats": h,
        "entropy_rate_16bit_nats": h - LOG_BIN_WIDTH,
        "control": control.tolist(),
        "source": asdict(source),
    }


def _summary(kind: str, seed: int, cfg: Config, records: list[dict]) -> dict:
    samples = sum(r["samples"] for r in records)
    rate = sum(r["entropy_rate_16bit_nats"] * r["samples"] for r in records) / samples
    return {
        "kind": kind,
        "seed": seed,
        "sample_rate": cfg.audio.sample_rate,
        "hop_length": cfg.audio.hop_length,
        "burn_in": BURN_IN,
        "log_bin_width": LOG_BIN_WIDTH,
        "entropy_rate_nats": rate + LOG_BIN_WIDTH,
        "entropy_rate_16bit_nats": rate,
        "entropy_rate_bits": rate / math.log(2),
        "clip_rate": sum(r["clipped_samples"] for r in records) / samples,
        "features": {"count": NUM_FEATURES, "encoding": "gaussian bumps over the control"},
        "clips": records,
    }


def _write_dataset(out_dir: Path, entries: list[dict], cfg: Config) -> None:
    """Manifests, speakers, feature statistics and config: the rest of a dataset folder."""
    d = cfg.data
    train, valid = split_utterances(
        entries, d.valid_fraction, d.valid_min, d.split_seed, key=lambda e: e["id"]
    )
    for name, split in (("train", train), ("valid", valid)):
        atomic_write_text(out_dir / f"{name}.jsonl", "".join(json.dumps(e) + "\n" for e in split))
    atomic_write_text(out_dir / "speakers.json", json.dumps({SINGLE_SPEAKER: 0}) + "\n")
    atomic_write_text(out_dir / "rejected.txt", "")
    mels = (np.load(out_dir / e["mel"]) for e in train)
    FeatureStats.for_features(mels, cfg.audio).save(out_dir / "stats.npz")
    save_config(cfg, out_dir / "config.yaml")


def load_sources(out_dir: str | Path) -> dict[str, ARSource]:
    """The exact source of every clip of a folder written by :func:`make_synthetic`."""
    path = Path(out_dir) / "source.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read the synthetic source description ({exc})") from None
    return {r["id"]: ARSource(**r["source"]) for r in summary["clips"]}
