"""How the weights move: the learning-rate schedule, the Adam optimiser, and the EMA copy of
the weights that validation and synthesis use."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from wavedistill.config import TrainConfig


def lr_factor(step: int, train: TrainConfig) -> float:
    """Multiplier of ``train.learning_rate`` for update ``step`` (0-based): linear warm-up over
    ``warmup_steps`` updates, then ``exponential`` (``decay_rate`` per ``decay_steps``),
    ``cosine`` (from 1 at the end of warm-up to 0 at ``train.steps``) or ``none``."""
    if step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    progress = step - train.warmup_steps
    if train.decay == "exponential":
        return train.decay_rate ** (progress / train.decay_steps)
    if train.decay == "cosine":
        span = max(1, train.steps - train.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress / span)))
    return 1.0


def make_optimizer(model: nn.Module, train: TrainConfig):
    """Adam over the trainable parameters, with its warm-up/decay ``LambdaLR`` schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    betas = (train.betas[0], train.betas[1])  # checked by the config: two values
    optimizer = torch.optim.Adam(
        params, lr=train.learning_rate, betas=betas, weight_decay=train.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, train))
    return optimizer, scheduler


class EMA:
    """Exponential moving average of a model's weights, kept as a frozen copy of the model
    (``ema.model``) that validation and synthesis use.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so early
    averages are not dominated by the random initialisation."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, num_updates: int) -> None:
        decay = min(self.decay, (1 + num_updates) / (10 + num_updates))
        ema: list[Tensor] = [p for p in self.model.parameters()]
        raw = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema, raw, 1.0 - decay)  # ema += (1 - decay) * (raw - ema)
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(b)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Restart the average from ``model``'s current weights."""
        self.model.load_state_dict(model.state_dict())
