"""Atomic file writes: every file the project writes appears whole or not at all.

A temporary file in the destination's folder is written, flushed and fsynced, then renamed
over the destination (``os.replace`` is atomic on POSIX and Windows within one file system).
On any failure, the temporary file is removed and the destination is left as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (soundfile,
    ``np.savez``); renamed onto ``path`` after the ``with`` body succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a file is as open() makes it
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the rename must never expose bytes that are not on disk
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[IO], object], binary: bool = True) -> Path:
    """Call ``write(f)`` on an open temporary file, then move it onto ``path``. Returns ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb" if binary else "w") as f:
        write(f)
        f.flush()
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text), binary=False)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask
