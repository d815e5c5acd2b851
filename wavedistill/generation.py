"""Teacher sampling: one sample per step, exact, in two ways.

* ``cached`` (Fast WaveNet, Paine et al., 2016): every dilated layer keeps the inputs its
  future steps still need in an explicit :class:`TeacherState`, so a step costs ``O(L)``.
* ``naive``: every step reruns the teacher's parallel pass over the receptive field that the
  step depends on. ``O(receptive field)`` per step; the reference the cached path must equal.
  Its windows (:func:`naive_windows`) are also what the benchmark's FLOP count of it uses.

A cached step is a handful of matrix-vector products per layer, so at batch 1 on a CPU its cost
is the number of operations, not arithmetic. The step is therefore laid out for few operations
on preallocated memory:

* each layer's ``k`` kernel taps are one ``(k R, G)`` matrix, and the ``k`` inputs they read are
  contiguous in the layer's history buffer, so one ``addmm`` does all taps;
* the mel conditioning of every layer stays at frame rate (see :mod:`wavedistill.networks`):
  at sample ``t = f hop + o`` it is ``W[o] P[f] + g`` -- one ``add`` for all layers per step,
  with the layers' conv biases and the speaker term ``g`` folded into one constant;
* the skip projections of all layers are one ``(L G/2, S)`` product at the end of the step,
  over the gated activations that every layer wrote side by side into one buffer;
* every result is written with ``out=`` into buffers allocated once per generation.

History layout. Layer ``l`` (dilation ``d``, kernel ``k``) at time ``t`` reads its inputs at
``t - (k-1) d, ..., t - d, t``: every ``d``-th sample. Its buffer is ``(B, d, Q, R)``: time ``s``
lives in row ``s mod d`` ("phase") at column ``k - 1 + (s // d) mod C``, so the ``k`` inputs
of one step are ``k`` neighbouring columns of one phase row -- a ``(B, k R)`` view with no
copy. Every ``C d`` steps the last ``k - 1`` columns of all phases move to the front (one copy);
``Q = k - 1 + C``. Zeros in a fresh buffer are the causal convolution's left padding.

Memory-bound teachers. At the Parallel WaveNet size (512 residual / 1024 gate channels) a
step reads ~240 MB of weights, so bytes moved, not operations, set the speed. Two things cut
them:

* blocked past taps (exact): for a layer of dilation ``d``, the ``k - 1`` older taps of the next
  ``d`` steps read inputs that are all known at the block's first step, and in the phase layout
  they form one ``(B d, (k-1) R)`` matrix view. One product per ``d`` steps reads those weights
  once instead of ``d`` times; each step then reads only the newest tap. Used for layers with
  ``d >= 4`` whose weights do not stay in cache (small layers keep the fused product);
* ``precision="bfloat16"`` (opt-in): bf16 weights and activations in the matrix products while
  the residual stream, the output head and the distribution stay float32. It halves the bytes;
  its parameters differ from the exact ones at bf16 precision (about 3 significant digits).
  Tiny bf16 products are slow on CPUs, so it only pays at large sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from wavedistill.errors import UserError
from wavedistill.networks import Conditioning, ResidualBlock
from wavedistill.precision import resolve_dtype

# A layer's history is compacted once per ``columns * dilation`` steps; at least this many
# steps apart, so the copy costs nothing measurable even for dilation 1.
_MIN_STEPS_BETWEEN_SHIFTS = 64
# Past taps are computed in blocks of d steps (one matrix product, weights read once per
# block) for layers whose past-tap weights are too big to stay in cache between steps and
# whose dilation makes the block worth it; small layers keep one fused product per step.
_BLOCK_MIN_DILATION = 4
_BLOCK_MIN_WEIGHTS = 1 << 18

METHODS = ("cached", "naive")
PRECISIONS = ("float32", "bfloat16")

Progress = Callable[[int, int], None]


# -- weights laid out for one-sample steps ---------------------------------------------------


def _as_operand(weight: Tensor, dtype: torch.dtype, batch: int) -> Tensor:
    """A linear map ``(out, in)`` as the right operand of ``x (B, in) @ w (in, out)``.

    float32 matrix-vector products (batch 1) run fastest on an ``(in, out)`` contiguous matrix;
    bf16 and batched products on the transpose of an ``(out, in)`` contiguous one.
    """
    weight = weight.detach().to(dtype)
    if batch == 1 and dtype != torch.bfloat16:
        return weight.t().contiguous()
    return weight.contiguous().t()


@dataclass
class _LayerWeights:
    """One block's weights. Unblocked: ``taps`` holds all kernel taps. Blocked: ``current``
    (the newest tap) runs every step and ``past`` (the others) once per ``d`` steps."""

    dilation: int
    taps: Tensor | None  # (k R, G): all kernel taps, oldest input first
    current: Tensor | None  # (R, G)
    past: Tensor | None  # ((k-1) R, G)
    residual: Tensor | None  # (G/2, R), None for a skip-only last layer
    residual_bias: Tensor | None  # (R,)


@dataclass
class FusedTeacher:
    """A teacher's weights rearranged for :func:`step`; built by :func:`fuse_teacher`.

    ``matmul_dtype`` is the dtype of every matrix product, ``dtype`` that of the residual
    stream, the output head and the returned parameters.
    """

    kernel_size: int
    residual_channels: int
    gate_channels: int
    skip_channels: int
    num_params: int
    dtype: torch.dtype
    matmul_dtype: torch.dtype
    input_weight: Tensor  # (R,)
    input_bias: Tensor  # (R,)
    layers: list[_LayerWeights]
    layer_bias: Tensor  # (L G,): every layer's dilated-conv bias
    skip: Tensor  # (L G/2, S): all skip projections stacked
    skip_bias: Tensor  # (S,): sum of the skip biases
    head: list[tuple[Tensor, Tensor]]  # [(S, S), (S,)], [(S, P), (P,)]

    @property
    def mixed(self) -> bool:
        """True when the products run in a lower precision than the residual stream."""
        return self.matmul_dtype != self.dtype


def _split_output(block: ResidualBlock) -> tuple[Tensor | None, Tensor | None, Tensor, Tensor]:
    """A block's folded 1x1 ``G/2 -> R + S`` as ``(res_w (R, G/2), res_b, skip_w (S, G/2),
    skip_b)``; the residual part is None for a skip-only block."""
    w = block.output.weight.detach()[:, :, 0]
    b = block.output.bias.detach()
    R = block.residual_channels
    if R == 0:
        return None, None, w, b
    return w[:R], b[:R], w[R:], b[R:]


def _fuse_layer(block: ResidualBlock, dilation: int, dtype: torch.dtype, batch: int
                ) -> _LayerWeights:
    """One block's dilated conv and residual projection as matrix operands."""
    conv = block.dilated.weight.detach()  # (G, R, k)
    G, R, k = conv.shape
    taps = conv.permute(0, 2, 1).reshape(G, k * R)  # (G, k R), oldest tap first
    res_w, res_b, _, _ = _split_output(block)
    blocked = dilation >= _BLOCK_MIN_DILATION and (k - 1) * R * G >= _BLOCK_MIN_WEIGHTS
    return _LayerWeights(
        dilation,
        taps=None if blocked else _as_operand(taps, dtype, batch),
        current=_as_operand(taps[:, -R:], dtype, batch) if blocked else None,
        past=_as_operand(taps[:, :-R], dtype, batch * dilation) if blocked else None,
        residual=None if res_w is None else _as_operand(res_w, dtype, batch),
        residual_bias=None if res_b is None else res_b.to(dtype))


def fuse_teacher(teacher, batch: int = 1, precision: str | None = None) -> FusedTeacher:
    """Rearrange a :class:`~wavedistill.teacher.WaveNetTeacher`'s weights for cached steps.

    ``precision``: None (the teacher's own dtype: exact), ``"float32"`` or ``"bfloat16"``
    (bf16 matrix products, float32 elsewhere). ``batch`` only chooses the fastest memory layout.
    """
    dtype = teacher.input_conv.weight.dtype
    if precision is not None:
        if precision not in PRECISIONS:
            raise UserError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        if precision == "float32":
            dtype = torch.float32
        if precision == "bfloat16":  # refused where bf16 would be emulated (slow)
            resolve_dtype("bfloat16", teacher.input_conv.weight.device, "teacher precision")
    mm = torch.bfloat16 if precision == "bfloat16" else dtype
    stack = teacher.stack
    if any(block.skip_channels == 0 for block in stack.blocks):
        raise ValueError("cached teacher sampling needs skip connections in every block")
    layers = [_fuse_layer(block, d, mm, batch)
              for block, d in zip(stack.blocks, stack.dilations, strict=True)]
    skips = [_split_output(block)[2:] for block in stack.blocks]
    head_convs = [m for m in teacher.head if isinstance(m, torch.nn.Conv1d)]
    head = [(_as_operand(c.weight[:, :, 0], dtype, batch), c.bias.detach().to(dtype))
            for c in head_convs]
    first = stack.blocks[0]
    return FusedTeacher(
        kernel_size=stack.kernel_size,
        residual_channels=first.dilated.in_channels,
        gate_channels=stack.gate_channels,
        skip_channels=first.skip_channels,
        num_params=head_convs[-1].out_channels,
        dtype=dtype, matmul_dtype=mm,
        input_weight=teacher.input_conv.weight.detach()[:, 0, 0].to(dtype),
        input_bias=teacher.input_conv.bias.detach().to(dtype),
        layers=layers,
        layer_bias=torch.cat([b.dilated.bias.detach() for b in stack.blocks]).to(mm),
        skip=_as_operand(torch.cat([w for w, _ in skips], dim=1), mm, batch),
        skip_bias=torch.stack([b for _, b in skips]).sum(0).to(mm),
        head=head)


# -- the state of one generation -------------------------------------------------------------


@dataclass
class _LayerState:
    """One layer's history buffer and the views a step needs into it.

    ``buffer``: ``(B, d, Q, R)``; ``slots[i]`` (the input at a step, ``(B, R)``) and
    ``windows[i]`` (the ``k`` inputs the step reads, ``(B, k R)``; unblocked layers only) for
    ``i = t mod (C d)``.

    Blocked layers: at ``t = 0 mod d`` the past taps of the next ``d`` steps read the
    ``k - 1`` columns before the current one across all phases -- ``block_inputs[t // d mod C]``,
    one ``(B d, (k-1) R)`` matrix view -- and their products go to ``past`` ``(B d, G)``, read
    by step ``t`` as ``past_rows[t mod d]`` ``(B, G)``.
    """

    buffer: Tensor
    period: int  # C d: steps until the (phase, column) pattern repeats
    slots: list[Tensor]
    windows: list[Tensor]
    block_inputs: list[Tensor] | None = None
    past: Tensor | None = None
    past_rows: list[Tensor] | None = None

    @classmethod
    def create(cls, batch: int, channels: int, kernel_size: int, dilation: int,
               gate_channels: int, blocked: bool, dtype: torch.dtype, device: torch.device
               ) -> _LayerState:
        k, d, R = kernel_size, dilation, channels
        columns = max(k - 1, math.ceil(_MIN_STEPS_BETWEEN_SHIFTS / d))
        buffer = torch.zeros(batch, d, k - 1 + columns, R, dtype=dtype, device=device)
        slots, windows = [], []
        for i in range(columns * d):
            phase, col = i % d, k - 1 + i // d
            slots.append(buffer[:, phase, col])
            if not blocked:
                windows.append(buffer[:, phase, col - k + 1:col + 1].view(batch, k * R))
        state = cls(buffer, columns * d, slots, windows)
        if blocked:
            state.block_inputs = [
                buffer[:, :, col - k + 1:col].view(batch * d, (k - 1) * R)
                for col in range(k - 1, k - 1 + columns)]
            past = torch.zeros(batch, d, gate_channels, dtype=dtype, device=device)
            state.past = past.view(batch * d, gate_channels)
            state.past_rows = list(past.unbind(1))
        return state

    def shift(self, kernel_size: int) -> None:
        """Move the newest ``k - 1`` columns of every phase to the front (new chunk)."""
        keep = kernel_size - 1
        columns = self.buffer.shape[2] - keep
        self.buffer[:, :, :keep].copy_(self.buffer[:, :, columns:columns + keep])


@dataclass
class TeacherState:
    """Everything one cached generation carries from step to step; passed in and returned.

    ``t`` is the index of the next sample. The conditioning lives here at frame rate:
    ``frames`` ``(F, B, L G)`` (time-major so that one frame is contiguous), ``filter`` the
    upsampling filter ``W`` as Python floats, ``constant`` ``(B, L G)`` the conv biases plus the
    speaker term. The remaining fields are scratch buffers reused by every step.
    """

    t: int
    layers: list[_LayerState]
    frames: Tensor | None
    filter: list[float] | None
    constant: Tensor
    cond: Tensor  # (B, L G): conditioning of the current sample
    cond_views: list[Tensor]  # (B, G) per layer
    pre: Tensor  # (B, G)
    gate_views: tuple[Tensor, Tensor]  # tanh and sigmoid halves of ``pre``
    tanh: Tensor  # (B, G/2)
    gates: Tensor  # (B, L G/2): every layer's gated activation, side by side
    gate_slices: list[Tensor]
    residual: Tensor  # (B, R)
    stream: Tensor | None  # (B, R) float32 residual stream (mixed precision only)
    skip: Tensor  # (B, S)
    skip_full: Tensor | None  # (B, S) skip sum in the head's dtype (mixed precision only)
    hidden: Tensor  # (B, S)
    params: Tensor  # (B, P)
    params_out: Tensor  # (B, P, 1) view of ``params``: what a step returns


def _empty(batch: int, channels: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.zeros(batch, channels, dtype=dtype, device=device)


def init_state(fused: FusedTeacher, batch: int, cond: Conditioning | None,
               device: torch.device | str = "cpu") -> TeacherState:
    """A fresh state at ``t = 0`` for ``batch`` clips with the teacher's ``cond`` (or None)."""
    device = torch.device(device)
    mm, dt = fused.matmul_dtype, fused.dtype
    L, G, R = len(fused.layers), fused.gate_channels, fused.residual_channels
    H, S = G // 2, fused.skip_channels
    constant = fused.layer_bias.to(device).expand(batch, L * G).clone()
    frames = filt = None
    if cond is not None:
        if cond.bias is not None:
            constant += cond.bias[:, :, 0].to(mm)
        if cond.frames is not None:
            frames = cond.frames.detach().permute(2, 0, 1).to(mm).contiguous()
            filt = cond.filter.detach().double().tolist()
    cond_now = constant if frames is None else torch.empty_like(constant)
    pre = _empty(batch, G, mm, device)
    params = _empty(batch, fused.num_params, dt, device)
    gates = _empty(batch, L * H, mm, device)
    return TeacherState(
        t=0,
        layers=[_LayerState.create(batch, R, fused.kernel_size, lw.dilation, G,
                                   lw.past is not None, mm, device)
                for lw in fused.layers],
        frames=frames, filter=filt, constant=constant, cond=cond_now,
        cond_views=list(cond_now.split(G, dim=1)),
        pre=pre, gate_views=(pre[:, :H], pre[:, H:]), tanh=_empty(batch, H, mm, device),
        gates=gates, gate_slices=list(gates.split(H, dim=1)),
        residual=_empty(batch, R, mm, device),
        stream=_empty(batch, R, dt, device) if fused.mixed else None,
        skip=_empty(batch, S, mm, device),
        skip_full=_empty(batch, S, dt, device) if fused.mixed else None,
        hidden=_empty(batch, S, dt, device),
        params=params, params_out=params.unsqueeze(-1))


# -- one step --------------------------------------------------------------------------------


def _conditioning(state: TeacherState) -> None:
    """``cond = W[o] P[f] + constant`` for the current sample ``t = f hop + o``, all layers."""
    if state.frames is None:
        return  # the constant is the whole conditioning and ``cond`` already is it
    f, o = divmod(state.t, len(state.filter))
    torch.add(state.constant, state.frames[f], alpha=state.filter[o], out=state.cond)


def _layers(fused: FusedTeacher, state: TeacherState, x: Tensor) -> None:
    """Run every residual block on the current sample; writes ``state.gates``.

    ``x``: ``(B, 1)`` the previous sample in the network's input representation.
    """
    t, k = state.t, fused.kernel_size
    if t:
        # compact before anything of step t is written: the copy's source includes the
        # column that the new input goes to when the chunk is short
        for ls in state.layers:
            if t % ls.period == 0:
                ls.shift(k)
    tanh_in, sigm_in = state.gate_views
    first = state.layers[0]
    stream = state.stream
    if stream is None:  # exact: the residual stream is the next layer's history slot
        torch.addcmul(fused.input_bias, x, fused.input_weight, out=first.slots[t % first.period])
    else:
        torch.addcmul(fused.input_bias, x, fused.input_weight, out=stream)
        first.slots[t % first.period].copy_(stream)
    last = len(fused.layers) - 1
    for i, (lw, ls) in enumerate(zip(fused.layers, state.layers, strict=True)):
        j = t % ls.period
        if lw.past is None:
            torch.addmm(state.cond_views[i], ls.windows[j], lw.taps, out=state.pre)
        else:
            phase = j % lw.dilation
            if phase == 0:  # past taps of the next d steps, all in one product
                torch.mm(ls.block_inputs[j // lw.dilation], lw.past, out=ls.past)
            torch.add(state.cond_views[i], ls.past_rows[phase], out=state.pre)
            state.pre.addmm_(ls.slots[j], lw.current)
        torch.tanh(tanh_in, out=state.tanh)
        gate = state.gate_slices[i]
        torch.sigmoid(sigm_in, out=gate)
        gate.mul_(state.tanh)
        if i == last:
            break
        torch.addmm(lw.residual_bias, gate, lw.residual, out=state.residual)
        nxt = state.layers[i + 1]
        slot = nxt.slots[t % nxt.period]
        if stream is None:
            torch.add(ls.slots[j], state.residual, out=slot)
        else:
            stream.add_(state.residual)
            slot.copy_(stream)


def _head(fused: FusedTeacher, state: TeacherState) -> Tensor:
    """Skip sum of all layers -> ReLU, 1x1, ReLU, 1x1 -> parameters ``(B, P)``."""
    torch.addmm(fused.skip_bias, state.gates, fused.skip, out=state.skip)
    skip = state.skip
    if state.skip_full is not None:
        skip = state.skip_full.copy_(skip)
    skip.relu_()
    (w1, b1), (w2, b2) = fused.head
    torch.addmm(b1, skip, w1, out=state.hidden).relu_()
    return torch.addmm(b2, state.hidden, w2, out=state.params)


def step(fused: FusedTeacher, state: TeacherState, x: Tensor) -> tuple[Tensor, TeacherState]:
    """Parameters of ``p(x_t | x_<t, c)`` for ``t = state.t``, given the previous sample.

    ``x``: ``(B, 1, 1)`` sample ``t - 1`` in the network's input representation
    (``teacher.encode_input``; zero at ``t = 0``). Returns ``(params (B, P, 1), state)`` with
    ``state.t`` advanced; ``params`` is a view of a buffer that the next step overwrites.
    Inside, a step's tensors are ``(B, C)``: the ``(B, C, 1)`` layout without its unit axis.
    """
    _conditioning(state)
    _layers(fused, state, x[:, :, 0].to(fused.dtype))
    _head(fused, state)
    state.t += 1
    return state.params_out, state


# -- teacher forcing -------------------------------------------------------------------------


@torch.inference_mode()
def teacher_forced_params(teacher, audio: Tensor, mel: Tensor | None = None,
                          speaker: Tensor | None = None,
                          precision: str | None = None) -> Tensor:
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
        out[:, :, t:t + 1] = params
        x = inputs[:, :, t:t + 1]
    return out


# -- sampling --------------------------------------------------------------------------------


def _batch_size(mel: Tensor | None, speaker: Tensor | None, batch: int | None) -> int:
    """Clips to draw: the batch of ``mel`` / ``speaker``, else ``batch`` (default 1)."""
    sizes = {name: v.shape[0] for name, v in (("mel", mel), ("speaker", speaker))
             if v is not None}
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
            raise UserError(f"num_samples={num_samples} must be in [1, {available}] "
                            f"({mel.shape[-1]} mel frames of hop {hop})")
        return num_samples
    if num_samples is None or num_samples <= 0:
        raise UserError(f"num_samples must be a positive number for an unconditional teacher, "
                        f"got {num_samples}")
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
            from tqdm import tqdm

            self.bar = tqdm(total=total * batch, unit="sample", unit_scale=True,
                            desc="teacher sampling")
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
        audio[:, t:t + 1] = sample
        x = teacher.encode_input(sample)  # (B, 1, 1)
        report(t + 1)


def naive_window(t: int, receptive_field: int, hop: int, context: int, frames: int
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


def sample_naive_steps(teacher, mel, speaker, audio: Tensor, steps: range,
                       generator: torch.Generator | None = None, report=None) -> None:
    """Draw ``audio[:, t]`` for ``t`` in ``steps``, in order, each by one parallel pass over the
    frames that step depends on (:func:`naive_windows`). ``audio`` ``(B, frames * hop)`` holds
    the past (drawn in place); later samples are never read by earlier steps (causality)."""
    dist = teacher.distribution
    conditioned = mel is not None and teacher.n_mels > 0
    hop, _, frames = naive_geometry(teacher, mel, audio.shape[-1])
    for t, (f0, f1) in zip(steps, naive_windows(teacher, steps, frames), strict=True):
        window_mel = mel[:, :, f0:f1] if conditioned else None
        params = teacher(audio[:, f0 * hop:f1 * hop], window_mel, speaker)
        pos = t - f0 * hop
        audio[:, t] = dist.sample(params[:, :, pos:pos + 1], generator)[:, 0]
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
def generate(teacher, mel: Tensor | None = None, speaker: Tensor | None = None,
             num_samples: int | None = None, generator: torch.Generator | None = None,
             method: str = "cached", progress: bool | Progress | None = None,
             precision: str | None = None, batch: int | None = None) -> Tensor:
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
