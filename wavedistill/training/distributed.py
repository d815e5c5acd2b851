"""Where a training process runs: its rank in a ``torchrun`` process group (or alone), its
device, the collectives the trainer needs beyond DDP's gradient averaging, and the autocast
dtype the device supports.

Launched by ``torchrun --nproc_per_node N`` (``WORLD_SIZE > 1``) a run joins the process group
torchrun describes in the environment (NCCL on GPUs, gloo on CPU), one GPU per process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from wavedistill.errors import UserError
from wavedistill.precision import is_native, resolve_dtype


@dataclass
class Processes:
    """Where this process stands in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@contextlib.contextmanager
def distributed_processes(device: str | None) -> Iterator[tuple[Processes, torch.device]]:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE > 1``) or
    run alone; yields ``(Processes, device)`` and leaves the group on exit."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or (dist.is_available() and dist.is_initialized()):
        procs = _current_processes()
        yield procs, _pick_device(device, procs)
        return
    procs = Processes(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    dev = _pick_device(device, procs)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    try:
        yield procs, dev
    finally:
        dist.destroy_process_group()


def _current_processes() -> Processes:
    if dist.is_available() and dist.is_initialized():
        return Processes(
            dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
        )
    return Processes()


def _pick_device(device: str | None, procs: Processes) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device("cuda", procs.local_rank)  # one GPU per process under torchrun
    return dev


def gather(state: dict[str, Any], procs: Processes) -> list[dict[str, Any]]:
    """Every rank's ``state``, in rank order (collective when distributed)."""
    if not procs.distributed:
        return [state]
    states: list[Any] = [None] * procs.world_size
    dist.all_gather_object(states, state)
    return states


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.precision`` on ``device`` (None = plain float32).
    ``auto`` picks bf16 on GPUs that compute it natively and float32 elsewhere (a CPU keeps
    float32: the flows' log-determinants want its precision); ``bfloat16``/``float16`` are
    refused with one line where the device would emulate them (see precision.py)."""
    if precision == "float32":
        return None
    if precision == "auto":
        native = device.type == "cuda" and is_native(torch.bfloat16, device)
        return torch.bfloat16 if native else None
    return resolve_dtype(precision, device, "train.precision")
