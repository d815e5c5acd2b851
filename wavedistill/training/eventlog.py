"""TensorBoard events whose write failures are one line, like every other file's.

torch's ``SummaryWriter`` writes from a background thread: on a full disk that thread dies
printing a traceback, and the writer's next call raises the bare ``OSError`` again.
:class:`EventLog` wraps the writer so that error becomes a
:class:`~wavedistill.faults.WriteFailed` naming the events file, and keeps the thread's
traceback off the screen (the error is raised in the main thread anyway).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from wavedistill.faults import translate

_WRITER_THREAD = "_AsyncWriterThread"  # tensorboard's writer thread class
_installed = False


class EventLog:
    """A ``SummaryWriter`` on ``logdir`` whose methods raise
    :class:`~wavedistill.faults.WriteFailed` where the disk fails them."""

    def __init__(self, logdir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        _quiet_writer_threads()
        self.logdir = Path(logdir)
        self._writer = SummaryWriter(str(self.logdir))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._writer, name)
        if not callable(attr):
            return attr

        def guarded(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except Exception as exc:
                failed = translate(exc, self.events_file)
                if failed is None:
                    raise
                raise failed from None

        return guarded

    @property
    def events_file(self) -> Path:
        """The file events are appended to (the folder where it cannot be read)."""
        file_writer = self._writer.file_writer
        try:
            return Path(file_writer.event_writer._file_name)  # type: ignore[attr-defined]
        except AttributeError:  # no writer open yet, or torch's private layout changed
            return self.logdir

    def close(self, quiet: bool = False) -> None:
        """Flush and close; ``quiet`` when another error is already on its way out."""
        try:
            self._writer.close()
        except Exception as exc:
            failed = translate(exc, self.events_file)
            if quiet:
                return
            if failed is None:
                raise
            raise failed from None


def _quiet_writer_threads() -> None:
    """Leave the tensorboard writer thread's write errors to the main thread (once per
    process; every other thread's exceptions go to the hook that was there)."""
    global _installed
    if _installed:
        return
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ == _WRITER_THREAD and isinstance(args.exc_value, OSError):
            return
        previous(args)

    threading.excepthook = hook
    _installed = True
