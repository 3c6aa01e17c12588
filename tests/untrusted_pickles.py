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
