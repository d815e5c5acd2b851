"""The two directions of an autoregressive flow, counted in network passes.

MAF direction (the teacher): the density of a whole clip takes ONE pass of the network,
sampling takes one pass PER SAMPLE. IAF direction (the student): sampling a whole clip takes
ONE pass of every flow, the density of a given clip takes one pass PER SAMPLE.

Passes are counted on the code that ships, so the count is what the code does, not what it
claims: forward hooks on the real modules (the teacher's residual stack, each student flow)
where the modules run, and counting wrappers around the fast paths that bypass them -- the
teacher's cached sampler calls :func:`wavedistill.models.sampling.step` once per network pass, and
the student's synthesis calls :func:`wavedistill.models.fused_flows.fused_flow` once per flow pass.
"""

import pytest
import torch

from wavedistill.config import config_from_dict
from wavedistill.models import sampling as generation
from wavedistill.models import student as student_module
from wavedistill.models.sampling import generate
from wavedistill.models.student import IAFStudent
from wavedistill.models.teacher import WaveNetTeacher

HOP = 4
CONFIG = {
    "audio": {"hop_length": HOP, "n_fft": 16, "win_length": 16, "n_mels": 4},
    "teacher": {
        "output": "gaussian",
        "layers": 2,
        "stacks": 1,
        "residual_channels": 4,
        "gate_channels": 8,
        "skip_channels": 4,
    },
    "student": {"flow_layers": [2, 2], "channels": 4, "dilation_cycle": 2},
}


class PassCounter:
    """Counts forward calls of a module (a forward hook)."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.calls += 1


def count_calls(monkeypatch, module, name):
    """Replace ``module.name`` by a wrapper that records each call's arguments; returns the
    list of recorded argument tuples."""
    calls, inner = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return inner(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    return WaveNetTeacher.from_config(config_from_dict(CONFIG)).eval()


@pytest.fixture
def student():
    torch.manual_seed(0)
    model = IAFStudent.from_config(config_from_dict(CONFIG)).eval()
    for flow in model.flows:  # strong dependence on the past: no step converges early
        torch.nn.init.normal_(flow.output.weight, std=0.5)
    return model


@pytest.mark.parametrize("frames", [2, 4])
def test_teacher_density_of_a_clip_takes_one_network_pass(teacher, frames):
    counter = PassCounter(teacher.stack)
    audio = 0.1 * torch.randn(2, frames * HOP)
    teacher.log_prob(audio, torch.randn(2, 4, frames))
    assert counter.calls == 1


@pytest.mark.parametrize("frames", [2, 4])
def test_teacher_sampling_takes_one_network_pass_per_sample(teacher, frames, monkeypatch):
    # the shipped (cached) sampler: one fused step of the whole network per sample, and the
    # stack module itself never runs
    steps = count_calls(monkeypatch, generation, "step")
    counter = PassCounter(teacher.stack)
    generate(teacher, torch.randn(1, 4, frames), generator=torch.Generator().manual_seed(0))
    assert (len(steps), counter.calls) == (frames * HOP, 0)


@pytest.mark.parametrize("frames", [2, 4])
def test_teacher_reference_sampler_takes_one_parallel_pass_per_sample(teacher, frames):
    counter = PassCounter(teacher.stack)
    generate(
        teacher,
        torch.randn(1, 4, frames),
        method="naive",
        generator=torch.Generator().manual_seed(0),
    )
    assert counter.calls == frames * HOP


@pytest.mark.parametrize("frames", [2, 4])
def test_student_synthesis_of_a_clip_takes_one_pass_of_every_flow(student, frames, monkeypatch):
    # the shipped path: one fused pass per flow, each over the whole clip at once; the flow
    # modules themselves never run
    passes = count_calls(monkeypatch, student_module, "fused_flow")
    counters = [PassCounter(flow) for flow in student.flows]
    audio = student.synthesize(torch.randn(2, 4, frames))
    assert audio.shape == (2, frames * HOP)
    assert [args[0] for args in passes] == list(student.flows)
    assert [args[1].shape for args in passes] == [audio.shape] * len(student.flows)
    assert [c.calls for c in counters] == [0] * len(student.flows)


@pytest.mark.parametrize("chunks", [1, 2])
def test_chunked_student_synthesis_takes_one_pass_of_every_flow_per_chunk(
    student, chunks, monkeypatch
):
    passes = count_calls(monkeypatch, student_module, "fused_flow")
    frames = 4
    mel, step = torch.randn(1, 4, frames), frames // chunks
    z = student.sample_noise((1, frames * HOP))
    for f0 in range(0, frames, step):
        student.synthesize_span(z, mel, f0, f0 + step)
    assert [args[0] for args in passes] == list(student.flows) * chunks


@pytest.mark.parametrize("frames", [2, 4])
def test_student_training_pass_takes_one_pass_of_every_flow(student, frames):
    # the module path that distillation differentiates through
    counters = [PassCounter(flow) for flow in student.flows]
    z = student.sample_noise((2, frames * HOP))
    student(z, torch.randn(2, 4, frames))
    assert [c.calls for c in counters] == [1] * len(student.flows)


@pytest.mark.parametrize("frames", [2, 4])
def test_student_density_of_a_clip_takes_one_pass_of_every_flow_per_sample(student, frames):
    mel = torch.randn(1, 4, frames)
    with torch.no_grad():
        x, _, _ = student(student.sample_noise((1, frames * HOP)), mel)
    counters = [PassCounter(flow) for flow in student.flows]
    student.log_prob(x, mel)
    assert [c.calls for c in counters] == [frames * HOP] * len(student.flows)
