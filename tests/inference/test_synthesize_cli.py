"""``wavedistill synthesize`` on real (tiny, briefly trained) teacher and student checkpoints.

What it writes: copy-synthesis of a clip gives a 16-bit WAV of the clip's whole frames at the
model's rate; saved features (as ``preprocess`` writes them) give the same audio as the clip
they came from; several inputs are one batch and one file each; a seed reproduces a clip.
What it refuses: every bad input exits with status 2 and one line naming the file or option,
before any audio is generated.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tiny_config, write_clip

from wavedistill.cli import main
from wavedistill.config import load_config
from wavedistill.data.audio import load_audio
from wavedistill.inference.synthesizer import Synthesizer

SR, HOP, N_MELS = 16000, 64, 20  # TINY_CONFIG's audio settings
SHORTEST = 192  # whole frames with more samples than n_fft // 2 = 128


# -- tiny trained models (one optimiser step each), shared by the module --------------------


def _config(teacher: dict | None = None):
    """:func:`conftest.tiny_config` trained for one step, with ``teacher`` keys over it."""
    return tiny_config(train={"steps": 1}, teacher=teacher or {})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from wavedistill.data.preprocess import preprocess

    root = tmp_path_factory.mktemp("synthesis")
    for i in range(4):
        write_clip(root / "corpus" / f"clip{i}.wav", seconds=0.3, seed=i, frequency=150.0 + 80 * i)
    assert preprocess(_config(), root / "corpus", root / "data").exit_code == 0
    return root / "data"


def _train_teacher(dataset: Path, name: str, teacher: dict | None = None) -> Path:
    from wavedistill.training.runs import train_teacher

    torch.manual_seed(0)
    out = dataset.parent / name
    train_teacher(_config(teacher), dataset, out)
    return out / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def teacher(dataset) -> Path:
    return _train_teacher(dataset, "teacher")


@pytest.fixture(scope="module")
def student(dataset, teacher) -> Path:
    from wavedistill.training.runs import train_student

    out = dataset.parent / "student"
    train_student(_config(), teacher, dataset, out)
    return out / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def two_speaker_teacher(dataset) -> Path:
    return _train_teacher(dataset, "teacher-2spk", {"num_speakers": 2})


@pytest.fixture(scope="module")
def unconditional_teacher(dataset) -> Path:
    return _train_teacher(dataset, "teacher-uncond", {"use_mel": False})


@pytest.fixture(params=["teacher", "student"])
def checkpoint(request) -> Path:
    return request.getfixturevalue(request.param)


# -- helpers ---------------------------------------------------------------------------------


def synthesize(capsys, checkpoint: Path, *args) -> tuple[int, str, str]:
    """Run ``wavedistill synthesize --checkpoint CHECKPOINT ARGS``: (status, stdout, stderr)."""
    capsys.readouterr()
    code = main(["synthesize", "--checkpoint", str(checkpoint), *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def read_pcm(path: Path) -> np.ndarray:
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.format, info.subtype) == (SR, 1, "WAV", "PCM_16")
    return sf.read(path, dtype="int16")[0]


def clip(tmp_path: Path, samples: int, name: str = "clip.wav", **kwargs) -> Path:
    sr = kwargs.pop("sr", SR)
    return write_clip(tmp_path / name, seconds=samples / sr, sr=sr, **kwargs)


def saved_features(dataset: Path, index: int = 0) -> tuple[Path, dict]:
    """A dataset item's ``mel/<id>.npy`` (un-normalised log-mel) and its manifest entry."""
    entry = json.loads((dataset / "train.jsonl").read_text().splitlines()[index])
    return dataset / entry["mel"], entry


# -- what it writes --------------------------------------------------------------------------


def test_copy_synthesis_writes_16bit_wav_of_the_clips_whole_frames(capsys, tmp_path, checkpoint):
    source = clip(tmp_path, 1000)  # 15 frames of 64 and 40 samples left over
    code, out, _ = synthesize(capsys, checkpoint, "--input", source, "--output", tmp_path / "o.wav")
    assert code == 0 and "wrote" in out
    audio = read_pcm(tmp_path / "o.wav")
    assert len(audio) == 960
    assert np.abs(audio).max() > 0


def test_copy_synthesis_resamples_and_downmixes_the_clip_to_the_models_rate(
    capsys, tmp_path, student
):
    source = clip(tmp_path, 1543, sr=22050, channels=2)
    expected = len(load_audio(source, SR)) // HOP * HOP
    code, _, _ = synthesize(capsys, student, "--input", source, "--output", tmp_path / "o.wav")
    assert code == 0
    assert len(read_pcm(tmp_path / "o.wav")) == expected


def test_saved_features_synthesise_like_the_clip_they_came_from(capsys, tmp_path, dataset, student):
    feats, entry = saved_features(dataset)
    common = ("--seed", 7)
    assert (
        synthesize(capsys, student, "--input", feats, "--output", tmp_path / "a.wav", *common)[0]
        == 0
    )
    assert (
        synthesize(
            capsys, student, "--input", entry["source"], "--output", tmp_path / "b.wav", *common
        )[0]
        == 0
    )
    from_feats, from_clip = read_pcm(tmp_path / "a.wav"), read_pcm(tmp_path / "b.wav")
    assert len(from_feats) == entry["frames"] * HOP == len(from_clip)
    assert np.abs(from_feats.astype(int) - from_clip.astype(int)).max() <= 1  # 1 LSB: rounding


def test_saved_features_give_frames_times_hop_samples(capsys, tmp_path, dataset, teacher):
    feats, _ = saved_features(dataset)
    short = tmp_path / "feats.npy"
    np.save(short, np.load(feats)[:, :9])
    code, _, _ = synthesize(capsys, teacher, "--input", short, "--output", tmp_path / "o.wav")
    assert code == 0
    assert len(read_pcm(tmp_path / "o.wav")) == 9 * HOP


def test_several_inputs_are_one_batch_and_one_file_each(
    capsys, tmp_path, dataset, checkpoint, monkeypatch
):
    feats, _ = saved_features(dataset)
    short_feats = tmp_path / "feats.npy"
    np.save(short_feats, np.load(feats)[:, :5])
    inputs = [
        clip(tmp_path, 200, "a.wav", seed=1),
        clip(tmp_path, 300, "b.flac", seed=2),
        short_feats,
    ]  # 3, 4 and 5 frames: short, as the teacher samples step by step
    batches = []
    run = Synthesizer._run

    def recording_run(self, mel, *args, **kwargs):
        batches.append(mel.shape[0])
        return run(self, mel, *args, **kwargs)

    monkeypatch.setattr(Synthesizer, "_run", recording_run)
    code, out, _ = synthesize(capsys, checkpoint, "--input", *inputs, "--output", tmp_path / "out")
    assert code == 0
    assert batches == [3]  # all inputs generated together
    lengths = {p.name: len(read_pcm(p)) for p in sorted((tmp_path / "out").iterdir())}
    assert lengths == {"a.wav": 3 * HOP, "b.wav": 4 * HOP, "feats.wav": 5 * HOP}
    assert out.count("wrote") == 3


def test_inputs_with_the_same_name_get_distinct_files(capsys, tmp_path, student):
    first = clip(tmp_path / "x", 700)
    second = clip(tmp_path / "y", 700, seed=3)
    code, _, _ = synthesize(capsys, student, "--input", first, second, "--output", tmp_path / "o")
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["000_clip.wav", "001_clip.wav"]


def test_one_input_and_an_output_folder_names_the_file_after_the_input(capsys, tmp_path, student):
    source = clip(tmp_path, 700, "take3.wav")
    assert synthesize(capsys, student, "--input", source, "--output", tmp_path / "o")[0] == 0
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["take3.wav"]


def test_a_seed_reproduces_a_clip_and_another_seed_changes_it(capsys, tmp_path, checkpoint):
    source = clip(tmp_path, 640)
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        code, _, _ = synthesize(
            capsys,
            checkpoint,
            "--input",
            source,
            "--seed",
            seed,
            "--output",
            tmp_path / f"{name}.wav",
        )
        assert code == 0
    a, b, c = (read_pcm(tmp_path / f"{n}.wav") for n in "abc")
    np.testing.assert_array_equal(a, b)
    assert np.mean(a != c) > 0.5


def test_student_chunked_synthesis_matches_one_pass(capsys, tmp_path, student):
    source = clip(tmp_path, 960)  # 15 frames in chunks of 4 (0.016 s)
    assert synthesize(capsys, student, "--input", source, "--output", tmp_path / "one.wav")[0] == 0
    code, _, _ = synthesize(
        capsys,
        student,
        "--input",
        source,
        "--chunk-seconds",
        0.016,
        "--output",
        tmp_path / "chunked.wav",
    )
    assert code == 0
    one, chunked = read_pcm(tmp_path / "one.wav"), read_pcm(tmp_path / "chunked.wav")
    assert np.abs(one.astype(int) - chunked.astype(int)).max() <= 1


def test_a_multi_speaker_model_synthesises_the_chosen_speaker(
    capsys, tmp_path, two_speaker_teacher
):
    source = clip(tmp_path, 640)
    for speaker in (0, 1):
        code, _, _ = synthesize(
            capsys,
            two_speaker_teacher,
            "--input",
            source,
            "--speaker",
            speaker,
            "--output",
            tmp_path / f"s{speaker}.wav",
        )
        assert code == 0
    s0, s1 = read_pcm(tmp_path / "s0.wav"), read_pcm(tmp_path / "s1.wav")
    assert len(s0) == len(s1) == 640 and not np.array_equal(s0, s1)


def test_an_unconditional_teacher_synthesises_whole_frames_of_the_asked_length(
    capsys, tmp_path, unconditional_teacher
):
    code, _, _ = synthesize(
        capsys, unconditional_teacher, "--seconds", 0.05, "--output", tmp_path / "o.wav"
    )
    assert code == 0
    assert len(read_pcm(tmp_path / "o.wav")) == math.ceil(0.05 * SR / HOP) * HOP


def test_an_unconditional_teacher_draws_a_batch_of_different_clips(unconditional_teacher):
    from wavedistill.inference.synthesizer import Synthesizer

    synth = Synthesizer.from_checkpoint(unconditional_teacher)
    clips = synth.generate(seconds=0.01, batch=3, seed=4)
    assert len(clips) == 3 and all(len(c) == math.ceil(0.01 * SR / HOP) * HOP for c in clips)
    assert not np.array_equal(clips[0], clips[1])
    assert len(synth.generate(seconds=0.01, seed=4)) == 1


# -- what it refuses -------------------------------------------------------------------------


def expect_refusal(capsys, tmp_path, checkpoint, *args, says: str, output: str = "refused") -> None:
    """Exit status 2, one stderr line that contains ``says``, no traceback, no file written
    (``output`` is the ``--output`` under ``tmp_path``: a folder unless it names a file)."""
    out_dir = tmp_path / "refused"
    code, _, err = synthesize(capsys, checkpoint, *args, "--output", tmp_path / output)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("wavedistill synthesize: error: "), err
    assert says in lines[0]
    assert "Traceback" not in err
    assert not out_dir.exists()


def test_a_missing_input_file_is_refused(capsys, tmp_path, teacher):
    expect_refusal(
        capsys, tmp_path, teacher, "--input", tmp_path / "nope.wav", says="nope.wav: no such file"
    )


def test_one_missing_input_among_several_is_refused_before_generating(capsys, tmp_path, teacher):
    expect_refusal(
        capsys,
        tmp_path,
        teacher,
        "--input",
        clip(tmp_path, 640),
        tmp_path / "gone.npy",
        says="gone.npy: no such file",
    )


@pytest.mark.parametrize("shape", [(N_MELS + 1, 10), (N_MELS,), (N_MELS, 0), (2, N_MELS, 10)])
def test_features_of_the_wrong_shape_are_refused(capsys, tmp_path, teacher, shape):
    feats = tmp_path / "feats.npy"
    np.save(feats, np.zeros(shape, np.float32))
    expect_refusal(capsys, tmp_path, teacher, "--input", feats, says="feats.npy: features of shape")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features_are_refused(capsys, tmp_path, dataset, teacher, bad):
    mel = np.load(saved_features(dataset)[0])
    mel[3, 4] = bad
    feats = tmp_path / "feats.npy"
    np.save(feats, mel)
    expect_refusal(capsys, tmp_path, teacher, "--input", feats, says="feats.npy: features contain")


def test_features_below_the_log_floor_are_refused_naming_the_convention(
    capsys, tmp_path, dataset, teacher
):
    mel = np.load(saved_features(dataset)[0])
    feats = tmp_path / "feats.npy"
    np.save(feats, mel - 20.0)  # e.g. another toolkit's lower floor: values below log(1e-5)
    expect_refusal(capsys, tmp_path, teacher, "--input", feats, says="feats.npy: values down to")


def test_features_far_from_the_models_statistics_are_refused(capsys, tmp_path, dataset, teacher):
    mel = np.load(saved_features(dataset)[0])
    feats = tmp_path / "feats.npy"
    np.save(feats, mel + 40.0)  # far above anything these clips give
    expect_refusal(
        capsys,
        tmp_path,
        teacher,
        "--input",
        feats,
        says="standard deviations from the model's feature statistics",
    )
    np.save(feats, mel)  # the model's own features pass
    code, _, _ = synthesize(capsys, teacher, "--input", feats, "--output", tmp_path / "o.wav")
    assert code == 0


def test_a_corrupt_feature_file_is_refused(capsys, tmp_path, teacher):
    feats = tmp_path / "feats.npy"
    feats.write_bytes(b"\x93NUMPY garbage")
    expect_refusal(capsys, tmp_path, teacher, "--input", feats, says="feats.npy: not a readable")


def test_a_file_that_is_not_audio_is_refused(capsys, tmp_path, teacher):
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio\n")
    expect_refusal(capsys, tmp_path, teacher, "--input", notes, says="notes.txt")


def test_a_clip_too_short_for_one_feature_frame_is_refused(capsys, tmp_path, student):
    expect_refusal(
        capsys,
        tmp_path,
        student,
        "--input",
        clip(tmp_path, SHORTEST - 1),
        says="clip.wav: too short",
    )


def test_chunk_seconds_is_refused_for_a_teacher(capsys, tmp_path, teacher):
    expect_refusal(
        capsys,
        tmp_path,
        teacher,
        "--input",
        clip(tmp_path, 640),
        "--chunk-seconds",
        0.1,
        says="--chunk-seconds is a student option",
    )


@pytest.mark.parametrize("seconds", [0, -1, "nan"])
def test_chunk_seconds_must_be_positive(capsys, tmp_path, student, seconds):
    expect_refusal(
        capsys,
        tmp_path,
        student,
        "--input",
        clip(tmp_path, 640),
        "--chunk-seconds",
        seconds,
        says="--chunk-seconds must be positive",
    )


@pytest.mark.parametrize("speaker", [0, 3])
def test_speaker_is_refused_for_a_single_speaker_model(capsys, tmp_path, checkpoint, speaker):
    expect_refusal(
        capsys,
        tmp_path,
        checkpoint,
        "--input",
        clip(tmp_path, 640),
        "--speaker",
        speaker,
        says="has no speaker embedding",
    )


def test_a_multi_speaker_model_needs_a_speaker_in_range(capsys, tmp_path, two_speaker_teacher):
    source = clip(tmp_path, 640)
    expect_refusal(
        capsys, tmp_path, two_speaker_teacher, "--input", source, says="--speaker is required"
    )
    expect_refusal(
        capsys,
        tmp_path,
        two_speaker_teacher,
        "--input",
        source,
        "--speaker",
        2,
        says="--speaker 2 is out of range [0, 2)",
    )


def test_seconds_is_refused_for_a_conditional_model(capsys, tmp_path, checkpoint):
    expect_refusal(
        capsys,
        tmp_path,
        checkpoint,
        "--input",
        clip(tmp_path, 640),
        "--seconds",
        1,
        says="--seconds is only for unconditional models",
    )


def test_a_conditional_model_needs_an_input(capsys, tmp_path, checkpoint):
    expect_refusal(capsys, tmp_path, checkpoint, "--seconds", 1, says="--input is required")


def test_an_unconditional_teacher_refuses_inputs_and_needs_seconds(
    capsys, tmp_path, unconditional_teacher
):
    expect_refusal(
        capsys,
        tmp_path,
        unconditional_teacher,
        "--input",
        clip(tmp_path, 640),
        says="this teacher is unconditional",
    )
    expect_refusal(capsys, tmp_path, unconditional_teacher, says="--seconds N (> 0) is required")


def test_several_inputs_need_an_output_folder(capsys, tmp_path, student):
    expect_refusal(
        capsys,
        tmp_path,
        student,
        "--input",
        clip(tmp_path, 640, "a.wav"),
        clip(tmp_path, 640, "b.wav"),
        says="give a folder when synthesising 2 clips",
        output="refused/o.wav",
    )


def test_an_output_that_is_not_a_wav_is_refused(capsys, tmp_path, student):
    code, _, err = synthesize(
        capsys, student, "--input", clip(tmp_path, 640), "--output", tmp_path / "o.flac"
    )
    assert code == 2 and "o.flac: synthesis writes 16-bit WAV" in err
    assert not (tmp_path / "o.flac").exists()


def corrupt_checkpoints(tmp_path: Path, teacher: Path) -> dict[str, Path]:
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(4096))
    truncated = tmp_path / "truncated.pt"
    data = teacher.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, foreign)
    return {"random": random_bytes, "truncated": truncated, "foreign": foreign}


@pytest.mark.parametrize(
    "kind, says",
    [
        ("random", "not a readable checkpoint"),
        ("truncated", "not a readable checkpoint"),
        ("foreign", "not a wavedistill checkpoint"),
    ],
)
def test_a_corrupt_or_foreign_checkpoint_is_refused(capsys, tmp_path, teacher, kind, says):
    path = corrupt_checkpoints(tmp_path, teacher)[kind]
    expect_refusal(
        capsys, tmp_path, path, "--input", clip(tmp_path, 640), says=f"{path.name}: {says}"
    )


def test_a_missing_checkpoint_is_refused(capsys, tmp_path):
    expect_refusal(
        capsys,
        tmp_path,
        tmp_path / "none.pt",
        "--input",
        clip(tmp_path, 640),
        says="none.pt: no such checkpoint file",
    )


def test_the_resolved_config_in_a_checkpoint_drives_synthesis(teacher, dataset):
    """The rate and hop used above come from the checkpoint, not from defaults."""
    synth = Synthesizer.from_checkpoint(teacher)
    stored = load_config(dataset / "config.yaml")
    assert synth.cfg.audio == stored.audio
    assert (synth.cfg.audio.sample_rate, synth.cfg.audio.hop_length) == (SR, HOP)
