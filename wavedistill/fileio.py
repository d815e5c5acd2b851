"""Atomic file writes: every file the project writes appears whole or not at all.

A temporary file in the destination's folder is written, flushed and fsynced, then renamed
over the destination (``os.replace`` is atomic on POSIX and Windows within one file system).
On any failure, the temporary file is removed and the destination is left as it was; a full
disk or an I/O error is raised as :class:`~wavedistill.faults.WriteFailed` naming the
destination (see faults.py), whatever the writer raised.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from wavedistill.faults import WriteFailed, refresh_free, translate


@contextmanager
def atomic_path(path: str | Path, size: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (soundfile,
    ``np.savez``); renamed onto ``path`` after the ``with`` body succeeds. ``size``: the bytes
    the file will need, where known, for the message of a full disk."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a file is as open() makes it
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the rename must never expose bytes that are not on disk
        os.replace(tmp, path)
    except Exception as exc:
        failed = translate(exc, path, size)  # before the removal frees the partial file
        if failed is None:
            raise
        _remove(tmp)
        raise refresh_free(failed) from None
    finally:
        _remove(tmp)


def atomic_write(
    path: str | Path, write: Callable[[IO], object], binary: bool = True, size: int | None = None
) -> Path:
    """Call ``write(f)`` on an open temporary file, then move it onto ``path``. Returns ``path``."""
    with atomic_path(path, size) as tmp, open(tmp, "wb" if binary else "w") as f:
        write(f)
        f.flush()
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text), binary=False, size=len(text.encode()))


def append_text(path: str | Path, text: str) -> None:
    """Append ``text`` to ``path`` (a log of lines, e.g. ``validation.jsonl``) whole or not at
    all: a failed write is cut back off, so no half line is left behind."""
    path = Path(path)
    data = memoryview(text.encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:  # unbuffered: nothing is left to fail again at close
                data = data[os.write(fd, data) :]
        except Exception as exc:
            failed = translate(exc, path, len(text.encode()))
            _truncate(fd, start)
            if failed is None:
                raise
            raise refresh_free(failed) from None
    finally:
        os.close(fd)


def _truncate(fd: int, size: int) -> None:
    """Cut an open file back to ``size`` bytes, dropping what a failed write left."""
    try:
        os.ftruncate(fd, size)
    except OSError:
        pass  # the file system refuses even that; the next reader sees a torn last line


def _remove(tmp: str | None) -> None:
    if tmp is not None:
        Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


__all__ = ["WriteFailed", "append_text", "atomic_path", "atomic_write", "atomic_write_text"]
