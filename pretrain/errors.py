"""The one error contract of every command: bad input ends as one line, our bugs keep their traceback.

Every entry point (``python -m pretrain``, ``python -m pretrain.submit``, every ``python -m evaluate``
subcommand) is decorated with :func:`cli_main` and builds its flags with :class:`ArgumentParser`. A
:class:`UserError` (or an ``OSError``: a missing, unreadable, unwritable or full path is the
environment, not our code) then ends the command with

    error: <one line naming the file / key / flag and what was expected>

on stderr and exit status :data:`EXIT_USER_ERROR` (2, as argparse uses for bad flags), unless the
error class sets another ``exit_status``. The wrapper writes and removes nothing; each command checks
its input before it creates files. Any other exception is a bug and propagates with its traceback;
``KeyboardInterrupt`` is left to the commands, which handle it themselves.
"""
from __future__ import annotations

import argparse
import functools
import re
import sys
from typing import Callable, NoReturn, TypeVar

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable[..., "int | None"])


class UserError(Exception):
    """Bad input. The message names the file, key or flag and says what was expected.

    Subclasses keep a builtin base where callers catch it (``ValueError``, ``OSError``, ...). Set
    ``exit_status`` on a subclass for a distinct exit status (a diverged run exits 3)."""

    exit_status: int = EXIT_USER_ERROR


def error_line(error: BaseException) -> str:
    """The message of ``error`` as one line.

    An error raised in a DataLoader worker arrives re-raised with the worker's traceback in its
    message; its last line is the original message. An ``OSError`` names its path in ``filename``,
    which ``str()`` leaves out when the OS gave no text. Newlines left in a message become " | ".
    """
    text = str(error).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.splitlines()[-1]
        prefix, _, message = last.partition(": ")
        text = message if message and re.fullmatch(r"[\w.]+", prefix) else last
    elif isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        text = f"{where}{error.strerror}" + (f" ({error.filename2})" if error.filename2 else "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines) if lines else type(error).__name__


def cli_main(main: F) -> F:
    """Decorate an entry point ``main(argv, ...) -> int | None``: a :class:`UserError` or ``OSError``
    becomes the ``error:`` line on stderr and the return value :data:`EXIT_USER_ERROR` (or the
    class's ``exit_status``). Call it as ``sys.exit(main())`` under ``if __name__ == "__main__"``."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (UserError, OSError) as error:
            print(f"error: {error_line(error)}", file=sys.stderr, flush=True)
            return getattr(error, "exit_status", EXIT_USER_ERROR)

    return wrapped  # type: ignore[return-value]


class UsageError(UserError, ValueError):
    """A flag argparse refuses (unknown, missing, or a value of the wrong type or choice)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, except that a bad flag raises :class:`UsageError` instead of printing the usage and
    exiting, so it ends as the same one line as every other bad input, and that a flag must be spelled
    in full."""

    def __init__(self, *args, **kwargs) -> None:
        # No prefix matching: `--epoch 2` silently meant `--epochs 2` and started a real run.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")
