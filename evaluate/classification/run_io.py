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

# Resume-identity keys that are not spelled like the flag that sets them.
_FLAGS = {"checkpoint_sha256": "--checkpoint", "train_data": "--dataset/--data-dir/--limit-train",
          "val_data": "--dataset/--data-dir/--limit-val", "subset_sha256": "--subset-file",
          "train_size": "--percent/--subset-file", "schedule": "--preset (schedule)",
          "milestones": "--preset (milestones)", "gamma": "--preset (gamma)",
          "momentum": "momentum (code default)", "weight_decay": "weight decay (code default)"}


def flag_of(key: str) -> str:
    """The command-line flag behind a resume-identity key (``seed`` -> ``--seed``)."""
    return _FLAGS.get(key, "--" + key.replace("_", "-"))


def load_resume_state(path: Path, expected: dict[str, Any]) -> dict | None:
    """The saved state at ``path`` if it exists and was made with the same ``expected`` settings.

    A state made with other settings is refused rather than silently continued: mixing two
    protocols (or two seeds) in one run would produce a number that matches neither. The refusal
    names each differing flag with its saved and current value.
    """
    if not path.is_file():
        return None
    try:
        # Read as data only: our own states hold nothing else, so there is no flag to trust one.
        state = torch_load(path)
    except UntrustedFileError as error:
        raise ResumeError(f"{path}: refused to load: it pickles {error.offending}, which could run code (a resume "
                          "state holds data only); delete it or pass --restart") from None
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file fails in many ways
        raise ResumeError(f"{path}: corrupt resume state ({type(error).__name__}); delete it or pass "
                          "--restart") from None
    if not isinstance(state, dict) or not {"settings", "epoch"} <= set(state):
        raise ResumeError(f"{path}: not a resume state of this evaluator; delete it or pass --restart")
    saved = state.get("settings") or {}
    if saved != expected:
        diff = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
        changes = "; ".join(f"{flag_of(k)} {saved.get(k, '(unset)')!r} in the state, {expected.get(k, '(unset)')!r} now"
                            for k in diff)
        raise ResumeError(f"{path}: resume state was made with other settings: {changes}; pass --restart, "
                          "use another --out-dir, or repeat the original flags")
    log.info("resuming from %s (epoch %d done)", path, state["epoch"])
    return state
