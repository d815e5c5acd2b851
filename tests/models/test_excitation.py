"""The harmonic excitation: continuous phase, silence where unvoiced, nothing at or above
Nyquist, deterministic, and its shape; and the model paths that take it (fused and cached
paths equal the batch paths, spans and chunked generation equal one pass, refusals)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wavedistill.config import config_from_dict
from wavedistill.errors import UserError
from wavedistill.models.excitation import (
    AMPLITUDE,
    CHANNELS,
    HarmonicSource,
    harmonic_excitation,
    interpolate_frames,
    lock_phase,
    phase_cycles,
)

SR, HOP = 16000, 160


def steps(values, frames_each=4):
    """Per-frame values, each repeated ``frames_each`` frames: ``(1, F)``."""
    return torch.tensor(np.repeat(values, frames_each), dtype=torch.float32)[None]


# -- the signal ------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.0, HOP / 2])
def test_phase_is_continuous_when_f0_changes(offset):
    f0 = steps([120.0, 200.0, 90.0, 310.0])
    freq = interpolate_frames(f0, HOP, offset)
    cycles = phase_cycles(freq, SR)
    increments = torch.remainder(torch.diff(cycles, dim=-1) + 0.5, 1.0) - 0.5  # unwrapped
    # every step advances by the previous sample's frequency: no jump at any frame boundary
    torch.testing.assert_close(increments, freq[:, :-1] / SR, rtol=0, atol=1e-9)
    assert float(cycles[0, 0]) == 0.0  # phase 0 at the clip's first sample
    # the one-harmonic signal itself: no step larger than one sample's phase increment allows
    x = harmonic_excitation(f0, torch.ones_like(f0), SR, HOP, offset, max_harmonics=1)[0, 0]
    peak = AMPLITUDE * math.sqrt(2)
    assert float(torch.diff(x).abs().max()) <= peak * 2 * math.pi * 310 / SR + 1e-6
    torch.testing.assert_close(x, (peak * torch.sin(2 * math.pi * cycles[0])).float())


def test_frequency_glides_linearly_between_frame_centres():
    f0 = torch.tensor([[100.0, 200.0, 300.0]])
    freq = interpolate_frames(f0, HOP, 0.0)[0]
    assert float(freq[0]) == 100.0 and float(freq[HOP]) == 200.0 and float(freq[-1]) == 300.0
    assert float(freq[HOP // 2]) == 150.0


def test_unvoiced_frames_are_exactly_silent_away_from_the_ramps():
    voiced = steps([1.0, 0.0, 1.0], frames_each=5)  # frames 5..9 unvoiced
    f0 = torch.full_like(voiced, 150.0)
    out = harmonic_excitation(f0, voiced, SR, HOP, 0.0)
    # centres f * HOP: samples between the centres of frames 5 and 9 have both neighbours
    # unvoiced; frames 4 -> 5 and 9 -> 10 ramp over one hop
    quiet = out[0, :, 5 * HOP : 9 * HOP + 1]
    assert torch.equal(quiet, torch.zeros_like(quiet))
    gate = out[0, 1]
    ramp = gate[4 * HOP : 5 * HOP + 1]
    assert float(ramp[0]) == 1.0 and float(ramp[-1]) == 0.0
    assert torch.all(torch.diff(ramp) < 0)  # a ramp, not a jump
    assert float(out[0, 0, : 4 * HOP].abs().max()) > 0.05  # voiced frames carry harmonics


@pytest.mark.parametrize("f0", [310.0, 450.0, 1234.0])
def test_no_harmonic_at_or_above_nyquist(f0):
    """One second of constant F0 (a whole number of periods): every bin of the spectrum that
    is not a harmonic below Nyquist is empty, so nothing aliased back."""
    frames = SR // HOP
    out = harmonic_excitation(torch.full((1, frames), f0), torch.ones(1, frames), SR, HOP)
    spectrum = np.abs(np.fft.rfft(out[0, 0].double().numpy())) ** 2  # bins 1 Hz apart
    harmonics = np.arange(int(f0), SR // 2, int(f0))  # multiples of f0 below Nyquist
    elsewhere = np.delete(spectrum, harmonics)
    assert elsewhere.max() < 1e-9 * spectrum.max()
    assert spectrum[harmonics].min() > 0  # each harmonic below Nyquist is present
    # a harmonic within 5% of Nyquist is faded, not switched
    top = harmonics[-1]
    if SR / 2 - top < 0.05 * SR / 2:
        assert spectrum[top] < spectrum[harmonics[0]]


def test_excitation_of_the_same_mel_is_the_same_and_has_its_shape():
    torch.manual_seed(0)
    source = voiced_source(n_mels=6)
    mel = torch.randn(3, 6, 9)
    a, b = source(mel), source(mel)
    assert a.shape == (3, CHANNELS, 9 * HOP) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert float(a[:, 0].abs().max()) > 0 and float(a[:, 1].max()) == 1.0
    assert not a.requires_grad


@pytest.mark.parametrize("offset", [0.0, HOP / 2])
@pytest.mark.parametrize("glide", [False, True])
def test_a_locked_phase_follows_the_clips_fundamental(offset, glide):
    frames = 40
    n = frames * HOP
    f0 = torch.linspace(120.0, 180.0, n) if glide else torch.full((n,), 150.0)
    f0 = f0.double()[None]
    free = phase_cycles(f0, SR)  # (1, T): the phase from F0 alone, 0 at the first sample
    true = free + 0.3 + 0.1 * torch.sin(torch.arange(n, dtype=torch.float64)[None] / 3000)
    # a clip whose fundamental runs at the same F0 but with its own phase, plus a harmonic
    x = 0.5 * torch.cos(2 * math.pi * true) + 0.2 * torch.cos(4 * math.pi * true + 1.0)
    locked = lock_phase(free, x.float(), HOP, offset)
    inner = slice(2 * HOP, n - 2 * HOP)  # the edges see half a window
    error = torch.remainder(locked - true + 0.5, 1.0) - 0.5  # cycles, wrapped
    assert error[:, inner].abs().max() < 0.02  # within 7 degrees of the clip's phase
    before = torch.remainder(free - true + 0.5, 1.0) - 0.5
    assert before[:, inner].abs().mean() > 0.2  # the free phase is not aligned at all


def test_the_locked_excitation_differs_from_the_free_one_only_by_its_phase():
    f0 = torch.full((1, 20), 140.0)
    voiced = torch.ones(1, 20)
    x = torch.cos(2 * math.pi * 140.0 * torch.arange(20 * HOP) / SR + 2.0)[None]
    free = harmonic_excitation(f0, voiced, SR, HOP)
    locked = harmonic_excitation(f0, voiced, SR, HOP, audio=x)
    assert not torch.allclose(free[:, 0], locked[:, 0], atol=1e-3)
    torch.testing.assert_close(free[:, 1], locked[:, 1])  # the voicing gate is the same
    torch.testing.assert_close(
        free[:, 0].square().mean(), locked[:, 0].square().mean(), rtol=1e-3, atol=0
    )


def test_max_harmonics_limits_the_sum():
    f0 = torch.full((1, 100), 200.0)
    out = harmonic_excitation(f0, torch.ones(1, 100), SR, HOP, max_harmonics=3)
    spectrum = np.abs(np.fft.rfft(out[0, 0].double().numpy())) ** 2
    assert spectrum[800] < 1e-9 * spectrum.max() and spectrum[600] > 0


def voiced_source(n_mels: int = 4, hop: int = HOP) -> HarmonicSource:
    """A source whose random predictor calls about half of the frames voiced."""
    source = HarmonicSource(n_mels, SR, hop, max_harmonics=8)
    with torch.no_grad():
        source.predictor.out.weight.normal_(0.0, 1.0)
        source.predictor.out.bias.zero_()
    return source


# -- the models that take it -----------------------------------------------------------------

N_MELS = 4


def student_with_source(dtype=torch.float64, out_std=0.1, initial_scale=0.5, seed=0):
    from wavedistill.models.student import IAFStudent

    torch.manual_seed(seed)
    student = IAFStudent(
        N_MELS,
        [2, 3],
        4,
        3,
        2,
        "logistic",
        upsample_factors=[4, 4],
        synthesis_tile=32,
        initial_scale=initial_scale,
        excitation=voiced_source(N_MELS, 16),
    )
    for flow in student.flows:
        torch.nn.init.normal_(flow.output.weight, std=out_std)
        torch.nn.init.normal_(flow.input_conv.weight, std=1.0)  # the excitation matters
    return student.to(dtype)


def test_the_students_first_layers_take_the_excitation():
    student = student_with_source(torch.float32)
    assert all(f.input_conv.in_channels == 1 + CHANNELS for f in student.flows)
    assert not any(p.requires_grad for p in student.excitation.parameters())
    keys = student.state_dict()
    assert any(k.startswith("excitation.predictor.") for k in keys)
    assert "excitation.predictor.f0_range" in keys


def test_the_excitation_changes_the_students_output():
    student = student_with_source(torch.float32)
    mel = torch.randn(1, N_MELS, 6)
    z = student.sample_noise((1, 6 * 16), torch.Generator().manual_seed(0))
    x, _, _ = student(z, mel)
    cond = student.conditioning(mel)
    cond.source = torch.zeros_like(cond.source)
    assert not torch.allclose(student._run_flows(z, cond)[0], x)


@pytest.mark.parametrize("tile", [32, 1024])
def test_fused_synthesis_with_an_excitation_equals_the_module_path(tile):
    student = student_with_source(torch.float32)
    student.synthesis_tile = tile
    mel = torch.randn(2, N_MELS, 7)
    z = student.sample_noise((2, 7 * 16), torch.Generator().manual_seed(1))
    x, _, _ = student(z, mel)
    fast = student.synthesize_from_noise(z, mel)
    torch.testing.assert_close(fast, x.clamp(-1, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_frames", [1, 3, 100])
def test_spans_with_the_whole_clips_excitation_equal_one_pass(chunk_frames):
    student = student_with_source(torch.float32)
    mel = torch.randn(2, N_MELS, 11)
    z = student.sample_noise((2, 11 * 16), torch.Generator().manual_seed(5))
    one = student.synthesize_from_noise(z, mel)
    source = student.excitation(mel)  # its phase runs from the clip's first sample
    spans = [
        student.synthesize_span(z, mel, f0, min(11, f0 + chunk_frames), source=source)
        for f0 in range(0, 11, chunk_frames)
    ]
    torch.testing.assert_close(torch.cat(spans, dim=1), one, rtol=1e-5, atol=1e-5)


def make_teacher(source: str = "harmonic", output: str = "mol"):
    from wavedistill.models.teacher import WaveNetTeacher

    cfg = config_from_dict(
        {
            "audio": {"hop_length": 8, "n_mels": N_MELS},
            "data": {"segment_length": 128},
            "teacher": {
                "output": output,
                "layers": 6,
                "stacks": 2,
                "residual_channels": 4,
                "gate_channels": 6,
                "skip_channels": 5,
                "num_mixtures": 2,
                "upsample_factors": [2, 4],
                "source": source,
                "source_harmonics": 6,
            },
        }
    )
    torch.manual_seed(0)
    teacher = WaveNetTeacher.from_config(cfg).eval()
    with torch.no_grad():
        for p in teacher.parameters():
            p.normal_(0.0, 0.5)
        if teacher.excitation is not None:
            teacher.excitation.predictor.out.bias.zero_()
    return teacher


def test_the_teachers_cached_steps_equal_its_parallel_pass_with_an_excitation():
    from tests.models.test_sampling import teacher_forced_params

    teacher = make_teacher()
    assert teacher.input_conv.in_channels == 1 + CHANNELS
    g = torch.Generator().manual_seed(1)
    mel = torch.randn(2, N_MELS, 10, generator=g)
    assert float(teacher.excitation(mel)[:, 0].abs().max()) > 0
    audio = teacher.distribution.sample(
        torch.randn(2, teacher.distribution.num_params, 80, generator=g), g
    )
    with torch.no_grad():
        parallel = teacher(audio, mel)
    torch.testing.assert_close(
        teacher_forced_params(teacher, audio, mel), parallel, rtol=0, atol=1e-5
    )


def test_cached_and_naive_sampling_agree_with_an_excitation():
    from wavedistill.models.sampling import generate

    teacher = make_teacher().double()
    mel = torch.randn(2, N_MELS, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    runs = [
        generate(teacher, mel, generator=torch.Generator().manual_seed(7), method=m)
        for m in ("cached", "naive")
    ]
    assert torch.equal(runs[0], runs[1])


def test_the_default_teacher_has_no_excitation_and_one_input_channel():
    teacher = make_teacher("none")
    assert teacher.excitation is None and teacher.input_conv.in_channels == 1
    assert not any(k.startswith("excitation") for k in teacher.state_dict())


def test_the_student_inherits_the_teachers_predictor_frozen():
    from wavedistill.models.excitation import inherit_predictor

    teacher = make_teacher()
    student = student_with_source(torch.float32)
    inherit_predictor(student, teacher)
    for (k, a), (_, b) in zip(
        student.excitation.predictor.state_dict().items(),
        teacher.excitation.predictor.state_dict().items(),
        strict=True,
    ):
        assert torch.equal(a, b), k
    assert not any(p.requires_grad for p in student.excitation.parameters())
    with pytest.raises(UserError, match="source"):
        inherit_predictor(student, make_teacher("none"))


def test_streaming_and_deployment_refuse_an_excitation_in_one_line():
    from types import SimpleNamespace

    from wavedistill.inference.synthesizer import Synthesizer
    from wavedistill.store.export import check_deployable

    student = student_with_source(torch.float32)
    loaded = SimpleNamespace(kind="student", model=student, source="model")
    with pytest.raises(UserError, match="excitation") as info:
        check_deployable(loaded)
    assert "\n" not in str(info.value)
    synth = Synthesizer.__new__(Synthesizer)
    synth.loaded = SimpleNamespace(kind="student", model=student)
    with pytest.raises(UserError, match="whole clips"):
        next(synth.stream([torch.zeros(N_MELS, 3)]))


def test_chunked_generation_of_an_excitation_student_is_the_one_pass_audio():
    from wavedistill.inference.synthesizer import Synthesizer
    from wavedistill.store.loading import LoadedModel

    cfg = config_from_dict({"audio": {"hop_length": 16, "n_mels": N_MELS}})
    student = student_with_source(torch.float32).eval()
    synth = Synthesizer(LoadedModel("student", student, cfg, None, "model"))
    mels = [torch.randn(N_MELS, 9), torch.randn(N_MELS, 5)]
    whole = synth.generate(mels, seed=3)
    chunked = synth.generate(mels, seed=3, chunk_seconds=2 * 16 / cfg.audio.sample_rate)
    assert synth.has_excitation
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_array_equal(a, b)


def test_maximum_likelihood_with_a_locked_phase_scores_the_clip_under_its_locked_excitation():
    from wavedistill.objectives.likelihood import MaximumLikelihood

    teacher = make_teacher("harmonic", "gaussian")
    g = torch.Generator().manual_seed(3)
    mel = torch.randn(2, N_MELS, 16, generator=g)
    audio = 0.3 * torch.cos(2 * math.pi * 180.0 * torch.arange(128) / SR + 0.7).expand(2, -1)
    batch = {"audio": audio, "mel": mel, "f0": torch.full((2, 16), 180.0)}
    locked, _ = MaximumLikelihood(pitch_weight=0.0, locked_phase=True).loss(teacher, batch)
    free, _ = MaximumLikelihood(pitch_weight=0.0).loss(teacher, batch)
    source = teacher.excitation(mel, audio)
    expected = -teacher.distribution.log_prob(teacher(audio, mel, None, source), audio).mean()
    torch.testing.assert_close(locked, expected)
    assert not torch.allclose(locked, free)


def test_check_teacher_compatible_names_differing_sources():
    from wavedistill.objectives.distillation import check_teacher_compatible

    teacher_cfg = config_from_dict({"teacher": {"source": "harmonic"}})
    with pytest.raises(UserError, match="student.source"):
        check_teacher_compatible(teacher_cfg, config_from_dict({}))
    check_teacher_compatible(teacher_cfg, config_from_dict({"student": {"source": "harmonic"}}))
