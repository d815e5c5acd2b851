"""Output heads of the teacher: what the network's ``(B, P, T)`` output means.

``build_distribution(cfg.teacher)`` picks the head named by ``teacher.output``:

- ``mol``: discretized mixture of logistics over 16-bit audio (Parallel WaveNet);
- ``gaussian``: discretized Gaussian over 16-bit audio (ClariNet);
- ``categorical``: softmax over μ-law levels (the original WaveNet).

Each head lives in its own module and is the only home of its clamps.
"""

from __future__ import annotations

from wavedistill.config import TeacherConfig
from wavedistill.errors import UserError
from wavedistill.models.distributions.base import NUM_CLASSES_16BIT, OutputDistribution
from wavedistill.models.distributions.categorical import MuLawCategorical
from wavedistill.models.distributions.gaussian import DiscretizedGaussian, gaussian_kl
from wavedistill.models.distributions.logistic_mixture import (
    DiscretizedLogisticMixture,
    discretized_mol_log_prob,
)

__all__ = [
    "NUM_CLASSES_16BIT",
    "DiscretizedGaussian",
    "DiscretizedLogisticMixture",
    "MuLawCategorical",
    "OutputDistribution",
    "build_distribution",
    "discretized_mol_log_prob",
    "gaussian_kl",
]


def build_distribution(cfg: TeacherConfig) -> OutputDistribution:
    """The output head named by ``cfg.output``, with its floor from the same section."""
    if cfg.output == "mol":
        return DiscretizedLogisticMixture(cfg.num_mixtures, cfg.mol_log_scale_min)
    if cfg.output == "gaussian":
        return DiscretizedGaussian(cfg.gaussian_log_scale_min)
    if cfg.output == "categorical":
        return MuLawCategorical(cfg.mu_law_levels)
    raise UserError(
        f"config key 'teacher.output' is {cfg.output!r}; expected one of mol, gaussian, categorical"
    )
