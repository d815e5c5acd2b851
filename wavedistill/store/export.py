"""Exports: an inference bundle without pickle, and the student for deployment runtimes.

A bundle is a folder::

    bundle.json        {"format": "wavedistill-bundle", "version", "kind", "step", "speakers",
                        "source"}
    config.yaml        the resolved config (audio settings = the mel convention)
    stats.json         {"mean": [n_mels], "std": [n_mels]}: the feature statistics
    model.safetensors  the weights (a checkpoint's EMA weights when it has them)
    README.md          a model card: kind, sizes, sample rate, mel convention, training data

Loading one (``Synthesizer.from_pretrained``, ``--checkpoint DIR``) rebuilds the model from
the config and reads the tensors with safetensors, so a bundle from a stranger can carry no
code. The same folder uploaded to the Hugging Face Hub loads by repository id.

The deployment exports hold the student's plain path ``(z (B, T), mel (B, n_mels, T / hop)
[, speaker (B,)]) -> audio (B, T)`` in [-1, 1], with the batch and time axes dynamic:
TorchScript (``torch.jit.trace``) and ONNX (opset 18). They run the unfused
reference layers, which every runtime knows; the mel is normalised by the caller with the
bundle's statistics, as for the Python API.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from wavedistill.config import save_config
from wavedistill.errors import UserError
from wavedistill.fileio import atomic_path, atomic_write_text
from wavedistill.models.student import IAFStudent
from wavedistill.store.loading import BUNDLE_FORMAT, LoadedModel
from wavedistill.version import __version__

ONNX_OPSET = 18


def export_bundle(loaded: LoadedModel, out_dir: str | Path, trained_on: str | None = None) -> Path:
    """Write ``loaded`` as a bundle folder ``out_dir`` (see the module docstring)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    # contiguous copies: safetensors refuses shared or strided storage
    weights = {
        k: v.detach().cpu().contiguous().clone() for k, v in loaded.model.state_dict().items()
    }
    size = sum(v.numel() * v.element_size() for v in weights.values())
    with atomic_path(out / "model.safetensors", size) as tmp:
        save_file(weights, str(tmp), metadata={"format": "pt", "kind": loaded.kind})
    save_config(loaded.cfg, out / "config.yaml")
    stats = {"mean": loaded.feature_stats.mean.tolist(), "std": loaded.feature_stats.std.tolist()}
    atomic_write_text(out / "stats.json", json.dumps(stats) + "\n")
    atomic_write_text(out / "README.md", model_card(loaded, trained_on))
    meta = {
        "format": BUNDLE_FORMAT,
        "version": __version__,
        "kind": loaded.kind,
        "step": loaded.step,
        "speakers": loaded.speakers or {},
        "source": loaded.source,
    }
    atomic_write_text(out / "bundle.json", json.dumps(meta, indent=1) + "\n")  # last: complete
    return out


def model_card(loaded: LoadedModel, trained_on: str | None = None) -> str:
    """A short markdown model card for a bundle."""
    a = loaded.cfg.audio
    params = loaded.model.num_parameters
    fmax = a.fmax if a.fmax is not None else a.sample_rate / 2
    speakers = len(loaded.speakers or {}) or 1
    lines = [
        f"# wavedistill {loaded.kind}",
        "",
        f"- model: {loaded.architecture}; {params:,} parameters",
        f"- sample rate: {a.sample_rate} Hz; hop {a.hop_length} samples "
        f"({1000 * a.hop_length / a.sample_rate:.1f} ms)",
        f"- mel convention: {a.n_mels} mels over {a.fmin:g}-{fmax:g} Hz (Slaney), n_fft "
        f"{a.n_fft}, window {a.win_length}, magnitude, log{'' if a.log_base == 'e' else '10'} "
        f"floored at {a.log_floor:g}, frames centred at the {a.frame_center} of their hop, "
        + ("normalised per channel by stats.json" if a.normalize else "not normalised"),
        f"- speakers: {speakers}",
        f"- trained on: {trained_on or 'not recorded'}; {loaded.step:,} steps",
        f"- wavedistill {__version__}; load with "
        '`Synthesizer.from_pretrained("<this folder or Hub id>")`',
        "",
    ]
    return "\n".join(lines)


# -- deployment ------------------------------------------------------------------------------


class PlainStudent(nn.Module):
    """The student's ``(z, mel[, speaker]) -> audio`` with nothing data-dependent in Python,
    so that tracing and ONNX export see one graph for every length."""

    def __init__(self, student: IAFStudent):
        super().__init__()
        self.student = student

    def forward(self, z: Tensor, mel: Tensor, speaker: Tensor | None = None) -> Tensor:
        cond = self.student.conditioner(mel, speaker)
        return self.student._run_flows(z, cond)[0].clamp(-1.0, 1.0)


def _example(loaded: LoadedModel, frames: int = 4) -> tuple[Tensor, ...]:
    hop = loaded.cfg.audio.hop_length
    z = torch.zeros(1, frames * hop)
    mel = torch.zeros(1, loaded.cfg.audio.n_mels, frames)
    if loaded.num_speakers > 0:
        return z, mel, torch.zeros(1, dtype=torch.long)
    return z, mel


def check_deployable(loaded: LoadedModel) -> None:
    """Only the parallel student has a one-pass graph to export; a UserError otherwise."""
    if loaded.kind != "student":
        raise UserError(
            f"{loaded.source}: --onnx and --torchscript export the parallel student; "
            "a teacher samples step by step"
        )
    if getattr(loaded.model, "excitation", None) is not None:
        raise UserError(
            f"{loaded.source}: --onnx and --torchscript do not support a student "
            "with an excitation (student.source=harmonic); use the bundle"
        )


def _plain(loaded: LoadedModel) -> PlainStudent:
    check_deployable(loaded)
    return PlainStudent(loaded.student).cpu().float().eval()


def export_torchscript(loaded: LoadedModel, path: str | Path) -> Path:
    """Trace the student's plain path into a TorchScript file."""
    plain = _plain(loaded)
    example = _example(
        loaded, frames=max(2, math.ceil(loaded.model.receptive_field / loaded.cfg.audio.hop_length))
    )
    with torch.no_grad(), warnings.catch_warnings():
        # the length check of the conditioning is a Python branch the trace drops; the traced
        # reshape still refuses noise and mel of different lengths
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(plain, example, check_trace=False)
    with atomic_path(path) as tmp:
        traced.save(str(tmp))
    return Path(path)


def export_onnx(loaded: LoadedModel, path: str | Path) -> Path:
    """Export the student's plain path to ONNX with dynamic batch and time axes."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise UserError("--onnx needs the onnx extra: pip install 'wavedistill[onnx]'") from None
    plain = _plain(loaded)
    example = _example(loaded)
    names = ["z", "mel", "speaker"][: len(example)]
    batch, samples, frames = (
        torch.export.Dim("batch"),
        torch.export.Dim("samples"),
        torch.export.Dim("frames"),
    )
    shapes = {"z": {0: batch, 1: samples}, "mel": {0: batch, 2: frames}}
    if len(example) == 3:
        shapes["speaker"] = {0: batch}
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own notes on its internals
        torch.onnx.export(
            plain,
            example,
            str(tmp),
            input_names=names,
            output_names=["audio"],
            dynamic_shapes=shapes,
            opset_version=ONNX_OPSET,
            dynamo=True,
            optimize=True,
            external_data=False,
            verbose=False,
        )
    return Path(path)
