"""The shipped models: both load from the installed package with valid configs, the student
synthesises a bundled held-out utterance of the voice it learned as finite audio in [-1, 1]
(and takes audio of another sample rate, resampled), ``synthesize`` uses it when no
checkpoint is given, ``info`` lists both, and inference copies keep exactly the weights
synthesis uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import rebuilt

from wavedistill.cli import main
from wavedistill.config import config_to_dict, validate
from wavedistill.errors import UserError
from wavedistill.inference.synthesizer import Synthesizer
from wavedistill.store.checkpoint import load_checkpoint, save_checkpoint
from wavedistill.store.registry import (
    DEFAULT_STUDENT,
    SHIPPED,
    inference_copy,
    shipped,
)

REPO = Path(__file__).resolve().parents[2]
HELD_OUT = REPO / "data" / "alice" / "heldout.txt"


def held_out_clip() -> Path:
    """The first held-out utterance of the bundled voice (never seen in training)."""
    first = HELD_OUT.read_text().split()[0]
    return REPO / "data" / "alice" / "wavs" / f"{first}.flac"


@pytest.mark.parametrize("model", SHIPPED, ids=lambda m: m.name)
def test_each_shipped_model_loads_with_a_valid_config(model):
    ckpt = load_checkpoint(shipped(model.name).path, expected_kind=model.kind)
    net, cfg, stats = rebuilt(ckpt)
    validate(cfg)
    assert cfg.audio.sample_rate == 16000 and stats.n_mels == cfg.audio.n_mels
    assert ckpt.get("optimizer") is None  # an inference copy: no training state
    assert net.num_parameters > 0


def test_the_shipped_models_fit_in_20_megabytes():
    assert sum(m.path.stat().st_size for m in SHIPPED) <= 20 * 2**20


def test_the_shipped_student_synthesises_a_held_out_utterance():
    synth = Synthesizer.from_pretrained(DEFAULT_STUDENT)
    clip = held_out_clip()
    audio = synth.generate([synth.features(clip)], seed=0)[0]
    frames = sf.info(clip).frames // synth.cfg.audio.hop_length
    assert audio.shape == (frames * synth.cfg.audio.hop_length,)
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    assert np.abs(audio).max() > 0.01  # speech, not silence


def test_the_shipped_teacher_samples_a_short_span():
    synth = Synthesizer.from_checkpoint(shipped("alice-teacher").path)
    mel = synth.features(held_out_clip())[:, :4]
    audio = synth.generate([mel], seed=0)[0]
    assert audio.shape == (4 * synth.cfg.audio.hop_length,) and np.isfinite(audio).all()


def test_synthesize_without_checkpoint_uses_the_shipped_student(tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(["--quiet", "synthesize", "--input", str(held_out_clip()), "--output", str(out)]) == 0
    )
    written = out / f"{held_out_clip().stem}.wav"
    audio, sr = sf.read(written)
    assert sr == 16000 and len(audio) > 0


def test_another_sample_rate_is_resampled_for_the_shipped_student(tmp_path, make_wav):
    clip = make_wav(tmp_path / "c.wav", seconds=0.5, sr=22050)
    synth = Synthesizer.from_pretrained(DEFAULT_STUDENT)
    mel = synth.features(clip)
    assert mel.shape == (synth.cfg.audio.n_mels, int(0.5 * 16000) // synth.cfg.audio.hop_length)


def test_info_without_a_path_lists_the_shipped_models(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for model in SHIPPED:
        assert model.name in out
    assert "IAF student" in out and "WaveNet teacher" in out


# -- one resolver: every command takes a shipped model's name ------------------------------


def test_info_describes_a_shipped_model_by_name_with_its_real_parameter_count(capsys):
    assert main(["info", "alice-student"]) == 0
    out = capsys.readouterr().out
    count = Synthesizer.from_pretrained("alice-student").loaded.model.num_parameters
    assert out.startswith("student checkpoint") and f"parameters: {count:,}" in out
    assert count > 0


def test_synthesize_takes_a_shipped_model_by_name(tmp_path):
    out = tmp_path / "a.wav"
    assert (
        main(
            [
                "--quiet",
                "synthesize",
                "--checkpoint",
                "alice-student",
                "--input",
                str(held_out_clip()),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert sf.info(out).samplerate == 16000


@pytest.mark.parametrize(
    "teacher, says",
    [
        (None, "none: not a dataset folder"),
        ("alice-teacher", "none: not a dataset folder"),
        ("nobody-teacher", "nobody-teacher: no such checkpoint, bundle folder or shipped model"),
    ],
)
def test_evaluate_loads_shipped_models_by_name(tmp_path, capsys, teacher, says):
    """Both models load by name before the dataset is looked at: the run gets as far as the
    dataset check (the missing folder) unless a name is unknown."""
    args = ["--teacher", teacher] if teacher else []
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                "alice-student",
                *args,
                "--data",
                str(tmp_path / "none"),
                "--out",
                str(tmp_path / "report"),
            ]
        )
        == 2
    )
    assert says in capsys.readouterr().err


def test_an_unknown_reference_is_one_line_naming_it(tmp_path, capsys):
    assert main(["info", "nobody-student"]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "nobody-student: no such checkpoint, bundle folder or shipped model" in err
    )


def test_an_unknown_shipped_name_is_refused_with_the_list():
    with pytest.raises(UserError, match=f"shipped: {DEFAULT_STUDENT}"):
        shipped("nobody")


def test_an_inference_copy_keeps_the_ema_weights_and_drops_training_state(tmp_path, tiny_config):
    from wavedistill.store.loading import new_model

    torch.manual_seed(0)
    model = new_model("student", tiny_config)
    ema = {k: 0.9 * v for k, v in model.state_dict().items()}  # differs from the raw weights
    n = tiny_config.audio.n_mels
    src = save_checkpoint(
        tmp_path / "full.pt",
        {
            "kind": "student",
            "config": config_to_dict(tiny_config),
            "model": model.state_dict(),
            "ema": ema,
            "optimizer": {"state": {}, "param_groups": []},
            "step": 7,
            "stats": {"mean": torch.zeros(n), "std": torch.ones(n)},
        },
    )
    copy = load_checkpoint(inference_copy(src, tmp_path / "slim.pt"))
    assert copy["step"] == 7 and copy.get("optimizer") is None and copy["ema"] is None
    for key, value in ema.items():
        assert torch.equal(copy["model"][key], value)
    # synthesis from the copy equals synthesis from the original's EMA weights
    a = Synthesizer.from_checkpoint(src).loaded.model
    b = Synthesizer.from_checkpoint(tmp_path / "slim.pt").loaded.model
    mel = torch.randn(1, n, 6)
    g = torch.Generator().manual_seed(0)
    x = a.synthesize(mel, generator=g)
    g = torch.Generator().manual_seed(0)
    assert torch.isfinite(x).all() and torch.equal(x, b.synthesize(mel, generator=g))
