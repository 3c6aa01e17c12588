"""Start a pre-training run from another run's shared Eq. 1 warm-up, instead of training it twice.

During the neighbour warm-up (``neighbor_warmup_epochs``, paper Appendix A) every neighbour mode
trains Eq. 1: the search asks for K = 0 neighbours, the loss has no neighbour term, and the
candidate set is filled the same way. Two runs that differ only in how they use neighbours are
therefore the same computation until the warm-up ends. :func:`fork_warmup` copies a checkpoint
taken inside that warm-up to a new output folder under the other neighbour settings; rerunning
``python -m pretrain`` there resumes it, and the result is the run that would have trained the
warm-up itself (``tests/pretrain/test_fork.py`` checks this bit for bit). The checkpoint records
where its warm-up came from (``warmup_from``), and keeps saying so in every later save.

    python -m pretrain --recipe R --neighbors none --output-dir runs/eq1   # stopped after the warm-up
    python -c "from pretrain.fork import fork_warmup; fork_warmup('runs/eq1/checkpoint.pth', 'runs/soft', neighbors='soft')"
    python -m pretrain --recipe R --output-dir runs/soft                  # resumes at the warm-up's end
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from pretrain import checkpoint as ckpt
from pretrain.config import ConfigError
from pretrain.fileio import atomic_write_text
from pretrain.provenance import file_sha256

log = logging.getLogger(__name__)

# What only the neighbour epochs read: changing them cannot change a step of the warm-up.
NEIGHBOR_ONLY_KEYS = frozenset({"neighbors", "k", "positiveness_temperature", "detach_weights"})


def fork_warmup(source: str | Path, out_dir: str | Path, **changes) -> Path:
    """Write ``out_dir/checkpoint.pth``: ``source`` (a checkpoint inside the neighbour warm-up) under
    the config ``changes`` (keys of :data:`NEIGHBOR_ONLY_KEYS`), and the metric lines it has so far."""
    source, out_dir = Path(source), Path(out_dir)
    unknown = sorted(set(changes) - NEIGHBOR_ONLY_KEYS)
    if unknown:
        raise ConfigError(f"fork_warmup: {', '.join(unknown)} change(s) the warm-up itself; only "
                          f"{', '.join(sorted(NEIGHBOR_ONLY_KEYS))} may differ from {source}")
    state = ckpt.load_pretrain_checkpoint(source)
    config = state["config"]
    warmup = int(config["neighbor_warmup_epochs"])
    epoch, step = int(state["epoch"]), int(state.get("step_in_epoch", 0))
    if epoch > warmup or (epoch == warmup and step > 0):
        raise ckpt.CheckpointError(f"{source}: taken at epoch {epoch} step {step}, after the {warmup}-epoch "
                                   "neighbour warm-up; its neighbours already shaped it, so it cannot start a run "
                                   "with other neighbour settings")
    target = out_dir / ckpt.LATEST
    if target.exists():
        raise ckpt.CheckpointError(f"{target} exists; fork into an empty output folder")
    state["config"] = {**config, **changes, "output_dir": str(out_dir)}
    state["warmup_from"] = {"checkpoint": str(source), "sha256": file_sha256(source), "epoch": epoch,
                            "step_in_epoch": step, **{key: config.get(key) for key in changes}}
    out_dir.mkdir(parents=True, exist_ok=True)
    # The warm-up's metric lines, so the new run's log and curves cover its whole schedule.
    metrics = source.parent / "metrics.jsonl"
    if metrics.is_file():
        lines = [line for line in metrics.read_text(encoding="utf-8").splitlines()
                 if line.strip() and json.loads(line).get("step", 0) <= state["global_step"]]
        atomic_write_text(out_dir / "metrics.jsonl", "".join(line + "\n" for line in lines))
    ckpt.save_atomic(state, target)
    log.info("forked %s (epoch %d step %d) into %s with %s", source, epoch, step, target, changes)
    return target
