"""One-screen summaries for ``wavedistill info``: a preprocessed dataset folder or a checkpoint."""

from __future__ import annotations

from pathlib import Path

from wavedistill.errors import UserError


def describe(path: str | Path) -> str:
    """Summary of a dataset folder (written by ``preprocess``) or of a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        return describe_dataset(path)
    if path.is_file():
        from wavedistill.checkpoint import describe_checkpoint

        return describe_checkpoint(path)
    raise UserError(f"{path}: no such file or folder")


def describe_dataset(folder: Path) -> str:
    """Utterances, hours and speakers per split, and the feature settings."""
    if not (folder / "train.jsonl").exists():
        raise UserError(f"{folder}: not a dataset folder (no train.jsonl); "
                        "run `wavedistill preprocess`")
    from wavedistill.config import load_config
    from wavedistill.datasets import read_jsonl

    cfg = load_config(folder / "config.yaml")
    a = cfg.audio
    lines = [f"dataset {folder}",
             f"  audio: {a.sample_rate} Hz, hop {a.hop_length}, n_fft {a.n_fft}, "
             f"win {a.win_length}, {a.n_mels} mels ({a.fmin:g}-{a.fmax or a.sample_rate / 2:g} Hz)"]
    for split in ("train", "valid"):
        items = read_jsonl(folder / f"{split}.jsonl")
        samples = sum(int(it["samples"]) for it in items)
        speakers = len({it.get("speaker", 0) for it in items})
        lines.append(f"  {split}: {len(items)} utterances, {samples / a.sample_rate / 3600:.3f} h, "
                     f"{speakers} speaker(s)")
    rejected = folder / "rejected.txt"
    if rejected.exists():
        count = sum(1 for line in rejected.read_text().splitlines() if line.strip())
        lines.append(f"  rejected: {count} file(s), listed in {rejected.name}")
    lines.append(f"  statistics: {'stats.npz' if (folder / 'stats.npz').exists() else 'missing'}")
    return "\n".join(lines)
