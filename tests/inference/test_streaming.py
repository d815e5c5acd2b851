"""Streaming synthesis: mel frames in as they arrive, audio out as soon as it is determined,
the same audio as one-shot synthesis."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from wavedistill.cli import main
from wavedistill.errors import UserError
from wavedistill.inference.synthesizer import Synthesizer

CLIP_FRAMES = 60


@pytest.fixture(scope="module")
def synth() -> Synthesizer:
    return Synthesizer.from_pretrained("alice-student")


@pytest.fixture(scope="module")
def mel(synth) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(synth.cfg.audio.n_mels, CLIP_FRAMES, generator=g)


def pieces_of(mel: torch.Tensor, sizes: list[int]):
    """``mel`` cut into chunks of the given sizes, cycled."""
    i = k = 0
    while i < mel.shape[-1]:
        yield mel[:, i : i + sizes[k % len(sizes)]]
        i += sizes[k % len(sizes)]
        k += 1


@pytest.mark.parametrize("sizes", [[1], [4], [3, 1, 17], [CLIP_FRAMES]])
def test_streamed_audio_equals_one_shot_synthesis_with_the_same_seed(synth, mel, sizes):
    whole = synth.generate([mel], seed=7)[0]
    streamed = np.concatenate(list(synth.stream(pieces_of(mel, sizes), seed=7)))
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-6, rtol=0)


def test_generate_in_chunks_streams_each_clip_to_the_one_shot_audio(synth, mel):
    """``generate(chunk_seconds=...)`` goes through :meth:`stream`; a batch of clips of
    different lengths gives each the audio one-shot synthesis gives it."""
    mels = [mel, mel[:, :23]]
    seconds = 7 * synth.cfg.audio.hop_length / synth.cfg.audio.sample_rate  # 7 frames
    whole = synth.generate(mels, seed=3)
    chunked = synth.generate(mels, seed=3, chunk_seconds=seconds)
    for a, b in zip(chunked, whole, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_given_noise_is_used_as_it_is(synth, mel):
    hop = synth.cfg.audio.hop_length
    z = synth.loaded.model.sample_noise((1, CLIP_FRAMES * hop), torch.Generator().manual_seed(1))
    whole = synth.loaded.model.synthesize_from_noise(z, mel[None])[0].numpy()
    streamed = np.concatenate(list(synth.stream(pieces_of(mel, [5]), noise=z[0])))
    np.testing.assert_allclose(streamed, whole, atol=1e-6, rtol=0)


def test_audio_comes_out_as_soon_as_it_is_determined(synth, mel):
    """After ``k`` frames have arrived, exactly the audio of the first ``k - lookahead`` frames
    has come out: the latency is the conditioner's look-ahead, in frames."""
    hop, lookahead = synth.cfg.audio.hop_length, synth.stream_latency_frames
    assert lookahead == synth.cfg.student.conditioning_context
    arrived, out = [0], []

    def frames():
        for f in range(CLIP_FRAMES):
            arrived[0] = f + 1
            yield mel[:, f : f + 1]

    for piece in synth.stream(frames(), seed=0):
        out.append(len(piece))
        if arrived[0] < CLIP_FRAMES:  # the last piece flushes the look-ahead at the end
            assert sum(out) == (arrived[0] - lookahead) * hop
    assert sum(out) == CLIP_FRAMES * hop


def test_the_buffers_keep_only_the_receptive_field(synth, mel, monkeypatch):
    """A long stream never hands a span more than its context: the mel the student sees per
    call stays bounded whatever the length."""
    seen = []
    span = synth.loaded.model.synthesize_span

    def recording(z, m, f0, f1, speaker=None):
        seen.append(m.shape[-1])
        return span(z, m, f0, f1, speaker)

    monkeypatch.setattr(synth.loaded.model, "synthesize_span", recording)
    long = mel.repeat(1, 10)
    list(synth.stream(pieces_of(long, [2]), seed=0))
    bound = synth.loaded.model.context_frames + 2 * synth.stream_latency_frames + 2 + 1
    assert max(seen) <= bound, (max(seen), bound)


def test_bad_chunks_and_teachers_are_refused(synth):
    with pytest.raises(UserError, match="stream chunks must be"):
        list(synth.stream([torch.zeros(3, 4)]))
    teacher = Synthesizer.from_pretrained("alice-teacher")
    with pytest.raises(UserError, match="streaming is for students"):
        list(teacher.stream([torch.zeros(teacher.cfg.audio.n_mels, 2)]))


def test_chunked_files_equal_one_shot_files(tmp_path, make_wav, capsys):
    """``synthesize --chunk-seconds`` streams into the file; the samples equal those of a
    one-shot run with the same seed (to one step of the 16-bit grid)."""
    clip = make_wav(tmp_path / "clip.wav", 1.2)
    assert main(["synthesize", "--input", str(clip), "--output", str(tmp_path / "a.wav")]) == 0
    assert (
        main(
            [
                "synthesize",
                "--input",
                str(clip),
                "--output",
                str(tmp_path / "b.wav"),
                "--chunk-seconds",
                "0.3",
            ]
        )
        == 0
    )
    a, _ = sf.read(tmp_path / "a.wav", dtype="int16")
    b, _ = sf.read(tmp_path / "b.wav", dtype="int16")
    assert a.shape == b.shape
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
