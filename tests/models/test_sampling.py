"""Teacher sampling: the cached incremental path equals the parallel pass step for step, and
cached and naive sampling draw the same audio from the same seed."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from torch import Tensor

from wavedistill.errors import UserError
from wavedistill.models import fused_wavenet as generation
from wavedistill.models.fused_wavenet import fuse_teacher, init_state, step
from wavedistill.models.sampling import generate, naive_window
from wavedistill.models.teacher import WaveNetTeacher

HOP, N_MELS, SPEAKERS = 8, 5, 3


@torch.inference_mode()
def teacher_forced_params(
    teacher,
    audio: Tensor,
    mel: Tensor | None = None,
    speaker: Tensor | None = None,
    precision: str | None = None,
) -> Tensor:
    """The cached path run on true previous samples: ``audio (B, T)`` -> params ``(B, P, T)``.

    Equals ``teacher(audio, mel, speaker)`` to float precision (``precision`` as in
    :func:`fuse_teacher`); it is how the incremental path is checked against the parallel one.
    """
    B, T = audio.shape
    fused = fuse_teacher(teacher, B, precision)
    state = init_state(fused, B, teacher.conditioning(mel, speaker), audio.device)
    inputs = teacher.encode_input(audio).to(fused.dtype)  # (B, 1, T)
    out = audio.new_empty(B, fused.num_params, T, dtype=fused.dtype)
    x = inputs.new_zeros(B, 1, 1)
    for t in range(T):
        params, state = step(fused, state, x)
        out[:, :, t : t + 1] = params
        x = inputs[:, :, t : t + 1]
    return out


def make_teacher(
    output: str = "mol",
    kernel_size: int = 3,
    mel: bool = True,
    speakers: int = 0,
    layers: int = 6,
    stacks: int = 2,
) -> WaveNetTeacher:
    """A tiny teacher with random weights large enough that every layer matters."""
    cfg = tiny_config(
        {
            "audio": {"hop_length": HOP, "n_mels": N_MELS},
            "data": {"segment_length": 16 * HOP},
            "teacher": {
                "output": output,
                "layers": layers,
                "stacks": stacks,
                "kernel_size": kernel_size,
                "residual_channels": 4,
                "gate_channels": 6,
                "skip_channels": 5,
                "num_mixtures": 2,
                "upsample_factors": [2, 4],
                "use_mel": mel,
                "num_speakers": speakers,
                "mu_law_levels": 16,
            },
        }
    )
    torch.manual_seed(0)
    teacher = WaveNetTeacher.from_config(cfg).eval()
    with torch.no_grad():
        for p in teacher.parameters():
            p.normal_(0.0, 0.5)
    return teacher


def inputs(teacher: WaveNetTeacher, batch: int, frames: int, dtype=torch.float32):
    """Mel, speaker and a clip on the head's grid for ``teacher``."""
    g = torch.Generator().manual_seed(1)
    mel = torch.randn(batch, N_MELS, frames, generator=g, dtype=dtype) if teacher.n_mels else None
    speaker = torch.arange(batch) % SPEAKERS if teacher.num_speakers else None
    params = torch.randn(batch, teacher.distribution.num_params, frames * HOP, generator=g)
    audio = teacher.distribution.sample(params, g).to(dtype)
    return mel, speaker, audio


HEADS = ["mol", "gaussian", "categorical"]
CONDITIONS = [(True, 0), (False, 0), (True, SPEAKERS), (False, SPEAKERS)]


@pytest.mark.parametrize("output", HEADS)
@pytest.mark.parametrize("kernel_size", [2, 3])
@pytest.mark.parametrize("mel,speakers", CONDITIONS)
def test_incremental_parameters_equal_the_parallel_pass(
    monkeypatch, output, kernel_size, mel, speakers
):
    monkeypatch.setattr(generation, "_MIN_STEPS_BETWEEN_SHIFTS", 16)  # compact within the clip
    teacher = make_teacher(output, kernel_size, mel, speakers)
    mel_in, speaker, audio = inputs(teacher, batch=2, frames=10)
    with torch.no_grad():
        parallel = teacher(audio, mel_in, speaker)
    incremental = teacher_forced_params(teacher, audio, mel_in, speaker)
    assert incremental.shape == parallel.shape
    torch.testing.assert_close(incremental, parallel, rtol=0, atol=1e-5)


def test_history_compaction_keeps_the_result_exact_when_it_happens_every_few_steps(monkeypatch):
    # the fewest columns the layout allows: every layer compacts every (k - 1) d steps
    monkeypatch.setattr(generation, "_MIN_STEPS_BETWEEN_SHIFTS", 1)
    teacher = make_teacher("mol", kernel_size=3, layers=8, stacks=2)
    mel, speaker, audio = inputs(teacher, batch=1, frames=12)
    with torch.no_grad():
        parallel = teacher(audio, mel, speaker)
    torch.testing.assert_close(
        teacher_forced_params(teacher, audio, mel, speaker), parallel, rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("kernel_size", [2, 3])
@pytest.mark.parametrize("min_dilation", [1, 2])
def test_past_taps_computed_in_blocks_of_d_steps_equal_the_parallel_pass(
    monkeypatch, kernel_size, min_dilation
):
    # large teachers block every wide layer; force it on a tiny one, with frequent compaction
    monkeypatch.setattr(generation, "_BLOCK_MIN_WEIGHTS", 0)
    monkeypatch.setattr(generation, "_BLOCK_MIN_DILATION", min_dilation)
    monkeypatch.setattr(generation, "_MIN_STEPS_BETWEEN_SHIFTS", 8)
    teacher = make_teacher("mol", kernel_size, speakers=SPEAKERS)
    assert all(
        lw.past is not None for lw in fuse_teacher(teacher).layers if lw.dilation >= min_dilation
    )
    mel, speaker, audio = inputs(teacher, batch=2, frames=12)
    with torch.no_grad():
        parallel = teacher(audio, mel, speaker)
    for precision, atol in ((None, 1e-5), ("bfloat16", 0.05 * parallel.abs().max())):
        torch.testing.assert_close(
            teacher_forced_params(teacher, audio, mel, speaker, precision=precision),
            parallel,
            rtol=0,
            atol=atol,
        )


def test_clips_of_a_batch_are_independent():
    teacher = make_teacher("gaussian", speakers=SPEAKERS)
    mel, speaker, audio = inputs(teacher, batch=3, frames=6)
    together = teacher_forced_params(teacher, audio, mel, speaker)
    for i in range(3):
        alone = teacher_forced_params(teacher, audio[i : i + 1], mel[i : i + 1], speaker[i : i + 1])
        torch.testing.assert_close(alone[0], together[i], rtol=0, atol=1e-6)


def test_step_advances_the_state_it_is_given_and_leaves_others_alone():
    teacher = make_teacher("mol")
    mel, _, _ = inputs(teacher, batch=1, frames=4)
    fused = fuse_teacher(teacher)
    cond = teacher.conditioning(mel)
    a, b = init_state(fused, 1, cond), init_state(fused, 1, cond)
    x = torch.full((1, 1, 1), 0.25)
    with torch.inference_mode():
        first = step(fused, a, torch.zeros(1, 1, 1))[0].clone()
        _, a = step(fused, a, x)
        again = step(fused, b, torch.zeros(1, 1, 1))[0]
    assert first.shape == (1, teacher.distribution.num_params, 1)
    assert (a.t, b.t) == (2, 1)
    torch.testing.assert_close(again, first, rtol=0, atol=0)


@pytest.mark.parametrize("output", HEADS)
@pytest.mark.parametrize("mel,speakers", [(True, SPEAKERS), (False, 0)])
def test_cached_and_naive_sampling_draw_the_same_audio_from_one_seed(output, mel, speakers):
    # float64 networks: rounding to the 16-bit grid cannot flip between the two paths
    teacher = make_teacher(output, kernel_size=3, mel=mel, speakers=speakers).double()
    mel_in, speaker, _ = inputs(teacher, batch=2, frames=10, dtype=torch.float64)
    kwargs = dict(mel=mel_in, speaker=speaker, num_samples=None if mel else 10 * HOP, batch=2)
    runs = [
        generate(teacher, generator=torch.Generator().manual_seed(7), method=m, **kwargs)
        for m in ("cached", "naive")
    ]
    assert runs[0].shape == (2, 10 * HOP) and runs[0].dtype == torch.float32
    assert torch.equal(runs[0], runs[1])
    assert runs[0].abs().max() <= 1.0


def test_a_span_shorter_than_the_mel_draws_the_same_audio_both_ways():
    # 29 samples of a 10-frame mel: the naive passes still read whole frames
    teacher = make_teacher("mol").double()
    mel, _, _ = inputs(teacher, batch=2, frames=10, dtype=torch.float64)
    runs = [
        generate(teacher, mel, num_samples=29, generator=torch.Generator().manual_seed(3), method=m)
        for m in ("cached", "naive")
    ]
    assert runs[0].shape == (2, 29)
    assert torch.equal(runs[0], runs[1])


def test_the_seed_decides_the_audio():
    teacher = make_teacher("mol")
    mel, _, _ = inputs(teacher, batch=1, frames=4)
    draw = [generate(teacher, mel, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(draw[0], draw[1])
    assert not torch.equal(draw[0], draw[2])


def test_generated_audio_lies_on_the_16_bit_grid():
    teacher = make_teacher("gaussian")
    mel, _, _ = inputs(teacher, batch=2, frames=3)
    audio = generate(teacher, mel, num_samples=20, generator=torch.Generator().manual_seed(0))
    assert audio.shape == (2, 20)
    levels = (audio.double() + 1.0) * 65535 / 2
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-2)  # float32 spacing


def test_bfloat16_products_stay_close_to_the_exact_parameters():
    teacher = make_teacher("mol", speakers=SPEAKERS)
    mel, speaker, audio = inputs(teacher, batch=2, frames=6)
    exact = teacher_forced_params(teacher, audio, mel, speaker)
    approx = teacher_forced_params(teacher, audio, mel, speaker, precision="bfloat16")
    assert approx.dtype == torch.float32
    scale = exact.abs().max()
    assert (approx - exact).abs().max() < 0.05 * scale


def test_progress_callback_hears_of_every_step_up_to_the_last():
    teacher = make_teacher("mol", mel=False)
    seen = []
    generate(teacher, num_samples=250, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (250, 250)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_naive_window_includes_the_receptive_field_and_the_mel_context():
    rf, hop, context = 29, 8, 1
    for t in range(0, 200, 7):
        f0, f1 = naive_window(t, rf, hop, context, frames=25)
        assert f0 * hop <= max(0, t - rf) and (f0 == 0 or f0 * hop <= t - rf - context * hop)
        assert t < f1 * hop and (f1 == 25 or (f1 - context) * hop > t)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(method="beam"), "method"),
        (dict(num_samples=None), "num_samples"),
        (dict(num_samples=0), "num_samples"),
        (dict(num_samples=10, precision="float16"), "precision"),
        (dict(num_samples=10, method="naive", precision="bfloat16"), "cached"),
        (dict(num_samples=10, batch=0), "batch"),
    ],
)
def test_bad_requests_are_user_errors(kwargs, message):
    teacher = make_teacher("mol", mel=False)
    with pytest.raises(UserError, match=message):
        generate(teacher, **kwargs)


def test_more_samples_than_the_mel_covers_is_a_user_error():
    teacher = make_teacher("mol")
    mel, _, _ = inputs(teacher, batch=1, frames=2)
    with pytest.raises(UserError, match="num_samples"):
        generate(teacher, mel, num_samples=3 * HOP)
