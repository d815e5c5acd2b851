"""Teacher sampling: one sample per step, exact, in two ways.

* ``cached``: each step runs the teacher laid out for one-sample steps
  (:mod:`wavedistill.models.fused_wavenet`), ``O(L)`` per step.
* ``naive``: every step reruns the teacher's parallel pass over the receptive field that the
  step depends on. ``O(receptive field)`` per step; the reference the cached path must equal.
  Its windows (:func:`naive_windows`) are also what the benchmark's FLOP count of it uses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm import tqdm

from wavedistill.errors import UserError
from wavedistill.models.fused_wavenet import fuse_teacher, init_state, step

METHODS = ("cached", "naive")

Progress = Callable[[int, int], None]


# -- sampling --------------------------------------------------------------------------------


def _batch_size(mel: Tensor | None, speaker: Tensor | None, batch: int | None) -> int:
    """Clips to draw: the batch of ``mel`` / ``speaker``, else ``batch`` (default 1)."""
    sizes = {name: v.shape[0] for name, v in (("mel", mel), ("speaker", speaker)) if v is not None}
    if batch is not None:
        if batch <= 0:
            raise UserError(f"batch must be positive, got {batch}")
        sizes["batch"] = batch
    if len(set(sizes.values())) > 1:
        raise UserError("batch sizes disagree: " + ", ".join(f"{k}={v}" for k, v in sizes.items()))
    return next(iter(sizes.values()), 1)


def _clip_length(teacher, mel: Tensor | None, num_samples: int | None) -> int:
    if mel is not None and teacher.n_mels > 0:
        hop = teacher.conditioner.hop
        available = mel.shape[-1] * hop
        if num_samples is None:
            return available
        if not 0 < num_samples <= available:
            raise UserError(
                f"num_samples={num_samples} must be in [1, {available}] "
                f"({mel.shape[-1]} mel frames of hop {hop})"
            )
        return num_samples
    if num_samples is None or num_samples <= 0:
        raise UserError(
            f"num_samples must be a positive number for an unconditional teacher, got {num_samples}"
        )
    return num_samples


class _Reporter:
    """Progress of a generation: a callable ``(done_steps, total_steps)``, a tqdm bar in
    samples/s (``True``), or nothing."""

    every = 100

    def __init__(self, progress, total: int, batch: int):
        self.callback, self.bar = None, None
        if callable(progress):
            self.callback = progress
        elif progress:
            self.bar = tqdm(
                total=total * batch, unit="sample", unit_scale=True, desc="teacher sampling"
            )
        self.total, self.batch, self.reported = total, batch, 0

    def __call__(self, done: int) -> None:
        if done % self.every and done != self.total:
            return
        if self.callback is not None:
            self.callback(done, self.total)
        if self.bar is not None:
            self.bar.update((done - self.reported) * self.batch)
            if done == self.total:
                self.bar.close()
        self.reported = done


def _sample_cached(teacher, cond, audio, generator, report, precision) -> None:
    B, T = audio.shape
    fused = fuse_teacher(teacher, B, precision)
    state = init_state(fused, B, cond, audio.device)
    dist = teacher.distribution
    x = audio.new_zeros(B, 1, 1, dtype=fused.dtype)
    for t in range(T):
        params, state = step(fused, state, x)
        sample = dist.sample(params, generator)  # (B, 1)
        audio[:, t : t + 1] = sample
        x = teacher.encode_input(sample)  # (B, 1, 1)
        report(t + 1)


def naive_window(
    t: int, receptive_field: int, hop: int, context: int, frames: int
) -> tuple[int, int]:
    """Frames ``[f0, f1)`` of the parallel pass that gives step ``t`` exactly.

    Output ``t`` reads inputs ``x_{t-rf} .. x_{t-1}`` (the pass shifts by one, so the first
    window position must lie before ``t - rf + 1``), and the mel context convolution reads
    ``context`` frames on either side of every frame involved. For an unconditional teacher
    ``hop = 1`` and ``frames`` is the clip length, so the window is in samples.
    """
    first = max(0, t - receptive_field) // hop - context
    last = t // hop + context + 1
    return max(0, first), min(frames, last)


def naive_hop_and_context(teacher) -> tuple[int, int]:
    """``(hop, context)`` of the naive sampler's windows: samples per window unit and the mel
    context frames read on either side of a frame; ``(1, 0)`` for a teacher without mel, whose
    windows are in samples. The one place this geometry is derived (sampler and FLOP count)."""
    if teacher.n_mels == 0:
        return 1, 0
    context = teacher.conditioner.context
    return teacher.conditioner.hop, context.padding[0] if context is not None else 0


def naive_geometry(teacher, mel: Tensor | None, length: int) -> tuple[int, int, int]:
    """``(hop, context, frames)`` of the naive sampler's windows for a ``length``-sample clip:
    with mel conditioning, :func:`naive_hop_and_context` and the mel's frames; without,
    ``(1, 0, length)`` (windows in samples)."""
    if mel is None or teacher.n_mels == 0:
        return 1, 0, length  # a conditioned teacher given no mel refuses it in its pass
    return *naive_hop_and_context(teacher), mel.shape[-1]


def naive_windows(teacher, steps: range, frames: int) -> list[tuple[int, int]]:
    """:func:`naive_window` of every step of ``steps`` in a clip of ``frames`` window units
    (mel frames, or samples without mel): what the naive sampler runs its passes over."""
    hop, context = naive_hop_and_context(teacher)
    return [naive_window(t, teacher.receptive_field, hop, context, frames) for t in steps]


def steady_naive_steps(teacher, count: int) -> tuple[range, int]:
    """``count`` steps of the naive sampler whose windows are full (past the receptive field
    and the mel context; earlier steps see a shorter past and cost less), and the frames
    (samples without mel) of the clip that holds them."""
    hop, context = naive_hop_and_context(teacher)
    start = teacher.receptive_field + (context + 1) * hop
    stop = start + count
    return range(start, stop), (stop - 1) // hop + context + 1


def sample_naive_steps(
    teacher,
    mel,
    speaker,
    audio: Tensor,
    steps: range,
    generator: torch.Generator | None = None,
    report=None,
) -> None:
    """Draw ``audio[:, t]`` for ``t`` in ``steps``, in order, each by one parallel pass over the
    frames that step depends on (:func:`naive_windows`). ``audio`` ``(B, frames * hop)`` holds
    the past (drawn in place); later samples are never read by earlier steps (causality)."""
    dist = teacher.distribution
    conditioned = mel is not None and teacher.n_mels > 0
    hop, _, frames = naive_geometry(teacher, mel, audio.shape[-1])
    # the whole clip's excitation, cut per window: its phase runs from the clip's start
    excitation = getattr(teacher, "excitation", None)
    source = excitation(mel) if conditioned and excitation is not None else None
    for t, (f0, f1) in zip(steps, naive_windows(teacher, steps, frames), strict=True):
        window_mel = mel[:, :, f0:f1] if conditioned else None
        window_source = source[..., f0 * hop : f1 * hop] if source is not None else None
        params = teacher(audio[:, f0 * hop : f1 * hop], window_mel, speaker, window_source)
        pos = t - f0 * hop
        audio[:, t] = dist.sample(params[:, :, pos : pos + 1], generator)[:, 0]
        if report is not None:
            report(t + 1)


def _sample_naive(teacher, mel, speaker, audio, generator, report) -> None:
    B, T = audio.shape
    hop, _, frames = naive_geometry(teacher, mel, T)
    # the passes read whole frames: past T (when fewer samples than frames are drawn) the
    # buffer holds zeros, which causality keeps from reaching any drawn step
    work = audio if frames * hop == T else audio.new_zeros(B, frames * hop)
    sample_naive_steps(teacher, mel, speaker, work, range(T), generator, report)
    audio.copy_(work[:, :T])


@torch.inference_mode()
def generate(
    teacher,
    mel: Tensor | None = None,
    speaker: Tensor | None = None,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
    method: str = "cached",
    progress: bool | Progress | None = None,
    precision: str | None = None,
    batch: int | None = None,
) -> Tensor:
    """Draw audio from the teacher, one sample per step: ``(B, T)`` float32 in [-1, 1].

    ``mel`` ``(B, n_mels, F)`` normalised (``T = F hop`` unless ``num_samples`` is smaller),
    ``speaker`` ``(B,)``; an unconditional teacher needs ``num_samples`` (and ``batch`` for more
    than one clip). ``method``: ``"cached"`` (fast) or ``"naive"`` (reference); both consume
    ``generator`` in the same order, so a fixed seed gives the same audio. ``progress``: True
    for a tqdm bar in samples/s, or ``callable(done_steps, total_steps)``. ``precision``: see
    :func:`fuse_teacher` (cached only). The teacher runs in eval mode and gets its mode back.
    """
    if method not in METHODS:
        raise UserError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    T = _clip_length(teacher, mel, num_samples)
    cond = teacher.conditioning(mel, speaker)  # validates mel and speaker against the model
    B = _batch_size(mel if teacher.n_mels else None, speaker, batch)
    device = teacher.input_conv.weight.device
    audio = torch.zeros(B, T, dtype=torch.float32, device=device)
    report = _Reporter(progress, T, B)
    was_training = teacher.training
    teacher.eval()
    try:
        if method == "cached":
            _sample_cached(teacher, cond, audio, generator, report, precision)
        else:
            if precision is not None:
                raise UserError("precision is an option of the cached method only")
            # the reference path runs in the teacher's own dtype (float64 in exactness tests)
            work = audio.to(teacher.input_conv.weight.dtype)
            _sample_naive(teacher, mel, speaker, work, generator, report)
            audio.copy_(work)
    finally:
        teacher.train(was_training)
    return audio
