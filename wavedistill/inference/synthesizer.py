"""Synthesis from a checkpoint: the teacher samples one step per audio sample (cached), the
student renders a whole clip in one parallel pass.

Python use::

    synth = Synthesizer.from_pretrained("exp/student/checkpoints/best.pt")  # or a bundle
    mel = synth.features("clip.wav")             # (n_mels, F), normalised
    audio = synth.generate([mel], seed=0)[0]     # (F * hop,) float32 in [-1, 1]
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wavedistill.config import Config
from wavedistill.data.audio import load_audio
from wavedistill.data.external_mel import PLAIN, MelConvention, load_npy, model_input
from wavedistill.data.features import frames_for, log_mel, shortest_clip, whole_frames
from wavedistill.errors import UserError
from wavedistill.models.sampling import generate
from wavedistill.models.student import check_temperature
from wavedistill.precision import DTYPES, resolve_dtype
from wavedistill.store.checkpoint import ModelKind
from wavedistill.store.loading import LoadedModel, load_model

log = logging.getLogger(__name__)


@dataclass
class Synthesizer:
    """Synthesis with a loaded teacher or student: features from audio or saved log-mel, and
    audio from features (or from nothing, for an unconditional teacher)."""

    loaded: LoadedModel
    # float32, or a reduced precision the device computes natively (see precision.py): a
    # student runs in it throughout, a teacher's sampler in its matrix products
    dtype: torch.dtype = torch.float32
    # scale of a student's unit noise: 1 samples its distribution, 0 is its deterministic path
    temperature: float = 1.0

    def __post_init__(self):
        check_temperature(self.temperature)
        if self.temperature != 1.0 and self.kind == "teacher":
            raise UserError(
                "--temperature is a student option; a teacher samples its own "
                "distribution step by step"
            )
        if self.dtype == torch.float32:
            return
        name = str(self.dtype).removeprefix("torch.")
        resolve_dtype(name, self.loaded.device)
        if self.kind == "teacher" and self.dtype != torch.bfloat16:
            raise UserError(f"--dtype {name}: teacher sampling runs in float32 or bfloat16")
        if self.kind == "student":
            self.loaded.model.to(self.dtype)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "cpu",
        use_ema: bool = True,
        dtype: str = "float32",
        temperature: float = 1.0,
    ) -> Synthesizer:
        """A training checkpoint's model (its EMA weights unless ``use_ema`` is False); the
        same as :meth:`from_pretrained`, which takes any model reference."""
        return cls.from_pretrained(path, device, use_ema, dtype, temperature)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        device: str = "cpu",
        use_ema: bool = True,
        dtype: str = "float32",
        temperature: float = 1.0,
    ) -> Synthesizer:
        """A model from an exported bundle folder, a training checkpoint, the name of a
        shipped model (``alice-student``), or a Hugging Face Hub repository id
        (``owner/name``, with the ``hub`` extra; downloaded once, then read from the cache).
        ``dtype``: float32, bfloat16 or float16, refused where not native. ``temperature``:
        the scale of a student's noise (1 samples, 0 is the deterministic path)."""
        torch_dtype = _named_dtype(dtype)  # a bad name is refused before the model loads
        check_temperature(temperature)
        loaded = load_model(name_or_path, device=device, use_ema=use_ema)
        return cls(loaded, torch_dtype, temperature)

    @property
    def cfg(self) -> Config:
        return self.loaded.cfg

    @property
    def kind(self) -> ModelKind:
        return self.loaded.kind

    def features(self, path: str | Path, convention: MelConvention = PLAIN) -> torch.Tensor:
        """The model's normalised input ``(n_mels, F)`` for an audio clip (resampled and
        downmixed by the audio policy) or for saved log-mel features in a ``.npy`` file (laid
        out and normalised as ``convention`` says)."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        if path.suffix.lower() == ".npy":
            return self.mel_input(str(path), load_npy(path), convention)
        return self.loaded.feature_stats.normalize(self._audio_features(path))

    def mel_input(
        self, name: str, array: np.ndarray, convention: MelConvention = PLAIN
    ) -> torch.Tensor:
        """Saved features (any layout of ``convention``) -> the normalised ``(n_mels, F)`` the
        model takes; ``name`` labels errors."""
        return model_input(name, array, self.cfg.audio, self.loaded.feature_stats, convention)

    def _audio_features(self, path: Path) -> torch.Tensor:
        """Un-normalised log-mel ``(n_mels, F)`` of an audio file."""
        a = self.cfg.audio
        audio = load_audio(path, a.sample_rate)
        usable = whole_frames(len(audio), a)
        if usable is None:
            raise UserError(
                f"{path}: too short to synthesise ({len(audio)} samples at "
                f"{a.sample_rate} Hz; needs at least {shortest_clip(a)})"
            )
        return log_mel(torch.from_numpy(audio[:usable]), a).float()

    @torch.inference_mode()
    def generate(
        self,
        mels: list[torch.Tensor] | None = None,
        seconds: float | None = None,
        speaker: int | None = None,
        seed: int = 0,
        chunk_seconds: float | None = None,
        batch: int = 1,
        progress: bool = False,
    ) -> list[np.ndarray]:
        """Synthesise one clip per mel, all as one batch (shorter mels zero-padded, their
        outputs trimmed), or ``batch`` clips of ``seconds`` for an unconditional teacher.
        A student draws each clip's noise from its own generator seeded ``seed``, so a clip
        sounds the same whatever it is batched with; a teacher's batch shares one generator.
        ``chunk_seconds`` (students): each clip through :meth:`stream` in chunks of that length,
        from the same noise, so the same audio with memory bounded by the chunk.
        Returns float32 arrays (T_i,)."""
        check_chunk_seconds(self.kind, chunk_seconds)
        hop = self.cfg.audio.hop_length
        loaded = self.loaded
        if not loaded.conditional:
            if seconds is None or seconds <= 0:
                raise UserError("--seconds N (> 0) is required for an unconditional model")
            frames = max(1, math.ceil(seconds * self.cfg.audio.sample_rate / hop))
            lengths, mel = [frames * hop] * batch, None
            spk = loaded.speaker_ids(speaker, batch)
        else:
            if not mels:
                raise UserError("--input is required: this model is conditioned on mel features")
            if seconds is not None:
                raise UserError("--seconds is only for unconditional models; give --input")
            lengths = [m.shape[-1] * hop for m in mels]
            mel = _pad_batch(mels).to(loaded.device)
            spk = loaded.speaker_ids(speaker, len(mels))
        start = time.perf_counter()
        if chunk_seconds is not None and mels and not self.has_excitation:
            clips = self._chunked(mels, speaker, seed, frames_for(chunk_seconds, self.cfg.audio))
        else:
            audio = self._run(mel, spk, lengths, seed, progress)
            clips = [audio[i, :n].float().cpu().numpy() for i, n in enumerate(lengths)]
        elapsed = time.perf_counter() - start
        total = sum(lengths)
        log.info(
            "synthesised %d samples in %.2f s (%.0f samples/s)", total, elapsed, total / elapsed
        )
        return clips

    def _chunked(
        self, mels: list[torch.Tensor], speaker: int | None, seed: int, chunk_frames: int
    ) -> list[np.ndarray]:
        """Each mel ``(n_mels, F_i)`` streamed in chunks of ``chunk_frames`` from the noise
        one-shot synthesis draws for it: float32 ``(F_i * hop,)`` each."""
        clips = []
        for mel in mels:
            noise = self._noise([mel.shape[-1] * self.cfg.audio.hop_length], seed)[0]
            pieces = self.stream(mel_chunks(mel, chunk_frames), speaker, noise=noise)
            clips.append(np.concatenate(list(pieces)))
        return clips

    @property
    def has_excitation(self) -> bool:
        """Whether the model feeds a harmonic excitation to its layers (``source: harmonic``).
        Such a student cannot stream, since the excitation's phase runs from the clip's first
        sample; :meth:`generate` synthesises it in one pass even when given ``chunk_seconds``
        (the same audio, without the bound on memory)."""
        return getattr(self.loaded.model, "excitation", None) is not None

    @property
    def stream_latency_frames(self) -> int:
        """Mel frames :meth:`stream` must receive past a frame before that frame's audio is
        determined: the conditioner's look-ahead (``student.conditioning_context``)."""
        return self.cfg.student.conditioning_context

    @torch.inference_mode()
    def stream(
        self,
        chunks: Iterable[torch.Tensor | np.ndarray],
        speaker: int | None = None,
        seed: int = 0,
        noise: torch.Tensor | None = None,
    ) -> Iterator[np.ndarray]:
        """Student synthesis of mel frames as they arrive: ``chunks`` yields normalised mel
        ``(n_mels, f_i)`` (as :meth:`features` returns; any ``f_i >= 1``), and each step yields
        the float32 audio ``(k * hop,)`` of the ``k`` frames newly determined, ending with the
        rest when ``chunks`` is exhausted. A frame is determined once
        :attr:`stream_latency_frames` frames past it have arrived. Concatenated, the pieces
        equal :meth:`generate` of the whole mel with the same noise: ``noise (T,)`` if given,
        else drawn chunk by chunk from a generator seeded ``seed``. Memory stays bounded by the
        receptive field, whatever the length."""
        if self.kind != "student":
            raise UserError("streaming is for students; a teacher samples step by step")
        if self.has_excitation:
            raise UserError(
                "streaming does not support a student with an excitation "
                "(student.source=harmonic): synthesise whole clips"
            )
        model, device, hop = self.loaded.student, self.loaded.device, self.cfg.audio.hop_length
        spk = self.loaded.speaker_ids(speaker, 1)
        generator = torch.Generator(device=device).manual_seed(seed)
        lookahead = self.stream_latency_frames
        keep = model.context_frames + lookahead  # frames of history a span may read
        mel = torch.zeros(1, self.cfg.audio.n_mels, 0, device=device, dtype=self.dtype)
        z = torch.zeros(1, 0, device=device)
        base = done = 0  # absolute frame of mel[..., 0] and of the next frame to emit
        for chunk in chunks:
            chunk = torch.as_tensor(chunk, device=device)
            if chunk.dim() != 2 or chunk.shape[0] != mel.shape[1] or chunk.shape[1] < 1:
                raise UserError(
                    f"stream chunks must be (n_mels={mel.shape[1]}, frames >= 1), "
                    f"got {tuple(chunk.shape)}"
                )
            chunk = chunk.to(self.dtype)[None]
            frames = chunk.shape[-1]
            mel = torch.cat([mel, chunk], dim=-1)
            z = torch.cat(
                [z, self._stream_noise(noise, base + mel.shape[-1] - frames, frames, generator)],
                dim=-1,
            )
            ready = base + mel.shape[-1] - lookahead
            if ready > done:
                yield self._span(z, mel, base, done, ready, spk)
                done = ready
                drop = max(0, done - keep - base)  # history no later span reads
                mel, z, base = mel[..., drop:], z[:, drop * hop :], base + drop
        end = base + mel.shape[-1]
        if end > done:
            yield self._span(z, mel, base, done, end, spk)

    def _stream_noise(
        self, noise: torch.Tensor | None, first: int, frames: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Noise ``(1, frames * hop)`` of frames ``[first, first + frames)``: drawn (and
        scaled by :attr:`temperature`), or cut from the given ``noise``, taken as it is."""
        hop, model = self.cfg.audio.hop_length, self.loaded.student
        if noise is None:
            drawn = model.sample_noise((1, frames * hop), generator, self.loaded.device)
            return drawn * self.temperature
        piece = noise.reshape(1, -1)[:, first * hop : (first + frames) * hop]
        if piece.shape[-1] != frames * hop:
            raise UserError(
                f"noise has {noise.numel()} samples; the mel needs at least "
                f"{(first + frames) * hop}"
            )
        return piece.to(self.loaded.device, torch.float32)

    def _span(self, z, mel, base, f0, f1, speaker) -> np.ndarray:
        audio = self.loaded.student.synthesize_span(z, mel, f0 - base, f1 - base, speaker)
        return audio[0].float().cpu().numpy()

    def _run(
        self,
        mel: torch.Tensor | None,
        speaker: torch.Tensor | None,
        lengths: list[int],
        seed: int,
        progress: bool,
    ) -> torch.Tensor:
        """Audio ``(B, max T)`` of one batch in one pass (a student) or sampled (a teacher)."""
        device = self.loaded.device
        generator = torch.Generator(device=device).manual_seed(seed)
        if self.kind == "teacher":
            precision = "bfloat16" if self.dtype == torch.bfloat16 else None
            return generate(
                self.loaded.teacher,
                mel=mel,
                speaker=speaker,
                num_samples=max(lengths),
                generator=generator,
                method="cached",
                progress=progress,
                batch=len(lengths),
                precision=precision,
            )
        model = self.loaded.student
        if mel is None:
            raise UserError("a student synthesises from a mel; none was given")
        mel = mel.to(self.dtype)
        return model.synthesize_from_noise(self._noise(lengths, seed), mel, speaker)

    def _noise(self, lengths: list[int], seed: int) -> torch.Tensor:
        """A student's noise ``(B, max T)``: each clip's drawn from its own generator seeded
        ``seed``, zero beyond its end, so a clip's audio is the same alone or in a batch;
        scaled by :attr:`temperature`."""
        model, device = self.loaded.student, self.loaded.device
        z = torch.zeros(len(lengths), max(lengths), device=device)
        for i, n in enumerate(lengths):
            generator = torch.Generator(device=device).manual_seed(seed)
            z[i, :n] = model.sample_noise((1, n), generator, device)[0]
        return z * self.temperature


def mel_chunks(mel: torch.Tensor, frames: int) -> Iterator[torch.Tensor]:
    """``mel`` ``(n_mels, F)`` in consecutive pieces of ``frames`` (the last may be shorter),
    as :meth:`Synthesizer.stream` takes them."""
    return (mel[:, f : f + frames] for f in range(0, mel.shape[-1], frames))


def _named_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def check_chunk_seconds(kind: ModelKind, chunk_seconds: float | None) -> None:
    if chunk_seconds is None:
        return
    if kind == "teacher":
        raise UserError("--chunk-seconds is a student option; teachers sample step by step")
    if not chunk_seconds > 0:  # also refuses NaN
        raise UserError(f"--chunk-seconds must be positive, got {chunk_seconds:g}")


def _pad_batch(mels: list[torch.Tensor]) -> torch.Tensor:
    """(n_mels, F_i) normalised mels -> (B, n_mels, max F), zero-padded at the end: the zeros
    the conditioner's own padding puts beyond a clip, so padding changes no clip's audio."""
    frames = max(m.shape[-1] for m in mels)
    return torch.stack([torch.nn.functional.pad(m, (0, frames - m.shape[-1])) for m in mels])
