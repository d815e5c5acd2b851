"""``wavedistill evaluate``: the held-out NLL equals a direct computation from the dataset files,
student and teacher syntheses are scored and drawn, silent clips are reported as not applicable,
and mismatched inputs are refused with one line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from wavedistill.checkpoint import new_model, save_checkpoint
from wavedistill.cli import main
from wavedistill.config import config_to_dict
from wavedistill.datasets import read_jsonl
from wavedistill.errors import UserError
from wavedistill.evaluation import evaluate
from wavedistill.features import FeatureStats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_checkpoint(path, kind, cfg, dataset):
    torch.manual_seed(0 if kind == "teacher" else 1)
    model = new_model(kind, cfg)
    stats = FeatureStats.load(dataset / "stats.npz")
    return save_checkpoint(path, {"kind": kind, "config": config_to_dict(cfg),
                                  "stats": stats.to_dict(), "model": model.state_dict()})


@pytest.fixture
def teacher_ckpt(tmp_path, tiny_config, tiny_dataset):
    return write_checkpoint(tmp_path / "teacher.pt", "teacher", tiny_config, tiny_dataset)


@pytest.fixture
def student_ckpt(tmp_path, tiny_config, tiny_dataset):
    return write_checkpoint(tmp_path / "student.pt", "student", tiny_config, tiny_dataset)


def direct_nll_bits(ckpt_path, dataset):
    """Bits per sample of the valid split computed straight from the files (int16 PCM and
    un-normalised mel), independently of the evaluation module's loading."""
    from wavedistill.checkpoint import build_model, load_checkpoint

    model, cfg, stats = build_model(load_checkpoint(ckpt_path))
    nats, samples = 0.0, 0
    for entry in read_jsonl(dataset / "valid.jsonl"):
        pcm = np.load(dataset / entry["audio"]).astype(np.float64)
        audio = torch.from_numpy((pcm + 32768) / 32767.5 - 1).float()[None]
        mel = stats.normalize(torch.from_numpy(np.load(dataset / entry["mel"])).float())[None]
        with torch.no_grad():
            nats -= float(model.log_prob(audio, mel).double().sum())
        samples += audio.shape[-1]
    return nats / samples / math.log(2)


def test_teacher_report_gives_the_held_out_nll_and_figures(tmp_path, teacher_ckpt, tiny_dataset):
    out = tmp_path / "report"
    results = evaluate(teacher_ckpt, tiny_dataset, out, teacher_seconds=0.02)
    assert results["nll"]["bits_per_sample"] == pytest.approx(
        direct_nll_bits(teacher_ckpt, tiny_dataset), rel=1e-5)
    stored = json.loads((out / "metrics.json").read_text())
    assert stored["nll"]["bits_per_sample"] == results["nll"]["bits_per_sample"]
    assert "teacher" in stored["copy_synthesis"]
    assert f"{results['nll']['bits_per_sample']:.4f} bits/sample" in (out / "report.md").read_text()
    figures = list((out / "figures").glob("*.png"))
    assert figures and all(f.read_bytes()[:8] == PNG_MAGIC for f in figures)


def test_student_report_scores_copy_synthesis_teacher_samples_and_kl(
        tmp_path, tiny_config, student_ckpt, teacher_ckpt, tiny_dataset):
    out = tmp_path / "report"
    code = main(["--quiet", "evaluate", "--checkpoint", str(student_ckpt), "--data",
                 str(tiny_dataset), "--teacher", str(teacher_ckpt), "--out", str(out),
                 "--teacher-seconds", "0.02"])
    assert code == 0
    results = json.loads((out / "metrics.json").read_text())
    clips = [e["id"] for e in read_jsonl(tiny_dataset / "valid.jsonl")]
    assert results["clips"] == len(clips)
    for name in ("student", "teacher"):
        scored = results["copy_synthesis"][name]
        assert set(scored["clips"]) == set(clips)
        for metric in ("stft_distance", "log_spectral_distance", "loudness_difference"):
            assert isinstance(scored["mean"][metric], float) and math.isfinite(
                scored["mean"][metric]), (name, metric)
        for metric in ("mcd", "pesq_wb", "stoi"):
            assert metric in scored["mean"]
    assert math.isfinite(results["kl"]["nats_per_sample"])
    report = (out / "report.md").read_text()
    assert "| stft_distance |" in report and "KL(student" in report
    assert len(list((out / "figures").glob("*.png"))) == min(len(clips), 3)


def add_silent_clip(dataset, cfg):
    """Append an all-zero utterance to the valid split (preprocess would reject it)."""
    frames, hop = 40, cfg.audio.hop_length
    np.save(dataset / "audio" / "silent.npy", np.zeros(frames * hop, dtype=np.int16))
    mel = np.full((cfg.audio.n_mels, frames), math.log(cfg.audio.log_floor), dtype=np.float32)
    np.save(dataset / "mel" / "silent.npy", mel)
    entry = {"id": "silent", "audio": "audio/silent.npy", "mel": "mel/silent.npy", "speaker": 0,
             "samples": frames * hop, "frames": frames}
    with open(dataset / "valid.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")


def test_a_silent_clip_is_scored_with_reasons_not_errors(tmp_path, tiny_config, student_ckpt,
                                                           tiny_dataset):
    add_silent_clip(tiny_dataset, tiny_config)
    results = evaluate(student_ckpt, tiny_dataset, tmp_path / "report", max_clips=10)
    scored = results["copy_synthesis"]["student"]
    silent = scored["clips"]["silent"]
    for name in ("stft_distance", "log_spectral_distance", "loudness_difference"):
        assert math.isfinite(silent[name])
    for name in ("pesq_wb", "stoi"):  # "not applicable (silent reference)" or "not installed"
        assert silent[name].startswith("not applicable") or "not installed" in silent[name]
    others = [c for clip, c in scored["clips"].items() if clip != "silent"]
    if all(isinstance(c["pesq_wb"], float) for c in others):  # the extra is installed
        # the mean is over the clips that have a value
        assert scored["mean"]["pesq_wb"] == pytest.approx(np.mean([c["pesq_wb"] for c in others]))


def test_features_that_differ_from_the_checkpoint_are_refused(tmp_path, tiny_config,
                                                              tiny_dataset):
    other = config_to_dict(tiny_config)
    other["audio"]["n_mels"] = tiny_config.audio.n_mels + 4
    from wavedistill.config import config_from_dict

    ckpt = tmp_path / "other.pt"
    torch.manual_seed(0)
    model = new_model("teacher", config_from_dict(other))
    n = other["audio"]["n_mels"]
    save_checkpoint(ckpt, {"kind": "teacher", "config": other, "model": model.state_dict(),
                           "stats": {"mean": torch.zeros(n), "std": torch.ones(n)}})
    with pytest.raises(UserError, match=r"audio\.n_mels"):
        evaluate(ckpt, tiny_dataset, tmp_path / "report")


def test_teacher_option_is_refused_for_a_teacher_checkpoint(tmp_path, teacher_ckpt,
                                                            tiny_dataset):
    with pytest.raises(UserError, match="--teacher is for students"):
        evaluate(teacher_ckpt, tiny_dataset, tmp_path / "report", teacher=teacher_ckpt)
