"""Reduced precision only where the hardware computes it natively.

A CPU without bf16 instructions still "supports" bfloat16 in torch, by emulation: a matrix
product then runs hundreds of times slower than in float32 (measured: 0.29 GFLOP/s against
166 on an AVX2 machine). So every option that asks for bfloat16 or float16 (synthesis,
teacher sampling, training autocast, the benchmark) goes through :func:`resolve_dtype`, which
answers from what the device can do and refuses with one line saying why and what to use.

Native means: on x86 CPUs the ``avx512_bf16``/``amx_bf16`` (bfloat16) and
``avx512_fp16``/``amx_fp16`` (float16) instruction-set flags; on Arm CPUs ``bf16`` and
``fphp``/``asimdhp``; on CUDA devices bf16 from compute capability 8.0 and float16 from 5.3.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

from wavedistill.config import DTYPE_NAMES
from wavedistill.errors import UserError

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}

CPU_FLAGS = {  # any one of these makes the dtype native on a CPU
    torch.bfloat16: ("avx512_bf16", "amx_bf16", "bf16"),
    torch.float16: ("avx512_fp16", "amx_fp16", "fphp", "asimdhp"),
}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``flags`` on x86, ``Features`` on Arm) from /proc/cpuinfo;
    empty where it cannot be read (then no reduced precision counts as native)."""
    try:
        return parse_cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The first ``flags``/``Features`` line of a /proc/cpuinfo text, as a set of names."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def native_reason(dtype: torch.dtype, device: torch.device) -> str | None:
    """None when ``device`` computes ``dtype`` natively, else why not (a phrase)."""
    if dtype == torch.float32:
        return None
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        needed = (8, 0) if dtype == torch.bfloat16 else (5, 3)
        if (major, minor) >= needed:
            return None
        return (
            f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) "
            f"has no native {_name(dtype)} (needs {needed[0]}.{needed[1]})"
        )
    if device.type == "cpu":
        wanted = CPU_FLAGS.get(dtype, ())
        if cpu_flags() & set(wanted):
            return None
        return (
            f"this CPU ({platform.machine()}) has no native {_name(dtype)} instructions "
            f"({' or '.join(wanted)}); torch would emulate it, far slower than float32"
        )
    return f"native {_name(dtype)} on {device.type} devices is not known"


def is_native(dtype: torch.dtype, device: torch.device | str) -> bool:
    return native_reason(dtype, torch.device(device)) is None


def resolve_dtype(name: str, device: torch.device | str, option: str = "--dtype") -> torch.dtype:
    """The dtype called ``name``, if ``device`` computes it natively; a one-line UserError
    naming ``option`` otherwise."""
    if name not in DTYPES:
        raise UserError(f"{option} must be one of {', '.join(DTYPES)}, got {name!r}")
    dtype = DTYPES[name]
    reason = native_reason(dtype, torch.device(device))
    if reason is not None:
        raise UserError(f"{option} {name}: {reason}; use float32")
    return dtype


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
