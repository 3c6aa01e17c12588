"""Weighted k-nearest-neighbour classification on frozen features (the DINO kNN monitor).

Protocol (Caron et al., 2021, Sec. 4.1 and ``eval_knn.py``; first used by Wu et al., 2018):
features are L2-normalised, the k most cosine-similar training features vote for their class with
weight ``exp(similarity / T)``, T = 0.07, and k = 20 and 200 are reported.

The similarity matrix is never held whole: test features are taken ``test_chunk`` rows at a time
and the training set ``train_chunk`` rows at a time, keeping a running top-k per test row, so
memory is O(test_chunk x (train_chunk + k)) whatever the data set size (ImageNet's full 50k x 1.28M
matrix would be 256 GB in fp32).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from evaluate.classification import cli_common

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class KNNSettings:
    """Defaults of DINO ``eval_knn.py`` (``--nb_knn 10 20 100 200 --temperature 0.07``), k=20 and 200 kept."""

    ks: tuple[int, ...] = (20, 200)
    temperature: float = 0.07
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
def knn_classify(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, *, ks: Sequence[int] = (20, 200), temperature: float = 0.07,
                 num_classes: int | None = None, test_chunk: int = 256,
                 train_chunk: int = 65536) -> dict[str, float]:
    """Weighted kNN top-1 (and top-5 with more than 5 classes) in percent for every k in ``ks``.

    Returns ``{"knn_top1_k20": ..., "knn_top5_k20": ..., "knn_top1_k200": ..., ...}``. Raises
    ValueError when a k exceeds the number of training features (the vote would silently use fewer).
    """
    if len(train_features) != len(train_labels) or len(test_features) != len(test_labels):
        raise ValueError("features and labels differ in length")
    too_big = [k for k in ks if k > len(train_features) or k < 1]
    if too_big:
        raise ValueError(f"k={too_big} is not in 1..{len(train_features)} (the number of training features)")
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    train = F.normalize(train_features.float(), dim=1)
    train_labels = train_labels.long()
    max_k = max(ks)
    hits = {(k, top): 0 for k in ks for top in (1, 5)}
    for start in range(0, len(test_features), test_chunk):
        queries = F.normalize(test_features[start:start + test_chunk].float(), dim=1)
        targets = test_labels[start:start + test_chunk].long()
        sims, idx = _top_neighbours(queries, train, max_k, train_chunk)
        neighbour_labels = train_labels[idx]
        weights = (sims / temperature).exp()
        for k in ks:
            votes = torch.zeros(len(queries), num_classes, dtype=weights.dtype, device=weights.device)
            votes.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])
            ranked = votes.topk(min(5, num_classes), dim=1).indices
            hits[k, 1] += int((ranked[:, 0] == targets).sum())
            hits[k, 5] += int((ranked == targets[:, None]).any(dim=1).sum())
    total = max(1, len(test_features))
    result = {}
    for k in ks:
        result[f"knn_top1_k{k}"] = 100.0 * hits[k, 1] / total
        if num_classes > 5:
            result[f"knn_top5_k{k}"] = 100.0 * hits[k, 5] / total
    return result


def main(argv: list[str] | None = None) -> None:

    parser = argparse.ArgumentParser(
        prog="python -m evaluate knn",
        description="Weighted kNN (DINO eval_knn.py: cosine, k=20 and 200, T=0.07) on cached features of the "
                    "centre-cropped train and val sets; writes one 'knn' result record.")
    cli_common.add_common_arguments(parser)
    parser.add_argument("--k", type=int, nargs="+", default=list(KNNSettings.ks), help="neighbour counts (default 20 200)")
    parser.add_argument("--temperature", type=float, default=KNNSettings.temperature, help="vote temperature (0.07)")
    parser.add_argument("--test-chunk", type=int, default=KNNSettings.test_chunk,
                        help="test rows per similarity block (memory knob, no effect on results)")
    parser.add_argument("--train-chunk", type=int, default=KNNSettings.train_chunk,
                        help="train rows per similarity block (memory knob, no effect on results)")
    args = parser.parse_args(argv)
    with cli_common.run_context(args, "knn") as run:
        settings = KNNSettings(tuple(args.k), args.temperature, args.test_chunk, args.train_chunk)
        train_feats, train_labels = run.features("train")
        val_feats, val_labels = run.features("val")
        try:
            metrics = knn_classify(train_feats, train_labels, val_feats, val_labels, ks=settings.ks,
                                   temperature=settings.temperature, num_classes=run.num_classes,
                                   test_chunk=settings.test_chunk, train_chunk=settings.train_chunk)
        except ValueError as error:
            raise cli_common.EvalError(str(error)) from None
        protocol_settings = {"ks": list(settings.ks), "temperature": settings.temperature,
                             "similarity": "cosine", "features": "centre crop"}
        run.finish(protocol="knn", protocol_id=settings.protocol_id(), metrics_final=metrics, metrics_best={},
                   settings=protocol_settings, deviations=[])
