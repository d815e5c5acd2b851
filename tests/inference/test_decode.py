"""``wavedistill synthesize --input-dir`` / ``--scp``: whole corpora with the shipped student.

Every readable input of a folder (.wav, .flac, saved log-mel .npy, in subfolders) or of a
Kaldi ``feats.scp`` is written under its own name; an unreadable one is reported, skipped and
turns the exit status to 1. Inputs go in length-sorted batches, and a clip's audio does not
depend on what it is batched with. Contradictory or empty requests exit with status 2 and one
line, before anything is written.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from conftest import write_clip

from wavedistill.cli import main
from wavedistill.inference.decode import decode_corpus
from wavedistill.inference.synthesizer import Synthesizer

SR, HOP = 16000, 200  # the shipped student's audio settings


@pytest.fixture(scope="module")
def synth() -> Synthesizer:
    return Synthesizer.from_pretrained("alice-student")


def clip(path, frames: int, seed: int = 0, **kwargs):
    """A clip of ``frames`` whole frames of the shipped models (hop 200 at 16 kHz)."""
    return write_clip(
        path, seconds=frames * HOP / SR, seed=seed, frequency=150.0 + 40.0 * seed, **kwargs
    )


def saved_features(synth: Synthesizer, wav, path) -> None:
    """The un-normalised log-mel ``(n_mels, F)`` of ``wav`` in a ``.npy`` file, as a feature
    front end would save it."""
    np.save(path, synth.loaded.stats.denormalize(synth.features(wav)).numpy())


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--quiet", "synthesize", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def pcm(path) -> np.ndarray:
    audio, sr = sf.read(path, dtype="int16")
    assert sr == SR
    return audio


def wavs(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*.wav")}


@pytest.fixture
def spy(monkeypatch) -> list[tuple[list[int], list[np.ndarray]]]:
    """Every call of ``Synthesizer.generate``: the frames of each mel, and the clips out."""
    calls = []
    generate = Synthesizer.generate

    def recording(self, mels=None, *args, **kwargs):
        clips = generate(self, mels, *args, **kwargs)
        calls.append(([m.shape[-1] for m in mels], clips))
        return clips

    monkeypatch.setattr(Synthesizer, "generate", recording)
    return calls


# -- folders -----------------------------------------------------------------------------------


def test_a_folder_is_decoded_file_by_file_and_a_corrupt_input_skipped(synth, tmp_path, capsys):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    clip(corpus / "a.wav", 16, seed=1)
    clip(corpus / "sub" / "b.flac", 24, seed=2, subtype=None)
    source = clip(tmp_path / "source.wav", 20, seed=3)
    (corpus / "sub" / "deeper").mkdir(parents=True)
    saved_features(synth, source, corpus / "sub" / "deeper" / "c.npy")
    (corpus / "bad.wav").write_bytes(b"RIFF\x00\x00not a wave file")
    (corpus / "notes.txt").write_text("not an input")

    code, stdout, stderr = run(capsys, "--input-dir", corpus, "--output", out, "--batch-size", 2)
    assert code == 1
    skipped = [line for line in stderr.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and skipped[0].startswith("skipped bad:") and "bad.wav" in skipped[0]
    summary = stdout.strip().splitlines()[-1]
    assert "wrote 3 file(s)" in summary and "skipped 1" in summary
    assert "real-time factor" in summary
    assert wavs(out) == {"a.wav", "sub/b.wav", "sub/deeper/c.wav"}
    assert [len(pcm(out / n)) for n in ("a.wav", "sub/b.wav", "sub/deeper/c.wav")] == [
        16 * HOP,
        24 * HOP,
        20 * HOP,
    ]
    # saved features give the audio of the clip they were computed from
    code, _, _ = run(capsys, "--input", source, "--output", tmp_path / "source-out.wav")
    assert code == 0
    difference = pcm(out / "sub/deeper/c.wav").astype(int) - pcm(tmp_path / "source-out.wav")
    assert np.abs(difference).max() <= 1


def test_batches_are_length_sorted(tmp_path, capsys, spy):
    frames = [5, 9, 7, 12, 6, 10, 8]
    for i, n in enumerate(frames):
        clip(tmp_path / "corpus" / f"u{i}.wav", n, seed=i)
    code, _, _ = run(
        capsys, "--input-dir", tmp_path / "corpus", "--output", tmp_path / "out", "--batch-size", 3
    )
    assert code == 0 and len(wavs(tmp_path / "out")) == 7
    assert [len(lengths) for lengths, _ in spy] == [3, 3, 1]
    flat = [n for lengths, _ in spy for n in lengths]
    assert flat == sorted(frames, reverse=True)
    for lengths, clips in spy:
        assert [len(c) for c in clips] == [n * HOP for n in lengths]  # padding trimmed


def test_a_clip_sounds_the_same_alone_or_batched(synth, tmp_path, spy):
    for i, n in enumerate([6, 11, 8, 14, 9]):
        clip(tmp_path / "corpus" / f"u{i}.wav", n, seed=i)
    runs = {}
    for size in (1, 4):
        out = tmp_path / f"out{size}"
        spy.clear()
        report = decode_corpus(
            synth, out, input_dir=tmp_path / "corpus", batch_size=size, progress=False
        )
        assert len(report.written) == 5 and not report.skipped
        assert max(len(lengths) for lengths, _ in spy) == size
        # the same length-sorted order in both runs: clip i of one is clip i of the other
        runs[size] = (
            [n for lengths, _ in spy for n in lengths],
            [c for _, clips in spy for c in clips],
            out,
        )
    (order1, alone, out1), (order4, batched, out4) = runs[1], runs[4]
    assert order1 == order4
    worst = max(float(np.abs(a - b).max()) for a, b in zip(alone, batched, strict=True))
    assert worst <= 1e-6, worst  # summation order only (measured: up to 2e-7)
    for name in wavs(out1):
        assert np.abs(pcm(out1 / name).astype(int) - pcm(out4 / name)).max() <= 1


# -- Kaldi script files ------------------------------------------------------------------------


def test_a_kaldi_scp_is_decoded_and_a_missing_entry_skipped(synth, tmp_path, capsys):
    kaldiio = pytest.importorskip("kaldiio")
    sources = {
        f"utt{i}": clip(tmp_path / "wav" / f"utt{i}.wav", n, seed=i)
        for i, n in enumerate([7, 12, 9])
    }
    ark, scp = tmp_path / "feats.ark", tmp_path / "feats.scp"
    with kaldiio.WriteHelper(f"ark,scp:{ark},{scp}") as writer:
        for utt, wav in sources.items():
            mel = synth.loaded.stats.denormalize(synth.features(wav)).numpy()
            writer(utt, np.ascontiguousarray(mel.T))  # Kaldi's (frames, n_mels)
    with scp.open("a") as f:
        f.write(f"utt_lost {tmp_path / 'gone.ark'}:15\n")

    out = tmp_path / "out"
    code, stdout, stderr = run(capsys, "--scp", scp, "--output", out, "--batch-size", 2)
    assert code == 1
    skipped = [line for line in stderr.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and skipped[0].startswith("skipped utt_lost:")
    assert "real-time factor" in stdout and "skipped 1" in stdout
    assert wavs(out) == {"utt0.wav", "utt1.wav", "utt2.wav"}
    for utt, wav in sources.items():
        assert run(capsys, "--input", wav, "--output", tmp_path / "ref.wav")[0] == 0
        assert np.abs(pcm(out / f"{utt}.wav").astype(int) - pcm(tmp_path / "ref.wav")).max() <= 1


def test_an_espnet_scp_of_npy_files_is_decoded(synth, tmp_path, capsys):
    """ESPnet2's inference writes a feats.scp whose entries are .npy files, (frames, n_mels)."""
    pytest.importorskip("kaldiio")
    (tmp_path / "norm").mkdir()
    lines = []
    for i, n in enumerate([6, 9]):
        wav = clip(tmp_path / "wav" / f"u{i}.wav", n, seed=i)
        mel = synth.loaded.stats.denormalize(synth.features(wav)).numpy()
        np.save(tmp_path / "norm" / f"u{i}.npy", np.ascontiguousarray(mel.T))
        lines.append(f"u{i} {tmp_path / 'norm' / f'u{i}.npy'}\n")
    scp = tmp_path / "feats.scp"
    scp.write_text("".join(lines))
    code, stdout, stderr = run(capsys, "--scp", scp, "--output", tmp_path / "out")
    assert code == 0, stderr
    assert wavs(tmp_path / "out") == {"u0.wav", "u1.wav"}
    assert pcm(tmp_path / "out" / "u1.wav").shape == (9 * HOP,)


@pytest.mark.parametrize(
    "content",
    [b"utt_without_a_path\n", b"u1 \x00\x00\x00B\x00\x00\xa1\xff FM \x04\x07\n"],
    ids=["no-path", "binary"],
)  # binary: an ark given for its scp
def test_a_malformed_scp_is_a_one_line_error(content, tmp_path, capsys):
    scp = tmp_path / "feats.scp"
    scp.write_bytes(content)
    code, _, stderr = run(capsys, "--scp", scp, "--output", tmp_path / "out")
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "feats.scp" in lines[0], stderr
    assert not (tmp_path / "out").exists()


def test_an_scp_of_only_unreadable_entries_is_an_error(tmp_path, capsys):
    scp = tmp_path / "feats.scp"
    scp.write_text(f"utt_lost {tmp_path / 'gone.ark'}:15\n")
    code, _, stderr = run(capsys, "--scp", scp, "--output", tmp_path / "out")
    assert code == 2 and "none of the 1 input(s) could be read" in stderr
    assert not (tmp_path / "out").exists()


# -- refusals ----------------------------------------------------------------------------------


REFUSALS = {  # name: (arguments, a fragment of the one line)
    "input-and-input-dir": (
        ["--input", "{corpus}/a.wav", "--input-dir", "{corpus}", "--output", "{out}"],
        "one of --input",
    ),
    "batch-size-negative": (
        ["--input-dir", "{corpus}", "--batch-size", "-1", "--output", "{out}"],
        "--batch-size",
    ),
    "wav-output-for-a-folder": (["--input-dir", "{corpus}", "--output", "{out}/x.wav"], "x.wav"),
    "output-is-a-file": (["--input-dir", "{corpus}", "--output", "{corpus}/plain"], "plain"),
    "empty-folder": (["--input-dir", "{empty}", "--output", "{out}"], "empty: no .wav"),
    "missing-folder": (
        ["--input-dir", "{tmp}/nowhere", "--output", "{out}"],
        "nowhere: no such folder",
    ),
    "seconds-with-input-dir": (
        ["--input-dir", "{corpus}", "--seconds", "1", "--output", "{out}"],
        "--seconds",
    ),
    "missing-scp": (["--scp", "{tmp}/nothing.scp", "--output", "{out}"], "nothing.scp"),
    "two-inputs-one-name": (
        ["--input-dir", "{twins}", "--output", "{out}"],
        "would both be written",
    ),
}


@pytest.mark.parametrize("case", [*REFUSALS, "batch-size-zero"])
def test_contradictory_requests_are_one_line_errors(case, synth, tmp_path, capsys):
    corpus, empty, twins = tmp_path / "corpus", tmp_path / "empty", tmp_path / "twins"
    clip(corpus / "a.wav", 6)
    (corpus / "plain").write_text("a file, not a folder")
    empty.mkdir()
    saved_features(synth, clip(twins / "a.wav", 6), twins / "a.npy")
    args, fragment = REFUSALS.get(case) or (
        ["--input-dir", "{corpus}", "--batch-size", "0", "--output", "{out}"],
        "--batch-size",
    )
    paths = {
        "corpus": corpus,
        "empty": empty,
        "twins": twins,
        "tmp": tmp_path,
        "out": tmp_path / "out",
    }
    code, stdout, stderr = run(capsys, *(a.format(**paths) for a in args))
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and fragment in lines[0], stderr
    assert "Traceback" not in stderr and stdout == ""
    assert not (tmp_path / "out").exists()
