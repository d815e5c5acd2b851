"""Interruption is a save: SIGINT (Ctrl-C) and SIGTERM ask a training run to stop after the
step it is in, write a checkpoint and exit with 128 + the signal's number (130, 143); a second
signal exits at once.

:class:`StopRequest` installs the handlers for the duration of a run and remembers the first
signal; the loop asks :attr:`StopRequest.requested` after each step and, when set, saves and
raises :class:`Interrupted`, which the CLI prints as one line with the command that resumes.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

# what signal.signal returns and takes back
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """A run stopped by a signal after saving; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, message: str):
        self.signum = signum
        super().__init__(message)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __reduce__(self):
        return (type(self), (self.signum, str(self)))


class StoppedAtOnce(KeyboardInterrupt):
    """The second signal: the run stops where it is, without saving (a KeyboardInterrupt, so
    no handler for ordinary errors holds it up); ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"{signal_name(signum)} again: stopped at once without saving")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    """``SIGINT``, ``SIGTERM``, ..."""
    return signal.Signals(signum).name


class StopRequest:
    """A context manager: while active, the first SIGINT or SIGTERM sets :attr:`signum` (the
    run finishes its step and saves), a second one raises :class:`StoppedAtOnce` at once.
    Outside the main thread (signals cannot be handled there) it does nothing."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, _Handler] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise StoppedAtOnce(signum)  # out now; atomic writes remove their partial files
        self.signum = signum
        log.warning(
            "%s received: finishing this step, then saving a checkpoint "
            "(Ctrl-C again to exit at once)",
            signal_name(signum),
        )


def ignore_interrupts(_worker_id: int = 0) -> None:
    """For data-loading workers: Ctrl-C reaches the whole process group, and a worker that
    died of it would fail the step the main process is finishing."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
