"""Categorical distribution over μ-law levels (the original WaveNet, 256 levels).

Parameters: one logit per level, shape ``(B, L, T)``. Audio is mapped to its μ-law class
(:func:`wavedistill.data.audio.mu_law_quantize`) and samples are decoded back to the centre of
their class, so this head's log-probabilities are over L classes, not the 16-bit grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from wavedistill.data.audio import mu_law_dequantize, mu_law_quantize
from wavedistill.models.distributions.base import OutputDistribution, gumbel_argmax, working_dtype


class MuLawCategorical(OutputDistribution):
    """Softmax over ``levels`` μ-law classes (teacher.mu_law_levels)."""

    def __init__(self, levels: int):
        self.levels = levels
        self.num_params = levels

    def _check(self, params: Tensor) -> None:
        if params.shape[1] != self.levels:
            raise ValueError(
                f"categorical parameters need {self.levels} channels, got {params.shape[1]}"
            )

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """``(B, L, T)``, audio ``(B, T)`` -> log-probability of x's μ-law class ``(B, T)``, in
        :func:`working_dtype` of ``params`` and ``x``."""
        self._check(params)
        dtype = working_dtype(params, x)
        level = mu_law_quantize(x.to(dtype), self.levels).unsqueeze(1)
        return F.log_softmax(params.to(dtype), dim=1).gather(1, level).squeeze(1)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(B, L, T)`` -> μ-law decoded float32 audio ``(B, T)``."""
        self._check(params)
        level = gumbel_argmax(params.float(), dim=1, generator=generator)
        return mu_law_dequantize(level, self.levels)

    def __repr__(self) -> str:
        return f"MuLawCategorical(levels={self.levels})"
