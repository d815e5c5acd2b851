"""Reduced precision only where it is native: the capability answer is simulated, so both the
refusal and the native path run on any machine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wavedistill import precision
from wavedistill.cli import main
from wavedistill.errors import UserError

AVX2_ONLY = frozenset({"sse2", "avx", "avx2", "fma"})
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512_bf16"}


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2_ONLY)


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX512_BF16)


def test_cpu_flags_are_read_from_the_flags_or_features_line():
    x86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512_bf16\nbugs\t\t: spectre\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd bf16 asimdhp\n"
    assert precision.parse_cpu_flags(x86) == {"fpu", "sse2", "avx2", "avx512_bf16"}
    assert precision.parse_cpu_flags(arm) == {"fp", "asimd", "bf16", "asimdhp"}
    assert precision.parse_cpu_flags("processor : 0\n") == frozenset()


def test_the_answer_follows_the_instruction_set(cpu_without_bf16):
    cpu = torch.device("cpu")
    assert precision.is_native(torch.float32, cpu)
    assert not precision.is_native(torch.bfloat16, cpu)
    assert not precision.is_native(torch.float16, cpu)
    with pytest.raises(
        UserError,
        match=r"--dtype bfloat16: .*no native bfloat16 .*avx512_bf16"
        r".*use float32",
    ):
        precision.resolve_dtype("bfloat16", cpu)


def test_bf16_is_native_where_the_cpu_has_it(cpu_with_bf16):
    assert precision.resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    with pytest.raises(UserError, match="no native float16"):
        precision.resolve_dtype("float16", "cpu")


def test_training_autocast_refuses_emulated_precision(cpu_without_bf16):
    from wavedistill.training.distributed import autocast_dtype

    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None  # auto never picks an emulated dtype
    for name in ("bfloat16", "float16"):
        with pytest.raises(UserError, match=f"train.precision {name}: .*use float32"):
            autocast_dtype(name, cpu)


def test_teacher_sampling_refuses_emulated_bf16(cpu_without_bf16, tiny_config):
    from wavedistill.models.fused_wavenet import fuse_teacher
    from wavedistill.store.loading import new_model

    teacher = new_model("teacher", tiny_config)
    with pytest.raises(UserError, match="teacher precision bfloat16: .*no native"):
        fuse_teacher(teacher, precision="bfloat16")
    fuse_teacher(teacher, precision="float32")  # float32 is always fine


@pytest.mark.parametrize(
    "command",
    [
        ["synthesize", "--dtype", "bfloat16", "--input", "CLIP", "--output", "OUT.wav"],
        ["benchmark", "--student-config", "CONFIG", "--dtype", "bfloat16", "--seconds", "0.05"],
    ],
)
def test_the_cli_refuses_emulated_bf16_with_one_line(
    cpu_without_bf16, tmp_path, capsys, make_wav, command, tiny_config
):
    from wavedistill.config import save_config

    save_config(tiny_config, tmp_path / "tiny.yaml")
    clip = make_wav(tmp_path / "clip.wav", 0.3)
    args = [
        str(tmp_path / "tiny.yaml")
        if a == "CONFIG"
        else str(clip)
        if a == "CLIP"
        else str(tmp_path / a)
        if a == "OUT.wav"
        else a
        for a in command
    ]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--dtype bfloat16" in err[0], err
    assert "use float32" in err[0]
    assert not (tmp_path / "OUT.wav").exists()


def test_native_bf16_synthesis_stays_close_to_float32(cpu_with_bf16, tmp_path, make_wav):
    """Where bf16 is native, the student runs in it throughout; its audio stays within a
    signal-to-error ratio a listener cannot tell from float32 (the shipped student)."""
    from wavedistill.inference.synthesizer import Synthesizer

    clip = make_wav(tmp_path / "clip.wav", 0.3)
    full = Synthesizer.from_pretrained("alice-student")
    half = Synthesizer.from_pretrained("alice-student", dtype="bfloat16")
    assert next(half.loaded.model.parameters()).dtype == torch.bfloat16
    mel = full.features(clip)
    a, b = full.generate([mel], seed=3)[0], half.generate([mel], seed=3)[0]
    assert b.dtype == np.float32 and a.shape == b.shape
    ser = 10 * np.log10(np.sum(a.astype(np.float64) ** 2) / np.sum((a - b).astype(np.float64) ** 2))
    assert ser > 25.0, ser


def test_a_teacher_refuses_float16_synthesis(cpu_with_bf16, monkeypatch):
    from wavedistill.inference.synthesizer import Synthesizer

    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX512_BF16 | {"avx512_fp16"})
    with pytest.raises(UserError, match="teacher sampling runs in float32 or bfloat16"):
        Synthesizer.from_pretrained("alice-teacher", dtype="float16")


def test_the_peak_measurement_is_bounded_even_where_products_are_slow(monkeypatch):
    """A dtype emulated hundreds of times slower shrinks the product, not the patience: with a
    probe that reports 1 s per 256 x 256 product, the measured size drops to the probe's."""
    from wavedistill.bench import profiling

    sizes = []
    monkeypatch.setattr(profiling, "_mm_time", lambda n, device, dtype: 1.0)
    original_randn = torch.randn

    def randn(*shape, **kw):
        sizes.append(shape[0])
        return original_randn(*shape, **kw)

    monkeypatch.setattr(torch, "randn", randn)
    profiling.matmul_peak_gflops(torch.device("cpu"), torch.float32, repeats=1, size=2048)
    assert sizes == [256, 256]


def test_the_table_keeps_columns_apart_for_any_value():
    from wavedistill.bench.benchmark import format_table

    model = {
        "samples_per_s": 1.23e9,
        "rtf": 1.3e-5,
        "flops_per_sample": 3.46e6,
        "achieved_gflops": 12345.678,
        "fraction_of_peak": 166.182,
        "spread": 0.5,
        "peak_rss_mb": 123456.0,
    }
    report = {
        "peak_matmul_gflops": 0.29,
        "device": "cpu",
        "threads": 2,
        "dtype": "bfloat16",
        "batch": 1,
        "models": {"student": model, "teacher_cached": dict(model)},
        "speedup_student_over_teacher": None,
    }
    header, *rows = format_table(report).splitlines()[1:]
    for row in rows:
        assert len(row.split()) == 8  # eight cells, never two run together
    assert "16618.2%" in rows[0]
    ends = [header.index("% peak") + len("% peak")]
    assert rows[0].index("16618.2%") + len("16618.2%") == ends[0]  # right-aligned under it
