"""A hostile pickle whose effect is visible: unpickling it creates a marker file.

Every entry point that reads a checkpoint, state or weight file is tested with it, bare and hidden
beside real tensors; the marker's absence proves that nothing from the file ran. (Imported by the
test modules; ``tests/`` is on sys.path through its conftest.)
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

# How a refusal names the offending global: "exec", "builtins.exec" or (protocol 2) "__builtin__.exec".
OFFENDING = r"pickles [\w.]*\bexec\b"


class WritesMarker:
    """Unpickling runs ``exec`` on code that creates ``marker``: the classic pickle attack."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code from the file ran')",)


def hidden_in(obj: dict, marker: Path) -> dict:
    """``obj`` (a real checkpoint layout) with one extra entry that runs code when unpickled."""
    return {**obj, "extra": WritesMarker(marker)}


def save_torch(path: Path, obj: Any) -> Path:
    torch.save(obj, path)
    return path


def save_pickle(path: Path, obj: Any) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


class CountsUnpickles:
    """Unpickling appends one line to ``marker``: how many times a file was fully unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'a').write('unpickled\\n')",)


def pointer_dtype_pickle(path: Path) -> Path:
    """A detectron2-layout .pkl made only of the numpy globals a weight file needs, whose one array has
    a structured dtype with an object field and flags 0: ``numpy.dtype.__setstate__`` accepts that state,
    ``ndarray.__setstate__`` then copies the file's bytes in as if they were plain data, and reading the
    field dereferences those bytes as PyObject pointers (SIGSEGV)."""
    import numpy as np

    class PointerDType:
        def __reduce__(self):
            return np.dtype, ("V8", False, True), (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0)

    class Array:
        def __reduce__(self):
            reconstruct = getattr(np, "_core", np.core).multiarray._reconstruct
            return reconstruct, (np.ndarray, (0,), b"b"), (1, (1,), PointerDType(), False, b"\x41" * 8)

    path.write_bytes(pickle.dumps({"model": {"res2.0.conv1.weight": Array()}, "__author__": "x",
                                   "matching_heuristics": True}, protocol=2))
    return path


def global_named(module: str, name: str) -> bytes:
    """A protocol-2 pickle that calls the global ``module.name`` with no arguments (names may hold any
    character but a newline, e.g. terminal escapes)."""
    return b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n)R."
