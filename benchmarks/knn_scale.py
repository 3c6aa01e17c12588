"""Time the kNN step (DINO protocol, k = 20 and 200) at ImageNet shapes and project the full cost.

ImageNet's kNN compares 50,000 validation features with 1,281,167 training features: 6.4e10 pairs,
1.3e14 multiply-adds at ResNet-50's 2,048 dimensions. The step is timed on random unit features
(its cost does not depend on their values) at a scale the device can take, and the time per
(query, training feature) pair is multiplied up to the full shape, for one process and for the
test rows split over W DDP ranks as ``knn_classify`` splits them.

    python benchmarks/knn_scale.py                              # CPU, scaled down, projected
    python benchmarks/knn_scale.py --device cuda --full         # GPU: the real 50,000 x 1,281,167 step
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluate.classification.knn import KNNSettings, knn_classify  # noqa: E402

IMAGENET_TRAIN, IMAGENET_VAL, IMAGENET_CLASSES = 1_281_167, 50_000, 1000


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_knn(train: int, test: int, dim: int, device: torch.device, repeats: int, test_chunk: int,
             train_chunk: int) -> list[float]:
    """Seconds of ``repeats`` full kNN steps (normalise, chunked similarities, top-k, votes)."""
    generator = torch.Generator(device=device).manual_seed(0)
    train_features = torch.randn(train, dim, device=device, generator=generator)
    test_features = torch.randn(test, dim, device=device, generator=generator)
    train_labels = torch.randint(0, IMAGENET_CLASSES, (train,), device=device, generator=generator)
    test_labels = torch.randint(0, IMAGENET_CLASSES, (test,), device=device, generator=generator)
    times = []
    for _ in range(repeats):
        sync(device)
        began = time.perf_counter()
        knn_classify(train_features, train_labels, test_features, test_labels, ks=KNNSettings.ks,
                     num_classes=IMAGENET_CLASSES, test_chunk=test_chunk, train_chunk=train_chunk, device=device)
        sync(device)
        times.append(time.perf_counter() - began)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dim", type=int, default=2048, help="feature width (ResNet-50 2048, ViT-S 384)")
    parser.add_argument("--train", type=int, default=65_536, help="training features timed (default 65,536)")
    parser.add_argument("--test", type=int, default=512, help="test features timed (default 512)")
    parser.add_argument("--full", action="store_true", help="time the real ImageNet shape (GPU memory: ~25 GB)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (median reported)")
    parser.add_argument("--test-chunk", type=int, default=KNNSettings.test_chunk)
    parser.add_argument("--train-chunk", type=int, default=KNNSettings.train_chunk)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 8], help="DDP world sizes to project for")
    args = parser.parse_args()
    device = torch.device(args.device)
    train, test = (IMAGENET_TRAIN, IMAGENET_VAL) if args.full else (args.train, args.test)
    time_knn(min(train, 4096), min(test, 64), args.dim, device, 1, args.test_chunk, args.train_chunk)  # warm-up
    seconds = statistics.median(time_knn(train, test, args.dim, device, args.repeats, args.test_chunk,
                                         args.train_chunk))
    per_pair = seconds / (train * test)
    full = per_pair * IMAGENET_TRAIN * IMAGENET_VAL
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"device: {name}; torch {torch.__version__}")
    print(f"timed: {test:,} test x {train:,} train x {args.dim} dims, chunks {args.test_chunk} x {args.train_chunk}: "
          f"{seconds:.3f} s (median of {args.repeats}), {train * test * args.dim / seconds / 1e9:.1f} G multiply-adds/s")
    print(f"per (query, train) pair: {per_pair * 1e9:.3f} ns")
    for ranks in args.ranks:
        print(f"projected full ImageNet step ({IMAGENET_VAL:,} x {IMAGENET_TRAIN:,}), test rows over {ranks} "
              f"rank(s): {full / ranks:,.1f} s = {full / ranks / 3600:.2f} h")


if __name__ == "__main__":
    main()
