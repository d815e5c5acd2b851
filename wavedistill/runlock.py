"""One run per output folder: ``train-teacher``, ``distill`` and ``preprocess`` hold
``OUT/.wavedistill.lock`` while they write there, and a second run into the folder is refused
in one line naming the process that holds it.

The lock is an ``flock`` on that file, which the kernel drops when its process ends however it
ends, so a lock left by a killed run is simply taken over: no pid is guessed alive or dead. The
file also holds the holder's pid and command, for the message. Local file systems only: NFS
may not pass ``flock`` between machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from wavedistill.errors import UserError

LOCK_NAME = ".wavedistill.lock"


class FolderBusy(UserError):
    """Another live process is writing into the folder."""


@contextlib.contextmanager
def run_lock(folder: str | Path, command: str) -> Iterator[Path]:
    """Hold ``folder``'s lock for the block (the folder is made if needed); refuse with
    :class:`FolderBusy` when a live process holds it. Yields the lock file's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = _acquire(path, folder, command)
    try:
        yield path
    finally:
        _release(path, fd)


def _acquire(path: Path, folder: Path, command: str) -> int:
    """Open and lock ``path``; write who holds it. Retries when the holder removed the file
    between our open and our lock (we then hold a lock on a file no one else sees)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(path)
            os.close(fd)
            raise FolderBusy(
                f"{folder}: in use by another run ({holder}); wait for it to end "
                "or choose another output folder"
            ) from None
        if _same_file(fd, path):
            break
        os.close(fd)
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    except OSError:
        pass  # a full disk: the lock holds without the record; the run's own writes say it
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _release(path: Path, fd: int) -> None:
    """Remove the file while still holding the lock (a waiter then sees a fresh file), and
    drop the lock."""
    try:
        if _same_file(fd, path):
            path.unlink()
    finally:
        os.close(fd)


def _describe(path: Path) -> str:
    """``pid 123, wavedistill train-teacher, since 2026-01-02 03:04:05`` from the lock file."""
    try:
        record = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        record = {}
    parts = [f"pid {record.get('pid', '?')}"]
    host = record.get("host")
    if host and host != socket.gethostname():
        parts[0] += f" on {host}"
    if record.get("command"):
        parts.append(f"wavedistill {record['command']}")
    if record.get("started"):
        parts.append(f"since {record['started']}")
    return ", ".join(parts)


def holder_pid(folder: str | Path) -> int | None:
    """The pid recorded in ``folder``'s lock file, or None (no file or unreadable)."""
    try:
        return int(json.loads((Path(folder) / LOCK_NAME).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
