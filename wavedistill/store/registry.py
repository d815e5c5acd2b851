"""The models installed with the package: a teacher and a student trained by the ``alice``
recipe on the bundled voice (``data/alice``: Festival's ``kal`` reading Alice's Adventures in
Wonderland, 16 kHz).

They live in ``wavedistill/store/weights/`` as inference copies of the recipe's ``best.pt``
checkpoints (:func:`inference_copy`: the EMA weights, the config, the feature statistics and
the version; no optimiser state), read with ``weights_only=True`` like every checkpoint.
``wavedistill synthesize`` without ``--checkpoint`` uses the shipped student;
``wavedistill info`` lists both. ``bash recipes/alice/run.sh`` reproduces them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wavedistill.errors import UserError
from wavedistill.store.checkpoint import ModelKind, load_checkpoint, save_checkpoint

MODELS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class Shipped:
    """One installed model: its name, kind and file (inside :data:`MODELS_DIR`)."""

    name: str
    kind: ModelKind
    filename: str
    description: str

    @property
    def path(self) -> Path:
        return MODELS_DIR / self.filename


SHIPPED = (
    Shipped(
        "alice-student",
        "student",
        "alice_student.pt",
        "IAF student distilled from alice-teacher (one parallel pass)",
    ),
    Shipped(
        "alice-teacher",
        "teacher",
        "alice_teacher.pt",
        "WaveNet teacher trained by maximum likelihood (sequential sampling)",
    ),
)
DEFAULT_STUDENT = "alice-student"


def shipped(name: str) -> Shipped:
    """The installed model called ``name``; a :class:`UserError` listing the names otherwise."""
    for model in SHIPPED:
        if model.name == name:
            if not model.path.is_file():
                raise UserError(
                    f"{model.path}: the shipped model '{name}' is missing from this "
                    "installation; reinstall wavedistill or pass --checkpoint"
                )
            return model
    names = ", ".join(m.name for m in SHIPPED)
    raise UserError(f"no shipped model named '{name}' (shipped: {names})")


def inference_copy(src: str | Path, dst: str | Path) -> Path:
    """Write an inference copy of the checkpoint ``src`` to ``dst`` (atomically): its EMA
    weights (or plain weights without EMA) as ``model`` and its self-description (kind,
    config, statistics, step, best validation value, speakers); the optimiser, scheduler, RNG
    and data-order state of training are left out. Returns ``dst``."""
    ckpt = load_checkpoint(src)
    weights = ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]
    payload = {
        "kind": ckpt["kind"],
        "config": ckpt["config"],
        "stats": ckpt["stats"],
        "model": weights,
        "ema": None,
        "step": ckpt.get("step", 0),
        "best_valid": ckpt.get("best_valid"),
        "speakers": ckpt.get("speakers") or {},
    }
    return save_checkpoint(dst, payload)


def ship(teacher: str | Path, student: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write inference copies of a recipe's ``teacher`` and ``student`` checkpoints under the
    shipped models' file names in ``out_dir`` (by default the package's own models folder,
    overwriting them). Returns the paths written."""
    sources = {"teacher": Path(teacher), "student": Path(student)}
    folder = Path(out_dir) if out_dir is not None else MODELS_DIR
    return [inference_copy(sources[m.kind], folder / m.filename) for m in SHIPPED]
