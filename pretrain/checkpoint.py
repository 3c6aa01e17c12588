"""Checkpoint I/O: atomic writes, strict reads with clear errors, and the state a resume needs."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from pretrain.errors import UserError
from pretrain.fileio import atomic_write, file_problem
from pretrain.identity import RUN_ONLY_KEYS
from pretrain.safe_load import UntrustedFileError, printable, torch_load

FORMAT = "snclr-bench/pretrain/v1"
LATEST = "checkpoint.pth"


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used; the message names the file and what was expected."""


def save_atomic(obj: dict, path: str | os.PathLike) -> Path:
    """torch.save through :func:`pretrain.fileio.atomic_write`: a crash mid-write keeps the old file."""
    return atomic_write(path, lambda stream: torch.save(obj, stream))


def rng_state() -> dict:
    """Python, NumPy and torch RNG states in a form torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": {"kind": kind, "keys": torch.from_numpy(keys.copy()),
                                                  "pos": pos, "has_gauss": has_gauss, "gauss": gauss},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy(), numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_pretrain_checkpoint(path: str | os.PathLike, expect: dict | None = None, *, trust: bool = False) -> dict:
    """Read one of our pre-training checkpoints; refuse corrupt or foreign files, and (with
    ``expect``) checkpoints whose config disagrees on a key that fixes the model's shape. ``trust``
    (``--trust-checkpoint``) allows a full unpickle of a file the data-only reader refuses."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise CheckpointError(f"checkpoint {path} {problem}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint (a copy or save that never "
                              "completed?)")
    try:
        state = torch_load(path, trust=trust)  # data only, with the evaluators' allow-list (pretrain.safe_load)
    except UntrustedFileError as error:   # names the file, every offending global and the flag
        raise CheckpointError(str(error)) from None
    except Exception as error:  # noqa: BLE001 - any failure to unpickle means unusable
        detail = printable(str(error).splitlines()[0]) if str(error) else ""
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({type(error).__name__}: {detail})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not an snclr-bench pre-training checkpoint (format {found!r}, "
                              f"expected {FORMAT!r}); to evaluate a foreign checkpoint use `python -m evaluate`")
    for key in ("model", "optimizer", "epoch", "config"):
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    for key, value in (expect or {}).items():
        if state["config"].get(key) != value:
            raise CheckpointError(f"{path}: was trained with {key}={state['config'].get(key)!r} but this run "
                                  f"has {key}={value!r}; use another --output-dir or matching flags")
    return state


# Config keys a resume may change: the run-only keys that model identity leaves out too
# (pretrain/identity.py). Every other key changes the result (the trained weights, or what the
# checkpoint claims to be), so a resume with another value is refused rather than silently
# relabelling the run.
RESUME_FREE_KEYS = RUN_ONLY_KEYS


def check_resume_identity(path: str | os.PathLike, saved: dict, current: dict, defaults: dict,
                          extend_schedule: bool = False) -> None:
    """Refuse to resume the run in ``path`` (whose config was ``saved``) under a config that would
    change its result; ``epochs`` may only grow, and only with ``extend_schedule``. Keys an older
    checkpoint lacks compare with their ``defaults``."""
    changed = []
    for key, value in current.items():
        if key in RESUME_FREE_KEYS:
            continue
        old = saved.get(key, defaults.get(key))
        if old == value or (key == "epochs" and extend_schedule and value > old):
            continue
        changed.append(f"{key} {old!r} -> {value!r}")
    if changed:
        hint = ("--epochs may only grow, and only with --extend-schedule"
                if any(c.startswith("epochs ") for c in changed) else "")
        raise CheckpointError(f"{path}: resuming would change the run's result ({', '.join(changed)}); "
                              f"{hint + '; ' if hint else ''}use the checkpoint's values or another --output-dir")


class NonFiniteError(UserError, FloatingPointError):
    """A tensor about to be saved holds NaN or inf; the message names it."""

    exit_status = 3   # a diverged run, not a bad flag: scripts that retry with a lower lr tell them apart


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Raise :class:`NonFiniteError` naming the first non-finite floating tensor of ``tensors``.

    One reduction and one host sync for the whole set; names are looked up only on failure."""
    floats = {name: t for name, t in tensors.items() if torch.is_tensor(t) and t.is_floating_point()}
    if not floats:
        return
    flags = torch.stack([torch.isfinite(t).all() for t in floats.values()])
    if bool(flags.all()):
        return
    bad = [name for name, ok in zip(floats, flags.tolist()) if not ok]
    raise NonFiniteError(f"{where}: {len(bad)} tensor(s) hold NaN or inf (first: {bad[0]}); refusing to "
                         "save, the previous checkpoint is kept")


def optimizer_tensors(state: dict) -> dict[str, torch.Tensor]:
    """The tensors of an optimizer ``state_dict()`` by a readable name (``state.<param>.<key>``)."""
    return {f"optimizer.state.{index}.{key}": value for index, entry in state["state"].items()
            for key, value in entry.items() if torch.is_tensor(value)}
