"""The supervised loop shared by the linear probe (standard and fast) and semi-supervised fine-tuning.

Under DDP every rank takes its slice of the *same* global batch that a single process would see
(one seeded permutation per epoch, cut into global batches, each cut into ``world`` slices), and
the loss is normalised by the global batch size. The averaged DDP gradient is then exactly the
single-process gradient, which is what makes a 2-rank run reproduce a 1-process one (checked in
tests/evaluate/classification/test_ddp_eval.py). ``DistributedSampler`` instead deals whole batches of a strided
permutation, so the two runs see different batches.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Sampler
from tqdm import tqdm

from evaluate.classification.metrics import AverageMeter
from evaluate.classification.run_io import load_resume_state
from pretrain.checkpoint import save_atomic
from pretrain.metrics_log import MetricsLog
from pretrain.distributed import is_main, rank, world_size
from evaluate.errors import TrainingSettingsError

log = logging.getLogger(__name__)


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's slice of each global batch of a seeded per-epoch permutation.

    A last global batch with fewer samples than ranks is dropped (a rank cannot take an empty
    slice); that is at most ``world - 1`` samples per epoch and never happens in one process.
    """

    def __init__(self, size: int, batch_size: int, *, shuffle: bool, seed: int = 0) -> None:
        if batch_size < world_size():
            raise TrainingSettingsError(f"global batch size {batch_size} is smaller than the {world_size()} ranks")
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batch_sizes(self) -> list[int]:
        sizes = [min(self.batch_size, self.size - start) for start in range(0, self.size, self.batch_size)]
        return [s for s in sizes if s >= world_size()]

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.size)
        for start, size in zip(range(0, self.size, self.batch_size), self.global_batch_sizes()):
            yield torch.tensor_split(order[start:start + size], world_size())[rank()].tolist()

    def __len__(self) -> int:
        return len(self.global_batch_sizes())


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """Half-cosine decay per epoch to 0, as MoCo v3 main_lincls.py ``adjust_learning_rate``."""
    return base * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def step_lr(base: float, epoch: int, milestones: Sequence[int], gamma: float) -> float:
    """Multiply by ``gamma`` at each milestone epoch (SwAV eval_semisup.py ``MultiStepLR``)."""
    return base * gamma ** sum(epoch >= m for m in milestones)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def fit(*, trainable: nn.Module, optimizer: torch.optim.Optimizer, lrs_at: Callable[[int], Sequence[float]],
        sampler: ShardedBatchSampler, batches: Callable[[int], Iterable], forward: Callable[[Any], torch.Tensor],
        evaluate: Callable[[], dict[str, float]], epochs: int, out_dir: Path, name: str,
        resume_settings: dict[str, Any], resume: bool = True, tensorboard: bool = True,
        train_mode: Callable[[], None] = lambda: None,
        after_epoch: Callable[[int], None] = lambda epoch: None, eval_every: int = 1) -> dict[str, Any]:
    """Train for ``epochs``, evaluating after each; resumable from ``out_dir/<name>_state.pt``.

    ``batches(epoch)`` yields this rank's batches ``(inputs, labels, ...)`` in the order of
    ``sampler``; ``forward(inputs)`` returns logits; ``lrs_at(epoch)`` the lr of each param group.
    ``after_epoch`` runs protocol checks (it raises to stop the run). Validation runs every
    ``eval_every`` epochs and always after the last one; "best" is over the validated epochs. Returns
    ``{"final": metrics, "best": metrics of the best-top-1 epoch, "best_epoch", "history"}``.
    """
    state_path = out_dir / f"{name}_state.pt"
    metrics_log = MetricsLog(out_dir, f"{name}_metrics", tensorboard=tensorboard)
    start, best, best_epoch, history = 0, None, 0, []
    saved = load_resume_state(state_path, resume_settings) if resume else None
    if saved is not None:
        unwrap(trainable).load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        start, best, best_epoch, history = saved["epoch"], saved["best"], saved["best_epoch"], saved["history"]
        metrics_log.truncate_after(start)
    elif is_main() and metrics_log.path.exists():
        metrics_log.path.unlink()  # a fresh run must not append to an abandoned run's curve
    for epoch in range(start, epochs):
        began = time.time()
        for group, lr in zip(optimizer.param_groups, lrs_at(epoch)):
            group["lr"] = lr
        sampler.set_epoch(epoch)
        train_mode()
        loss_meter = AverageMeter()
        steps = zip(batches(epoch), sampler.global_batch_sizes())
        for batch, global_size in tqdm(steps, total=len(sampler), desc=f"{name} epoch {epoch + 1}/{epochs}",
                                       disable=not is_main(), leave=False):
            logits = forward(batch[0])
            labels = batch[1].to(logits.device, non_blocking=True)
            # Sum over this rank's slice, divided by the global batch: DDP's mean over ranks then
            # gives the exact single-process mean-loss gradient (see module docstring).
            loss = F.cross_entropy(logits, labels, reduction="sum") * (world_size() / global_size)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_meter.update(loss.item() * global_size / world_size() / max(1, len(labels)), len(labels))
        if not math.isfinite(loss_meter.average):
            # A diverged head still classifies (a constant guess), so its accuracy would look like a result.
            kept = f"{state_path} holds epoch {epoch}" if saved is not None or epoch > start else "nothing was saved"
            raise TrainingSettingsError(f"{name} diverged: the training loss is {loss_meter.average} in epoch "
                                        f"{epoch + 1}; no result recorded ({kept}); lower the learning rate")
        after_epoch(epoch)
        metrics = evaluate() if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs else {}
        if metrics and (best is None or metrics["top1"] > best["top1"]):
            best, best_epoch = dict(metrics), epoch + 1
        entry = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "train_loss": loss_meter.average,
                 **{f"val_{k}": v for k, v in metrics.items()}, "epoch_time_s": time.time() - began}
        history.append(entry)
        metrics_log.write(entry)
        log.info("%s epoch %d/%d: loss %.4f, val top1 %s", name, epoch + 1, epochs, loss_meter.average,
                 f"{metrics['top1']:.2f}" if metrics else "-")
        if is_main():
            save_atomic({"epoch": epoch + 1, "model": unwrap(trainable).state_dict(),
                               "optimizer": optimizer.state_dict(), "best": best, "best_epoch": best_epoch,
                               "history": history, "settings": resume_settings}, state_path)
    metrics_log.close()
    if not history:
        raise TrainingSettingsError(f"{state_path}: nothing to train (0 epochs)")
    final = {k[len("val_"):]: v for k, v in history[-1].items() if k.startswith("val_")}
    return {"final": final, "best": best, "best_epoch": best_epoch, "history": history}
