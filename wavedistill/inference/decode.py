"""Files in, WAV files out: the ``synthesize`` command's work, callable from Python.

Two ways in:

- :func:`synthesize_files`: a few named inputs (audio or saved log-mel), all as one batch, or a
  clip of given length from an unconditional teacher. Any bad input stops the run before
  generation starts.
- :func:`decode_corpus`: a folder of ``.wav``/``.flac``/``.npy`` files or a Kaldi
  ``feats.scp``, in batches of similar length, with a progress bar. A file that cannot be read
  is reported and skipped; every other one is written, named after its input, and the
  skipped ones are listed in ``output/skipped.txt``.

A full disk stops either in one line naming the file (faults.py) and saying how many outputs
were written whole before it.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from wavedistill.data.audio import write_wav, write_wav_stream
from wavedistill.data.external_mel import PLAIN, MelConvention, load_npy
from wavedistill.data.features import frames_for
from wavedistill.errors import UserError
from wavedistill.faults import WriteFailed, advice, explain
from wavedistill.fileio import atomic_write_text
from wavedistill.inference.synthesizer import Synthesizer, check_chunk_seconds, mel_chunks
from wavedistill.store.registry import DEFAULT_STUDENT

log = logging.getLogger(__name__)

CORPUS_SUFFIXES = (".wav", ".flac", ".npy")


@dataclass
class DecodeReport:
    """What a run wrote and skipped, and how fast: ``rtf`` is compute time over audio time."""

    written: list[tuple[Path, float]] = field(default_factory=list)  # (file, seconds of audio)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    seconds: float = 0.0  # wall-clock time of feature reading and synthesis
    skipped_list: Path | None = None  # where the skipped inputs are listed, once written

    @property
    def audio_seconds(self) -> float:
        return sum(s for _, s in self.written)

    @property
    def rtf(self) -> float:
        return self.seconds / self.audio_seconds if self.audio_seconds else float("nan")

    def summary(self) -> str:
        line = (
            f"wrote {len(self.written)} file(s), {self.audio_seconds:.2f} s of audio in "
            f"{self.seconds:.2f} s (real-time factor {self.rtf:.3f})"
        )
        if self.skipped:
            line += f"; skipped {len(self.skipped)} unreadable input(s)"
            if self.skipped_list is not None:
                line += f": see {self.skipped_list}"
        return line

    def intact(self, exc: WriteFailed) -> str:
        """What a failed write left: the outputs written whole before it, and how to go on."""
        return f"the {len(self.written)} output(s) written before it are complete; " + advice(
            exc, "run the same command again"
        )

    def write_skipped(self, folder: Path) -> None:
        """List the skipped inputs in ``folder/skipped.txt`` (``<input>: <reason>`` lines)."""
        if self.skipped:
            self.skipped_list = atomic_write_text(
                folder / "skipped.txt", "".join(f"{name}: {why}\n" for name, why in self.skipped)
            )


def open_synthesizer(
    checkpoint: str | Path | None,
    device: str = "cpu",
    use_ema: bool = True,
    dtype: str = "float32",
    temperature: float = 1.0,
) -> Synthesizer:
    """The model of ``checkpoint`` (a checkpoint file, an exported bundle folder, a shipped
    model's name or a Hub id), or the shipped student when None, in ``dtype``, sampling at
    ``temperature`` (students)."""
    if checkpoint is None:
        log.info("no checkpoint given: using the shipped student %s", DEFAULT_STUDENT)
        checkpoint = DEFAULT_STUDENT
    return Synthesizer.from_pretrained(
        checkpoint, device=device, use_ema=use_ema, dtype=dtype, temperature=temperature
    )


def synthesize_files(
    synth: Synthesizer,
    output: Path,
    inputs: list[Path] | None = None,
    seconds: float | None = None,
    speaker: int | None = None,
    seed: int = 0,
    chunk_seconds: float | None = None,
    convention: MelConvention = PLAIN,
) -> DecodeReport:
    """Synthesise each of ``inputs`` (audio or saved log-mel) as one batch, or one clip of
    ``seconds`` from an unconditional teacher, and write 16-bit WAVs: ``output`` itself when it
    names a ``.wav`` file, else ``output/<input stem>.wav``."""
    start = time.perf_counter()
    # Every option is checked before the (possibly long) generation starts.
    if inputs and not synth.loaded.conditional:
        raise UserError("--input given, but this teacher is unconditional; use --seconds")
    check_chunk_seconds(synth.kind, chunk_seconds)
    names = [p.stem for p in inputs] if inputs else ["sample0"]
    outputs = output_paths(names, output)
    mels = [synth.features(p, convention) for p in inputs] if inputs else None
    report = DecodeReport()
    # a student with an excitation cannot stream (its phase runs from the clip's start);
    # Synthesizer.generate gives it the same audio in one pass
    with explain(report.intact):
        if chunk_seconds is not None and mels and not synth.has_excitation:
            _stream_to_files(synth, outputs, mels, chunk_seconds, speaker, seed, report)
        else:
            clips = synth.generate(
                mels,
                seconds=seconds,
                speaker=speaker,
                seed=seed,
                chunk_seconds=chunk_seconds,
                progress=True,
            )
            _write(synth, outputs, clips, report)
    report.seconds = time.perf_counter() - start
    return report


def _stream_to_files(
    synth: Synthesizer,
    paths: list[Path],
    mels: list[torch.Tensor],
    chunk_seconds: float,
    speaker: int | None,
    seed: int,
    report: DecodeReport,
) -> None:
    """Each clip streamed chunk by chunk into its file: memory bounded by the chunk and the
    receptive field, whatever the clip's length; the audio equals one-shot synthesis."""
    a = synth.cfg.audio
    frames = frames_for(chunk_seconds, a)
    for path, mel in zip(paths, mels, strict=True):
        pieces = synth.stream(mel_chunks(mel, frames), speaker, seed)
        samples = write_wav_stream(path, pieces, a.sample_rate)
        report.written.append((path, samples / a.sample_rate))


def output_paths(names: list[str], output: Path) -> list[Path]:
    """Where each clip goes: ``output`` itself when it names a ``.wav`` file (one clip), else
    ``output/<name>.wav`` (names made distinct by an index prefix when they repeat)."""
    if output.suffix:
        if output.suffix.lower() != ".wav":
            raise UserError(
                f"--output {output}: synthesis writes 16-bit WAV; name a .wav file or a folder"
            )
        if len(names) > 1:
            raise UserError(
                f"--output {output}: give a folder when synthesising {len(names)} clips"
            )
        return [output]
    if len(set(names)) != len(names):
        names = [f"{i:03d}_{n}" for i, n in enumerate(names)]
    return [output / f"{name}.wav" for name in names]


def _write(
    synth: Synthesizer, paths: list[Path], clips: list[np.ndarray], report: DecodeReport
) -> None:
    rate = synth.cfg.audio.sample_rate
    for path, clip in zip(paths, clips, strict=True):
        write_wav(path, clip, rate)  # 16-bit mono: 2 bytes a sample and a 44-byte header
        report.written.append((path, len(clip) / rate))


# -- corpora ---------------------------------------------------------------------------------


def corpus_inputs(
    input_dir: Path | None = None, scp: Path | None = None
) -> list[tuple[str, Callable[[Synthesizer, MelConvention], torch.Tensor]]]:
    """``(name, read)`` per utterance of a folder (every .wav/.flac/.npy below it, sorted; the
    name is the path relative to the folder without suffix; two files of one name, such as
    ``a.wav`` and ``a.npy``, are refused) or of a Kaldi ``feats.scp`` (the name is the
    utterance id). ``read(synth, convention)`` returns the model's input."""
    if (input_dir is None) == (scp is None):
        raise UserError("give one of --input-dir and --scp")
    if input_dir is not None:
        if not input_dir.is_dir():
            raise UserError(f"--input-dir {input_dir}: no such folder")
        files = sorted(
            p for p in input_dir.rglob("*") if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES
        )
        if not files:
            raise UserError(f"--input-dir {input_dir}: no {'/'.join(CORPUS_SUFFIXES)} files")
        names = [str(p.relative_to(input_dir).with_suffix("")) for p in files]
        _check_distinct(input_dir, files, names)
        return [(name, _file_reader(p)) for name, p in zip(names, files, strict=True)]
    assert scp is not None  # exactly one of the two was given
    return [(key, _scp_reader(f"{scp}: {key}", key, read)) for key, read in _scp_entries(scp)]


def _file_reader(path: Path) -> Callable[[Synthesizer, MelConvention], torch.Tensor]:
    return lambda synth, conv: synth.features(path, conv)


def _scp_reader(
    name: str, key: str, read: Callable[[str], np.ndarray]
) -> Callable[[Synthesizer, MelConvention], torch.Tensor]:
    return lambda synth, conv: synth.mel_input(name, read(key), conv)


def _check_distinct(input_dir: Path, files: list[Path], names: list[str]) -> None:
    """Refuse two inputs that would be written to one output (``a.wav`` and ``a.npy``)."""
    seen: dict[str, Path] = {}
    for path, name in zip(files, names, strict=True):
        if name in seen:
            raise UserError(
                f"--input-dir {input_dir}: {seen[name].relative_to(input_dir)} and "
                f"{path.relative_to(input_dir)} would both be written as "
                f"{name}.wav; keep one of them"
            )
        seen[name] = path


def _scp_entries(scp: Path) -> list[tuple[str, Callable[[str], np.ndarray]]]:
    """``(utterance id, read)`` of a Kaldi script file, each read lazily by ``kaldiio``."""
    try:
        import kaldiio
    except ImportError:
        raise UserError(
            "--scp needs the kaldiio package: pip install 'wavedistill[kaldi]'"
        ) from None
    if not scp.is_file():
        raise UserError(f"--scp {scp}: no such file")
    try:
        table = kaldiio.load_scp(str(scp))
        keys = list(table.keys())
    except Exception as exc:  # kaldiio raises many kinds on a malformed script file
        reason = " ".join(str(exc).split())  # kaldiio quotes the bad line on a line of its own
        raise UserError(f"{scp}: not a readable Kaldi script file ({reason})") from None
    if not keys:
        raise UserError(f"--scp {scp}: no entries")

    npy = _npy_entries(scp)  # ESPnet2 lists .npy files, which kaldiio cannot read

    def read(key: str) -> np.ndarray:
        if key in npy:
            return load_npy(npy[key])
        try:
            with warnings.catch_warnings():  # kaldiio also warns; the skip line says it all
                warnings.simplefilter("ignore")
                return np.asarray(table[key])
        except Exception as exc:  # a missing or damaged ark
            raise UserError(f"cannot read its features ({' '.join(str(exc).split())})") from None

    return [(key, read) for key in keys]


def _npy_entries(scp: Path) -> dict[str, Path]:
    """The entries of a script file that name a ``.npy`` file (relative paths from the scp's
    folder's parent, as ESPnet writes them, or absolute)."""
    out = {}
    for line in scp.read_text().splitlines():
        key, _, target = line.strip().partition(" ")
        target = target.strip()
        if target.endswith(".npy"):
            path = Path(target)
            out[key] = path if path.is_absolute() or path.exists() else scp.parent / path
    return out


def decode_corpus(
    synth: Synthesizer,
    output: Path,
    input_dir: Path | None = None,
    scp: Path | None = None,
    batch_size: int = 1,
    speaker: int | None = None,
    seed: int = 0,
    convention: MelConvention = PLAIN,
    progress: bool = True,
) -> DecodeReport:
    """Synthesise every utterance of a folder or ``feats.scp`` into ``output/<name>.wav``, in
    batches of ``batch_size`` utterances of similar length (longest first). An unreadable
    input is logged and skipped."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if not synth.loaded.conditional:
        raise UserError(
            "this teacher is unconditional; --input-dir and --scp need a model "
            "conditioned on mel features"
        )
    if output.suffix or (output.exists() and not output.is_dir()):
        raise UserError(f"--output {output}: give a folder for --input-dir or --scp")
    start = time.perf_counter()
    report = DecodeReport()
    mels = _read_all(synth, corpus_inputs(input_dir, scp), convention, report, progress)
    bar = _bar(progress, sum(m.shape[-1] for m in mels.values()) * synth.cfg.audio.hop_length)
    with explain(report.intact):
        report.write_skipped(output)
        for names in _length_sorted_batches(mels, batch_size):
            clips = synth.generate([mels[n] for n in names], speaker=speaker, seed=seed)
            _write(synth, [output / f"{n}.wav" for n in names], clips, report)
            bar.update(sum(len(c) for c in clips))
    bar.close()
    report.seconds = time.perf_counter() - start
    return report


def _read_all(
    synth: Synthesizer, inputs, convention: MelConvention, report: DecodeReport, progress: bool
) -> dict[str, torch.Tensor]:
    """Every readable input's model input by name; the others go to ``report.skipped``."""
    mels = {}
    for name, read in tqdm(inputs, desc="features", unit="file", disable=not progress):
        try:
            mels[name] = read(synth, convention)
        except UserError as exc:
            log.debug("skipped %s: %s", name, exc)  # listed once, at the end
            report.skipped.append((name, str(exc)))
    if not mels:
        raise UserError(
            f"none of the {len(inputs)} input(s) could be read; the first: {report.skipped[0][1]}"
        )
    return mels


def _length_sorted_batches(mels: dict[str, torch.Tensor], size: int) -> Iterator[list[str]]:
    """Names in batches of ``size``, longest first, so each batch pads little."""
    order = sorted(mels, key=lambda n: -mels[n].shape[-1])
    for i in range(0, len(order), size):
        yield order[i : i + size]


def _bar(progress: bool, total: int):
    return tqdm(total=total, unit="sample", unit_scale=True, desc="synthesis", disable=not progress)
