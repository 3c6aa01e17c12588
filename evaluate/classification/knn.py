"""Weighted k-nearest-neighbour classification on frozen features (the DINO kNN monitor).

Protocol (Caron et al., 2021, Sec. 4.1 and ``eval_knn.py``; first used by Wu et al., 2018):
features are L2-normalised, the k most cosine-similar training features vote for their class with
weight ``exp(similarity / T)``, T = 0.07, and k = 20 and 200 are reported.

Features are taken with DINO's evaluation transform, bicubic Resize(256) + CenterCrop(224)
(``eval_knn.py``: ``Resize(256, interpolation=3)``); ``--interpolation bilinear`` is a recorded
deviation.

The similarity matrix is never held whole: test features are taken ``test_chunk`` rows at a time
and the training set ``train_chunk`` rows at a time, keeping a running top-k per test row, so
memory is O(test_chunk x (train_chunk + k)) whatever the data set size (ImageNet's full 50k x 1.28M
matrix would be 256 GB in fp32). The work runs on the evaluation device (the GPU when there is one)
and the test rows are split over DDP ranks, each rank voting for its rank-strided share and the hit
counts summed; benchmarks/knn_scale.py measures the cost at ImageNet shapes.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from evaluate.classification import cli_common
from evaluate.classification.metrics import collective_device
from pretrain.distributed import is_distributed, rank, world_size
from pretrain.errors import ArgumentParser, cli_main

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class KNNSettings:
    """Defaults of DINO ``eval_knn.py`` (``--nb_knn 10 20 100 200 --temperature 0.07``), k=20 and 200 kept."""

    ks: tuple[int, ...] = (20, 200)
    temperature: float = 0.07
    interpolation: str = "bicubic"   # eval_knn.py: pth_transforms.Resize(256, interpolation=3)
    test_chunk: int = 256
    train_chunk: int = 65536

    def protocol_id(self) -> str:
        return f"knn_cos-k{'-'.join(str(k) for k in self.ks)}-T{self.temperature:g}"


def _top_neighbours(queries: torch.Tensor, train: torch.Tensor, k: int,
                    train_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices) of the k most similar rows of ``train`` for each query, best first."""
    best_sim = torch.empty((len(queries), 0), dtype=queries.dtype, device=queries.device)
    best_idx = torch.empty((len(queries), 0), dtype=torch.int64, device=queries.device)
    for start in range(0, len(train), train_chunk):
        sims = queries @ train[start:start + train_chunk].T
        idx = torch.arange(start, start + sims.shape[1], device=queries.device).expand_as(sims)
        sims, idx = torch.cat([best_sim, sims], dim=1), torch.cat([best_idx, idx], dim=1)
        best_sim, order = sims.topk(min(k, sims.shape[1]), dim=1)
        best_idx = idx.gather(1, order)
    return best_sim, best_idx


@torch.no_grad()
def knn_hits(train: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor, targets: torch.Tensor, *,
             ks: Sequence[int], temperature: float, num_classes: int, test_chunk: int = 256,
             train_chunk: int = 65536) -> torch.Tensor:
    """Hit counts of the weighted vote, shape (len(ks), 2): top-1 and top-5 per k, on ``train``'s device.

    ``train`` and ``queries`` are L2-normalised; ``queries`` may be any share of the test set, so the
    counts of disjoint shares add up to those of the whole.
    """
    device = train.device
    hits = torch.zeros(len(ks), 2, dtype=torch.int64, device=device)
    for start in range(0, len(queries), test_chunk):
        chunk = queries[start:start + test_chunk].to(device, non_blocking=True)
        labels = targets[start:start + test_chunk].to(device, non_blocking=True).long()
        sims, idx = _top_neighbours(chunk, train, max(ks), train_chunk)
        neighbour_labels = train_labels[idx]
        weights = (sims / temperature).exp()
        for row, k in enumerate(ks):
            votes = torch.zeros(len(chunk), num_classes, dtype=weights.dtype, device=device)
            votes.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])
            ranked = votes.topk(min(5, num_classes), dim=1).indices
            hits[row, 0] += (ranked[:, 0] == labels).sum()
            hits[row, 1] += (ranked == labels[:, None]).any(dim=1).sum()
    return hits


@torch.no_grad()
def knn_classify(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, *, ks: Sequence[int] = (20, 200), temperature: float = 0.07,
                 num_classes: int | None = None, test_chunk: int = 256, train_chunk: int = 65536,
                 device: torch.device | str = "cpu") -> dict[str, float]:
    """Weighted kNN top-1 (and top-5 with more than 5 classes) in percent for every k in ``ks``.

    The similarities run on ``device``; under DDP each rank takes the test rows ``rank, rank + world,
    ...`` and the hit counts are summed over ranks, so every rank returns the whole set's numbers.
    Returns ``{"knn_top1_k20": ..., "knn_top5_k20": ..., "knn_top1_k200": ..., ...}``. Raises
    ValueError when a k exceeds the number of training features (the vote would silently use fewer)
    or the temperature is not positive (the weights exp(s / T) would not rank by similarity).
    """
    if len(train_features) != len(train_labels) or len(test_features) != len(test_labels):
        raise ValueError("features and labels differ in length")
    too_big = [k for k in ks if k > len(train_features) or k < 1]
    if too_big:
        raise ValueError(f"k={too_big} is not in 1..{len(train_features)} (the number of training features)")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    device = torch.device(device)
    train = F.normalize(train_features.to(device).float(), dim=1)
    shard = torch.arange(rank(), len(test_features), world_size())
    queries = F.normalize(test_features[shard].float(), dim=1)
    hits = knn_hits(train, train_labels.to(device).long(), queries, test_labels[shard], ks=ks,
                    temperature=temperature, num_classes=num_classes, test_chunk=test_chunk, train_chunk=train_chunk)
    if is_distributed():
        hits = hits.to(collective_device())
        dist.all_reduce(hits)
    hits = hits.cpu()
    total = max(1, len(test_features))
    result = {}
    for row, k in enumerate(ks):
        result[f"knn_top1_k{k}"] = 100.0 * int(hits[row, 0]) / total
        if num_classes > 5:
            result[f"knn_top5_k{k}"] = 100.0 * int(hits[row, 1]) / total
    return result


@cli_main
def main(argv: list[str] | None = None) -> int | None:

    parser = ArgumentParser(
        prog="python -m evaluate knn",
        description="Weighted kNN (DINO eval_knn.py: cosine, k=20 and 200, T=0.07) on cached features of the "
                    "centre-cropped train and val sets; writes one 'knn' result record.")
    cli_common.add_common_arguments(parser)
    parser.add_argument("--k", type=int, nargs="+", default=list(KNNSettings.ks), help="neighbour counts (default 20 200)")
    parser.add_argument("--temperature", type=float, default=KNNSettings.temperature,
                        help="vote temperature, > 0 (default 0.07)")
    parser.add_argument("--interpolation", choices=tuple(cli_common.INTERPOLATIONS), default=KNNSettings.interpolation,
                        help="resize interpolation of the evaluation transform (DINO: bicubic, the default)")
    parser.add_argument("--test-chunk", type=int, default=KNNSettings.test_chunk,
                        help="test rows per similarity block (memory knob, no effect on results)")
    parser.add_argument("--train-chunk", type=int, default=KNNSettings.train_chunk,
                        help="train rows per similarity block (memory knob, no effect on results)")
    args = parser.parse_args(argv)
    settings = KNNSettings(tuple(args.k), args.temperature, args.interpolation, args.test_chunk, args.train_chunk)
    # Flags are checked before run_context makes the output folder: bad input leaves nothing behind.
    if not settings.temperature > 0:
        raise cli_common.EvalError(f"--temperature must be > 0, got {settings.temperature}")
    for flag, value in (("--test-chunk", settings.test_chunk), ("--train-chunk", settings.train_chunk)):
        if value < 1:
            raise cli_common.EvalError(f"{flag} must be >= 1 (rows per similarity block), got {value}")
    with cli_common.run_context(args, "knn", argv) as run:
        train_feats, train_labels = run.features("train", interpolation=settings.interpolation)
        val_feats, val_labels = run.features("val", interpolation=settings.interpolation)
        try:
            metrics = knn_classify(train_feats, train_labels, val_feats, val_labels, ks=settings.ks,
                                   temperature=settings.temperature, num_classes=run.num_classes,
                                   test_chunk=settings.test_chunk, train_chunk=settings.train_chunk,
                                   device=run.device)
        except ValueError as error:
            raise cli_common.EvalError(str(error)) from None
        deviations = []
        if settings.interpolation != KNNSettings.interpolation:
            deviations.append(f"interpolation: {KNNSettings.interpolation} (DINO eval_knn.py) -> "
                              f"{settings.interpolation} (flag)")
        protocol_settings = {"ks": list(settings.ks), "temperature": settings.temperature,
                             "interpolation": settings.interpolation, "similarity": "cosine",
                             "features": "centre crop", "device": run.device.type}
        run.finish(protocol="knn", protocol_id=settings.protocol_id(), metrics_final=metrics, metrics_best={},
                   settings=protocol_settings, deviations=deviations)
