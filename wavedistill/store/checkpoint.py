"""Self-describing checkpoints: one file per save, written atomically, read without unpickling
arbitrary objects.

A checkpoint is a ``torch.save`` dict holding only tensors and plain Python types::

    {"format": "wavedistill", "version": str, "kind": "teacher" | "student",
     "config": dict (the resolved Config), "stats": {"mean": (n_mels,), "std": (n_mels,)},
     "model": state_dict, "ema": state_dict | None, "optimizer": dict, "scheduler": dict,
     "step": int, "rng": [per-rank RNG state], "data_state": {"epoch": int, "position": int},
     "best_valid": float | None, "speakers": {name: id}, "skipped_steps": int,
     "scaler": the float16 GradScaler's state_dict | None}

It is read with ``torch.load(weights_only=True)``, so a file from a stranger can hold no code
that runs on load; anything else is refused with a one-line :class:`UserError`. Files are
written to a temporary name in the same folder and renamed, so a crash mid-write never leaves
a truncated checkpoint under a real name.

A run folder keeps them as ``checkpoints/step-000123.pt`` (the newest ``train.keep_last``)
and ``checkpoints/best.pt`` (the best validation value so far).
"""

from __future__ import annotations

import os
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from wavedistill.config import Config, config_from_dict
from wavedistill.data.features import FeatureStats
from wavedistill.errors import UserError
from wavedistill.fileio import atomic_write
from wavedistill.version import __version__

FORMAT = "wavedistill"
ModelKind = Literal["teacher", "student"]  # what a checkpoint, bundle or model is
KINDS: tuple[ModelKind, ...] = ("teacher", "student")
REQUIRED_KEYS = ("format", "kind", "config", "stats", "model")
STEP_PATTERN = re.compile(r"^step-(\d+)\.pt$")
BEST_NAME = "best.pt"


# -- writing ---------------------------------------------------------------------------------


def step_name(step: int) -> str:
    """File name of the checkpoint written after ``step`` optimiser updates."""
    return f"step-{step:06d}.pt"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (see the module docstring) atomically; ``format`` and ``version`` are
    filled in. Returns the path written."""
    path = Path(path)
    _check_payload(path, payload)
    payload = {"format": FORMAT, "version": __version__, **payload}
    # torch's zip writer fails on a full disk with a RuntimeError; atomic_write says it in one
    # line, with the size the tensors need
    atomic_write(path, lambda f: torch.save(payload, f), size=tensor_bytes(payload))
    return path


TENSOR_OVERHEAD = 200  # bytes per tensor in torch's zip file: a record header, alignment, pickle


def tensor_bytes(data: Any) -> int:
    """Bytes of every tensor in a nested dict/list, with the zip file's overhead per tensor:
    about what a checkpoint of it needs."""
    if isinstance(data, torch.Tensor):
        return data.numel() * data.element_size() + TENSOR_OVERHEAD
    if isinstance(data, dict):
        return sum(tensor_bytes(v) for v in data.values())
    if isinstance(data, (list, tuple)):
        return sum(tensor_bytes(v) for v in data)
    return 0


def _check_payload(path: Path, payload: dict[str, Any]) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in payload and k != "format"]
    if missing:
        raise ValueError(f"{path}: checkpoint payload lacks {', '.join(missing)}")
    if payload["kind"] not in KINDS:
        raise ValueError(f"{path}: checkpoint kind must be one of {KINDS}, got {payload['kind']!r}")


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` hold the same bytes as ``src``, atomically: a hard link where the file
    system allows it (no extra disk), a copy otherwise."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        atomic_write(dst, lambda f: f.write(src.read_bytes()))
        return
    os.replace(tmp, dst)


def step_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step-N.pt`` in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = STEP_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def prune_checkpoints(folder: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` step checkpoints (``best.pt`` is a separate file
    and always stays). Returns the deleted paths."""
    doomed = [path for _, path in step_checkpoints(folder)[:-keep_last]]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest ``step-N.pt`` of a run folder (``out_dir/checkpoints``), or None."""
    found = step_checkpoints(Path(out_dir) / "checkpoints")
    return found[-1][1] if found else None


# -- reading ---------------------------------------------------------------------------------


def load_checkpoint(path: str | Path, expected_kind: ModelKind | None = None) -> dict[str, Any]:
    """Read a checkpoint onto the CPU, refusing anything that is not a wavedistill checkpoint
    made only of tensors and plain data. ``expected_kind`` ("teacher" | "student") also
    refuses the other kind. The returned dict carries the source as ``ckpt["path"]``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # damaged bytes also warn; the error below says it all
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the callable a hostile pickle asks for as "GLOBAL module.name"; any other
        # unpickling failure is damage (random bytes also fail the weights-only unpickler).
        hostile = re.search(r"GLOBAL (\S+)", str(exc))
        if hostile:
            raise UserError(
                f"{path}: refused: it calls {hostile.group(1)}, not tensors or plain "
                "data; such a file could run code on load"
            ) from None
        raise UserError(f"{path}: not a readable checkpoint (truncated or corrupt)") from None
    except Exception:  # damaged bytes fail in many ways: IndexError, EOFError, ...
        raise UserError(f"{path}: not a readable checkpoint (truncated or corrupt)") from None
    _check_loaded(path, ckpt, expected_kind)
    ckpt["path"] = str(path)
    return ckpt


def _check_loaded(path: Path, ckpt: Any, expected_kind: ModelKind | None) -> None:
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not a wavedistill checkpoint")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"{path}: incomplete checkpoint (no {', '.join(missing)})")
    kind = ckpt["kind"]
    if kind not in KINDS:
        raise UserError(f"{path}: unknown checkpoint kind {kind!r}")
    if expected_kind is not None and kind != expected_kind:
        raise UserError(f"{path}: is a {kind} checkpoint; a {expected_kind} checkpoint is needed")


def checkpoint_config(ckpt: dict[str, Any]) -> Config:
    """The resolved :class:`Config` stored in a checkpoint (validated)."""
    try:
        return config_from_dict(ckpt["config"])
    except UserError as exc:
        raise UserError(f"{_source(ckpt)}: stored config is invalid: {exc}") from None


def checkpoint_stats(ckpt: dict[str, Any]) -> FeatureStats:
    """The feature statistics stored in a checkpoint."""
    stats = ckpt["stats"]
    if not isinstance(stats, dict) or not {"mean", "std"} <= set(stats):
        raise UserError(f"{_source(ckpt)}: stored feature statistics lack mean/std")
    return FeatureStats.from_dict(stats)


def _source(ckpt: dict[str, Any]) -> str:
    return ckpt.get("path", "checkpoint")


# -- RNG state as plain data -----------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """Every random generator the training loop may touch, as tensors and plain types (so a
    ``weights_only`` load can read it back)."""
    legacy = np.random.get_state()
    assert isinstance(legacy, tuple)  # numpy's global generator is a legacy MT19937
    _, keys, pos, has_gauss, cached = legacy
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": version,
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
