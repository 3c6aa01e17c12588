"""Training metrics for people and programs: a JSONL log, an optional CSV copy, TensorBoard scalars.

One class for pre-training (a line every few steps) and the evaluators (a line per epoch). Only
rank 0 writes. After a resume, :meth:`truncate_after` drops the lines of the work being redone (and
has TensorBoard purge its events past the resumed step), so the log never holds two different
values for one step. Logs are appended only to regular files, never through a symbolic link.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from pretrain.distributed import is_main
from pretrain.fileio import atomic_write_text, open_no_follow, refuse_symlink

log = logging.getLogger(__name__)


class MetricsLog:
    """``<out>/<name>.jsonl`` (+ ``<name>.csv`` with ``csv=True``) and TensorBoard in ``<out>/<tb_dir>``."""

    def __init__(self, out_dir: Path, name: str, *, step_key: str = "epoch", tensorboard: bool = True,
                 tb_dir: str = "tb", tag_prefix: str = "", csv: bool = False) -> None:
        self.path = Path(out_dir) / f"{name}.jsonl"
        self.csv_path = Path(out_dir) / f"{name}.csv" if csv else None
        self.step_key, self.tag_prefix = step_key, tag_prefix
        self.tb_dir = Path(out_dir) / tb_dir
        self.writer = None
        if not is_main():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        refuse_symlink(self.path)   # refused before the run's work, not at its first log line
        if tensorboard:
            self._open_tensorboard(None)

    def _open_tensorboard(self, purge_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # tensorboard is pinned, but a slim install may lack it
            log.warning("TensorBoard logging disabled: %s", error)
        else:
            self.writer = SummaryWriter(str(self.tb_dir), purge_step=purge_step)

    def write(self, entry: dict[str, Any]) -> None:
        if not is_main():
            return
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in entry.items()}
        descriptor = open_no_follow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(clean) + "\n")
        if self.writer is not None:
            for key, value in entry.items():
                if key not in (self.step_key, "epoch") and isinstance(value, (int, float)):
                    self.writer.add_scalar(self.tag_prefix + key, value, entry.get(self.step_key, 0))
            self.writer.flush()

    def _rows(self) -> list[dict[str, Any]]:
        rows = []
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a crash
                    continue
        return rows

    def truncate_after(self, step: float) -> None:
        """Drop the lines whose ``step_key`` is beyond ``step`` (written before a crash, redone now).

        TensorBoard's event files are append-only: the writer is reopened with ``purge_step``, which
        records a restart there so that TensorBoard drops the older events past ``step``."""
        if not is_main():
            return
        if self.writer is not None:
            self.writer.close()
            self._open_tensorboard(int(math.floor(step)) + 1)
        if not self.path.is_file():
            return
        kept = [row for row in self._rows() if row.get(self.step_key, 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in kept))

    def close(self) -> None:
        """Close TensorBoard and (with ``csv=True``) write the CSV copy of the whole JSONL log."""
        if self.writer is not None:
            self.writer.close()
        if self.csv_path is not None and is_main():
            rows = self._rows()
            columns = list(dict.fromkeys(key for row in rows for key in row))
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(self.csv_path, buffer.getvalue())
