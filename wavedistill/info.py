"""One-screen summaries for ``wavedistill info``: a preprocessed dataset folder, a model (a
checkpoint file, a bundle folder, a shipped model's name or a Hub id, as
:func:`~wavedistill.store.loading.resolve_model` reads them), or, without an argument, every
shipped model."""

from __future__ import annotations

from pathlib import Path

from wavedistill.config import load_config
from wavedistill.data.corpora import read_jsonl
from wavedistill.data.datacheck import check_folder
from wavedistill.errors import UserError
from wavedistill.store.checkpoint import load_checkpoint
from wavedistill.store.loading import (
    LoadedModel,
    from_checkpoint,
    is_bundle,
    load_bundle,
    resolve_model,
)
from wavedistill.store.registry import MODELS_DIR, SHIPPED


def describe(reference: str | Path) -> str:
    """Summary of a dataset folder (written by ``preprocess``), or of the model a reference
    names: a checkpoint file, a bundle folder, a shipped model's name or a Hub id."""
    path = Path(reference)
    if path.is_dir() and not is_bundle(path):
        return describe_dataset(path)
    model = resolve_model(reference)
    return describe_bundle(model) if is_bundle(model) else describe_checkpoint(model)


def describe_dataset(folder: Path) -> str:
    """Utterances, hours and speakers per split, and the feature settings."""
    if not (folder / "train.jsonl").exists():
        raise UserError(
            f"{folder}: not a dataset folder (no train.jsonl); run `wavedistill preprocess`"
        )

    cfg = load_config(folder / "config.yaml")
    a = cfg.audio
    lines = [
        f"dataset {folder}",
        f"  audio: {a.sample_rate} Hz, hop {a.hop_length}, n_fft {a.n_fft}, "
        f"win {a.win_length}, {a.n_mels} mels ({a.fmin:g}-{a.fmax or a.sample_rate / 2:g} Hz)",
    ]
    for split in ("train", "valid"):
        items = read_jsonl(folder / f"{split}.jsonl")
        samples = sum(int(it["samples"]) for it in items)
        speakers = len({it.get("speaker", 0) for it in items})
        lines.append(
            f"  {split}: {len(items)} utterances, {samples / a.sample_rate / 3600:.3f} h, "
            f"{speakers} speaker(s)"
        )
    rejected = folder / "rejected.txt"
    if rejected.exists():
        count = sum(1 for line in rejected.read_text().splitlines() if line.strip())
        lines.append(f"  rejected: {count} file(s), listed in {rejected.name}")
    lines.append(f"  statistics: {'stats.npz' if (folder / 'stats.npz').exists() else 'missing'}")
    return "\n".join(lines)


def check_dataset(folder: str | Path) -> tuple[str, list[str]]:
    """``info DATA --check``: the report on every stored array and manifest entry of a
    dataset folder, and the list of bad ones (``"<file>: <reason>"``)."""
    folder = Path(folder)
    if not folder.is_dir() or not (folder / "train.jsonl").exists():
        raise UserError(
            f"{folder}: not a dataset folder (no train.jsonl); run `wavedistill preprocess`"
        )
    bad = check_folder(folder)
    clips = sum(len(_lines(folder / f"{split}.jsonl")) for split in ("train", "valid"))
    if not bad:
        return f"{folder}: all {clips} clips and their manifest entries are sound", bad
    lines = [f"bad {line}" for line in bad]
    lines.append(
        f"{folder}: {len(bad)} problem(s) among {clips} clips; run `wavedistill "
        "preprocess` again to rewrite them"
    )
    return "\n".join(lines), bad


def _lines(path: Path) -> list[str]:
    """The non-empty lines of a text file ([] when absent)."""
    if not path.is_file():
        return []
    return [line for line in path.read_text().splitlines() if line.strip()]


def describe_checkpoint(path: str | Path) -> str:
    """Kind, step, architecture, receptive field, parameters, audio settings and validation
    value of a checkpoint."""

    ckpt = load_checkpoint(path)
    loaded = from_checkpoint(ckpt)
    best = ckpt.get("best_valid")
    return "\n".join(
        [
            f"{loaded.kind} checkpoint {path} (wavedistill {ckpt.get('version', '?')})",
            f"  step {loaded.step}, best validation "
            + (f"{best:.4f}" if best is not None else "none"),
            *_model_lines(loaded, " (EMA weights stored)" if ckpt.get("ema") is not None else ""),
        ]
    )


def describe_bundle(folder: Path) -> str:
    """Kind, step, architecture, receptive field, parameters and audio settings of an
    exported bundle folder."""
    loaded = load_bundle(folder)
    return "\n".join(
        [f"{loaded.kind} bundle {folder}", f"  step {loaded.step}", *_model_lines(loaded)]
    )


def _model_lines(loaded: LoadedModel, parameters_note: str = "") -> list[str]:
    """Architecture, receptive field, parameters (all of them, frozen or not), audio settings
    and speakers of a loaded model."""
    a = loaded.cfg.audio
    field = loaded.model.receptive_field
    return [
        f"  {loaded.architecture}",
        f"  receptive field: {field} samples ({field / a.sample_rate * 1000:.1f} ms)",
        f"  parameters: {loaded.model.num_parameters:,}{parameters_note}",
        f"  audio: {a.sample_rate} Hz, hop {a.hop_length}, {a.n_mels} mels",
        f"  speakers: {max(1, len(loaded.speakers or {}))}",
    ]


def describe_shipped() -> str:
    """Lines for ``wavedistill info`` without a path: every shipped model and its summary."""
    blocks = [f"shipped models (in {MODELS_DIR}):"]
    for model in SHIPPED:
        if not model.path.is_file():
            blocks.append(f"{model.name}: missing ({model.path})")
            continue
        blocks.append(f"{model.name}: {model.description}")
        blocks.append(describe_checkpoint(model.path))
    return "\n".join(blocks)
