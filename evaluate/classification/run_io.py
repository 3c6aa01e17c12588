"""Resume state of an evaluation run: refused when it was made with other settings.

The state itself is written with :func:`pretrain.checkpoint.save_atomic` and the per-epoch log with
:class:`pretrain.metrics_log.MetricsLog`; both are shared with pre-training.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from evaluate.errors import ResumeError


log = logging.getLogger(__name__)


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
