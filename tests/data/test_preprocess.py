"""Preprocessing: a corpus of bad inputs is handled file by file (converted by policy or rejected
with one line naming the file and the reason), the dataset folder has the documented layout,
reruns add to it, and the exit codes say whether anything usable is left."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from conftest import TINY_CONFIG

from wavedistill.cli import main
from wavedistill.config import config_from_dict, load_config
from wavedistill.data.audio import dequantize_16bit
from wavedistill.data.features import FeatureStats, log_mel
from wavedistill.data.preprocess import preprocess
from wavedistill.errors import UserError

REPO = Path(__file__).resolve().parents[2]

ACCEPTED = {"good", "stereo", "rate8k", "rate48k", "deep24"}
REJECTED = {
    "empty.wav": "not a readable audio file",
    "truncated.wav": "not a readable audio file",
    "text.wav": "not a readable audio file",
    "nan.wav": "NaN or infinite",
    "inf.wav": "NaN or infinite",
    "silent.wav": "silent (peak -96.3 dBFS is below data.silence_threshold_db = -60)",
    "short.wav": "shorter than one segment (480 samples < data.segment_length = 1024)",
}


@pytest.fixture
def bad_corpus(tmp_path, make_wav) -> Path:
    """Every kind of input the policy converts or rejects, beside one good clip."""
    root = tmp_path / "bad"
    make_wav(root / "good.wav", 0.2)
    make_wav(root / "stereo.wav", 0.2, channels=2)
    make_wav(root / "rate8k.wav", 0.2, sr=8000)
    make_wav(root / "rate48k.wav", 0.2, sr=48000)
    make_wav(root / "deep24.wav", 0.2, subtype="PCM_24")
    make_wav(root / "short.wav", 0.03)
    (root / "empty.wav").write_bytes(b"")
    (root / "truncated.wav").write_bytes((root / "good.wav").read_bytes()[:30])
    (root / "text.wav").write_text("RIFF? no: a text file with a .wav name\n")
    for name, bad in (("nan.wav", np.nan), ("inf.wav", -np.inf)):
        sf.write(root / name, np.array([0.1, bad, 0.2] * 600, np.float32), 16000, subtype="FLOAT")
    sf.write(root / "silent.wav", np.zeros(3200, np.int16), 16000, subtype="PCM_16")
    return root


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_CONFIG))
    return path


def _rejected(out: Path) -> dict[str, str]:
    lines = (out / "rejected.txt").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines)


def test_bad_inputs_are_converted_or_rejected_one_line_each(
    bad_corpus, config_file, tmp_path, caplog
):
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        code = main(
            [
                "preprocess",
                "--data",
                str(bad_corpus),
                "--out",
                str(out),
                "--config",
                str(config_file),
            ]
        )
    assert code == 0
    rejected = _rejected(out)
    assert set(rejected) == {str(bad_corpus / name) for name in REJECTED}
    for name, reason in REJECTED.items():
        assert reason in rejected[str(bad_corpus / name)]
    ids = {
        json.loads(line)["id"]
        for split in ("train", "valid")
        for line in (out / f"{split}.jsonl").read_text().splitlines()
    }
    assert ids == ACCEPTED
    assert "7 file(s) rejected" in caplog.text
    assert "1 file(s): 2 channels mixed down to mono (mean)" in caplog.text
    for rate in (8000, 48000):
        assert f"1 file(s): resampled from {rate} Hz to 16000 Hz" in caplog.text
    for name in REJECTED:
        assert f"rejected {bad_corpus / name}: " in caplog.text


def test_strict_fails_when_any_file_is_rejected(bad_corpus, config_file, tmp_path):
    args = ["preprocess", "--data", str(bad_corpus), "--config", str(config_file), "--strict"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 1
    for name in REJECTED:
        (bad_corpus / name).unlink()
    assert main(args + ["--out", str(tmp_path / "b")]) == 0


def test_nothing_usable_exits_1(tmp_path, config_file):
    root = tmp_path / "all_bad"
    root.mkdir()
    (root / "a.wav").write_text("text")
    sf.write(root / "b.wav", np.zeros(4000, np.int16), 16000)
    out = tmp_path / "out"
    assert (
        main(["preprocess", "--data", str(root), "--out", str(out), "--config", str(config_file)])
        == 1
    )
    assert len(_rejected(out)) == 2
    assert not (out / "train.jsonl").exists()


def test_missing_data_folder_is_one_line_on_stderr_and_exit_2(tmp_path, capsys):
    code = main(["preprocess", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "nowhere: no such file or folder" in err
    assert "Traceback" not in err


def test_dataset_folder_has_the_documented_layout(tiny_dataset, tiny_config):
    assert {p.name for p in tiny_dataset.iterdir()} == {
        "config.yaml",
        "stats.npz",
        "speakers.json",
        "train.jsonl",
        "valid.jsonl",
        "audio",
        "mel",
        "rejected.txt",
    }
    assert load_config(tiny_dataset / "config.yaml") == tiny_config
    assert json.loads((tiny_dataset / "speakers.json").read_text()) == {"default": 0}
    hop = tiny_config.audio.hop_length
    train = [json.loads(x) for x in (tiny_dataset / "train.jsonl").read_text().splitlines()]
    valid = [json.loads(x) for x in (tiny_dataset / "valid.jsonl").read_text().splitlines()]
    assert len(train) == 5 and len(valid) == 1
    for entry in train + valid:
        assert {"id", "audio", "mel", "speaker", "samples", "frames"} <= set(entry)
        pcm = np.load(tiny_dataset / entry["audio"])
        mel = np.load(tiny_dataset / entry["mel"])
        assert pcm.dtype == np.int16 and pcm.shape == (entry["frames"] * hop,)
        assert mel.dtype == np.float32 and mel.shape == (20, entry["frames"])
        assert entry["samples"] == entry["frames"] * hop
        # the features are those of the stored 16-bit samples
        expected = log_mel(torch.from_numpy(dequantize_16bit(pcm)), tiny_config.audio)
        np.testing.assert_allclose(mel, expected.numpy(), atol=1e-6)
    assert not list(tiny_dataset.rglob(".tmp-*"))


def test_stats_come_from_the_training_split_only(tiny_dataset):
    train = [json.loads(x) for x in (tiny_dataset / "train.jsonl").read_text().splitlines()]
    frames = np.concatenate([np.load(tiny_dataset / e["mel"]) for e in train], axis=1)
    stats = FeatureStats.load(tiny_dataset / "stats.npz")
    np.testing.assert_allclose(stats.mean.numpy(), frames.mean(1), rtol=1e-5)
    np.testing.assert_allclose(stats.std.numpy(), frames.std(1), rtol=1e-5)


def test_a_rerun_adds_new_files_and_keeps_the_old(tiny_corpus, tiny_config, tmp_path, make_wav):
    out = tmp_path / "out"
    first = preprocess(tiny_config, tiny_corpus, out)
    assert (first.written, first.reused) == (6, 0)
    make_wav(tiny_corpus / "late.wav", 0.3, seed=9)
    other = make_wav(tmp_path / "other" / "solo.wav", 0.3, seed=10)
    second = preprocess(tiny_config, tiny_corpus, out)
    assert (second.written, second.reused) == (1, 6)
    third = preprocess(tiny_config, other.parent, out)  # another corpus into the same folder
    assert (third.written, third.train + third.valid) == (1, 8)


def test_adding_with_other_audio_settings_is_refused(tiny_dataset, tiny_corpus, tiny_config):
    tiny_config.audio.n_mels = 40
    with pytest.raises(UserError, match="audio.n_mels 20 vs 40"):
        preprocess(tiny_config, tiny_corpus, tiny_dataset)


def test_vctk_speakers_get_sorted_integer_ids(tmp_path, make_wav, tiny_config):
    for speaker in ("p229", "p225"):
        for n in range(2):
            make_wav(tmp_path / "VCTK" / "wav48" / speaker / f"{speaker}_00{n}.wav", 0.1, sr=48000)
    tiny_config.data.format = "vctk"
    preprocess(tiny_config, tmp_path / "VCTK", tmp_path / "out")
    assert json.loads((tmp_path / "out" / "speakers.json").read_text()) == {"p225": 0, "p229": 1}
    entries = [
        json.loads(x)
        for s in ("train", "valid")
        for x in (tmp_path / "out" / f"{s}.jsonl").read_text().splitlines()
    ]
    assert {e["id"]: e["speaker"] for e in entries}["p229_001"] == 1


def test_ljspeech_through_the_cli(tmp_path, make_wav, config_file):
    root = tmp_path / "LJSpeech-1.1"
    (root / "wavs").mkdir(parents=True)
    (root / "metadata.csv").write_text("LJ001-0001|a|a\nLJ001-0002|b|b\nLJ001-0003|c|c\n")
    for uid in ("LJ001-0001", "LJ001-0002"):
        make_wav(root / "wavs" / f"{uid}.wav", 0.2, sr=22050)
    out = tmp_path / "out"
    assert (
        main(
            [
                "preprocess",
                "--format",
                "ljspeech",
                "--data",
                str(root),
                "--out",
                str(out),
                "--config",
                str(config_file),
            ]
        )
        == 0
    )
    assert list(_rejected(out)) == [str(root / "wavs" / "LJ001-0003.wav")]


def test_bundled_clips_preprocess_with_the_default_config(tmp_path):
    corpus = tmp_path / "arctic"
    shutil.copytree(REPO / "data" / "arctic", corpus)
    report = preprocess(config_from_dict({}), corpus, tmp_path / "out", strict=True)
    assert report.exit_code == 0 and (report.train, report.valid) == (1, 1)


def test_worker_processes_write_the_same_dataset(tiny_corpus, tiny_config, tmp_path):
    serial = preprocess(tiny_config, tiny_corpus, tmp_path / "serial")
    tiny_config.data.num_workers = 1
    parallel = preprocess(tiny_config, tiny_corpus, tmp_path / "parallel")
    assert (parallel.written, parallel.train) == (serial.written, serial.train)
    for name in ("train.jsonl", "valid.jsonl"):
        assert (tmp_path / "serial" / name).read_text().replace("serial", "parallel") == (
            tmp_path / "parallel" / name
        ).read_text()
    for path in (tmp_path / "serial" / "mel").iterdir():
        assert np.array_equal(np.load(path), np.load(tmp_path / "parallel" / "mel" / path.name))


# -- external mels (fine-tuning on an acoustic model's predictions) ---------------------------


def _external_mels(
    corpus: Path, cfg, folder: Path, shift: dict[str, int] | None = None, transpose: bool = False
) -> dict[str, np.ndarray]:
    """A stand-in for an acoustic model's teacher-forced predictions: each clip's own log-mel
    plus an offset (so it differs from what preprocess computes), with ``shift[id]`` frames
    added (> 0, repeating the last) or removed (< 0). Written as ``folder/<id>.npy``."""
    from wavedistill.data.audio import read_audio

    folder.mkdir(parents=True, exist_ok=True)
    mels = {}
    for wav in sorted(corpus.glob("*.wav")):
        audio, _ = read_audio(wav, cfg.audio.sample_rate)
        usable = len(audio) - len(audio) % cfg.audio.hop_length
        mel = log_mel(torch.from_numpy(audio[:usable]), cfg.audio).numpy() + 0.25
        extra = (shift or {}).get(wav.stem, 0)
        if extra > 0:
            mel = np.concatenate([mel, np.repeat(mel[:, -1:], extra, axis=1)], axis=1)
        elif extra < 0:
            mel = mel[:, :extra]
        mels[wav.stem] = mel
        np.save(folder / f"{wav.stem}.npy", mel.T if transpose else mel)
    return mels


def test_external_mels_replace_the_computed_ones(tiny_corpus, tiny_config, tmp_path):
    mels = _external_mels(tiny_corpus, tiny_config, tmp_path / "pred")
    out = tmp_path / "data"
    report = preprocess(tiny_config, tiny_corpus, out, mel_dir=tmp_path / "pred")
    assert report.written == 6 and not report.rejected
    for split in ("train", "valid"):
        for entry in map(json.loads, (out / f"{split}.jsonl").read_text().splitlines()):
            stored = np.load(out / entry["mel"])
            np.testing.assert_array_equal(stored, mels[entry["id"]].astype(np.float32))
            assert len(np.load(out / entry["audio"])) == stored.shape[1] * 64
            assert entry["mel_source"].endswith(f"{entry['id']}.npy")


def test_a_difference_of_up_to_two_frames_is_trimmed_and_said(tiny_corpus, tiny_config, tmp_path):
    shift = {"clip0": 2, "clip1": -1, "clip2": -2}
    mels = _external_mels(tiny_corpus, tiny_config, tmp_path / "pred", shift, transpose=True)
    out = tmp_path / "data"
    report = preprocess(
        tiny_config, tiny_corpus, out, mel_dir=tmp_path / "pred", mel_layout="frames,n_mels"
    )
    assert not report.rejected
    said = {k: v for k, v in report.conversions.items() if "trimmed" in k}
    assert said == {
        "external mel and audio differ by 1-2 frames: mel trimmed": 1,
        "external mel and audio differ by 1-2 frames: audio trimmed": 2,
    }
    entries = {
        e["id"]: e
        for s in ("train", "valid")
        for e in map(json.loads, (out / f"{s}.jsonl").read_text().splitlines())
    }
    for uid, extra in shift.items():
        frames = mels[uid].shape[1] - max(extra, 0)  # the shorter side decides
        assert entries[uid]["frames"] == frames
        assert np.load(out / entries[uid]["mel"]).shape == (20, frames)
        assert len(np.load(out / entries[uid]["audio"])) == frames * 64


def test_a_larger_frame_difference_or_a_missing_mel_is_refused_naming_the_file(
    tiny_corpus, tiny_config, tmp_path
):
    _external_mels(tiny_corpus, tiny_config, tmp_path / "pred", {"clip3": 3})
    (tmp_path / "pred" / "clip4.npy").unlink()
    report = preprocess(tiny_config, tiny_corpus, tmp_path / "data", mel_dir=tmp_path / "pred")
    rejected = sorted(report.rejected)
    assert len(rejected) == 2
    assert "clip3.npy:" in rejected[0] and "at most 2 may differ" in rejected[0]
    assert "clip4.npy: no external mel for utterance clip4" in rejected[1]
    assert report.train + report.valid == 4


def test_external_mels_in_another_convention_are_refused(tiny_corpus, tiny_config, tmp_path):
    mels = _external_mels(tiny_corpus, tiny_config, tmp_path / "pred")
    np.save(tmp_path / "pred" / "clip0.npy", mels["clip0"] - 30.0)  # below log(1e-5)
    report = preprocess(tiny_config, tiny_corpus, tmp_path / "data", mel_dir=tmp_path / "pred")
    assert len(report.rejected) == 1 and "clip0.npy: values down to" in report.rejected[0]


def test_fine_tuning_on_external_mels_through_the_cli(tiny_corpus, tmp_path, config_file, capsys):
    """preprocess --mel-dir, then train-teacher --init-from a trained teacher: the run starts
    from its weights and trains on the external mels."""
    from wavedistill.store.checkpoint import load_checkpoint

    cfg = load_config(config_file)
    _external_mels(tiny_corpus, cfg, tmp_path / "pred")
    assert (
        main(
            [
                "preprocess",
                "--data",
                str(tiny_corpus),
                "--out",
                str(tmp_path / "plain"),
                "--config",
                str(config_file),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "preprocess",
                "--data",
                str(tiny_corpus),
                "--out",
                str(tmp_path / "ft"),
                "--config",
                str(config_file),
                "--mel-dir",
                str(tmp_path / "pred"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train-teacher",
                "--data",
                str(tmp_path / "plain"),
                "--out",
                str(tmp_path / "base"),
                "--config",
                str(config_file),
            ]
        )
        == 0
    )
    base = tmp_path / "base" / "checkpoints" / "best.pt"
    assert (
        main(
            [
                "train-teacher",
                "--data",
                str(tmp_path / "ft"),
                "--out",
                str(tmp_path / "tuned"),
                "--config",
                str(config_file),
                "--init-from",
                str(base),
            ]
        )
        == 0
    )
    tuned = load_checkpoint(tmp_path / "tuned" / "checkpoints" / "best.pt")
    assert tuned["step"] == 2
    # the fine-tuned run's statistics are those of the external mels, not the recomputed ones
    ft_stats = FeatureStats.load(tmp_path / "ft" / "stats.npz")
    torch.testing.assert_close(tuned["stats"]["mean"], ft_stats.mean)
    plain_stats = FeatureStats.load(tmp_path / "plain" / "stats.npz")
    assert not torch.allclose(ft_stats.mean, plain_stats.mean)


def test_mel_dir_that_does_not_exist_is_one_line_and_exit_2(tiny_corpus, tmp_path, capsys):
    code = main(
        [
            "preprocess",
            "--data",
            str(tiny_corpus),
            "--out",
            str(tmp_path / "o"),
            "--mel-dir",
            str(tmp_path / "nope"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--mel-dir" in err[0] and "nope" in err[0]
