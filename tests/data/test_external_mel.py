"""Log-mel features made elsewhere (``wavedistill.data.external_mel``; ``synthesize --mel-layout``,
``--stats``, ``--no-normalize``): layouts, other toolkits' statistics, already-normalised
features, and features in another log convention.

Features here are a few frames of the shipped student's own log-mel of an ARCTIC sentence,
rounded to multiples of 2**-10, and "another toolkit's" statistics have means on a grid of
1/16 and scales that are powers of two: normalising and un-normalising them is then exact in
float32, so equivalent inputs must give bit-identical model inputs and, with one seed,
bit-identical audio.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from wavedistill.cli import main
from wavedistill.data.audio import load_audio
from wavedistill.data.external_mel import MelConvention, arrange, model_input, read_stats
from wavedistill.data.features import FeatureStats, log_mel
from wavedistill.errors import UserError
from wavedistill.inference.decode import open_synthesizer

ROOT = Path(__file__).resolve().parents[2]
N_MELS = 80  # the shipped student: 80 mels of 16 kHz audio, hop 200, natural log, floor 1e-5


@pytest.fixture(scope="module")
def synth():
    return open_synthesizer(None)


@pytest.fixture(scope="module")
def whole(synth) -> np.ndarray:
    """The shipped student's log-mel (80, 240) of the first 3 s of an ARCTIC sentence, on a
    grid of 2**-10, float32."""
    a = synth.cfg.audio
    audio = load_audio(ROOT / "data/arctic/arctic_a0009.wav", a.sample_rate)[: 240 * a.hop_length]
    mel = log_mel(torch.from_numpy(audio), a).numpy()
    return (np.round(mel * 1024) / 1024).astype(np.float32)


@pytest.fixture
def raw(whole) -> np.ndarray:
    """12 frames (80, 12) of speech."""
    return whole[:, 100:112].copy()


@pytest.fixture(scope="module")
def their_stats() -> FeatureStats:
    """Another toolkit's statistics: means -6 .. -3 on a grid of 1/16, scales 0.5, 1, 2, 4."""
    mean = -6.0 + np.arange(N_MELS) * 3 / 80
    mean = np.round(mean * 16) / 16
    scale = 2.0 ** (np.arange(N_MELS) % 4 - 1)
    return FeatureStats(mean, scale)


def normalised_by(stats: FeatureStats, mel: np.ndarray) -> np.ndarray:
    """``(mel - mean) / scale`` as another toolkit writes it (exact on this grid)."""
    return ((mel - stats.mean.numpy()[:, None]) / stats.std.numpy()[:, None]).astype(np.float32)


def synthesize(capsys, *args) -> tuple[int, str, str]:
    """``wavedistill synthesize ARGS`` with the shipped student and seed 0: (status, out, err)."""
    capsys.readouterr()
    code = main(["--quiet", "synthesize", "--seed", "0", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def synthesized(capsys, tmp_path: Path, name: str, *args) -> bytes:
    """The WAV file's bytes of ``synthesize ARGS --output tmp_path/NAME.wav`` (exit 0)."""
    output = tmp_path / f"{name}.wav"
    code, _, err = synthesize(capsys, *args, "--output", output)
    assert code == 0, err
    return output.read_bytes()


def not_the_same(capsys, tmp_path: Path, name: str, reference: bytes, *args) -> bool:
    """``synthesize ARGS`` refuses the input or writes other audio than ``reference``."""
    output = tmp_path / f"{name}.wav"
    code, _, err = synthesize(capsys, *args, "--output", output)
    return code == 2 or (code == 0 and output.read_bytes() != reference)


def refused(capsys, *args, says: str) -> str:
    """Exit status 2 and one stderr line that contains ``says``; the line."""
    code, _, err = synthesize(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("wavedistill synthesize: error: "), err
    assert says in lines[0], lines[0]
    return lines[0]


def save(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


# -- layouts ---------------------------------------------------------------------------------


LAYOUTS = {
    "n_mels,frames": lambda m: m,
    "frames,n_mels": lambda m: np.ascontiguousarray(m.T),
    "1,n_mels,frames": lambda m: m[None],
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_gives_the_same_features_given_or_detected(raw, layout):
    array = LAYOUTS[layout](raw)
    for given in (layout, "auto"):
        arranged = arrange("feats.npy", array, N_MELS, given)
        assert arranged.shape == (N_MELS, 12)
        np.testing.assert_array_equal(arranged, raw)


@pytest.mark.parametrize(
    "shape",
    [(N_MELS + 1, 12), (12, N_MELS - 1), (2, N_MELS, 12), (1, 12, N_MELS), (N_MELS,), (N_MELS, 0)],
)
def test_auto_refuses_a_shape_that_fits_no_layout(shape):
    with pytest.raises(UserError, match=r"feats\.npy: features of shape .* fit no layout"):
        arrange("feats.npy", np.zeros(shape, np.float32), N_MELS)


def test_auto_refuses_as_many_frames_as_mel_channels_and_a_layout_settles_it(whole):
    square = whole[:, :N_MELS]
    with pytest.raises(UserError, match=r"feats\.npy: .* ambiguous .*give --mel-layout"):
        arrange("feats.npy", square, N_MELS)
    np.testing.assert_array_equal(arrange("feats.npy", square, N_MELS, "n_mels,frames"), square)
    np.testing.assert_array_equal(arrange("feats.npy", square.T, N_MELS, "frames,n_mels"), square)


@pytest.mark.parametrize(
    "layout, actual",
    [
        ("n_mels,frames", "frames,n_mels"),
        ("frames,n_mels", "n_mels,frames"),
        ("1,n_mels,frames", "n_mels,frames"),
        ("n_mels,frames", "1,n_mels,frames"),
    ],
)
def test_features_not_in_the_given_layout_are_refused_naming_the_file(raw, layout, actual):
    with pytest.raises(UserError, match=rf"feats\.npy: .* do not have --mel-layout {layout}"):
        arrange("feats.npy", LAYOUTS[actual](raw), N_MELS, layout)


def test_every_layout_synthesises_the_same_audio(capsys, tmp_path, raw):
    files = [save(tmp_path / f"{i}.npy", make(raw)) for i, make in enumerate(LAYOUTS.values())]
    out = tmp_path / "auto"
    code, _, err = synthesize(capsys, "--input", *files, "--output", out)  # one batch, auto
    assert code == 0, err
    assert (out / "1.wav").read_bytes() == (out / "0.wav").read_bytes()
    assert (out / "2.wav").read_bytes() == (out / "0.wav").read_bytes()
    # one input at a time (a batch of three may round differently from a batch of one)
    reference = synthesized(capsys, tmp_path, "auto", "--input", files[0])
    for (layout, _), path in zip(LAYOUTS.items(), files, strict=True):
        assert (
            synthesized(capsys, tmp_path, "given", "--input", path, "--mel-layout", layout)
            == reference
        )


def test_a_square_array_needs_a_layout_on_the_command_line(capsys, tmp_path, whole):
    square = save(tmp_path / "square.npy", np.ascontiguousarray(whole[:, :N_MELS].T))
    refused(
        capsys,
        "--input",
        square,
        "--output",
        tmp_path / "o.wav",
        says="square.npy: features of shape (80, 80) are ambiguous",
    )
    as_given = synthesized(
        capsys, tmp_path, "a", "--input", square, "--mel-layout", "frames,n_mels"
    )
    plain = save(tmp_path / "plain.npy", whole[:, :N_MELS])
    assert as_given == synthesized(
        capsys, tmp_path, "b", "--input", plain, "--mel-layout", "n_mels,frames"
    )
    refused(
        capsys,
        "--input",
        square,
        "--mel-layout",
        "1,n_mels,frames",
        "--output",
        tmp_path / "o.wav",
        says="square.npy: features of shape (80, 80) do not have --mel-layout 1,n_mels,frames",
    )


# -- statistics files ------------------------------------------------------------------------


def test_read_stats_reads_our_npz_and_parallelwavegans_npy(tmp_path, their_stats):
    their_stats.save(tmp_path / "stats.npz")
    np.save(
        tmp_path / "stats.npy",
        np.stack([their_stats.mean.numpy(), their_stats.std.numpy()]).astype(np.float64),
    )
    for name in ("stats.npz", "stats.npy"):
        stats = read_stats(tmp_path / name)
        assert torch.equal(stats.mean, their_stats.mean) and torch.equal(stats.std, their_stats.std)


BAD_STATS = {
    "three_rows.npy": (np.ones((3, N_MELS)), "must be mean and scale stacked as (2, n_mels)"),
    "one_row.npy": (np.ones(N_MELS), "must be mean and scale stacked as (2, n_mels)"),
    "zero_scale.npy": (np.stack([np.zeros(N_MELS), np.zeros(N_MELS)]), "a scale <= 0"),
    "negative_scale.npy": (np.stack([np.zeros(N_MELS), -np.ones(N_MELS)]), "a scale <= 0"),
    "nan.npy": (np.stack([np.full(N_MELS, np.nan), np.ones(N_MELS)]), "non-finite"),
    "pickled.npy": (np.array([{"mean": 0}], dtype=object), "not a readable .npy"),
    "text.npy": (b"mean,std\n", "not a readable .npy"),
    "missing.npy": (None, "no such statistics file"),
    "missing.npz": (None, "no such statistics file"),
    "no_std.npz": ({"mean": np.zeros(N_MELS)}, "not a statistics file with 'mean' and 'std'"),
}


@pytest.mark.parametrize("name", BAD_STATS)
def test_bad_statistics_are_refused_naming_the_file(tmp_path, name):
    content, says = BAD_STATS[name]
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, dict):
        np.savez(path, **content)
    elif content is not None:
        np.save(path, content, allow_pickle=True)
    with pytest.raises(UserError) as info:
        read_stats(path)
    assert str(info.value).startswith(str(path)) and says in str(info.value)


def test_bad_statistics_on_the_command_line_are_one_line(capsys, tmp_path, raw):
    feats = save(tmp_path / "feats.npy", raw)
    stats = save(tmp_path / "stats.npy", np.ones((3, N_MELS)))
    refused(
        capsys,
        "--input",
        feats,
        "--stats",
        stats,
        "--output",
        tmp_path / "o.wav",
        says="stats.npy: statistics must be mean and scale stacked as (2, n_mels)",
    )


def test_statistics_of_another_channel_count_are_refused(capsys, tmp_path, raw):
    feats = save(tmp_path / "feats.npy", raw)
    stats = save(tmp_path / "stats.npy", np.stack([np.zeros(64), np.ones(64)]))
    refused(
        capsys,
        "--input",
        feats,
        "--stats",
        stats,
        "--output",
        tmp_path / "o.wav",
        says="feats.npy: --stats has 64 channels, the model 80",
    )


# -- --stats and --no-normalize --------------------------------------------------------------


def test_stats_undo_another_toolkits_normalisation_exactly(synth, raw, their_stats):
    theirs = normalised_by(their_stats, raw)
    assert not np.array_equal(theirs, raw)
    undone = model_input(
        "feats.npy",
        theirs.T,
        synth.cfg.audio,
        synth.loaded.stats,
        MelConvention("frames,n_mels", their_stats),
    )
    assert torch.equal(undone, model_input("feats.npy", raw, synth.cfg.audio, synth.loaded.stats))


@pytest.mark.parametrize("stats_file", ["stats.npy", "stats.npz"])
def test_stats_on_the_command_line_give_the_audio_of_the_raw_features(
    capsys, tmp_path, raw, their_stats, stats_file
):
    """ParallelWaveGAN writes (frames, n_mels) features normalised by its stats.npy."""
    if stats_file == "stats.npy":
        stats = save(
            tmp_path / stats_file, np.stack([their_stats.mean.numpy(), their_stats.std.numpy()])
        )
    else:
        stats = tmp_path / stats_file
        their_stats.save(stats)
    theirs = save(tmp_path / "utt-feats.npy", normalised_by(their_stats, raw).T)
    plain = synthesized(capsys, tmp_path, "raw", "--input", save(tmp_path / "raw.npy", raw))
    assert synthesized(capsys, tmp_path, "undone", "--input", theirs, "--stats", stats) == plain
    # without --stats the same file is not the raw log-mel
    assert not_the_same(capsys, tmp_path, "as_is", plain, "--input", theirs)


def test_stats_apply_to_a_kaldi_feats_scp(capsys, tmp_path, raw, their_stats):
    """ESPnet writes (frames, n_mels) features in Kaldi ark files listed by feats.scp."""
    kaldiio = pytest.importorskip("kaldiio")
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path / 'feats.ark'},{tmp_path / 'feats.scp'}") as w:
        w("utt1", normalised_by(their_stats, raw).T)
    stats = save(
        tmp_path / "stats.npy", np.stack([their_stats.mean.numpy(), their_stats.std.numpy()])
    )
    plain = synthesized(capsys, tmp_path, "raw", "--input", save(tmp_path / "raw.npy", raw))
    code, _, err = synthesize(
        capsys, "--scp", tmp_path / "feats.scp", "--stats", stats, "--output", tmp_path / "out"
    )
    assert code == 0, err
    assert (tmp_path / "out" / "utt1.wav").read_bytes() == plain


def test_no_normalize_takes_features_normalised_with_the_models_statistics(
    capsys, tmp_path, synth, raw
):
    ours = synth.loaded.stats.normalize(torch.from_numpy(raw)).numpy()
    taken = model_input(
        "feats.npy", ours, synth.cfg.audio, synth.loaded.stats, MelConvention(normalized=True)
    )
    assert torch.equal(taken, model_input("feats.npy", raw, synth.cfg.audio, synth.loaded.stats))
    normalised = save(tmp_path / "normalised.npy", ours)
    plain = synthesized(capsys, tmp_path, "raw", "--input", save(tmp_path / "raw.npy", raw))
    assert synthesized(capsys, tmp_path, "taken", "--input", normalised, "--no-normalize") == plain
    assert not_the_same(capsys, tmp_path, "twice", plain, "--input", normalised)


def test_stats_and_no_normalize_exclude_each_other(capsys, tmp_path, raw, their_stats):
    stats = tmp_path / "stats.npz"
    their_stats.save(stats)
    refused(
        capsys,
        "--input",
        save(tmp_path / "feats.npy", raw),
        "--stats",
        stats,
        "--no-normalize",
        "--output",
        tmp_path / "o.wav",
        says="--stats and --no-normalize exclude each other",
    )
    assert not (tmp_path / "o.wav").exists()


# -- the log convention ----------------------------------------------------------------------


def test_natural_log_features_are_refused_by_a_log10_model_naming_its_convention(synth):
    """A model of the ParallelWaveGAN convention (log10, floor 1e-10) given HiFi-GAN or
    Tacotron 2 features (natural log, floor 1e-5) of speech after a pause: the shipped
    student's audio settings in base 10, with the statistics of its own features."""
    a = synth.cfg.audio
    log10_audio = dataclasses.replace(a, log_base="10", log_floor=1e-10)
    speech = load_audio(ROOT / "data/arctic/arctic_a0009.wav", a.sample_rate)[: 40 * a.hop_length]
    audio = torch.from_numpy(np.concatenate([np.zeros(12 * a.hop_length, np.float32), speech]))
    right = log_mel(audio, log10_audio).numpy()
    log10_stats = FeatureStats.compute([right])
    model_input("utt.npy", right, log10_audio, log10_stats)  # its own convention passes
    wrong = log_mel(audio, a).numpy()
    with pytest.raises(UserError) as info:
        model_input("utt.npy", wrong, log10_audio, log10_stats)
    assert str(info.value).startswith("utt.npy: values down to -11.51 lie below the log floor")
    assert (
        "the model expects un-normalised log10 mel magnitudes floored at "
        "audio.log_floor = 1e-10, of 16000 Hz audio"
    ) in str(info.value)


@pytest.mark.parametrize("kind", ["log10", "normalised"])
def test_features_in_another_convention_are_refused_by_the_shipped_model(
    capsys, tmp_path, synth, raw, kind
):
    mel = (
        raw / np.float32(math.log(10))
        if kind == "log10"
        else (synth.loaded.stats.normalize(torch.from_numpy(raw)).numpy())
    )
    refused(
        capsys,
        "--input",
        save(tmp_path / "feats.npy", mel),
        "--output",
        tmp_path / "o.wav",
        says="the model expects un-normalised log mel magnitudes",
    )


def test_espnet2_running_sums_are_read_as_mean_and_std(tmp_path):
    """ESPnet2's feats_stats.npz holds count, sum and sum_square; read_stats turns them into
    the mean and (population) standard deviation of the frames they summed."""
    rng = np.random.default_rng(0)
    frames = rng.normal(-4.0, 1.5, size=(500, N_MELS))
    path = tmp_path / "feats_stats.npz"
    np.savez(path, count=np.array(len(frames)), sum=frames.sum(0), sum_square=(frames**2).sum(0))
    stats = read_stats(path)
    np.testing.assert_allclose(stats.mean.numpy(), frames.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats.std.numpy(), frames.std(0), rtol=1e-4)


def test_hdf5_statistics_are_refused_with_the_conversion_to_make(tmp_path):
    path = tmp_path / "stats.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(UserError, match=r"stats.h5: HDF5 statistics are not read; .*np.save"):
        read_stats(path)
