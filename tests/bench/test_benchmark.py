"""The benchmark and its measuring tools: FLOPs counted from a config or a model agree with a
hand count and with torch's own count of the real model, the naive count uses the sampler's own
windows, the timing method warms up and synchronises, memory peaks are seen, inputs are real
speech, and a tiny end-to-end run (from Python and from the command line) writes the
documented JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from wavedistill.bench import benchmark, profiling
from wavedistill.cli import main
from wavedistill.config import config_from_dict, save_config
from wavedistill.errors import UserError
from wavedistill.models.teacher import WaveNetTeacher

HAND_COUNTED = {
    "audio": {"n_mels": 5, "hop_length": 10, "n_fft": 64, "win_length": 64},
    "data": {"segment_length": 100},
    "teacher": {
        "layers": 2,
        "stacks": 1,
        "kernel_size": 2,
        "residual_channels": 4,
        "gate_channels": 6,
        "skip_channels": 3,
        "num_mixtures": 2,
        "upsample_factors": [2, 5],
        "conditioning_context": 1,
    },
    "student": {"upsample_factors": [2, 5]},
}


# The JSON document's keys (fields may be added, never renamed): the report, each model's
# entry (``peak_gpu_mb`` too on a GPU) and each training step's.
REPORT_KEYS = {
    "device",
    "threads",
    "dtype",
    "batch",
    "seconds",
    "naive_steps",
    "clip",
    "repeats",
    "torch",
    "peak_matmul_gflops",
    "models",
    "speedup_student_over_teacher",
}
MODEL_KEYS = {
    "samples_per_s",
    "rtf",
    "flops_per_sample",
    "flops_by_part",
    "achieved_gflops",
    "fraction_of_peak",
    "peak_rss_mb",
    "seconds_per_call",
    "spread",
    "samples_per_call",
    "source",
    "parameters",
    "receptive_field",
    "config",
}
STEP_KEYS = {
    "samples_per_s",
    "seconds_per_step",
    "spread",
    "batch",
    "segment_length",
    "peak_rss_mb",
}


def test_teacher_flops_match_a_hand_count():
    cfg = config_from_dict(HAND_COUNTED)
    parts = profiling.teacher_flops(cfg).parts
    assert parts == {
        "input_1x1": 2 * 4,  # 1 -> R
        "dilated_convs": 2 * (2 * 4 * 6) * 2,  # k R G, two layers
        "conditioning_add": 2 * 6 * 2,  # one multiply-add per gate channel
        "residual_skip_1x1": 2 * 3 * (4 + 3) + 2 * 3 * 3,  # last layer: skip only
        "output_head": 2 * 3 * 3 + 2 * 3 * 6,  # S -> S, S -> 3K
        "conditioning_frames": (2 * 5 * 5 * 3 + 2 * 5 * 12) / 10,  # context, projection / hop
    }
    assert profiling.teacher_flops(cfg).total == 365


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"teacher": {"output": "gaussian", "conditioning_context": 0}},
        {"teacher": {"output": "categorical", "use_mel": False}},
    ],
)
def test_teacher_flops_match_torch_count_of_the_real_forward(tiny_config, overrides):
    cfg = config_from_dict(
        {**HAND_COUNTED, "teacher": {**HAND_COUNTED["teacher"], **overrides.get("teacher", {})}}
    )
    torch.manual_seed(0)
    model = WaveNetTeacher.from_config(cfg).eval()
    frames = 12
    T = frames * cfg.audio.hop_length
    mel = torch.randn(1, cfg.audio.n_mels, frames) if cfg.teacher.use_mel else None
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, T) * 2 - 1, mel)
    count = profiling.teacher_flops(cfg)
    # torch counts matrix products and convolutions; the conditioning multiply-add before
    # each gate is an element-wise addcmul it leaves out.
    expected = count.total - count.parts["conditioning_add"]
    assert counter.get_total_flops() / T == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("use_mel", [True, False])
def test_naive_sampling_flops_match_torch_count_of_real_naive_steps(use_mel):
    from wavedistill.models.sampling import sample_naive_steps, steady_naive_steps

    cfg = config_from_dict(
        {**HAND_COUNTED, "teacher": {**HAND_COUNTED["teacher"], "use_mel": use_mel}}
    )
    torch.manual_seed(0)
    model = WaveNetTeacher.from_config(cfg).eval()
    rf = model.receptive_field
    hop = cfg.audio.hop_length if use_mel else 1
    # the steady state, and a whole clip from its start (windows still growing)
    for steps, frames in [steady_naive_steps(model, 5), (range(0, 20), 20 // hop)]:
        mel = torch.randn(1, cfg.audio.n_mels, frames) if use_mel else None
        audio = torch.zeros(1, frames * hop)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            sample_naive_steps(model, mel, None, audio, steps, torch.Generator().manual_seed(0))
        count = profiling.naive_teacher_flops(cfg, model, steps, frames)
        expected = count.total - count.parts["conditioning_add"]  # element-wise, see above
        assert counter.get_total_flops() / len(steps) == pytest.approx(expected, rel=1e-12)
    # in the steady state every step recomputes at least the receptive field
    steps, frames = steady_naive_steps(model, 5)
    assert profiling.naive_teacher_flops(cfg, model, steps, frames).total >= (
        (rf + 1) * profiling.teacher_flops(cfg).total
    )


def test_steady_naive_steps_have_full_windows():
    from wavedistill.models.sampling import naive_window, steady_naive_steps

    cfg = config_from_dict(HAND_COUNTED)
    hop, context = cfg.audio.hop_length, cfg.teacher.conditioning_context
    model = WaveNetTeacher.from_config(cfg)
    rf = model.receptive_field
    steps, frames = steady_naive_steps(model, 7)
    assert len(steps) == 7
    for t in steps:
        f0, f1 = naive_window(t, rf, hop, context, frames)
        assert f0 * hop <= t - rf and f1 == t // hop + context + 1 <= frames


@pytest.mark.parametrize("use_mel", [True, False])
def test_naive_flop_count_uses_the_samplers_own_windows(monkeypatch, use_mel):
    # One geometry for both: every window the sampler asks for (step, receptive field, hop,
    # mel context, frames), the FLOP count asks for too, and the hop and context are the
    # config's.
    from wavedistill.models import sampling as generation

    cfg = config_from_dict(
        {**HAND_COUNTED, "teacher": {**HAND_COUNTED["teacher"], "use_mel": use_mel}}
    )
    torch.manual_seed(0)
    model = WaveNetTeacher.from_config(cfg).eval()
    calls = []
    real = generation.naive_window
    monkeypatch.setattr(generation, "naive_window", lambda *args: calls.append(args) or real(*args))
    steps, frames = generation.steady_naive_steps(model, 4)
    hop = cfg.audio.hop_length if use_mel else 1
    mel = torch.randn(1, cfg.audio.n_mels, frames) if use_mel else None
    with torch.inference_mode():
        generation.sample_naive_steps(model, mel, None, torch.zeros(1, frames * hop), steps)
    sampled = list(calls)
    calls.clear()
    profiling.naive_teacher_flops(cfg, model, steps, frames)
    assert len(sampled) == len(steps) and calls == sampled
    context = cfg.teacher.conditioning_context if use_mel else 0
    assert {args[2:4] for args in sampled} == {(hop, context)}


def test_round_robin_timing_takes_turns():
    order = []
    timings = profiling.time_round_robin(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")},
        torch.device("cpu"),
        repeats=3,
        warmup=1,
    )
    assert order == ["a", "b"] + ["a", "b"] * 3  # warm-up, then one call each per round
    assert {name: len(t.times) for name, t in timings.items()} == {"a": 3, "b": 3}


def test_time_call_warms_up_then_times_each_repeat():
    calls = []
    timing = profiling.time_call(lambda: calls.append(1), torch.device("cpu"), repeats=4, warmup=2)
    assert len(calls) == 6 and len(timing.times) == 4
    assert all(t >= 0 for t in timing.times)
    assert profiling.Timing([1.0, 2.0, 4.0]).median == 2.0
    assert profiling.Timing([1.0, 2.0, 4.0]).best == 1.0
    assert profiling.Timing([1.0, 2.0, 4.0]).spread == pytest.approx(1.5)


def test_peak_memory_sees_an_allocation_inside_the_block():
    before = profiling.current_rss_mb()
    with profiling.PeakMemory(torch.device("cpu")) as memory:
        block = np.ones(64 * 2**20 // 8)  # 64 MB, touched
        del block
    assert memory.rss_mb >= before + 60


def test_matmul_peak_is_a_finite_rate():
    peak = profiling.matmul_peak_gflops(torch.device("cpu"), torch.float32, repeats=1, size=128)
    assert math.isfinite(peak) and peak > 0


def test_benchmark_inputs_are_normalised_real_speech(tiny_config):
    batch = benchmark.benchmark_batch(
        tiny_config, None, frames=40, batch=3, device=torch.device("cpu")
    )
    hop = tiny_config.audio.hop_length
    assert batch["audio"].shape == (3, 40 * hop)
    assert batch["mel"].shape == (3, tiny_config.audio.n_mels, 40)
    assert batch["audio"].abs().max() > 0.1  # speech, not silence
    assert not torch.equal(batch["mel"][0], batch["mel"][1])  # rows start at different frames
    assert batch["mel"].mean().abs() < 1.0 and 0.3 < batch["mel"].std() < 3.0


def test_tile_repeats_and_crops_along_time():
    x = torch.arange(5.0)
    assert benchmark.tile(x, 12).tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert benchmark.tile(x, 4, offset=3).tolist() == [3, 4, 0, 1]


def test_benchmark_runs_from_python_with_typed_arguments(tmp_path, tiny_config):
    config = tmp_path / "tiny.yaml"
    save_config(tiny_config, config)
    settings = benchmark.Settings.checked(
        seconds=0.02, naive_steps=2, batch=1, repeats=1, device="cpu", dtype="float32"
    )
    report = benchmark.benchmark(
        settings, teacher_config=config, student_config=config, threads=1, training=True
    )
    assert set(report) == REPORT_KEYS | {"training"}
    assert set(report["models"]) == {"student", "teacher_cached", "teacher_naive"}
    for name, m in report["models"].items():
        assert set(m) == MODEL_KEYS, name
        assert m["source"] == f"{config} (random weights)"
    assert {name: set(m) for name, m in report["training"].items()} == {
        "teacher_step": STEP_KEYS,
        "distillation_step": STEP_KEYS,
    }
    assert json.loads(benchmark.report_json(report))["models"].keys() == report["models"].keys()


def test_typed_settings_and_arguments_are_checked():
    good = dict(seconds=1.0, naive_steps=8, batch=1, repeats=3, device="cpu", dtype="float32")
    settings = benchmark.Settings.checked(**good)
    assert settings.dtype == torch.float32 and settings.clip == benchmark.BUNDLED_CLIP
    for bad, message in [
        ({"seconds": 0}, "--seconds must be positive"),
        ({"naive_steps": 0}, "--naive-steps"),
        ({"repeats": 0}, "--repeats must be at least 1"),
        ({"dtype": "float16"}, "--dtype float16"),
    ]:
        with pytest.raises(UserError, match=message):
            benchmark.Settings.checked(**{**good, **bad})
    with pytest.raises(UserError, match="nothing to measure"):
        benchmark.benchmark(settings)
    with pytest.raises(UserError, match="--threads must be at least 1"):
        benchmark.benchmark(settings, teacher_config=Path("t.yaml"), threads=0)
    with pytest.raises(UserError, match="give --teacher or --teacher-config, not both"):
        benchmark.benchmark(settings, teacher=Path("t.pt"), teacher_config=Path("t.yaml"))


def test_benchmark_cli_writes_the_documented_json(tmp_path, tiny_config, capsys):
    config = tmp_path / "tiny.yaml"
    save_config(tiny_config, config)
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    code = main(
        [
            "--quiet",
            "benchmark",
            "--teacher-config",
            str(config),
            "--student-config",
            str(config),
            "--seconds",
            "0.02",
            "--naive-steps",
            "3",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--training",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    assert torch.get_num_threads() == threads  # --threads holds for the run only
    report = json.loads(out.read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "tiny.yaml"]
    assert set(report) == REPORT_KEYS | {"training"}
    assert report["threads"] == 1 and report["dtype"] == "float32"
    assert set(report["models"]) == {"student", "teacher_cached", "teacher_naive"}
    for name, m in report["models"].items():
        assert {
            "samples_per_s",
            "rtf",
            "flops_per_sample",
            "achieved_gflops",
            "peak_rss_mb",
            "config",
        } <= set(m), name
        assert m["samples_per_s"] > 0 and m["flops_per_sample"] > 0
        assert m["rtf"] == pytest.approx(tiny_config.audio.sample_rate / m["samples_per_s"])
        assert m["achieved_gflops"] == pytest.approx(
            m["flops_per_sample"] * m["samples_per_s"] / 1e9
        )
    models = report["models"]
    assert report["speedup_student_over_teacher"] == pytest.approx(
        models["student"]["samples_per_s"] / models["teacher_cached"]["samples_per_s"]
    )
    assert (
        models["teacher_cached"]["flops_per_sample"] == profiling.teacher_flops(tiny_config).total
    )
    assert set(report["training"]) == {"teacher_step", "distillation_step"}
    assert "teacher_cached" in capsys.readouterr().out


def test_benchmark_cli_refuses_bad_arguments(tmp_path, tiny_config, capsys):
    config = tmp_path / "tiny.yaml"
    save_config(tiny_config, config)
    assert main(["benchmark"]) == 2
    assert "nothing to measure" in capsys.readouterr().err
    assert main(["benchmark", "--teacher-config", str(config), "--seconds", "0"]) == 2
    assert "--seconds must be positive" in capsys.readouterr().err
    assert main(["benchmark", "--teacher-config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert (
        main(["benchmark", "--student-config", str(config), "--clip", str(tmp_path / "gone.wav")])
        == 2
    )
    assert "gone.wav" in capsys.readouterr().err
