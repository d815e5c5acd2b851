"""Stored data checked where it is read: a dataset folder's arrays can rot after preprocessing
(a disk error, a copy cut short, a script that wrote NaN), and a bad clip must be named, not
turned into skipped steps.

- :class:`ClipCheck` decides whether one manifest entry's stored clip is sound: both arrays
  readable, audio 16-bit PCM of the manifest's length, log-mel finite, of shape
  ``(n_mels, frames)``, not below the log floor, and at a level within the folder's statistics.
- :class:`SkipLog` is what a command keeps of the clips it skipped: a warning naming each file
  once, ``skipped.txt`` listing all of them, a one-line summary, and a limit past which the run
  stops and asks for ``preprocess`` again.
- :func:`check_folder` verifies every manifest entry and stored array of a dataset folder
  (``wavedistill info DATA --check``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wavedistill.config import AudioConfig, load_config
from wavedistill.data.features import FeatureStats, lowest_log_mel
from wavedistill.errors import UserError
from wavedistill.fileio import atomic_write_text

log = logging.getLogger(__name__)

SKIPPED_NAME = "skipped.txt"  # in the output folder of a command that skipped clips
# A clip whose mean log-mel lies this many standard deviations (of all the folder's values)
# from the folder's mean is not audio computed by preprocess: a real clip's mean stays within a
# few, a silent one at the log floor included.
LEVEL_LIMIT = 10.0
FLOOR_TOLERANCE = 1e-3  # float32 rounding of the floor itself
ENTRY_KEYS = ("id", "audio", "mel", "samples", "frames")


class CorruptData(UserError):
    """More clips of a dataset folder are corrupted than ``data.max_corrupt_fraction`` allows."""


@dataclass
class ClipCheck:
    """Checks stored clips of the dataset folder ``folder`` (see the module docstring); the
    verdict on each clip is kept, so a clip read every epoch is checked once per process."""

    folder: Path
    audio: AudioConfig
    stats: FeatureStats | None = None  # the folder's own; None or identity: no level check
    _verdicts: dict[str, tuple[Path, str] | None] = field(default_factory=dict)

    @classmethod
    def for_folder(cls, folder: str | Path, audio: AudioConfig) -> ClipCheck:
        """A check with the folder's ``stats.npz`` (when readable) for the level test."""
        folder = Path(folder)
        try:
            stats = FeatureStats.load(folder / "stats.npz")
        except UserError:
            stats = None
        return cls(folder, audio, stats)

    def problem(self, entry: dict) -> tuple[Path, str] | None:
        """None when the clip of manifest ``entry`` is sound, else the bad file and why."""
        key = str(entry.get("mel"))
        if key not in self._verdicts:
            self._verdicts[key] = self._inspect(entry)
        return self._verdicts[key]

    def _inspect(self, entry: dict) -> tuple[Path, str] | None:
        missing = [k for k in ENTRY_KEYS if k not in entry]
        if missing:
            return self.folder, f"manifest entry {entry.get('id')!r} lacks {', '.join(missing)}"
        samples, frames = int(entry["samples"]), int(entry["frames"])
        audio_path, mel_path = self.folder / entry["audio"], self.folder / entry["mel"]
        if samples != frames * self.audio.hop_length:
            return mel_path, (
                f"the manifest says {samples} samples but {frames} frames of hop "
                f"{self.audio.hop_length}"
            )
        pcm, problem = _load(audio_path)
        if pcm is not None:
            problem = problem or _audio_problem(pcm, samples)
        if problem:
            return audio_path, problem
        mel, problem = _load(mel_path)
        problem = problem or self._mel_problem(np.asarray(mel), frames)
        return (mel_path, problem) if problem else None

    def _mel_problem(self, mel: np.ndarray, frames: int) -> str | None:
        expected = (self.audio.n_mels, frames)
        if mel.shape != expected:
            return f"shape {mel.shape}, the manifest says {expected}"
        if not np.issubdtype(mel.dtype, np.floating):
            return f"dtype {mel.dtype}, not float"
        mel = mel.astype(np.float64)
        bad = int(np.count_nonzero(~np.isfinite(mel)))
        if bad:
            return f"{bad} of {mel.size} values are not finite (NaN or infinite)"
        floor = lowest_log_mel(self.audio)
        if mel.size and mel.min() < floor - FLOOR_TOLERANCE:
            return f"values down to {mel.min():.2f} lie below the log floor {floor:.2f}"
        return self._level_problem(mel)

    def _level_problem(self, mel: np.ndarray) -> str | None:
        """The clip's mean log-mel against the folder's: in units of the spread of all the
        folder's values (per-channel deviations would let one near-constant channel, whose
        std is floored, decide)."""
        if self.stats is None or mel.size == 0 or _is_identity(self.stats):
            return None
        means = self.stats.mean.numpy().astype(np.float64)
        stds = self.stats.std.numpy().astype(np.float64)
        centre = means.mean()
        spread = math.sqrt(float(np.mean(stds**2 + (means - centre) ** 2)))
        level = (float(mel.mean()) - centre) / spread
        if not math.isfinite(level) or abs(level) > LEVEL_LIMIT:
            return (
                f"level {level:+.1f} standard deviations from the folder's statistics "
                f"(at most {LEVEL_LIMIT:g})"
            )
        return None


def _load(path: Path) -> tuple[np.ndarray | None, str | None]:
    """The array stored in ``path`` (memory-mapped), or why it cannot be read."""
    if not path.is_file():
        return None, "missing"
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False), None
    except (OSError, ValueError, EOFError) as exc:
        return None, f"unreadable ({exc})"


def _audio_problem(pcm: np.ndarray, samples: int) -> str | None:
    if pcm.dtype != np.int16:
        return f"dtype {pcm.dtype}, not 16-bit PCM"
    if pcm.shape != (samples,):
        return f"shape {pcm.shape}, the manifest says ({samples},)"
    return None


def _is_identity(stats: FeatureStats) -> bool:
    return bool((stats.mean == 0).all() and (stats.std == 1).all())


# -- what a command skipped ------------------------------------------------------------------


class SkipLog:
    """The clips a command skipped as corrupted: each warned about once, all listed in
    ``list_path`` (rewritten as each new one is found, so a killed run leaves it too), and at
    most ``limit`` of them before :class:`CorruptData` stops the run (None: no limit)."""

    def __init__(
        self,
        list_path: Path | None,
        data_dir: Path,
        total: int,
        limit: int | None = None,
        limit_key: str = "data.max_corrupt_fraction",
    ):
        self.list_path, self.data_dir, self.total = list_path, Path(data_dir), total
        self.limit, self.limit_key = limit, limit_key
        self.lines: dict[str, str] = {}  # file -> reason

    def __len__(self) -> int:
        return len(self.lines)

    def record(self, path: str | Path, reason: str) -> None:
        """Note that ``path`` was skipped because of ``reason`` (again: nothing new)."""
        path = str(path)
        if path in self.lines:
            return
        self.lines[path] = reason
        log.warning("%s: skipped as corrupted: %s", path, reason)
        if self.list_path is not None:
            atomic_write_text(self.list_path, "".join(f"{p}: {r}\n" for p, r in self.lines.items()))
        if self.limit is not None and len(self.lines) > self.limit:
            listed = f"; listed in {self.list_path}" if self.list_path is not None else ""
            raise CorruptData(
                f"{self.data_dir}: {len(self.lines)} of {self.total} clips are "
                f"corrupted, more than {self.limit_key} allows ({self.limit})"
                f"{listed}; run `wavedistill preprocess` again to rewrite them"
            )

    def summary(self) -> str | None:
        """``3 clips skipped as corrupted: see OUT/skipped.txt``, or None when none was."""
        if not self.lines:
            return None
        where = f"see {self.list_path}" if self.list_path is not None else "listed above"
        return f"{len(self.lines)} clip(s) skipped as corrupted: {where}"


def corrupt_limit(fraction: float, total: int) -> int:
    """How many of ``total`` clips may be skipped under ``data.max_corrupt_fraction``."""
    return math.floor(fraction * total + 1e-9)


# -- a whole folder --------------------------------------------------------------------------


def check_folder(folder: str | Path) -> list[str]:
    """``"<file>: <reason>"`` for every bad manifest line, manifest entry and stored array of
    the dataset folder ``folder`` (and its statistics); [] when all are sound."""
    folder = Path(folder)
    cfg = load_config(folder / "config.yaml")
    check = ClipCheck.for_folder(folder, cfg.audio)
    bad = _stats_problems(folder, cfg.audio)
    seen: dict[str, str] = {}
    for split in ("train", "valid"):
        manifest = folder / f"{split}.jsonl"
        for lineno, entry, problem in _manifest_lines(manifest):
            where = f"{manifest}:{lineno}"
            if problem is None and str(entry.get("id")) in seen:
                problem = f"utterance id {entry['id']!r} also on {seen[str(entry['id'])]}"
            if problem is not None:
                bad.append(f"{where}: {problem}")
                continue
            seen[str(entry["id"])] = where
            found = check.problem(entry)
            if found is not None:
                bad.append(f"{found[0]}: {found[1]}")
    return bad


def _manifest_lines(path: Path):
    """(line number, entry, problem) for each non-empty line of a manifest."""
    if not path.is_file():
        return
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            yield lineno, {}, "not a JSON line"
            continue
        if not isinstance(entry, dict):
            yield lineno, {}, "not a JSON object"
            continue
        yield lineno, entry, None


def _stats_problems(folder: Path, audio: AudioConfig) -> list[str]:
    path = folder / "stats.npz"
    try:
        stats = FeatureStats.load(path)
    except UserError as exc:
        return [str(exc)]
    if stats.mean.shape != (audio.n_mels,) or stats.std.shape != (audio.n_mels,):
        return [f"{path}: mean/std of shape {tuple(stats.mean.shape)}, expected ({audio.n_mels},)"]
    if not (stats.mean.isfinite().all() and stats.std.isfinite().all() and (stats.std > 0).all()):
        return [f"{path}: mean or std not finite, or std not positive"]
    return []
