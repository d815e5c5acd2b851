"""Corpus -> dataset folder (layout in docs/architecture.md): 16-bit audio, log-mel, statistics.

Each input file is loaded by the audio policy (mono by mean, resampled, clipped), checked for
silence and length, trimmed to a whole number of frames, stored as int16 PCM and paired with the
log-mel computed from exactly those stored samples. Bad files are rejected with one line naming
the file and the reason; the run goes on.

An existing output folder is added to, never wiped: entries already there are kept, an
utterance whose files were written from the same source file is not recomputed, and speaker ids
already assigned keep their numbers. Every file is written atomically (temporary name, then
rename), so an interrupted run leaves no half-written file behind; a full disk stops the run in
one line (faults.py) with the folder's manifests as they were. One run at a time writes into a
folder (runlock.py).
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import multiprocessing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wavedistill.config import Config, audio_differences, load_config, save_config
from wavedistill.data.audio import dequantize_16bit, peak_db, quantize_16bit, read_audio
from wavedistill.data.corpora import Utterance, read_jsonl, read_manifest, split_utterances
from wavedistill.data.external_mel import check_floor, finite_mel, load_npy
from wavedistill.data.features import FeatureStats, log_mel, shortest_clip, whole_frames
from wavedistill.data.pitch import f0_labels
from wavedistill.errors import UserError
from wavedistill.faults import WriteFailed, advice, explain
from wavedistill.fileio import atomic_write, atomic_write_text
from wavedistill.runlock import run_lock

log = logging.getLogger(__name__)

MAX_LISTED = 50  # rejected files listed in the log; rejected.txt has them all


@dataclass
class PreprocessReport:
    """What a run did. ``rejected`` holds ``"<path>: <reason>"`` lines."""

    out_dir: Path
    written: int = 0  # utterances computed in this run
    reused: int = 0  # utterances whose files were already there
    train: int = 0  # entries of train.jsonl (including earlier runs')
    valid: int = 0
    seconds: float = 0.0  # audio in the whole dataset folder
    rejected: list[str] = field(default_factory=list)
    # files per conversion of the audio policy, e.g. {"resampled from 22050 Hz to 16000 Hz": 9}
    conversions: collections.Counter = field(default_factory=collections.Counter)
    strict: bool = False

    @property
    def exit_code(self) -> int:
        """0 when the folder holds usable audio; 1 when nothing is usable, or when ``strict``
        and a file was rejected."""
        if self.train + self.valid == 0 or (self.strict and self.rejected):
            return 1
        return 0

    def summary(self) -> str:
        return (
            f"{self.out_dir}: {self.train} train + {self.valid} valid utterances "
            f"({self.seconds / 3600:.3f} h); {self.written} written, {self.reused} reused, "
            f"{len(self.rejected)} rejected"
        )


# -- one utterance ---------------------------------------------------------------------------


def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array), size=array.nbytes + 128)


def _usable_length(num_samples: int, cfg: Config, path: Path) -> int:
    """Samples kept (a whole number of frames), or a UserError when the clip is too short."""
    segment = cfg.data.segment_length
    usable = whole_frames(num_samples, cfg.audio)
    if segment is not None and (usable or 0) < segment:
        raise UserError(
            f"{path}: shorter than one segment ({num_samples} samples < "
            f"data.segment_length = {segment})"
        )
    if usable is None:
        raise UserError(
            f"{path}: too short for features ({num_samples} samples; needs at "
            f"least {shortest_clip(cfg.audio)} in whole frames of "
            f"{cfg.audio.hop_length})"
        )
    return usable


@dataclass(frozen=True)
class ExternalMels:
    """Mels computed elsewhere (an acoustic model's teacher-forced predictions) to store in
    place of recomputed ones: ``folder/<utterance id>.npy`` in ``layout`` (see mel_input)."""

    folder: Path
    layout: str = "auto"

    def path(self, utt_id: str) -> Path:
        return self.folder / f"{utt_id}.npy"


MAX_FRAME_MISMATCH = 2  # frames an external mel may differ by (toolkits' edge conventions)


def process_utterance(
    utt: Utterance, speaker: int, cfg: Config, out_dir: Path, external: ExternalMels | None = None
) -> tuple[dict, list[str]]:
    """Load, check, quantise and featurise one clip; write ``audio/<id>.npy`` (int16, frames*hop)
    and ``mel/<id>.npy`` (float32, (n_mels, frames)); return its manifest entry and the
    conversions made (audio policy, trimming). With ``external``, the stored mel is the
    external one, paired frame by frame with the audio. Raises :class:`UserError`
    ("<path>: <reason>") when the clip is rejected."""
    audio, changes = read_audio(utt.path, cfg.audio.sample_rate)
    level = peak_db(audio)
    if level < cfg.data.silence_threshold_db:
        raise UserError(
            f"{utt.path}: silent (peak {level:.1f} dBFS is below "
            f"data.silence_threshold_db = {cfg.data.silence_threshold_db:g})"
        )
    usable = _usable_length(len(audio), cfg, utt.path)
    if external is not None:
        mel, usable, change = _external_mel(external, utt.id, usable, cfg)
        changes = changes + ([change] if change else [])
        pcm = quantize_16bit(audio[:usable])
    else:
        pcm = quantize_16bit(audio[:usable])
        # The features come from the stored 16-bit samples, so training pairs them exactly.
        mel = log_mel(torch.from_numpy(dequantize_16bit(pcm)), cfg.audio).numpy()
    entry: dict[str, Any] = {
        "id": utt.id,
        "audio": f"audio/{utt.id}.npy",
        "mel": f"mel/{utt.id}.npy",
        "speaker": speaker,
        "samples": usable,
        "frames": usable // cfg.audio.hop_length,
        "source": str(utt.path),
    }
    if external is not None:
        entry["mel_source"] = str(external.path(utt.id))
    _save_npy(out_dir / entry["audio"], pcm)
    _save_npy(out_dir / entry["mel"], mel)
    if cfg.data.pitch:
        entry["f0"] = f"f0/{utt.id}.npy"
        _save_npy(out_dir / entry["f0"], f0_labels(dequantize_16bit(pcm), cfg.audio, cfg.data))
    return entry, changes


def _external_mel(
    external: ExternalMels, utt_id: str, usable: int, cfg: Config
) -> tuple[np.ndarray, int, str | None]:
    """The external mel of ``utt_id`` as (n_mels, F) float32, the samples of audio it pairs
    with (``F * hop``), and what was trimmed (or None). A difference of up to
    ``MAX_FRAME_MISMATCH`` frames is trimmed from the longer side's end; more is refused."""
    path = external.path(utt_id)
    if not path.is_file():
        raise UserError(f"{path}: no external mel for utterance {utt_id}")
    mel = finite_mel(str(path), load_npy(path), cfg.audio.n_mels, external.layout)
    check_floor(
        str(path),
        mel,
        cfg.audio,
        "the mels must be un-normalised, in the config's "
        "convention (audio.log_base, audio.log_floor)",
    )
    hop = cfg.audio.hop_length
    ours, theirs = usable // hop, mel.shape[1]
    if abs(theirs - ours) > MAX_FRAME_MISMATCH:
        raise UserError(
            f"{path}: {theirs} frames, but the audio has {ours} frames of hop {hop} "
            f"(at most {MAX_FRAME_MISMATCH} may differ)"
        )
    frames = min(ours, theirs)
    change = None
    if theirs != ours:
        side = "mel" if theirs > ours else "audio"
        change = f"external mel and audio differ by 1-{MAX_FRAME_MISMATCH} frames: {side} trimmed"
    return np.ascontiguousarray(mel[:, :frames]), frames * hop, change


def _process_or_reject(job: tuple) -> tuple[dict, list[str]] | str:
    """Worker entry point: (manifest entry, conversions), or the rejection line."""
    try:
        return process_utterance(*job)
    except UserError as exc:
        return str(exc)


def _init_worker() -> None:
    torch.set_num_threads(1)  # the workers are the parallelism


# -- the folder ------------------------------------------------------------------------------


def _check_compatible(cfg: Config, out_dir: Path) -> None:
    """Refuse to add to a folder whose features were computed with other audio settings."""
    path = out_dir / "config.yaml"
    if not path.exists():
        return
    changed = audio_differences(load_config(path).audio, cfg.audio)
    if changed:
        raise UserError(
            f"{path}: this folder was made with other audio settings "
            f"({', '.join(changed)}); choose a new --out"
        )


def _speaker_ids(utts: list[Utterance], out_dir: Path) -> dict[str, int]:
    """Existing ids from speakers.json are kept; new speakers get the next ids, in sorted order."""
    path = out_dir / "speakers.json"
    speakers = json.loads(path.read_text()) if path.exists() else {}
    for name in sorted({u.speaker for u in utts} - set(speakers)):
        speakers[name] = len(speakers)
    return speakers


def _reusable(
    previous: dict | None,
    utt: Utterance,
    out_dir: Path,
    external: ExternalMels | None,
    pitch: bool = False,
) -> bool:
    mel_source = None if external is None else str(external.path(utt.id))
    return (
        previous is not None
        and previous.get("source") == str(utt.path)
        and previous.get("mel_source") == mel_source
        and (out_dir / previous["audio"]).exists()
        and (out_dir / previous["mel"]).exists()
        and (not pitch or ("f0" in previous and (out_dir / previous["f0"]).exists()))
    )


def _run_jobs(jobs: list[tuple], num_workers: int, desc: str):
    """Yield each job's result in order, in ``num_workers`` processes (0: in this one)."""
    progress = dict(total=len(jobs), desc=desc, unit="file", disable=None)
    if num_workers <= 0 or len(jobs) < 2:
        yield from tqdm(map(_process_or_reject, jobs), **progress)
        return
    context = multiprocessing.get_context("spawn")  # no forking of a threaded torch
    with concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=context, initializer=_init_worker
    ) as pool:
        yield from tqdm(pool.map(_process_or_reject, jobs, chunksize=4), **progress)


def _write_dataset(
    entries: list[dict], speakers: dict[str, int], cfg: Config, out_dir: Path
) -> tuple[list[dict], list[dict]]:
    d = cfg.data
    train, valid = split_utterances(
        entries, d.valid_fraction, d.valid_min, d.split_seed, key=lambda e: e["id"]
    )
    for name, split in (("train", train), ("valid", valid)):
        atomic_write_text(out_dir / f"{name}.jsonl", "".join(json.dumps(e) + "\n" for e in split))
    atomic_write_text(out_dir / "speakers.json", json.dumps(speakers, indent=1) + "\n")
    mels = (np.load(out_dir / e["mel"]) for e in train)
    FeatureStats.for_features(mels, cfg.audio).save(out_dir / "stats.npz")
    return train, valid


def preprocess(
    cfg: Config,
    data_dir: str | Path,
    out_dir: str | Path,
    strict: bool = False,
    mel_dir: str | Path | None = None,
    mel_layout: str = "auto",
) -> PreprocessReport:
    """Read the corpus at ``data_dir`` (layout ``cfg.data.format``) into the dataset folder
    ``out_dir``; statistics come from the training split. ``mel_dir``: store the mels found
    there (``<utterance id>.npy``, e.g. an acoustic model's teacher-forced predictions, for
    fine-tuning) instead of computing them. See :class:`PreprocessReport`."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not data_dir.exists():
        raise UserError(f"{data_dir}: no such file or folder")
    external = None
    if mel_dir is not None:
        if not Path(mel_dir).is_dir():
            raise UserError(f"--mel-dir {mel_dir}: no such folder")
        external = ExternalMels(Path(mel_dir), mel_layout)
    utts = read_manifest(cfg.data.format, data_dir)
    with explain(_intact), run_lock(out_dir, "preprocess"):
        return _fill(cfg, data_dir, out_dir, utts, external, strict)


def _intact(exc: WriteFailed) -> str:
    """What a failed write left of the dataset folder, and how to go on."""
    return "the folder's manifests are as before this run; " + advice(
        exc, "run the same command again"
    )


def _fill(
    cfg: Config,
    data_dir: Path,
    out_dir: Path,
    utts: list[Utterance],
    external: ExternalMels | None,
    strict: bool,
) -> PreprocessReport:
    """The work of :func:`preprocess`, with the folder held."""
    _check_compatible(cfg, out_dir)
    speakers = _speaker_ids(utts, out_dir)
    previous = {
        e["id"]: e for split in ("train", "valid") for e in read_jsonl(out_dir / f"{split}.jsonl")
    }
    report = PreprocessReport(out_dir, strict=strict)

    current: dict[str, dict] = {}
    jobs = []
    for utt in utts:
        if _reusable(previous.get(utt.id), utt, out_dir, external, cfg.data.pitch):
            current[utt.id] = previous[utt.id]
            report.reused += 1
        else:
            jobs.append((utt, speakers[utt.speaker], cfg, out_dir, external))
    desc = f"preprocess {data_dir.name}"
    if cfg.data.pitch and jobs:  # pyin dominates the run: say so
        desc += " with F0 labels (pyin, ~0.2x real time)"
    for result in _run_jobs(jobs, cfg.data.num_workers, desc):
        if isinstance(result, str):
            report.rejected.append(result)
            continue
        entry, changes = result
        current[entry["id"]] = entry
        report.conversions.update(changes)
        report.written += 1

    # Entries of earlier runs that this corpus does not list again are kept (added to, not wiped).
    entries = [e for uid, e in previous.items() if uid not in current] + list(current.values())
    atomic_write_text(out_dir / "rejected.txt", "".join(line + "\n" for line in report.rejected))
    if entries:
        save_config(cfg, out_dir / "config.yaml")
        train, valid = _write_dataset(entries, speakers, cfg, out_dir)
        report.train, report.valid = len(train), len(valid)
        report.seconds = sum(e["samples"] for e in entries) / cfg.audio.sample_rate
    _log_report(report)
    return report


def _log_report(report: PreprocessReport) -> None:
    for change, count in sorted(report.conversions.items()):
        log.info("%d file(s): %s", count, change)
    for line in report.rejected[:MAX_LISTED]:
        log.warning("rejected %s", line)
    if len(report.rejected) > MAX_LISTED:
        log.warning("... and %d more", len(report.rejected) - MAX_LISTED)
    if report.rejected:
        log.warning(
            "%d file(s) rejected; all listed in %s",
            len(report.rejected),
            report.out_dir / "rejected.txt",
        )
    if report.train + report.valid == 0:
        log.error("%s: no usable audio: every input file was rejected", report.out_dir)
    else:
        log.info("%s", report.summary())
