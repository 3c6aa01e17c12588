"""Atomic file writes: a crash or Ctrl-C mid-write leaves the previous file (or none), never half of one."""
from __future__ import annotations

import fcntl
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(stream)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda stream: stream.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda stream: stream.write(text.encode("utf-8")))


class OutputDirError(OSError):
    """An output folder that cannot be used (unwritable, full, or held by another run); one line."""


TEMP_GLOB = ".*.tmp"   # what atomic_write's mkstemp(prefix=".NAME.", suffix=".tmp") leaves behind when killed
LOCK_NAME = ".run.lock"


class RunLock:
    """An exclusive ``flock`` on ``<folder>/.run.lock`` for the lifetime of a run.

    Two runs in one output folder would interleave their metrics and overwrite each other's
    checkpoints. ``flock`` is released by the kernel when the holder dies, so a killed run never
    leaves a stale lock; the file itself stays and records the last holder."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise OutputDirError(f"{self.path.parent}: cannot write there ({error.strerror}); "
                                 "choose another --output-dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "unknown process"
            os.close(fd)
            raise OutputDirError(f"{self.path.parent} is in use by another run ({holder}, lock "
                                 f"{self.path}); wait for it to finish or choose another --output-dir") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        except OSError as error:
            os.close(fd)
            raise OutputDirError(f"{self.path.parent}: cannot write there ({error.strerror}); "
                                 "free space or choose another --output-dir") from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of writes that were killed (SIGKILL skips atomic_write's cleanup).

    Call it only while holding :class:`RunLock`: another live run's temporary file is not stale."""
    stale = sorted(Path(folder).glob(TEMP_GLOB))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def check_free_space(folder: str | os.PathLike, needed_bytes: int, what: str) -> None:
    """Refuse to start a run whose checkpoints cannot fit, instead of failing at the first save."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise OutputDirError(f"{folder}: {free / 1e6:.1f} MB free, but {what} needs about "
                             f"{needed_bytes / 1e6:.1f} MB; free space or choose another --output-dir")
