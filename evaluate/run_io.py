"""Files an evaluation run keeps beside its result: resume state, metrics JSONL, TensorBoard.

Everything is written by rank 0 only and atomically (temp file in the same directory, then
``os.replace``), so a crash mid-write leaves the previous state, never a truncated one.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from pretrain.distributed import is_main

log = logging.getLogger(__name__)


class ResumeError(ValueError):
    """A resume state that belongs to another run; the message names the file and the difference."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(obj, temp)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    return path


def load_resume_state(path: Path, expected: dict[str, Any]) -> dict | None:
    """The saved state at ``path`` if it exists and was made with the same ``expected`` settings.

    A state made with other settings is refused rather than silently continued: mixing two
    protocols in one run would produce a number that matches neither.
    """
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = state.get("settings")
    if saved != expected:
        diff = sorted(k for k in set(saved or {}) | set(expected) if (saved or {}).get(k) != expected.get(k))
        raise ResumeError(f"{path}: resume state was made with other settings (differs in {diff}); "
                         "use another --out-dir or delete the file")
    log.info("resuming from %s (epoch %d done)", path, state["epoch"])
    return state


class MetricsLog:
    """Per-epoch metrics to ``<out>/<name>.jsonl`` and TensorBoard (``<out>/tb``), rank 0 only."""

    def __init__(self, out_dir: Path, name: str, tensorboard: bool = True) -> None:
        self.path = out_dir / f"{name}.jsonl"
        self.writer = None
        if not is_main():
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:  # tensorboard is pinned, but a slim install may lack it
                log.warning("TensorBoard logging disabled: %s", error)
            else:
                self.writer = SummaryWriter(str(out_dir / "tb"))

    def write(self, entry: dict[str, Any]) -> None:
        if not is_main():
            return
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in entry.items()}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(clean, sort_keys=True) + "\n")
        if self.writer is not None:
            for key, value in entry.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, entry.get("epoch", 0))
            self.writer.flush()

    def truncate_after(self, epoch: int) -> None:
        """Drop lines of epochs after ``epoch`` (written before a crash, redone after resume)."""
        if not is_main() or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("epoch", 0) <= epoch:
                    kept.append(line)
            except json.JSONDecodeError:  # a line cut short by the crash
                continue
        handle, temp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write("".join(line + "\n" for line in kept))
        os.replace(temp, self.path)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
