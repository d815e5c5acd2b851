"""What the trainer asks of a training objective: the :class:`Objective` protocol.

Both objectives implement it: :class:`~wavedistill.objectives.likelihood.MaximumLikelihood`
(the teacher) and :class:`~wavedistill.objectives.distillation.Distillation` (the student).
The models they receive are the bare modules (the trainer wraps the loss, not the model, in
DistributedDataParallel); :func:`bare_model` also looks inside a ``.module`` wrapper and checks
the model's class.
"""

from __future__ import annotations

from typing import Protocol, TypeVar, runtime_checkable

from torch import Tensor, nn

from wavedistill.models.networks import unwrap

ModelT = TypeVar("ModelT", bound=nn.Module)


@runtime_checkable
class Objective(Protocol):
    """A training objective as :class:`~wavedistill.training.loop.Trainer` uses it."""

    @property
    def valid_metric(self) -> str:
        """The key of :meth:`validate`'s result whose lowest value selects ``best.pt``."""
        ...

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """``(scalar loss to minimise, {name: 0-dim tensor to log})``; the logs stay on the
        device, detached."""
        ...

    def validate(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, float]:
        """``{name: value}`` of one held-out batch (means over the batch)."""
        ...

    def log_media(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``{name: (T,) audio}`` for TensorBoard from the batch's first clip (may be empty)."""
        ...


def bare_model(model: nn.Module, cls: type[ModelT]) -> ModelT:
    """``model`` (or the model inside its ``.module`` wrapper), checked to be a ``cls``."""
    inner = unwrap(model)
    if not isinstance(inner, cls):
        raise TypeError(f"expected a {cls.__name__}, got {type(inner).__name__}")
    return inner
