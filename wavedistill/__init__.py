"""wavedistill: an autoregressive WaveNet teacher (MAF direction) distilled into a
parallel Inverse Autoregressive Flow student (IAF direction).

The public API is importable from here: :class:`Synthesizer`, :func:`load_model`,
:class:`Config`, :class:`WaveNetTeacher` and :class:`IAFStudent`. They are resolved on first
use, so ``import wavedistill`` (and the command line's start-up) does not load PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from wavedistill.version import __version__

# public name -> the module that defines it
_PUBLIC = {
    "Synthesizer": "wavedistill.inference.synthesizer",
    "load_model": "wavedistill.store.loading",
    "Config": "wavedistill.config",
    "WaveNetTeacher": "wavedistill.models.teacher",
    "IAFStudent": "wavedistill.models.student",
}

__all__ = ["Config", "IAFStudent", "Synthesizer", "WaveNetTeacher", "__version__", "load_model"]

if TYPE_CHECKING:
    from wavedistill.config import Config
    from wavedistill.inference.synthesizer import Synthesizer
    from wavedistill.models.student import IAFStudent
    from wavedistill.models.teacher import WaveNetTeacher
    from wavedistill.store.loading import load_model


def __getattr__(name: str) -> Any:
    """The public API, imported when first asked for (PEP 562)."""
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wavedistill' has no attribute {name!r}")
