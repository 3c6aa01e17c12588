"""Atomic file writes: a crash or Ctrl-C mid-write leaves the previous file (or none), never half of one."""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pretrain.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _WatchedStream:
    """A binary file that remembers the exception of a failed ``write``.

    torch.save's C++ writer reports any failure of the stream it writes to (a full disk, a file-size
    limit, a KeyboardInterrupt raised by a signal handler mid-write) as ``RuntimeError: ... unexpected
    pos``; keeping the original lets :func:`atomic_write` raise what actually happened."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream, self.failure = stream, None

    def write(self, data) -> int:
        try:
            return self.stream.write(data)
        except BaseException as error:
            self.failure = error
            raise

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(stream)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A write that fails (a full disk, a file-size limit) raises ``OSError`` with ``path`` as its
    filename, whatever the writer made of the failure; the previous file at ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    stream = None
    try:
        try:
            with os.fdopen(handle, "wb") as raw:
                stream = _WatchedStream(raw)
                write(stream)
                stream.flush()
                os.fsync(stream.fileno())
        except Exception as error:   # closing a file whose buffer cannot be flushed raises again
            cause = stream.failure if stream is not None and stream.failure is not None else error
            if isinstance(cause, OSError):
                raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from None
            if cause is not error:
                raise cause from None
            raise
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


class OutputDirError(UserError, OSError):
    """An output folder that cannot be used (unwritable, full, or held by another run); one line."""


def open_no_follow(path: str | os.PathLike, flags: int, mode: int = 0o666) -> int:
    """``os.open`` that refuses a symbolic link as the last component of ``path``.

    Appending to a log or taking a lock through a link planted in a shared output folder would
    truncate or extend whatever file the link names (another user's, or a checkpoint)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OutputDirError(f"{path} is a symbolic link; refusing to write through it (remove the link "
                                 "or choose another output folder)") from None
        raise


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a file ("does not exist", "is a directory, expected a file",
    ...), or None when it is a regular file; error messages end with it."""
    path = Path(path)
    if path.is_file():
        return None
    if path.is_dir():
        return "is a directory, expected a file"
    return "is not a regular file" if path.exists() else "does not exist"


def refuse_symlink(path: str | os.PathLike) -> None:
    """Raise :class:`OutputDirError` if ``path`` is a symbolic link (checked before work starts;
    :func:`open_no_follow` still guards the write itself)."""
    if Path(path).is_symlink():
        raise OutputDirError(f"{path} is a symbolic link; refusing to write through it (remove the link "
                             "or choose another output folder)")


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
            fd = open_no_follow(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OutputDirError:
            raise
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
