"""Synthesis from a checkpoint: the teacher samples one step per audio sample (cached), the
student renders a whole clip in one parallel pass.

Python use::

    synth = Synthesizer.from_checkpoint("exp/student/checkpoints/best.pt")
    mel = synth.features("clip.wav")             # (n_mels, F), normalised
    audio = synth.generate([mel], seed=0)[0]     # (F * hop,) float32 in [-1, 1]
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wavedistill.config import Config
from wavedistill.errors import UserError

log = logging.getLogger(__name__)

# Mean of normalised saved features, in standard deviations of the training statistics, past
# which they are taken for another convention. For the shipped models, whole utterances of the
# training voice average within ±0.3, another speaker's -0.04 and pure digital silence -3.1.
MAX_LEVEL_OFFSET = 4.0


@dataclass
class Synthesizer:
    """A model ready to synthesise, with the config and feature statistics it was trained with."""

    kind: str  # "teacher" | "student"
    model: torch.nn.Module
    cfg: Config
    stats: object  # wavedistill.features.FeatureStats
    device: torch.device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", use_ema: bool = True):
        from wavedistill.checkpoint import build_model, load_checkpoint

        ckpt = load_checkpoint(path)
        model, cfg, stats = build_model(ckpt, use_ema=use_ema)
        dev = torch.device(device)
        return cls(ckpt["kind"], model.to(dev).eval(), cfg, stats, dev)

    @property
    def conditional(self) -> bool:
        return self.kind == "student" or self.cfg.teacher.use_mel

    @property
    def num_speakers(self) -> int:
        section = self.cfg.teacher if self.kind == "teacher" else self.cfg.student
        return section.num_speakers

    def features(self, path: str | Path) -> torch.Tensor:
        """Normalised log-mel (n_mels, F) of an audio clip (resampled/downmixed by the audio
        policy) or of saved un-normalised log-mel features in a ``.npy`` file (n_mels, F)."""
        path = Path(path)
        if not path.exists():
            raise UserError(f"{path}: no such file")
        if path.suffix.lower() == ".npy":
            mel = self._load_npy(path)
        else:
            from wavedistill.audio import load_audio
            from wavedistill.features import log_mel

            a = self.cfg.audio
            audio = load_audio(path, a.sample_rate)
            usable = len(audio) - len(audio) % a.hop_length
            # whole frames, and more samples than half an analysis window (see log_mel)
            shortest = (a.n_fft // 2 // a.hop_length + 1) * a.hop_length
            if usable < shortest:
                raise UserError(f"{path}: too short to synthesise ({len(audio)} samples at "
                                f"{a.sample_rate} Hz; needs at least {shortest})")
            mel = log_mel(torch.from_numpy(audio[:usable]), a)
        return self.stats.normalize(mel.float())

    def _load_npy(self, path: Path) -> torch.Tensor:
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable .npy feature file ({exc})") from None
        n_mels = self.cfg.audio.n_mels
        if array.ndim != 2 or array.shape[0] != n_mels or array.shape[1] == 0:
            raise UserError(f"{path}: features must have shape ({n_mels}, frames), "
                            f"got {array.shape}")
        if not np.isfinite(array).all():
            raise UserError(f"{path}: features contain NaN or inf")
        mel = torch.from_numpy(array.astype(np.float32))
        self._check_convention(path, mel)
        return mel

    def _check_convention(self, path: Path, mel: torch.Tensor) -> None:
        """Refuse features that cannot be this model's un-normalised log-mel: values below the
        log floor, or a level many standard deviations away from the training statistics
        (features already normalised, log10, or another toolkit's floor)."""
        a = self.cfg.audio
        lowest = math.log(a.log_floor)
        if float(mel.min()) < lowest - 1e-3:
            raise UserError(f"{path}: values down to {float(mel.min()):.2f} lie below "
                            f"log(audio.log_floor) = {lowest:.2f}; the model expects "
                            f"un-normalised natural-log mel magnitudes ({a.n_mels}, frames) "
                            "floored at audio.log_floor")
        offset = float(self.stats.normalize(mel).mean())
        if abs(offset) > MAX_LEVEL_OFFSET:
            raise UserError(f"{path}: the features sit {offset:+.1f} standard deviations from "
                            f"the model's feature statistics (at most ±{MAX_LEVEL_OFFSET:g} "
                            "expected); the model expects un-normalised natural-log mel "
                            f"magnitudes ({a.n_mels}, frames) of {a.sample_rate} Hz audio")

    def _speaker(self, speaker: int | None, batch: int) -> torch.Tensor | None:
        if self.num_speakers == 0:
            if speaker is not None:  # even 0: the user expects a speaker the model lacks
                raise UserError(f"--speaker {speaker}: this model has no speaker embedding "
                                "(it was trained on one speaker)")
            return None
        if speaker is None:
            raise UserError(f"--speaker is required: this model has {self.num_speakers} speakers")
        if not 0 <= speaker < self.num_speakers:
            raise UserError(f"--speaker {speaker} is out of range [0, {self.num_speakers})")
        return torch.full((batch,), speaker, dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def generate(self, mels: list[torch.Tensor] | None = None, seconds: float | None = None,
                 speaker: int | None = None, seed: int = 0, chunk_seconds: float | None = None,
                 batch: int = 1, progress: bool = False) -> list[np.ndarray]:
        """Synthesise one clip per mel (all as one batch; shorter mels are padded by repeating
        their last frame and their outputs trimmed), or ``batch`` clips of ``seconds`` for an
        unconditional teacher. Returns float32 arrays (T_i,)."""
        hop = self.cfg.audio.hop_length
        generator = torch.Generator(device=self.device).manual_seed(seed)
        if not self.conditional:
            if seconds is None or seconds <= 0:
                raise UserError("--seconds N (> 0) is required for an unconditional model")
            frames = max(1, math.ceil(seconds * self.cfg.audio.sample_rate / hop))
            lengths, mel = [frames * hop] * batch, None
            spk = self._speaker(speaker, batch)
        else:
            if not mels:
                raise UserError("--input is required: this model is conditioned on mel features")
            if seconds is not None:
                raise UserError("--seconds is only for unconditional models; give --input")
            lengths = [m.shape[-1] * hop for m in mels]
            mel = _pad_batch(mels).to(self.device)
            spk = self._speaker(speaker, len(mels))
        start = time.perf_counter()
        audio = self._run(mel, spk, len(lengths), max(lengths), generator, chunk_seconds,
                          progress)
        elapsed = time.perf_counter() - start
        total = sum(lengths)
        log.info("synthesised %d samples in %.2f s (%.0f samples/s)", total, elapsed,
                 total / elapsed)
        return [audio[i, :n].float().cpu().numpy() for i, n in enumerate(lengths)]

    def _run(self, mel, speaker, batch, num_samples, generator, chunk_seconds, progress
             ) -> torch.Tensor:
        _check_chunk_seconds(self.kind, chunk_seconds)
        if self.kind == "teacher":
            from wavedistill.generation import generate

            return generate(self.model, mel=mel, speaker=speaker, num_samples=num_samples,
                            generator=generator, method="cached", progress=progress,
                            batch=batch)
        if chunk_seconds is not None:
            hop = self.cfg.audio.hop_length
            chunk_frames = max(1, round(chunk_seconds * self.cfg.audio.sample_rate / hop))
            return self.model.synthesize_chunked(mel, chunk_frames, speaker, generator=generator)
        return self.model.synthesize(mel, speaker, generator=generator)


def _check_chunk_seconds(kind: str, chunk_seconds: float | None) -> None:
    if chunk_seconds is None:
        return
    if kind == "teacher":
        raise UserError("--chunk-seconds is a student option; teachers sample step by step")
    if not chunk_seconds > 0:  # also refuses NaN
        raise UserError(f"--chunk-seconds must be positive, got {chunk_seconds:g}")


def _pad_batch(mels: list[torch.Tensor]) -> torch.Tensor:
    """(n_mels, F_i) list -> (B, n_mels, max F), padding by repeating each last frame."""
    frames = max(m.shape[-1] for m in mels)
    padded = [torch.cat([m, m[:, -1:].expand(-1, frames - m.shape[-1])], dim=1) for m in mels]
    return torch.stack(padded)


def _output_paths(inputs: list[Path] | None, output: Path, count: int) -> list[Path]:
    """Where each clip goes: ``output`` itself when it names a ``.wav`` file (one clip), else
    ``output/<input stem>.wav`` (``sample<i>.wav`` without inputs)."""
    if output.suffix:
        if output.suffix.lower() != ".wav":
            raise UserError(f"--output {output}: synthesis writes 16-bit WAV; name a .wav file "
                            "or a folder")
        if count > 1:
            raise UserError(f"--output {output}: give a folder when synthesising {count} clips")
        return [output]
    names = [p.stem for p in inputs] if inputs else [f"sample{i}" for i in range(count)]
    if len(set(names)) != len(names):
        names = [f"{i:03d}_{n}" for i, n in enumerate(names)]
    return [output / f"{name}.wav" for name in names]


def synthesize_cli(args) -> int:
    """``wavedistill synthesize``: load, build features, generate as one batch, write 16-bit
    WAVs."""
    from wavedistill.audio import write_wav

    checkpoint = args.checkpoint
    if checkpoint is None:
        from wavedistill.pretrained import DEFAULT_STUDENT, default_student_path

        checkpoint = default_student_path()
        log.info("no --checkpoint: using the shipped student %s", DEFAULT_STUDENT)
    synth = Synthesizer.from_checkpoint(checkpoint, device=args.device,
                                        use_ema=not args.no_ema)
    # Every option is checked before the (possibly long) generation starts.
    if args.input and not synth.conditional:
        raise UserError("--input given, but this teacher is unconditional; use --seconds")
    _check_chunk_seconds(synth.kind, args.chunk_seconds)
    outputs = _output_paths(args.input, args.output, len(args.input) if args.input else 1)
    mels = [synth.features(p) for p in args.input] if args.input else None
    clips = synth.generate(mels, seconds=args.seconds, speaker=args.speaker, seed=args.seed,
                           chunk_seconds=args.chunk_seconds, progress=True)
    for path, clip in zip(outputs, clips, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(path, clip, synth.cfg.audio.sample_rate)
        print(f"wrote {path} ({len(clip) / synth.cfg.audio.sample_rate:.2f} s)")
    return 0
