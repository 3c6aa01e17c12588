"""Time one SNCLR training step with and without neighbours, side by side in one run.

Same model, same batch; the only difference is K=30 neighbours from a full 128,000 x 256 candidate
set (paper Table 6) versus Eq. 1 (no neighbours). The two variants alternate step by step (in
flipping order), so drift in machine load hits both alike; the median of each is reported with the
overhead ratio.

    python benchmarks/pretrain_step.py                       # both settings, CPU
    python benchmarks/pretrain_step.py --device cuda --amp bf16 --setting resnet50_224 --batch 256
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pretrain.model import SNCLR  # noqa: E402
from pretrain.optim import LARS  # noqa: E402

SETTINGS = {  # name: (backbone, image size, default CPU batch)
    "resnet18_32": ("resnet18", 32, 256),
    "resnet50_224": ("resnet50", 224, 16),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(setting: str, batch: int | None, steps: int, device: torch.device, amp: str) -> dict:
    backbone, size, default_batch = SETTINGS[setting]
    batch = batch or default_batch
    torch.manual_seed(0)
    model = SNCLR(backbone, image_size=size, candidate_set_size=128_000, dim=256, k=30).to(device)
    model.candidate_set.push(torch.randn(128_000, 256, device=device), torch.arange(10**6, 10**6 + 128_000,
                                                                                      device=device))
    optimizer = LARS([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=1e-6)
    x1, x2 = (torch.randn(batch, 3, size, size, device=device) for _ in range(2))
    ids, labels = torch.arange(batch, device=device), torch.zeros(batch, dtype=torch.long, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    times = {True: [], False: []}
    for step in range(steps + 1):
        # the order flips every round: whichever variant runs first pays allocator warm-up (measured)
        for use_neighbors in ((False, True) if step % 2 else (True, False)):
            sync(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                stats = model(x1, x2, ids, labels, 0.99, use_neighbors)
            optimizer.zero_grad(set_to_none=True)
            stats.loss.backward()
            optimizer.step()
            sync(device)
            if step:   # the first round is warm-up
                times[use_neighbors].append(time.perf_counter() - start)
    plain, with_nn = statistics.median(times[False]), statistics.median(times[True])
    return {"setting": setting, "batch": batch, "steps": steps, "eq1_s": plain, "k30_s": with_nn,
            "overhead": with_nn / plain - 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=[*SETTINGS, "all"], default="all")
    parser.add_argument("--batch", type=int, default=None, help="per-step batch (default: per setting)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (median reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device={device} threads={torch.get_num_threads()} amp={args.amp} torch={torch.__version__}")
    print(f"{'setting':<14}{'batch':>6}{'Eq.1 step (s)':>15}{'K=30 step (s)':>15}{'overhead':>10}")
    for setting in SETTINGS if args.setting == "all" else [args.setting]:
        r = bench(setting, args.batch, args.steps, device, args.amp)
        print(f"{r['setting']:<14}{r['batch']:>6}{r['eq1_s']:>15.4f}{r['k30_s']:>15.4f}{r['overhead']:>+10.1%}")


if __name__ == "__main__":
    main()
