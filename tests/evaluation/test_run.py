"""``wavedistill evaluate``: the held-out NLL equals a direct computation from the dataset files,
student and teacher syntheses are scored and drawn, silent clips are reported as not applicable,
and mismatched inputs are refused with one line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import rebuilt
from conftest import tiny_config as make_tiny_config  # the fixture tiny_config is used too

from wavedistill.cli import main
from wavedistill.config import config_to_dict
from wavedistill.data.corpora import read_jsonl
from wavedistill.data.features import FeatureStats
from wavedistill.errors import UserError
from wavedistill.evaluation.run import evaluate
from wavedistill.store.checkpoint import save_checkpoint
from wavedistill.store.loading import new_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_checkpoint(path, kind, cfg, dataset):
    torch.manual_seed(0 if kind == "teacher" else 1)
    model = new_model(kind, cfg)
    stats = FeatureStats.load(dataset / "stats.npz")
    return save_checkpoint(
        path,
        {
            "kind": kind,
            "config": config_to_dict(cfg),
            "stats": stats.to_dict(),
            "model": model.state_dict(),
        },
    )


@pytest.fixture
def teacher_ckpt(tmp_path, tiny_config, tiny_dataset):
    return write_checkpoint(tmp_path / "teacher.pt", "teacher", tiny_config, tiny_dataset)


@pytest.fixture
def student_ckpt(tmp_path, tiny_config, tiny_dataset):
    return write_checkpoint(tmp_path / "student.pt", "student", tiny_config, tiny_dataset)


def direct_nll_bits(ckpt_path, dataset):
    """Bits per sample of the valid split computed straight from the files (int16 PCM and
    un-normalised mel), independently of the evaluation module's loading."""
    from wavedistill.store.checkpoint import load_checkpoint

    model, cfg, stats = rebuilt(load_checkpoint(ckpt_path))
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
        direct_nll_bits(teacher_ckpt, tiny_dataset), rel=1e-5
    )
    stored = json.loads((out / "metrics.json").read_text())
    assert stored["nll"]["bits_per_sample"] == results["nll"]["bits_per_sample"]
    assert "teacher" in stored["copy_synthesis"]
    assert f"{results['nll']['bits_per_sample']:.4f} bits/sample" in (out / "report.md").read_text()
    figures = list((out / "figures").glob("*.png"))
    assert figures and all(f.read_bytes()[:8] == PNG_MAGIC for f in figures)


def test_student_report_scores_copy_synthesis_teacher_samples_and_kl(
    tmp_path, tiny_config, student_ckpt, teacher_ckpt, tiny_dataset
):
    out = tmp_path / "report"
    code = main(
        [
            "--quiet",
            "evaluate",
            "--checkpoint",
            str(student_ckpt),
            "--data",
            str(tiny_dataset),
            "--teacher",
            str(teacher_ckpt),
            "--out",
            str(out),
            "--teacher-seconds",
            "0.02",
        ]
    )
    assert code == 0
    results = json.loads((out / "metrics.json").read_text())
    clips = [e["id"] for e in read_jsonl(tiny_dataset / "valid.jsonl")]
    assert results["clips"] == len(clips)
    for name in ("student", "teacher"):
        scored = results["copy_synthesis"][name]
        assert set(scored["clips"]) == set(clips)
        for metric in ("stft_distance", "log_spectral_distance", "loudness_difference"):
            assert isinstance(scored["mean"][metric], float) and math.isfinite(
                scored["mean"][metric]
            ), (name, metric)
        for metric in ("mcd", "pesq_wb", "stoi"):
            assert metric in scored["mean"]
    assert math.isfinite(results["kl"]["nats_per_sample"])
    # Griffin-Lim from the same mel, scored alike; the student also on the teacher's spans
    baseline = results["copy_synthesis"]["griffin_lim"]
    assert set(baseline["clips"]) == set(clips)
    assert math.isfinite(baseline["mean"]["stft_distance"])
    span = results["copy_synthesis"]["student_span"]
    assert set(span["clips"]) == set(clips)
    report = (out / "report.md").read_text()
    assert "| stft_distance |" in report and "KL(student" in report
    assert "The student beats Griffin-Lim on" in report and "griffin_lim" in report
    assert len(list((out / "figures").glob("*.png"))) == min(len(clips), 3)


def add_silent_clip(dataset, cfg):
    """Append an all-zero utterance to the valid split (preprocess would reject it)."""
    frames, hop = 40, cfg.audio.hop_length
    np.save(dataset / "audio" / "silent.npy", np.zeros(frames * hop, dtype=np.int16))
    mel = np.full((cfg.audio.n_mels, frames), math.log(cfg.audio.log_floor), dtype=np.float32)
    np.save(dataset / "mel" / "silent.npy", mel)
    entry = {
        "id": "silent",
        "audio": "audio/silent.npy",
        "mel": "mel/silent.npy",
        "speaker": 0,
        "samples": frames * hop,
        "frames": frames,
    }
    with open(dataset / "valid.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")


def test_a_silent_clip_is_scored_with_reasons_not_errors(
    tmp_path, tiny_config, student_ckpt, tiny_dataset
):
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


def test_features_that_differ_from_the_checkpoint_are_refused(tmp_path, tiny_config, tiny_dataset):
    cfg = make_tiny_config(audio={"n_mels": tiny_config.audio.n_mels + 4})
    other = config_to_dict(cfg)
    ckpt = tmp_path / "other.pt"
    torch.manual_seed(0)
    model = new_model("teacher", cfg)
    n = other["audio"]["n_mels"]
    save_checkpoint(
        ckpt,
        {
            "kind": "teacher",
            "config": other,
            "model": model.state_dict(),
            "stats": {"mean": torch.zeros(n), "std": torch.ones(n)},
        },
    )
    with pytest.raises(UserError, match=r"audio\.n_mels"):
        evaluate(ckpt, tiny_dataset, tmp_path / "report")


def test_teacher_option_is_refused_for_a_teacher_checkpoint(tmp_path, teacher_ckpt, tiny_dataset):
    with pytest.raises(UserError, match="--teacher is for students"):
        evaluate(teacher_ckpt, tiny_dataset, tmp_path / "report", teacher=teacher_ckpt)


def test_griffin_lim_is_scored_on_the_clips_the_models_are(tmp_path, student_ckpt, tiny_dataset):
    """The baseline's row is the same clips' Griffin-Lim, recomputed independently here."""
    from wavedistill.data.features import log_mel
    from wavedistill.evaluation.griffin_lim import griffin_lim
    from wavedistill.evaluation.metrics import compare
    from wavedistill.store.checkpoint import load_checkpoint

    results = evaluate(student_ckpt, tiny_dataset, tmp_path / "report", griffin_lim_iters=4)
    _, cfg, _ = rebuilt(load_checkpoint(student_ckpt))
    entry = read_jsonl(tiny_dataset / "valid.jsonl")[0]
    pcm = np.load(tiny_dataset / entry["audio"]).astype(np.float64)
    audio = ((pcm + 32768) / 32767.5 - 1).astype(np.float32)
    mel = log_mel(torch.from_numpy(audio), cfg.audio).numpy()
    expected = compare(audio, griffin_lim(mel, cfg.audio, n_iter=4, seed=0), cfg)
    got = results["copy_synthesis"]["griffin_lim"]["clips"][entry["id"]]
    assert got["stft_distance"] == pytest.approx(expected["stft_distance"], rel=1e-5)


def test_griffin_lim_can_be_left_out(tmp_path, student_ckpt, tiny_dataset):
    results = evaluate(student_ckpt, tiny_dataset, tmp_path / "report", griffin_lim_iters=0)
    assert "griffin_lim" not in results["copy_synthesis"]
    with pytest.raises(UserError, match="--griffin-lim-iters"):
        evaluate(student_ckpt, tiny_dataset, tmp_path / "r2", griffin_lim_iters=-1)


def test_the_verdict_names_the_metrics_on_each_side():
    from wavedistill.evaluation.report import against_baseline, verdict

    def row(**means):
        full = {
            "stft_distance": "n/a",
            "log_spectral_distance": "n/a",
            "loudness_difference": "n/a",
            "mcd": "n/a",
            "pesq_wb": "n/a",
            "stoi": "n/a",
        }
        return {"mean": {**full, **means}}

    samples = {
        "student": row(
            stft_distance=0.8, log_spectral_distance=7.0, loudness_difference=-0.2, stoi=0.9
        ),
        "griffin_lim": row(
            stft_distance=0.9, log_spectral_distance=6.0, loudness_difference=0.5, stoi=0.95
        ),
    }
    result = against_baseline(samples, "student")
    assert result == {
        "beats": ["stft_distance", "loudness_difference"],
        "loses": ["log_spectral_distance", "stoi"],
    }
    sentence = verdict(samples)
    assert sentence.startswith(
        "The student beats Griffin-Lim on stft_distance, loudness_difference;"
    )
    assert verdict({"student": samples["student"]}) is None


def test_the_teacher_curve_is_drawn_from_its_run_history(tmp_path, teacher_ckpt, tiny_dataset):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "best.pt"
    ckpt.write_bytes(teacher_ckpt.read_bytes())
    lines = [
        {"step": 0, "minutes": 0.0, "nll_bits": 17.0},
        {"step": 10, "minutes": 0.1, "nll_bits": 12.0},
    ]
    (run / "validation.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "report"
    results = evaluate(ckpt, tiny_dataset, out, teacher_seconds=0.02, griffin_lim_iters=0)
    assert results["nll_curve"] == "figures/teacher_nll.png"
    assert (out / "figures" / "teacher_nll.png").read_bytes()[:8] == PNG_MAGIC
    assert "figures/teacher_nll.png" in (out / "report.md").read_text()
    # no history beside the checkpoint: no curve, no error
    assert (
        evaluate(
            teacher_ckpt, tiny_dataset, tmp_path / "r2", teacher_seconds=0.02, griffin_lim_iters=0
        ).get("nll_curve")
        is None
    )


def test_split_all_scores_every_utterance_of_an_unseen_corpus(tmp_path, student_ckpt, tiny_dataset):
    everyone = [
        e["id"] for split in ("train", "valid") for e in read_jsonl(tiny_dataset / f"{split}.jsonl")
    ]
    results = evaluate(
        student_ckpt,
        tiny_dataset,
        tmp_path / "report",
        max_clips=100,
        griffin_lim_iters=0,
        split="all",
    )
    assert sorted(results["copy_synthesis"]["student"]["clips"]) == sorted(everyone)
    assert "whole folder" in (tmp_path / "report" / "report.md").read_text()
