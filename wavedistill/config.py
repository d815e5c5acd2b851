"""Typed configuration: dataclasses, YAML (``safe_load``), ``key.sub=value`` overrides and
validation at load time.

Every error names the key and the numbers involved and is raised as :class:`UserError`.
The resolved config (defaults + file + overrides) is written beside every output with
:func:`save_config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wavedistill.errors import UserError
from wavedistill.fileio import atomic_write_text


@dataclass
class AudioConfig:
    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 200  # 12.5 ms at 16 kHz
    win_length: int = 800
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = 8000.0  # None means sample_rate / 2
    # The log-mel convention (presets for other toolkits: recipes/presets/):
    log_floor: float = 1e-5  # log-mel = log(max(mel, log_floor))
    log_base: str = "e"  # e (natural log: HiFi-GAN, Tacotron 2) | 10 (ParallelWaveGAN, ESPnet)
    # where frame f's window is centred: on sample f*hop ("start": librosa center=True, as
    # ParallelWaveGAN and ESPnet) or on f*hop + hop/2 ("middle": HiFi-GAN's (n_fft - hop) / 2
    # reflection padding without centring)
    frame_center: str = "start"
    magnitude_eps: float = 0.0  # |STFT| = sqrt(re^2 + im^2 + eps) (HiFi-GAN: 1e-9)
    # False: models take the log-mel as it is (the feature statistics are the identity), for
    # features that another toolkit does not normalise
    normalize: bool = True
    stats_std_floor: float = 0.01  # floor on each mel channel's std in the feature statistics


@dataclass
class DataConfig:
    format: str = "folder"  # folder | ljspeech | vctk | wavscp
    # samples per training segment, a multiple of hop_length; null trains on whole utterances
    segment_length: int | None = 8000
    valid_fraction: float = 0.05  # share of utterances held out (at least valid_min)
    valid_min: int = 1
    split_seed: int = 1234
    silence_threshold_db: float = -60.0  # a clip whose peak is below this is rejected as silent
    batch_size: int = 4
    num_workers: int = 0
    # share of a split's clips that may be found corrupted when read (skipped, named in
    # OUT/skipped.txt) before a run stops and asks for preprocess again
    max_corrupt_fraction: float = 0.05
    # F0 labels (pyin) written by preprocess as f0/<id>.npy, needed by teacher.source=harmonic
    pitch: bool = False
    pitch_fmin: float = 50.0  # Hz: the labels' and the pitch predictor's range
    pitch_fmax: float = 500.0


@dataclass
class TeacherConfig:
    output: str = "mol"  # mol (16-bit mixture of logistics) | gaussian | categorical (256 mu-law)
    layers: int = 24
    stacks: int = 4  # dilation cycles: dilation = 2 ** (layer % (layers // stacks))
    kernel_size: int = 3
    residual_channels: int = 64
    gate_channels: int = 128
    skip_channels: int = 64
    # product must equal audio.hop_length; null derives factors of at most 16 from it
    upsample_factors: list[int] | None = None
    use_mel: bool = True  # False trains an unconditional model
    conditioning_context: int = 1  # mel frames of context on each side (0 = frame f alone)
    num_speakers: int = 0  # > 0 adds a speaker embedding (global conditioning)
    speaker_dim: int = 16
    num_mixtures: int = 10
    # 16-bit bins are 2/65535 wide (log ~ -10.4); the floor must sit well below that so the
    # reachable NLL is not capped (-7, PixelCNN++'s 8-bit default, caps it near 6.9 bits).
    mol_log_scale_min: float = -14.0
    gaussian_log_scale_min: float = -9.0  # ClariNet
    mu_law_levels: int = 256
    # none | harmonic: a deterministic harmonic excitation from F0 and voicing predicted from
    # the mel (models/excitation.py) as extra input of the first layer (needs data.pitch labels)
    source: str = "none"
    pitch_weight: float = 1.0  # weight of the pitch predictor's loss beside the NLL
    pitch_channels: int = 64  # channels of the pitch predictor's convolutions
    source_harmonics: int = 0  # most harmonics in the excitation; 0 = all below Nyquist
    # free | locked: the excitation's phase while the teacher learns by maximum likelihood;
    # locked follows each training clip's fundamental (models/excitation.py), free runs from
    # the mel alone as it does everywhere else
    source_phase: str = "free"


@dataclass
class StudentConfig:
    flow_layers: list[int] = field(default_factory=lambda: [10, 10, 10, 30])
    channels: int = 64
    kernel_size: int = 3
    dilation_cycle: int = 10  # dilation = 2 ** (layer % dilation_cycle) inside each flow
    noise: str = "logistic"  # logistic | gaussian
    upsample_factors: list[int] | None = None  # as teacher.upsample_factors
    num_speakers: int = 0
    speaker_dim: int = 16
    log_scale_min: float = -9.0  # floor on each flow's log-scale
    # collapsed scale s_tot at initialisation (shared equally by the flows): quiet noise at an
    # audio-like level rather than unit noise far outside [-1, 1], where the teacher has no mass
    initial_scale: float = 0.01
    conditioning_context: int = 1  # mel frames of context on each side (0 = frame f alone)
    # float32 samples per thread in a time tile of the fused CPU synthesis path (rows of the
    # whole batch, scaled by the thread count and the dtype's size, rounded to whole frames):
    # small enough that a layer's gate activations stay in cache, large enough for fast GEMMs
    synthesis_tile: int = 2048
    source: str = "none"  # must equal teacher.source (the student inherits its pitch predictor)


@dataclass
class DistillConfig:
    num_draws: int = 100  # draws per timestep for the Monte-Carlo cross-entropy
    kl_weight: float = 1.0
    power_weight: float = 1.0
    # STFT resolutions of the power loss (one entry = single resolution)
    power_fft_sizes: list[int] = field(default_factory=lambda: [1024, 2048, 512])
    power_hop_sizes: list[int] = field(default_factory=lambda: [120, 240, 50])
    power_win_lengths: list[int] = field(default_factory=lambda: [600, 1200, 240])
    power_log_weight: float = 0.0  # weight of a log-magnitude STFT distance beside the power loss
    # weight of the multi-resolution STFT distance (spectral convergence + log magnitude, the
    # copy-synthesis distance that evaluation reports) at the power loss's resolutions
    stft_weight: float = 0.0
    # weight of the L1 distance between the log-mel of the student's sample and of the real clip
    # (the feature function's own log-mel, as HiFi-GAN's mel loss)
    mel_weight: float = 0.0
    contrastive_weight: float = 0.0  # gamma; 0 disables the contrastive term
    gaussian_reg_lambda: float = 4.0  # ClariNet's lambda (log sigma_T - log sigma_S)^2
    # Floors on log-scales inside the KL, above the teacher's own floor: a peaked teacher
    # otherwise gives huge gradients. The loss logs how often each floor binds.
    teacher_log_scale_min: float = -7.0
    student_log_scale_min: float = -7.0


@dataclass
class TrainConfig:
    steps: int = 100000
    learning_rate: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    warmup_steps: int = 1000
    decay: str = "exponential"  # exponential | cosine | none
    decay_rate: float = 0.5  # exponential: lr halves every decay_steps
    decay_steps: int = 200000
    grad_clip: float = 10.0
    ema_decay: float = 0.9999  # 0 disables EMA
    # auto (bf16 on GPUs with native bf16, else float32) | float32 | bfloat16 | float16 (with
    # a gradient scaler, for GPUs without bf16); reduced ones only where native
    precision: str = "auto"
    seed: int = 1
    log_every: int = 50
    valid_every: int = 1000
    valid_batches: int = 8
    checkpoint_every: int = 1000
    keep_last: int = 3
    max_bad_steps: int = 20  # consecutive non-finite losses before the run stops
    audio_every: int = 0  # write audio samples to TensorBoard every N steps (0 = never)
    audio_seconds: float = 0.5  # length of the teacher's logged samples (sequential: slow)
    # wall-clock budget of one invocation (a resumed run gets it afresh): stop, validate and
    # save after the first step past it; 0 = no budget. For comparisons at equal time; the
    # schedule still runs over train.steps.
    max_minutes: float = 0.0


@dataclass
class Config:
    audio: AudioConfig = field(default_factory=AudioConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        for section in (self.teacher, self.student):
            if section.upsample_factors is None:
                section.upsample_factors = default_upsample_factors(self.audio.hop_length)


# Floating-point formats by name, the one list (precision.DTYPES maps them to torch dtypes): a
# student synthesises in any of them; the teacher's cached sampler (and so the benchmark)
# computes in float32 or bfloat16 only.
DTYPE_NAMES = ("float32", "bfloat16", "float16")
SAMPLER_DTYPE_NAMES = DTYPE_NAMES[:2]

CHOICES = {
    "audio.log_base": ("e", "10"),
    "audio.frame_center": ("start", "middle"),
    "data.format": ("folder", "ljspeech", "vctk", "wavscp"),
    "teacher.output": ("mol", "gaussian", "categorical"),
    "student.noise": ("logistic", "gaussian"),
    "teacher.source": ("none", "harmonic"),
    "teacher.source_phase": ("free", "locked"),
    "student.source": ("none", "harmonic"),
    "train.decay": ("exponential", "cosine", "none"),
    "train.precision": ("auto", *DTYPE_NAMES),
}

# -- building from dicts ---------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(key: str, known: list[str]) -> UserError:
    section, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean '{section + '.' if section else ''}{close[0]}'?" if close else ""
    return UserError(f"unknown config key '{key}'{hint}")


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check ``value`` against the annotation ``typ``; ints are accepted where floats are."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        return _coerce(key, value, next(a for a in args if a is not type(None)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}' must be a list, got {value!r}")
        (item,) = typing.get_args(typ)
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if typ is bool and isinstance(value, bool):
        return value
    if typ is str and isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)  # YAML reads `log_base: 10` as a number
    raise UserError(f"config key '{key}' must be {getattr(typ, '__name__', typ)}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise UserError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        full = prefix + str(key)
        if key not in types_:
            raise _unknown_key(full, list(types_))
        typ = types_[key]
        if isinstance(typ, type) and dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, value or {}, full + ".")
        else:
            kwargs[key] = _coerce(full, value, typ)
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["train.steps=10", "teacher.upsample_factors=[4,64]"]`` into a nested dict.
    Values are parsed as YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise UserError(f"override '{item}': value is not valid YAML ({exc.problem})") from None
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"{path}: cannot read config ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level of a config must be a mapping")
    return data


def default_upsample_factors(hop_length: int, largest: int = 16) -> list[int]:
    """Split ``hop_length`` into few factors of at most ``largest`` where its primes allow
    (200 -> [2, 10, 10], 256 -> [16, 16]), smallest first."""
    primes, n, p = [], hop_length, 2
    while n > 1:
        while n % p == 0:
            primes.append(p)
            n //= p
        p += 1
    bins: list[int] = []
    for prime in sorted(primes, reverse=True):
        i = min(range(len(bins)), key=bins.__getitem__, default=None)
        if i is not None and bins[i] * prime <= largest:
            bins[i] *= prime
        else:
            bins.append(prime)
    return sorted(bins) or [1]


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a nested dict (missing keys take defaults;
    unset upsampling factors are derived from the hop length)."""
    cfg = _build(Config, data)
    validate(cfg)
    return cfg


# Partial configs for other toolkits' log-mel conventions (``--preset NAME``), shipped with the
# package as ``presets/<NAME>.yaml``.
PRESETS_DIR = Path(__file__).resolve().parent / "presets"


def preset_path(name: str) -> Path:
    """The YAML file of preset ``name``; a UserError listing the presets when there is none."""
    names = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown preset '{name}'{hint}; the presets are: {', '.join(names)}")
    return PRESETS_DIR / f"{name}.yaml"


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, preset: str | None = None
) -> Config:
    """Defaults, then the preset (:func:`preset_path`), then the YAML file, then
    ``key.sub=value`` overrides; validated."""
    data = read_yaml(preset_path(preset)) if preset is not None else {}
    if path is not None:  # an empty section (`audio:` with every key commented out) adds nothing
        data = _merge(data, {k: v for k, v in read_yaml(path).items() if v is not None})
    data = _merge(data, parse_overrides(overrides or []))
    return config_from_dict(data)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def audio_differences(
    ours: AudioConfig | dict[str, Any], theirs: AudioConfig | dict[str, Any]
) -> list[str]:
    """The audio settings (every ``audio.*`` key) on which two configs disagree, as
    ``"audio.key A vs B"`` phrases; empty when the features of one are the features of the
    other. The one check of "same audio settings" (dataset folders, teachers, resumed runs,
    evaluation)."""
    # a stored dict may predate a key: it then holds that key's default
    defaults = dataclasses.asdict(AudioConfig())
    a = {**defaults, **ours} if isinstance(ours, dict) else dataclasses.asdict(ours)
    b = {**defaults, **theirs} if isinstance(theirs, dict) else dataclasses.asdict(theirs)
    keys = [f.name for f in dataclasses.fields(AudioConfig)]
    return [f"audio.{k} {a.get(k)!r} vs {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


# -- validation ------------------------------------------------------------------------------


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise UserError(message)


def validate(cfg: Config) -> None:
    """Check every invariant the code relies on; messages name keys and numbers."""
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        _check(
            value in allowed,
            f"config key '{key}' is {value!r}; expected one of {', '.join(allowed)}",
        )
    a = cfg.audio
    _check(a.sample_rate > 0, f"audio.sample_rate must be positive, got {a.sample_rate}")
    _check(a.hop_length > 0, f"audio.hop_length must be positive, got {a.hop_length}")
    _check(a.n_mels > 0, f"audio.n_mels must be positive, got {a.n_mels}")
    _check(a.n_fft > 0, f"audio.n_fft must be positive, got {a.n_fft}")
    _check(a.win_length > 0, f"audio.win_length must be positive, got {a.win_length}")
    _check(
        a.win_length <= a.n_fft,
        f"audio.win_length ({a.win_length}) must not exceed audio.n_fft ({a.n_fft})",
    )
    fmax = a.fmax if a.fmax is not None else a.sample_rate / 2
    _check(
        fmax <= a.sample_rate / 2,
        f"audio.fmax ({fmax:g}) must be at most sample_rate / 2 ({a.sample_rate / 2:g})",
    )
    _check(0 <= a.fmin < fmax, f"audio.fmin ({a.fmin:g}) must be in [0, fmax={fmax:g})")
    _check(a.log_floor > 0, f"audio.log_floor must be positive, got {a.log_floor}")
    _check(a.magnitude_eps >= 0, f"audio.magnitude_eps must be >= 0, got {a.magnitude_eps}")
    _check(
        a.frame_center == "start" or a.hop_length <= a.n_fft,
        f"audio.frame_center 'middle' pads (n_fft - hop_length) / 2 samples; audio.hop_length "
        f"({a.hop_length}) must not exceed audio.n_fft ({a.n_fft})",
    )
    _check(
        a.stats_std_floor > 0, f"audio.stats_std_floor must be positive, got {a.stats_std_floor}"
    )
    d = cfg.data
    _check(
        d.segment_length is None or (d.segment_length > 0 and d.segment_length % a.hop_length == 0),
        f"data.segment_length ({d.segment_length}) must be a positive multiple of "
        f"audio.hop_length ({a.hop_length})",
    )
    _check(
        0 <= d.valid_fraction < 1, f"data.valid_fraction must be in [0, 1), got {d.valid_fraction}"
    )
    _check(d.batch_size > 0, f"data.batch_size must be positive, got {d.batch_size}")
    _check(d.valid_min >= 0, f"data.valid_min must be >= 0, got {d.valid_min}")
    _check(d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}")
    _check(
        0 <= d.max_corrupt_fraction <= 1,
        f"data.max_corrupt_fraction must be in [0, 1], got {d.max_corrupt_fraction}",
    )
    _check(
        0 < d.pitch_fmin < d.pitch_fmax,
        f"data.pitch_fmin ({d.pitch_fmin:g}) must be positive and below data.pitch_fmax "
        f"({d.pitch_fmax:g})",
    )
    _check(
        d.pitch_fmax < a.sample_rate / 2,
        f"data.pitch_fmax ({d.pitch_fmax:g}) must be below sample_rate / 2 ({a.sample_rate / 2:g})",
    )
    _check(
        d.silence_threshold_db <= 0,
        f"data.silence_threshold_db is a level in dBFS and must be <= 0, "
        f"got {d.silence_threshold_db:g}",
    )
    for section in ("teacher", "student"):
        factors = getattr(cfg, section).upsample_factors
        _check(
            len(factors) > 0 and all(f > 0 for f in factors),
            f"{section}.upsample_factors must be positive integers, got {factors}",
        )
        _check(
            math.prod(factors) == a.hop_length,
            f"{section}.upsample_factors {factors} multiply to {math.prod(factors)}, "
            f"but audio.hop_length is {a.hop_length}",
        )
    t = cfg.teacher
    _check(
        t.layers > 0 and t.stacks > 0 and t.layers % t.stacks == 0,
        f"teacher.layers ({t.layers}) must be a positive multiple of teacher.stacks ({t.stacks})",
    )
    _check(t.kernel_size >= 2, f"teacher.kernel_size must be at least 2, got {t.kernel_size}")
    _check(
        t.gate_channels > 0 and t.gate_channels % 2 == 0,
        f"teacher.gate_channels must be positive and even (tanh and sigmoid halves), "
        f"got {t.gate_channels}",
    )
    for key in ("residual_channels", "skip_channels", "speaker_dim"):
        _check(getattr(t, key) > 0, f"teacher.{key} must be positive, got {getattr(t, key)}")
    _check(t.mu_law_levels >= 2, f"teacher.mu_law_levels must be at least 2, got {t.mu_law_levels}")
    _check(t.num_mixtures > 0, f"teacher.num_mixtures must be positive, got {t.num_mixtures}")
    _check(t.num_speakers >= 0, f"teacher.num_speakers must be >= 0, got {t.num_speakers}")
    _check(
        t.conditioning_context >= 0,
        f"teacher.conditioning_context must be >= 0, got {t.conditioning_context}",
    )
    _check(t.pitch_weight >= 0, f"teacher.pitch_weight must be >= 0, got {t.pitch_weight}")
    _check(t.pitch_channels > 0, f"teacher.pitch_channels must be positive, got {t.pitch_channels}")
    _check(
        t.source_harmonics >= 0,
        f"teacher.source_harmonics must be >= 0 (0: all below Nyquist), got {t.source_harmonics}",
    )
    _check(
        t.source == "none" or t.use_mel,
        f"teacher.source {t.source!r} derives the excitation from the mel; "
        "it needs teacher.use_mel=true",
    )
    s = cfg.student
    _check(
        len(s.flow_layers) > 0 and all(n > 0 for n in s.flow_layers),
        f"student.flow_layers must be positive integers, got {s.flow_layers}",
    )
    _check(s.kernel_size >= 2, f"student.kernel_size must be at least 2, got {s.kernel_size}")
    for key in ("channels", "speaker_dim"):
        _check(getattr(s, key) > 0, f"student.{key} must be positive, got {getattr(s, key)}")
    _check(s.num_speakers >= 0, f"student.num_speakers must be >= 0, got {s.num_speakers}")
    _check(s.dilation_cycle > 0, f"student.dilation_cycle must be positive, got {s.dilation_cycle}")
    _check(s.initial_scale > 0, f"student.initial_scale must be positive, got {s.initial_scale}")
    _check(s.synthesis_tile > 0, f"student.synthesis_tile must be positive, got {s.synthesis_tile}")
    _check(
        s.conditioning_context >= 0,
        f"student.conditioning_context must be >= 0, got {s.conditioning_context}",
    )
    k = cfg.distill
    _check(k.num_draws > 0, f"distill.num_draws must be positive, got {k.num_draws}")
    n = len(k.power_fft_sizes)
    _check(
        len(k.power_hop_sizes) == n and len(k.power_win_lengths) == n,
        f"distill.power_fft_sizes/power_hop_sizes/power_win_lengths must have equal lengths, "
        f"got {n}, {len(k.power_hop_sizes)}, {len(k.power_win_lengths)}",
    )
    for key in ("power_fft_sizes", "power_hop_sizes", "power_win_lengths"):
        sizes = getattr(k, key)
        _check(all(v > 0 for v in sizes), f"distill.{key} must be positive, got {sizes}")
    for fft, win in zip(k.power_fft_sizes, k.power_win_lengths, strict=True):
        _check(win <= fft, f"distill.power_win_lengths entry {win} exceeds its FFT size {fft}")
    weights = (
        "kl_weight",
        "power_weight",
        "power_log_weight",
        "stft_weight",
        "mel_weight",
        "contrastive_weight",
        "gaussian_reg_lambda",
    )
    for key in weights:
        _check(getattr(k, key) >= 0, f"distill.{key} must be >= 0, got {getattr(k, key)}")
    _check(
        k.kl_weight + k.power_weight + k.stft_weight + k.mel_weight > 0,
        "distill.kl_weight, distill.power_weight, distill.stft_weight and distill.mel_weight "
        "are all 0: the student would learn nothing",
    )
    tr = cfg.train
    _check(tr.steps > 0, f"train.steps must be positive, got {tr.steps}")
    _check(tr.audio_seconds > 0, f"train.audio_seconds must be positive, got {tr.audio_seconds}")
    _check(tr.learning_rate > 0, f"train.learning_rate must be positive, got {tr.learning_rate}")
    _check(0 <= tr.ema_decay < 1, f"train.ema_decay must be in [0, 1), got {tr.ema_decay}")
    _check(tr.keep_last >= 1, f"train.keep_last must be at least 1, got {tr.keep_last}")
    _check(
        len(tr.betas) == 2 and all(0 <= b < 1 for b in tr.betas),
        f"train.betas must be two values in [0, 1), got {tr.betas}",
    )
    _check(tr.weight_decay >= 0, f"train.weight_decay must be >= 0, got {tr.weight_decay}")
    _check(0 < tr.decay_rate <= 1, f"train.decay_rate must be in (0, 1], got {tr.decay_rate}")
    _check(tr.grad_clip >= 0, f"train.grad_clip must be >= 0 (0: no clipping), got {tr.grad_clip}")
    _check(tr.max_bad_steps >= 1, f"train.max_bad_steps must be at least 1, got {tr.max_bad_steps}")
    _check(tr.max_minutes >= 0, f"train.max_minutes must be >= 0, got {tr.max_minutes}")
    for key in ("log_every", "valid_every", "checkpoint_every", "decay_steps"):
        value = getattr(tr, key)
        _check(value > 0, f"train.{key} must be positive, got {value}")
    for key in ("warmup_steps", "audio_every", "valid_batches"):
        value = getattr(tr, key)
        _check(value >= 0, f"train.{key} must be >= 0, got {value}")
