"""Sampling temperature: the scale of the student's unit noise, 0 being its deterministic path."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wavedistill.errors import UserError
from wavedistill.inference.synthesizer import Synthesizer

CLIP = Path(__file__).resolve().parents[2] / "data" / "alice" / "wavs" / "alice_021.flac"


@pytest.fixture(scope="module")
def mel() -> torch.Tensor:
    return Synthesizer.from_pretrained("alice-student").features(CLIP)[:, :12]


def test_temperature_scales_the_noise_the_student_draws(mel):
    student = Synthesizer.from_pretrained("alice-student").loaded.student
    z = student.sample_noise((1, 12 * student.hop), torch.Generator().manual_seed(4))
    for temperature in (0.0, 0.3, 1.0):
        drawn = student.synthesize(mel[None], None, torch.Generator().manual_seed(4), temperature)
        expected = student.synthesize_from_noise(temperature * z, mel[None])
        torch.testing.assert_close(drawn, expected, rtol=0, atol=0)


def test_temperature_zero_is_deterministic_and_the_others_are_not(mel):
    cold = Synthesizer.from_pretrained("alice-student", temperature=0.0)
    a, b = cold.generate([mel], seed=1)[0], cold.generate([mel], seed=2)[0]
    np.testing.assert_array_equal(a, b)
    warm = Synthesizer.from_pretrained("alice-student", temperature=0.5)
    c, d = warm.generate([mel], seed=1)[0], warm.generate([mel], seed=2)[0]
    assert np.abs(c - d).max() > 1e-3


def test_streamed_and_chunked_synthesis_keep_the_temperature(mel):
    synth = Synthesizer.from_pretrained("alice-student", temperature=0.4)
    whole = synth.generate([mel], seed=7)[0]
    chunked = synth.generate([mel], seed=7, chunk_seconds=3 * 200 / 16000)[0]
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-5)
    streamed = np.concatenate(list(synth.stream([mel[:, :5], mel[:, 5:]], seed=7)))
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_a_bad_temperature_is_refused_naming_it(bad):
    with pytest.raises(UserError, match="--temperature"):
        Synthesizer.from_pretrained("alice-student", temperature=bad)


def test_a_teacher_refuses_a_temperature():
    with pytest.raises(UserError, match="student option"):
        Synthesizer.from_pretrained("alice-teacher", temperature=0.5)


def test_the_cli_synthesises_at_a_temperature_and_refuses_a_bad_one(tmp_path):
    cmd = [sys.executable, "-m", "wavedistill", "synthesize", "--input", str(CLIP)]
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"cold{seed}.wav"
        subprocess.run(
            [*cmd, "--output", str(out), "--temperature", "0", "--seed", seed],
            check=True,
            capture_output=True,
        )
        outs.append(sf.read(out)[0])
    np.testing.assert_array_equal(*outs)
    bad = subprocess.run(
        [*cmd, "--output", str(tmp_path / "x.wav"), "--temperature", "-1"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert "--temperature" in bad.stderr.strip().splitlines()[-1]
