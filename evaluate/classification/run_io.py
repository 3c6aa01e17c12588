"""Resume state of an evaluation run: refused when it was made with other settings.

The state itself is written with :func:`pretrain.checkpoint.save_atomic` and the per-epoch log with
:class:`pretrain.metrics_log.MetricsLog`; both are shared with pre-training.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from evaluate.errors import ResumeError
from pretrain.safe_load import UntrustedFileError, torch_load


log = logging.getLogger(__name__)


def load_resume_state(path: Path, expected: dict[str, Any]) -> dict | None:
    """The saved state at ``path`` if it exists and was made with the same ``expected`` settings.

    A state made with other settings is refused rather than silently continued: mixing two
    protocols in one run would produce a number that matches neither.
    """
    if not path.is_file():
        return None
    try:
        # Read as data only: our own states hold nothing else, so there is no flag to trust one.
        state = torch_load(path)
    except UntrustedFileError as error:
        raise ResumeError(f"{path}: refused to load: it pickles {error.offending}, which could run code (a resume "
                          "state holds data only); delete it or use --restart") from None
    except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways (EOFError, RuntimeError, ...)
        raise ResumeError(f"{path}: unreadable resume state ({type(error).__name__}: "
                          f"{str(error).splitlines()[0][:120] if str(error) else ''}); delete it or use --restart") from None
    saved = state.get("settings")
    if saved != expected:
        diff = sorted(k for k in set(saved or {}) | set(expected) if (saved or {}).get(k) != expected.get(k))
        raise ResumeError(f"{path}: resume state was made with other settings (differs in {diff}); "
                         "use another --out-dir or delete the file")
    log.info("resuming from %s (epoch %d done)", path, state["epoch"])
    return state
