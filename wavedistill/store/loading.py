"""Models rebuilt from checkpoints: the one loaded-model type of the package.

:class:`LoadedModel` is what synthesis, evaluation, benchmarks and distillation work with: a
teacher or student in eval mode, the config and feature statistics it was trained with, and
the rules for its speaker ids and conditioning. This module sits above the checkpoint format
(``checkpoint.py``, which knows no model class) and the two models (``teacher.py``,
``student.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from wavedistill.config import Config, StudentConfig, TeacherConfig, load_config
from wavedistill.data.features import FeatureStats
from wavedistill.errors import UserError
from wavedistill.models.student import IAFStudent
from wavedistill.models.teacher import WaveNetTeacher
from wavedistill.store.checkpoint import (
    ModelKind,
    checkpoint_config,
    checkpoint_stats,
    load_checkpoint,
)
from wavedistill.store.registry import SHIPPED, shipped


def new_model(kind: ModelKind, cfg: Config) -> WaveNetTeacher | IAFStudent:
    """A freshly initialised teacher or student for ``cfg``."""
    if kind == "teacher":
        return WaveNetTeacher.from_config(cfg)
    if kind == "student":
        return IAFStudent.from_config(cfg)
    raise ValueError(f"unknown model kind {kind!r}")


def load_weights(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """``model.load_state_dict(state)`` (strict); a mismatch becomes a one-line UserError that
    names ``source`` and the first offending keys."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise UserError(
            f"{source}: weights do not fit the model built from its config ({detail[:300]})"
        ) from None


@dataclass
class LoadedModel:
    """A teacher or student ready to run, with what it was trained with.

    ``stats`` is None only for a model with random weights (benchmarks), which has no
    statistics of its own. ``step`` and ``speakers`` come from the checkpoint (0 and {} for
    random weights)."""

    kind: ModelKind
    model: WaveNetTeacher | IAFStudent
    cfg: Config
    stats: FeatureStats | None
    source: str  # the checkpoint path, or a description of where the weights came from
    step: int = 0
    speakers: dict[str, int] | None = None

    @property
    def architecture(self) -> str:
        """One line naming the model and its sizes (``info`` and the bundle's model card)."""
        if self.kind == "teacher":
            t = self.cfg.teacher
            return (
                f"WaveNet teacher: {t.layers} layers in {t.stacks} stacks, kernel "
                f"{t.kernel_size}, residual/gate/skip channels {t.residual_channels}/"
                f"{t.gate_channels}/{t.skip_channels}, output {t.output}, upsampling "
                f"{'x'.join(map(str, t.upsample_factors or []))}"
            )
        s = self.cfg.student
        return (
            f"IAF student: {len(s.flow_layers)} flows of {s.flow_layers} layers, "
            f"{s.channels} channels, {s.noise} noise, upsampling "
            f"{'x'.join(map(str, s.upsample_factors or []))}"
        )

    @property
    def section(self) -> TeacherConfig | StudentConfig:
        """The model's own config section."""
        return self.cfg.teacher if self.kind == "teacher" else self.cfg.student

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def teacher(self) -> WaveNetTeacher:
        """The model, which must be a teacher."""
        if not isinstance(self.model, WaveNetTeacher):
            raise UserError(f"{self.source}: is a {self.kind}; a teacher is needed")
        return self.model

    @property
    def student(self) -> IAFStudent:
        """The model, which must be a student."""
        if not isinstance(self.model, IAFStudent):
            raise UserError(f"{self.source}: is a {self.kind}; a student is needed")
        return self.model

    @property
    def feature_stats(self) -> FeatureStats:
        """``stats``, which a model with random weights lacks (refused)."""
        if self.stats is None:
            raise UserError(f"{self.source}: has random weights, hence no feature statistics")
        return self.stats

    @property
    def conditional(self) -> bool:
        """Whether the model takes a log-mel (every student; a teacher with ``use_mel``)."""
        return self.kind == "student" or self.cfg.teacher.use_mel

    @property
    def num_speakers(self) -> int:
        """Rows of the speaker embedding (0: trained on one speaker, no embedding)."""
        return self.section.num_speakers

    def to(self, device: str | torch.device) -> LoadedModel:
        self.model.to(device)
        return self

    def speaker_ids(self, speaker: int | None, batch: int) -> Tensor | None:
        """The ``(batch,)`` speaker ids the model takes for a user's ``speaker`` choice, or None
        for a one-speaker model; a choice the model cannot honour is a UserError."""
        if self.num_speakers == 0:
            if speaker is not None:  # even 0: the user expects a speaker the model lacks
                raise UserError(
                    f"--speaker {speaker}: this model has no speaker embedding "
                    "(it was trained on one speaker)"
                )
            return None
        if speaker is None:
            raise UserError(f"--speaker is required: this model has {self.num_speakers} speakers")
        if not 0 <= speaker < self.num_speakers:
            raise UserError(f"--speaker {speaker} is out of range [0, {self.num_speakers})")
        return torch.full((batch,), speaker, dtype=torch.long, device=self.device)

    def batch_speaker(self, batch: dict[str, Tensor]) -> Tensor | None:
        """A training/evaluation batch's ``speaker`` (B,) when the model embeds speakers."""
        return batch["speaker"] if self.num_speakers > 0 else None

    def batch_mel(self, batch: dict[str, Tensor]) -> Tensor | None:
        """A batch's normalised ``mel`` (B, n_mels, F) when the model is conditioned on it."""
        return batch["mel"] if self.conditional else None


def from_checkpoint(ckpt: dict[str, Any], use_ema: bool = True) -> LoadedModel:
    """The model a loaded checkpoint dict describes, its weights loaded (the EMA weights when
    stored and ``use_ema``), in eval mode on the CPU."""
    cfg = checkpoint_config(ckpt)
    model = new_model(ckpt["kind"], cfg)
    weights = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    source = ckpt.get("path", "checkpoint")
    load_weights(model, weights, source)
    return LoadedModel(
        ckpt["kind"],
        model.eval(),
        cfg,
        checkpoint_stats(ckpt),
        source,
        step=int(ckpt.get("step", 0)),
        speakers=dict(ckpt.get("speakers") or {}),
    )


def load_model(
    reference: str | Path,
    expected_kind: ModelKind | None = None,
    device: str | torch.device = "cpu",
    use_ema: bool = True,
) -> LoadedModel:
    """The model a reference names (:func:`resolve_model`: a checkpoint file, a bundle folder,
    a shipped model's name or a Hub id) ready for inference: rebuilt, weights loaded (a
    checkpoint's EMA weights unless ``use_ema`` is False), on ``device``, in eval mode and
    without gradients. ``expected_kind`` refuses the other kind. Every command and
    ``Synthesizer`` load through here."""
    path = resolve_model(reference)
    if is_bundle(path):
        return load_bundle(path, expected_kind, device)
    loaded = from_checkpoint(load_checkpoint(path, expected_kind), use_ema)
    loaded.model.requires_grad_(False)
    return loaded.to(device)


def random_model(
    kind: ModelKind, cfg: Config, source: str, device: str | torch.device = "cpu"
) -> LoadedModel:
    """A model of ``cfg`` with random weights seeded by ``train.seed`` (for benchmarks), frozen,
    in eval mode, without statistics."""
    torch.manual_seed(cfg.train.seed)
    model = new_model(kind, cfg).eval().requires_grad_(False)
    return LoadedModel(kind, model, cfg, None, source).to(device)


# -- exported bundles ------------------------------------------------------------------------

BUNDLE_FORMAT = "wavedistill-bundle"
BUNDLE_FILES = ("bundle.json", "config.yaml", "stats.json", "model.safetensors")


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``wavedistill export`` (it has bundle.json)."""
    return Path(path).is_dir() and (Path(path) / "bundle.json").is_file()


def load_bundle(
    folder: str | Path, expected_kind: ModelKind | None = None, device: str | torch.device = "cpu"
) -> LoadedModel:
    """A model from an exported bundle folder (see ``export.py``): no pickle anywhere, the
    weights from ``model.safetensors``. Frozen, in eval mode, on ``device``. A missing or
    damaged file is a one-line UserError that names it."""
    folder = Path(folder)
    missing = [n for n in BUNDLE_FILES if not (folder / n).is_file()]
    if missing:
        raise UserError(f"{folder}: not a complete model bundle (no {', '.join(missing)})")
    meta_path = folder / "bundle.json"
    meta = _read_json(meta_path)
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if (
        not isinstance(meta, dict)
        or meta.get("format") != BUNDLE_FORMAT
        or kind not in ("teacher", "student")
    ):
        raise UserError(
            f'{meta_path}: not a wavedistill model bundle (needs "format": '
            f'"{BUNDLE_FORMAT}" and "kind": "teacher" or "student")'
        )
    if expected_kind is not None and kind != expected_kind:
        raise UserError(f"{folder}: is a {kind} bundle; a {expected_kind} is needed")
    try:
        step = int(meta.get("step") or 0)
        speakers = {str(k): int(v) for k, v in dict(meta.get("speakers") or {}).items()}
    except (TypeError, ValueError) as exc:
        raise UserError(f"{meta_path}: malformed step or speakers ({exc})") from None
    cfg = _bundle_config(folder / "config.yaml")
    stats = _bundle_stats(folder / "stats.json", cfg.audio.n_mels)
    model = new_model(kind, cfg)
    weights_path = folder / "model.safetensors"
    try:
        weights = load_file(weights_path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{weights_path}: unreadable ({_one_line(exc)})") from None
    load_weights(model, weights, str(weights_path))
    loaded = LoadedModel(
        kind,
        model.eval().requires_grad_(False),
        cfg,
        stats,
        str(folder),
        step=step,
        speakers=speakers,
    )
    return loaded.to(device)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: not readable JSON ({_one_line(exc)})") from None


def _bundle_config(path: Path) -> Config:
    """A bundle's ``config.yaml``, validated; its errors name the file."""
    try:
        return load_config(path)
    except UserError as exc:
        message = _one_line(exc)
        raise UserError(
            message if message.startswith(str(path)) else f"{path}: {message}"
        ) from None


def _bundle_stats(path: Path, n_mels: int) -> FeatureStats:
    """A bundle's ``stats.json``: finite ``mean`` and positive ``std`` of ``n_mels`` each."""
    data = _read_json(path)
    try:
        stats = FeatureStats(
            torch.tensor(data["mean"], dtype=torch.float32),
            torch.tensor(data["std"], dtype=torch.float32),
        )
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise UserError(
            f'{path}: feature statistics need "mean" and "std" lists of numbers ({_one_line(exc)})'
        ) from None
    if stats.n_mels != n_mels:
        raise UserError(
            f"{path}: statistics of {stats.n_mels} channels, but config.yaml has "
            f"audio.n_mels = {n_mels}"
        )
    if not (
        torch.isfinite(stats.mean).all()
        and torch.isfinite(stats.std).all()
        and (stats.std > 0).all()
    ):
        raise UserError(f"{path}: statistics hold a non-finite value or a std <= 0")
    return stats


def resolve_model(reference: str | Path) -> Path:
    """The local checkpoint file or bundle folder a model reference names, in this order: a
    path to either, a shipped model's name (``alice-student``), a Hugging Face Hub repository
    id (``owner/name``, fetched into the cache once; needs the ``hub`` extra). The one place a
    reference is interpreted: :func:`load_model` and ``wavedistill info`` go through it."""
    path = Path(reference)
    if is_bundle(path) or path.is_file() or path.suffix in (".pt", ".pth"):
        return path  # a missing .pt is reported by load_checkpoint, which names the file
    name = str(reference)
    if name in {m.name for m in SHIPPED}:
        return shipped(name).path
    if path.is_dir():
        raise UserError(
            f"{path}: a folder, but not a model bundle (no bundle.json); give a "
            "checkpoint file or a folder written by `wavedistill export`"
        )
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return _hub_snapshot(name)
    raise UserError(f"{name}: no such checkpoint, bundle folder or shipped model")


def _hub_snapshot(repo_id: str) -> Path:
    """The local folder of a Hub repository's files: the cache when it holds them (or when
    ``HF_HUB_OFFLINE`` is set), else a download into the cache."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(
            f"{repo_id}: loading from the Hugging Face Hub needs the hub extra: "
            "pip install 'wavedistill[hub]'"
        ) from None
    patterns = [*BUNDLE_FILES, "README.md"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # offline without a cached copy, unknown repository, network
        raise UserError(
            f"{repo_id}: cannot fetch the model bundle from the Hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
