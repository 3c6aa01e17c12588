"""Top-k accuracy and running averages, written once for every evaluator.

Accuracy is computed from *counts* (correct, total) rather than from per-batch percentages, so that
a result reduced over DDP ranks is exactly the single-process number: each rank counts on its own
shard and the counts are summed (MoCo v3 main_lincls.py averages per-rank percentages instead,
which is off when the shards differ in size).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

from pretrain.distributed import is_distributed


def collective_device() -> torch.device:
    """Where tensors for a collective must live: the rank's GPU under NCCL, else the CPU (gloo)."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """Number of rows whose target is among the ``k`` highest scores, for each k (float tensor).

    A k larger than the number of classes counts every row as correct, as top-5 on a 2-class problem
    trivially is.
    """
    max_k = min(max(ks), logits.shape[1])
    top = logits.topk(max_k, dim=1).indices
    hits = top.eq(targets[:, None])
    return torch.stack([hits[:, :min(k, max_k)].any(dim=1).sum() for k in ks]).to(torch.float64)


def accuracy(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[float]:
    """Top-k accuracy in percent, one value per k."""
    counts = topk_correct(logits, targets, ks)
    return (100.0 * counts / max(1, len(targets))).tolist()


class AverageMeter:
    """Running mean of a scalar weighted by the number of samples it was measured on."""

    def __init__(self) -> None:
        self.sum = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.sum += float(value) * n
        self.count += n

    @property
    def average(self) -> float:
        return self.sum / self.count if self.count else float("nan")


class AccuracyCounter:
    """Accumulates top-k hit counts over batches and reduces them over DDP ranks."""

    def __init__(self, ks: Sequence[int] = (1, 5)) -> None:
        self.ks = tuple(ks)
        self.correct = torch.zeros(len(self.ks), dtype=torch.float64)
        self.total = 0

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.correct += topk_correct(logits.detach().float().cpu(), targets.cpu(), self.ks)
        self.total += len(targets)

    def result(self, prefix: str = "top") -> dict[str, float]:
        """``{"top1": ..., "top5": ...}`` in percent over all ranks' samples."""
        counts = torch.cat([self.correct, torch.tensor([float(self.total)], dtype=torch.float64)])
        if is_distributed():
            # gloo and NCCL both reduce float64 on CPU / CUDA; counts are exact integers below 2**53.
            counts = counts.to(collective_device())
            dist.all_reduce(counts)
            counts = counts.cpu()
        total = max(1.0, float(counts[-1]))
        return {f"{prefix}{k}": 100.0 * float(c) / total for k, c in zip(self.ks, counts[:-1])}


def classification_ks(num_classes: int) -> tuple[int, ...]:
    """(1, 5), or (1,) when there are fewer than 5 classes and top-5 would be trivially 100%."""
    return (1, 5) if num_classes > 5 else (1,)


@torch.no_grad()
def evaluate_classifier(model: torch.nn.Module, batches: Iterable, device: torch.device,
                        ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy of ``model`` (eval mode) over ``batches`` of (images, labels, ...), all ranks."""
    was_training = model.training
    model.eval()
    counter = AccuracyCounter(ks)
    for batch in batches:
        images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        counter.update(model(images), labels)
    model.train(was_training)
    return counter.result()
