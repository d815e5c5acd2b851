"""The teacher's weights laid out for one-sample steps, its per-generation state and one
step (Fast WaveNet, Paine et al., 2016): every dilated layer keeps the inputs its future steps
still need in an explicit :class:`TeacherState`, so a step costs ``O(L)``.

A cached step is a handful of matrix-vector products per layer, so at batch 1 on a CPU its cost
is the number of operations, not arithmetic. The step is therefore laid out for few operations
on preallocated memory:

* each layer's ``k`` kernel taps are one ``(k R, G)`` matrix, and the ``k`` inputs they read are
  contiguous in the layer's history buffer, so one ``addmm`` does all taps;
* the mel conditioning of every layer stays at frame rate (see :mod:`wavedistill.models.networks`):
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
from dataclasses import dataclass

import torch
from torch import Tensor

from wavedistill.config import SAMPLER_DTYPE_NAMES
from wavedistill.errors import UserError
from wavedistill.models.networks import Conditioning, ResidualBlock
from wavedistill.precision import resolve_dtype

# A layer's history is compacted once per ``columns * dilation`` steps; at least this many
# steps apart, so the copy costs nothing measurable even for dilation 1.
_MIN_STEPS_BETWEEN_SHIFTS = 64
# Past taps are computed in blocks of d steps (one matrix product, weights read once per
# block) for layers whose past-tap weights are too big to stay in cache between steps and
# whose dilation makes the block worth it; small layers keep one fused product per step.
_BLOCK_MIN_DILATION = 4
_BLOCK_MIN_WEIGHTS = 1 << 18

PRECISIONS = SAMPLER_DTYPE_NAMES


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
    source_weight: Tensor | None  # (R, C_e): the excitation's columns of the input conv
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
    assert block.output.bias is not None  # the block's output conv has a bias
    b = block.output.bias.detach()
    R = block.residual_channels
    if R == 0:
        return None, None, w, b
    return w[:R], b[:R], w[R:], b[R:]


def _bias(conv: torch.nn.Conv1d) -> Tensor:
    if conv.bias is None:
        raise ValueError("cached teacher sampling needs biased head convolutions")
    return conv.bias


def _fuse_layer(
    block: ResidualBlock, dilation: int, dtype: torch.dtype, batch: int
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
        residual_bias=None if res_b is None else res_b.to(dtype),
    )


def fuse_teacher(teacher, batch: int = 1, precision: str | None = None) -> FusedTeacher:
    """Rearrange a :class:`~wavedistill.models.teacher.WaveNetTeacher`'s weights for cached steps.

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
    layers = [
        _fuse_layer(block, d, mm, batch)
        for block, d in zip(stack.blocks, stack.dilations, strict=True)
    ]
    skips = [_split_output(block)[2:] for block in stack.blocks]
    head_convs = [m for m in teacher.head if isinstance(m, torch.nn.Conv1d)]
    head = [
        (_as_operand(c.weight[:, :, 0], dtype, batch), _bias(c).detach().to(dtype))
        for c in head_convs
    ]
    first = stack.blocks[0]
    return FusedTeacher(
        kernel_size=stack.kernel_size,
        residual_channels=first.dilated.in_channels,
        gate_channels=stack.gate_channels,
        skip_channels=first.skip_channels,
        num_params=head_convs[-1].out_channels,
        dtype=dtype,
        matmul_dtype=mm,
        input_weight=teacher.input_conv.weight.detach()[:, 0, 0].to(dtype),
        input_bias=teacher.input_conv.bias.detach().to(dtype),
        source_weight=(
            teacher.input_conv.weight.detach()[:, 1:, 0].to(dtype)
            if teacher.input_conv.in_channels > 1
            else None
        ),
        layers=layers,
        layer_bias=torch.cat([b.dilated.bias.detach() for b in stack.blocks]).to(mm),
        skip=_as_operand(torch.cat([w for w, _ in skips], dim=1), mm, batch),
        skip_bias=torch.stack([b for _, b in skips]).sum(0).to(mm),
        head=head,
    )


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
    def create(
        cls,
        batch: int,
        channels: int,
        kernel_size: int,
        dilation: int,
        gate_channels: int,
        blocked: bool,
        dtype: torch.dtype,
        device: torch.device,
    ) -> _LayerState:
        k, d, R = kernel_size, dilation, channels
        columns = max(k - 1, math.ceil(_MIN_STEPS_BETWEEN_SHIFTS / d))
        buffer = torch.zeros(batch, d, k - 1 + columns, R, dtype=dtype, device=device)
        slots, windows = [], []
        for i in range(columns * d):
            phase, col = i % d, k - 1 + i // d
            slots.append(buffer[:, phase, col])
            if not blocked:
                windows.append(buffer[:, phase, col - k + 1 : col + 1].view(batch, k * R))
        state = cls(buffer, columns * d, slots, windows)
        if blocked:
            state.block_inputs = [
                buffer[:, :, col - k + 1 : col].view(batch * d, (k - 1) * R)
                for col in range(k - 1, k - 1 + columns)
            ]
            past = torch.zeros(batch, d, gate_channels, dtype=dtype, device=device)
            state.past = past.view(batch * d, gate_channels)
            state.past_rows = list(past.unbind(1))
        return state

    def shift(self, kernel_size: int) -> None:
        """Move the newest ``k - 1`` columns of every phase to the front (new chunk)."""
        keep = kernel_size - 1
        columns = self.buffer.shape[2] - keep
        self.buffer[:, :, :keep].copy_(self.buffer[:, :, columns : columns + keep])


@dataclass
class TeacherState:
    """Everything one cached generation carries from step to step; passed in and returned.

    ``t`` is the index of the next sample. The conditioning lives here at frame rate:
    ``frames`` ``(F, B, L G)`` (time-major so that one frame is contiguous), ``filter`` the
    upsampling filter ``W`` as Python floats, ``constant`` ``(B, L G)`` the conv biases plus the
    speaker term. With an excitation, ``input_terms`` ``(T, B, R)`` is the input layer's
    excitation contribution plus its bias for every sample of the clip, precomputed: a step adds
    its row where it would add the bias. The remaining fields are scratch buffers reused by
    every step.
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
    input_terms: Tensor | None = None  # (T, B, R): excitation term + input bias per sample


def _empty(batch: int, channels: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.zeros(batch, channels, dtype=dtype, device=device)


def init_state(
    fused: FusedTeacher, batch: int, cond: Conditioning | None, device: torch.device | str = "cpu"
) -> TeacherState:
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
            assert cond.filter is not None, "frames come with their upsampling filter"
            frames = cond.frames.detach().permute(2, 0, 1).to(mm).contiguous()
            filt = cond.filter.detach().double().tolist()
    cond_now = constant if frames is None else torch.empty_like(constant)
    pre = _empty(batch, G, mm, device)
    params = _empty(batch, fused.num_params, dt, device)
    gates = _empty(batch, L * H, mm, device)
    return TeacherState(
        t=0,
        layers=[
            _LayerState.create(
                batch, R, fused.kernel_size, lw.dilation, G, lw.past is not None, mm, device
            )
            for lw in fused.layers
        ],
        frames=frames,
        filter=filt,
        constant=constant,
        cond=cond_now,
        cond_views=list(cond_now.split(G, dim=1)),
        pre=pre,
        gate_views=(pre[:, :H], pre[:, H:]),
        tanh=_empty(batch, H, mm, device),
        gates=gates,
        gate_slices=list(gates.split(H, dim=1)),
        residual=_empty(batch, R, mm, device),
        stream=_empty(batch, R, dt, device) if fused.mixed else None,
        skip=_empty(batch, S, mm, device),
        skip_full=_empty(batch, S, dt, device) if fused.mixed else None,
        hidden=_empty(batch, S, dt, device),
        params=params,
        params_out=params.unsqueeze(-1),
        input_terms=_input_terms(fused, cond),
    )


def _input_terms(fused: FusedTeacher, cond: Conditioning | None) -> Tensor | None:
    """``(T, B, R)``: ``W_e source_t + b`` of the input layer for every sample, or None
    without an excitation (the input layer's bias alone then)."""
    source = cond.source if cond is not None else None
    if (source is None) != (fused.source_weight is None):
        raise ValueError(
            "the teacher's input layer and the conditioning disagree on the excitation"
        )
    if source is None or fused.source_weight is None:
        return None
    src = source.detach().to(fused.dtype).permute(2, 0, 1)  # (T, B, C_e)
    return torch.matmul(src, fused.source_weight.t()) + fused.input_bias


# -- one step --------------------------------------------------------------------------------


def _conditioning(state: TeacherState) -> None:
    """``cond = W[o] P[f] + constant`` for the current sample ``t = f hop + o``, all layers."""
    if state.frames is None or state.filter is None:
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
    bias = fused.input_bias if state.input_terms is None else state.input_terms[t]
    if stream is None:  # exact: the residual stream is the next layer's history slot
        torch.addcmul(bias, x, fused.input_weight, out=first.slots[t % first.period])
    else:
        torch.addcmul(bias, x, fused.input_weight, out=stream)
        first.slots[t % first.period].copy_(stream)
    last = len(fused.layers) - 1
    for i, (lw, ls) in enumerate(zip(fused.layers, state.layers, strict=True)):
        j = t % ls.period
        if lw.taps is not None:  # unblocked
            torch.addmm(state.cond_views[i], ls.windows[j], lw.taps, out=state.pre)
        else:
            assert lw.past is not None and lw.current is not None
            assert ls.block_inputs is not None and ls.past is not None and ls.past_rows is not None
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
        assert lw.residual is not None and lw.residual_bias is not None  # all but the last
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
