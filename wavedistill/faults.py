"""Failures of the machine rather than of the input: a full disk or an I/O error while a file
is written, said in one line.

Every file the project writes goes through :mod:`wavedistill.fileio`, which turns whatever the
writer raised into a :class:`WriteFailed` naming the file: :class:`OutOfSpace` (exit status
``EXIT_OUT_OF_SPACE``, 28, the number of ``ENOSPC``) when the file system is full or over
quota, :class:`WriteFailed` (``EXIT_WRITE_FAILED``, 74, ``EX_IOERR`` of sysexits.h) for any
other I/O error. Writers do not agree on how they fail: Python's ``open().write`` raises
``OSError(ENOSPC)``, torch's zip writer a ``RuntimeError`` ("unexpected pos") whose context is
that ``OSError``, numpy's ``tofile`` an ``OSError`` without an errno, libsndfile a bare
"System error", safetensors an error whose message ends "(os error 28)". :func:`translate`
reads the errno where there is one and the free space of the file system where there is not.

The command that was writing knows what is still intact and how to continue; it adds that with
:func:`explain`, and the CLI prints the whole as one line::

    no space left writing exp/t/checkpoints/step-000006.pt (2.9 MB needed, 4.1 kB free);
    step-000004.pt is intact; free space and run again with --resume
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

EXIT_OUT_OF_SPACE = 28  # ENOSPC
EXIT_WRITE_FAILED = 74  # EX_IOERR

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Below this much free space, a writer's error without an errno is taken for a full disk.
NEARLY_FULL = 1 << 20


class WriteFailed(Exception):
    """Writing ``path`` failed for a reason outside the program: an I/O error. The message is
    one line; :meth:`add` appends what is intact and how to go on."""

    exit_code = EXIT_WRITE_FAILED

    def __init__(
        self,
        path: str | Path,
        reason: str,
        needed: int | None = None,
        free: int | None = None,
        notes: tuple[str, ...] = (),
    ):
        self.path, self.reason, self.needed, self.free = str(path), reason, needed, free
        self.notes = list(notes)
        super().__init__(self.path)

    def add(self, note: str) -> None:
        """Append a clause (what is intact, what to do next) to the message."""
        if note and note not in self.notes:
            self.notes.append(note)

    def __str__(self) -> str:
        sizes = []
        if self.needed is not None:
            sizes.append(f"{format_size(self.needed)} needed")
        if self.free is not None:
            sizes.append(f"{format_size(self.free)} free")
        head = f"{self.reason} writing {self.path}"
        if sizes:
            head += f" ({', '.join(sizes)})"
        return "; ".join([head, *self.notes])

    def __reduce__(self):  # crosses process boundaries (preprocess workers) intact
        return (type(self), (self.path, self.reason, self.needed, self.free, tuple(self.notes)))


class OutOfSpace(WriteFailed):
    """The file system holding ``path`` is full (or the user's quota is)."""

    exit_code = EXIT_OUT_OF_SPACE


def format_size(size: int) -> str:
    """A byte count as people read it: ``512 bytes``, ``4.1 kB``, ``2.9 MB``, ``1.2 GB``."""
    if size < 1000:
        return f"{size} bytes"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if size < scale * 1000 or unit == "GB":
            return f"{size / scale:.1f} {unit}"
    raise AssertionError("unreachable")


def free_space(path: str | Path) -> int | None:
    """Bytes free to this user on the file system of ``path`` (its nearest existing folder),
    or None where that cannot be read."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


# Rust's io::Error (safetensors) says its errno only in the message: "... (os error 28)"
RUST_ERRNO = re.compile(r"\(os error (\d+)\)")


def _errno(exc: BaseException) -> int | None:
    """The errno of ``exc`` or of an ``OSError`` it was raised from or while handling."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError) and link.errno is not None:
            return link.errno
        found = RUST_ERRNO.search(str(link))
        if found:
            return int(found.group(1))
        link = link.__cause__ or link.__context__
    return None


def translate(
    exc: BaseException, path: str | Path, needed: int | None = None
) -> WriteFailed | None:
    """What ``exc``, raised while ``path`` was written, means: an :class:`OutOfSpace`, a
    :class:`WriteFailed`, or None when it is not a write failure (a bug keeps its traceback).
    Call it before the partial file is removed: a full disk then still reads as full."""
    if isinstance(exc, WriteFailed) or not isinstance(exc, Exception):
        return None
    code, free = _errno(exc), free_space(Path(path).parent)
    if code in FULL_ERRNOS:
        return OutOfSpace(path, "no space left", needed, free)
    if code is not None:
        if not (
            isinstance(exc, OSError)
            or isinstance(exc.__context__, OSError)
            or RUST_ERRNO.search(str(exc))
        ):
            return None  # an errno deep in an unrelated chain says nothing about this write
        return WriteFailed(path, f"write failed ({os.strerror(code)})", needed, free)
    nearly_full = NEARLY_FULL if needed is None else max(NEARLY_FULL, needed)
    if isinstance(exc, (OSError, RuntimeError)) and free is not None and free < nearly_full:
        return OutOfSpace(path, "no space left", needed, free)
    return None


def refresh_free(exc: WriteFailed) -> WriteFailed:
    """``exc`` with the free space read again (after the partial file was removed): the
    space the user has, as they would measure it."""
    free = free_space(Path(exc.path).parent)
    if free is not None:
        exc.free = free
    return exc


def advice(exc: WriteFailed, then: str) -> str:
    """What to do: ``free space and <then>`` for a full disk, ``check the disk and <then>``
    for another I/O error."""
    return f"{'free space' if isinstance(exc, OutOfSpace) else 'check the disk'} and {then}"


@contextlib.contextmanager
def explain(note: str | Callable[[WriteFailed], str]) -> Iterator[None]:
    """Add ``note`` (or what it returns for the failure, computed when it happens) to any
    :class:`WriteFailed` raised in the block; an ``OSError`` of a full disk that escaped the
    atomic writers (a folder being made) becomes an :class:`OutOfSpace` too."""
    try:
        yield
    except WriteFailed as exc:
        exc.add(note(exc) if callable(note) else note)
        raise
    except OSError as exc:
        if exc.errno not in FULL_ERRNOS:
            raise
        failed = OutOfSpace(
            exc.filename or "a file", "no space left", None, free_space(Path(exc.filename or "."))
        )
        failed.add(note(failed) if callable(note) else note)
        raise failed from None
