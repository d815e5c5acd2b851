"""The recipes run on corpora laid out like the real ones.

The real corpora cannot be fetched in tests, so each test builds a tiny corpus in the layout
its recipe expects (LJSpeech: ``metadata.csv`` + ``wavs/`` at 22.05 kHz; VCTK:
``wav48_silence_trimmed/<speaker>/*_mic1.flac`` at 48 kHz; the template: a nested folder of
mixed formats; the demo and ``alice``: the bundled voice ``data/alice``) and runs
``recipes/<name>/run.sh`` as a user would, with overrides that shrink the models and the
training to a few seconds. The audio settings stay the recipe's own, so the features, hop and
upsampling are the real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wavedistill.cli import main

ROOT = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).parent)  # the environment whose `wavedistill` the recipes call

# A two-layer teacher trained for two steps: enough to exercise every stage's code path.
TINY_TEACHER = (
    "teacher.layers=2 teacher.stacks=1 teacher.residual_channels=4 "
    "teacher.gate_channels=8 teacher.skip_channels=4 teacher.num_mixtures=2 "
    "train.steps=2 train.warmup_steps=0 train.valid_batches=1 data.batch_size=1"
)
# A two-flow student with a single-resolution power loss small enough for short segments.
TINY_STUDENT = (
    "student.flow_layers=[1,1] student.channels=4 distill.num_draws=4 "
    "distill.power_fft_sizes=[256] distill.power_hop_sizes=[64] "
    "distill.power_win_lengths=[256]"
)


def run_recipe(
    name: str, cwd: Path, *options: str, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``bash recipes/<name>/run.sh OPTIONS`` in ``cwd`` with this environment's tools on PATH
    (and the variables ``env``)."""
    # One intra-op thread, as recipes/synthetic does for its tiny models: threads cost more
    # than they save at these sizes.
    env = {
        **os.environ,
        "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    return subprocess.run(
        ["bash", str(ROOT / "recipes" / name / "run.sh"), *options],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def check_ran(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (
        f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}"
        f"\n--- stderr\n{result.stderr[-3000:]}"
    )


def describe(path: Path, capsys) -> str:
    """What ``wavedistill info PATH`` prints (run in this process: it saves a torch import)."""
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    return capsys.readouterr().out


def read_manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_dataset(folder: Path, utterances: int, speakers: int) -> None:
    """Stage 0 wrote a complete dataset folder of ``utterances`` items and ``speakers``."""
    for name in ("config.yaml", "stats.npz", "speakers.json", "train.jsonl", "valid.jsonl"):
        assert (folder / name).is_file(), name
    items = read_manifest(folder / "train.jsonl") + read_manifest(folder / "valid.jsonl")
    assert len(items) == utterances
    assert len(json.loads((folder / "speakers.json").read_text())) == speakers
    for item in items:
        assert (folder / item["audio"]).is_file() and (folder / item["mel"]).is_file()
    stats = np.load(folder / "stats.npz")
    assert np.isfinite(stats["mean"]).all() and (stats["std"] > 0).all()
    rejected = folder / "rejected.txt"
    assert not rejected.exists() or not rejected.read_text().strip()


def check_teacher(exp: Path, capsys, sample_rate: int, speakers: int = 1) -> None:
    """Stage 1 wrote a teacher checkpoint that ``wavedistill info`` describes."""
    best = exp / "teacher" / "checkpoints" / "best.pt"
    assert best.is_file()
    text = describe(best, capsys)
    assert text.startswith("teacher checkpoint")
    assert "step 2," in text
    assert f"audio: {sample_rate} Hz" in text
    assert f"speakers: {speakers}" in text


# -- corpora in the real layouts -------------------------------------------------------------


def ljspeech_corpus(root: Path, make_wav, count: int = 3) -> Path:
    """LJSpeech-1.1: ``metadata.csv`` (id|text|normalised text) and ``wavs/<id>.wav``, 22.05 kHz."""
    lines = []
    for i in range(count):
        uid = f"LJ001-{i + 1:04d}"
        make_wav(
            root / "wavs" / f"{uid}.wav", seconds=0.15, sr=22050, seed=i, frequency=180.0 + 60 * i
        )
        lines.append(f"{uid}|Printing, in the only sense {i}.|Printing, in the only sense {i}.")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "README").write_text("LJ Speech Dataset\n")
    return root


def vctk_corpus(root: Path, make_wav) -> Path:
    """VCTK 0.92: ``wav48_silence_trimmed/<speaker>/<speaker>_<n>_mic{1,2}.flac`` at 48 kHz and
    ``txt/``; two speakers of two sentences, each recorded by both microphones."""
    for s, speaker in enumerate(("p225", "p226")):
        for n in (1, 2):
            for mic in ("mic1", "mic2"):
                make_wav(
                    root / "wav48_silence_trimmed" / speaker / f"{speaker}_{n:03d}_{mic}.flac",
                    seconds=0.12,
                    sr=48000,
                    seed=10 * s + n,
                    frequency=150.0 + 90 * s + 20 * n,
                )
            text = root / "txt" / speaker / f"{speaker}_{n:03d}.txt"
            text.parent.mkdir(parents=True, exist_ok=True)
            text.write_text("Please call Stella.\n")
    return root


def mixed_folder(root: Path, make_wav) -> Path:
    """A nested folder of several formats, rates and channel counts, plus a non-audio file."""
    make_wav(root / "a.wav", seconds=0.15, sr=22050, seed=1)
    make_wav(root / "takes" / "b.flac", seconds=0.12, sr=44100, channels=2, seed=2)
    make_wav(root / "takes" / "old" / "c.wav", seconds=0.2, sr=16000, subtype="FLOAT", seed=3)
    make_wav(root / "takes" / "old" / "d.ogg", seconds=0.15, sr=24000, subtype=None, seed=4)
    (root / "takes" / "notes.txt").write_text("session notes\n")
    return root


# -- the recipes -----------------------------------------------------------------------------


def test_ljspeech_recipe_preprocesses_and_trains_a_teacher(tmp_path, make_wav, capsys):
    data = ljspeech_corpus(tmp_path / "LJSpeech-1.1", make_wav)
    exp = tmp_path / "exp"
    check_ran(
        run_recipe(
            "ljspeech",
            tmp_path,
            "--data",
            str(data),
            "--exp",
            str(exp),
            "--stop_stage",
            "1",
            "--overrides",
            TINY_TEACHER + " data.segment_length=512",
        )
    )
    check_dataset(exp / "data", utterances=3, speakers=1)
    check_teacher(exp, capsys, sample_rate=22050)


def test_vctk_recipe_keeps_one_microphone_and_both_speakers(tmp_path, make_wav, capsys):
    data = vctk_corpus(tmp_path / "VCTK-Corpus-0.92", make_wav)
    exp = tmp_path / "exp"
    check_ran(
        run_recipe(
            "vctk",
            tmp_path,
            "--data",
            str(data),
            "--exp",
            str(exp),
            "--stop_stage",
            "1",
            "--overrides",
            TINY_TEACHER + " data.segment_length=600",
        )
    )
    check_dataset(exp / "data", utterances=4, speakers=2)  # mic2 takes are left out
    assert json.loads((exp / "data" / "speakers.json").read_text()) == {"p225": 0, "p226": 1}
    items = [
        item
        for split in ("train", "valid")
        for item in read_manifest(exp / "data" / f"{split}.jsonl")
    ]
    assert all(item["id"].endswith("_mic1") for item in items)
    assert all(item["samples"] % 300 == 0 for item in items)  # resampled to 24 kHz, whole frames
    check_teacher(exp, capsys, sample_rate=24000, speakers=2)


def test_template_recipe_reads_a_nested_folder_of_mixed_formats(tmp_path, make_wav, capsys):
    data = mixed_folder(tmp_path / "audio", make_wav)
    exp = tmp_path / "exp"
    check_ran(
        run_recipe(
            "template",
            tmp_path,
            "--data",
            str(data),
            "--exp",
            str(exp),
            "--stop_stage",
            "1",
            "--overrides",
            TINY_TEACHER + " data.segment_length=512",
        )
    )
    check_dataset(exp / "data", utterances=4, speakers=1)
    check_teacher(exp, capsys, sample_rate=22050)


def test_template_recipe_without_data_exits_2_and_says_what_to_give(tmp_path):
    result = run_recipe("template", tmp_path, "--stop_stage", "0")
    assert result.returncode == 2
    assert "--data" in result.stderr
    assert not (tmp_path / "exp").exists()


def test_recipes_refuse_an_unknown_option(tmp_path):
    result = run_recipe("demo", tmp_path, "--stop-stage", "0", "--bogus", "1")
    assert result.returncode == 2
    assert "unknown option: --bogus" in result.stderr


def test_demo_recipe_help_lists_the_options(tmp_path):
    result = run_recipe("demo", tmp_path, "--help")
    assert result.returncode == 0
    for option in (
        "--stage",
        "--stop_stage",
        "--exp",
        "--data",
        "--overrides",
        "--input",
        "--device",
    ):
        assert option in result.stdout


def arctic_excerpt(tmp_path: Path) -> Path:
    """1650 samples (8 frames + 50) of a bundled ARCTIC clip: short enough for the teacher."""
    clip, sr = sf.read(ROOT / "data" / "arctic" / "arctic_a0009.wav", dtype="int16")
    excerpt = tmp_path / "excerpt.wav"
    sf.write(excerpt, clip[8000:9650], sr, subtype="PCM_16")
    return excerpt


@pytest.mark.slow
def test_alice_recipe_runs_every_stage_and_ships_loadable_models(tmp_path, capsys):
    """Stages 0-6 of the CPU voice recipe for a few steps: the bundled voice with its fixed
    split, both models, both syntheses, the held-out and unseen-speaker reports with their
    Griffin-Lim rows, and inference copies shipped to a folder of the test's own."""
    exp, ship = tmp_path / "exp", tmp_path / "models"
    env_ship = {"SHIP_DIR": str(ship)}
    result = run_recipe(
        "alice",
        tmp_path,
        "--exp",
        str(exp),
        "--input",
        str(arctic_excerpt(tmp_path)),
        "--eval_args",
        "--max-clips 1 --teacher-seconds 0.02 --griffin-lim-iters 2",
        "--overrides",
        f"{TINY_TEACHER} {TINY_STUDENT} data.segment_length=800",
        env=env_ship,
    )
    check_ran(result)
    check_dataset(exp / "data", utterances=108, speakers=1)
    held_out = (ROOT / "data" / "alice" / "heldout.txt").read_text().split()
    assert [item["id"] for item in read_manifest(exp / "data" / "valid.jsonl")] == held_out
    for report in ("report", "report_arctic"):
        scored = json.loads((exp / report / "metrics.json").read_text())["copy_synthesis"]
        assert {"student", "teacher", "griffin_lim", "student_span"} <= set(scored), report
    assert (exp / "report" / "figures" / "teacher_nll.png").is_file()
    page = exp / "report" / "index.html"
    assert page.is_file() and result.stdout.splitlines()[-1].endswith(str(page))
    from wavedistill.inference.synthesizer import Synthesizer
    from wavedistill.store.registry import SHIPPED

    for model in SHIPPED:
        assert Synthesizer.from_checkpoint(ship / model.filename).kind == model.kind


@pytest.mark.slow
def test_demo_recipe_runs_end_to_end_to_both_syntheses(tmp_path, capsys):
    """Stages 0-4 on the bundled voice: preprocess, teacher, teacher synthesis, distillation,
    student synthesis. A short excerpt is synthesised (the teacher samples sequentially)."""
    exp = tmp_path / "exp"
    check_ran(
        run_recipe(
            "demo",
            tmp_path,
            "--exp",
            str(exp),
            "--stop_stage",
            "4",
            "--input",
            str(arctic_excerpt(tmp_path)),
            "--overrides",
            f"{TINY_TEACHER} {TINY_STUDENT} data.segment_length=800",
        )
    )
    check_dataset(exp / "data", utterances=108, speakers=1)
    check_teacher(exp, capsys, sample_rate=16000)
    student = describe(exp / "student" / "checkpoints" / "best.pt", capsys)
    assert student.startswith("student checkpoint") and "2 flows" in student
    for name in ("teacher.wav", "student.wav"):
        info = sf.info(exp / "synth" / name)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames == 1600  # trimmed to whole 200-sample frames
        audio, _ = sf.read(exp / "synth" / name)
        assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
