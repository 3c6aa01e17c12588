"""Time one SNCLR training step with and without neighbours, side by side in one run, against the floor.

Same model, same batch; the only difference is K=30 neighbours from a full 128,000 x 256 candidate
set (paper Table 6) versus Eq. 1 (no neighbours). The two variants alternate step by step (in
flipping order), so drift in machine load hits both alike; the median of each is reported with the
overhead ratio. The floor is the least any neighbour search can cost: the same (2B x 256) x
(256 x 128,000) fp32 matmul plus a top-K, timed alone; the overhead is also given as a multiple of it.
On CUDA, ResNets run channels_last with cudnn.benchmark (as train.py does), and the peak memory of a
step is measured with the set and, on a model whose set is swapped for a 1-entry one, without it.

    python benchmarks/pretrain_step.py                       # both settings, CPU
    python benchmarks/pretrain_step.py --device cuda --amp bf16 --setting resnet50_224 --batch 256
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pretrain.backbones import is_vit  # noqa: E402
from pretrain.model import SNCLR  # noqa: E402
from pretrain.neighbors import CandidateSet  # noqa: E402
from pretrain.optim import LARS  # noqa: E402

SETTINGS = {  # name: (backbone, image size, default CPU batch)
    "resnet18_32": ("resnet18", 32, 256),
    "resnet50_224": ("resnet50", 224, 16),
}
SET_SIZE, DIM, K = 128_000, 256, 30   # paper Table 6 and Sec. 4.1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def floor_seconds(candidate_set: CandidateSet, keys: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median seconds of (a) the bare fp32 matmul + top-K over the set and (b) CandidateSet.search."""
    ids = torch.arange(10**7, 10**7 + keys.shape[0], device=keys.device)
    bare = lambda: (keys @ candidate_set.features.T).topk(K, dim=1)   # noqa: E731
    search = lambda: candidate_set.search(keys, ids, K)   # noqa: E731
    bare(), search()   # warm-up
    return (statistics.median(timed(bare, keys.device) for _ in range(repeats)),
            statistics.median(timed(search, keys.device) for _ in range(repeats)))


def bench(setting: str, batch: int | None, steps: int, device: torch.device, amp: str) -> dict:
    backbone, size, default_batch = SETTINGS[setting]
    batch = batch or default_batch
    torch.manual_seed(0)
    channels_last = device.type == "cuda" and not is_vit(backbone)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = SNCLR(backbone, image_size=size, candidate_set_size=SET_SIZE, dim=DIM, k=K).to(device)
    model = model.to(memory_format=memory_format)
    model.candidate_set.push(torch.randn(SET_SIZE, DIM, device=device),
                             torch.arange(10**6, 10**6 + SET_SIZE, device=device))
    optimizer = LARS([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=1e-6)
    x1, x2 = (torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
              for _ in range(2))
    ids, labels = torch.arange(batch, device=device), torch.zeros(batch, dtype=torch.long, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def step(use_neighbors: bool) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            stats = model(x1, x2, ids, labels, 0.99, use_neighbors, monitor=False)
        optimizer.zero_grad(set_to_none=True)
        stats.loss.backward()
        optimizer.step()

    times: dict[bool, list[float]] = {True: [], False: []}
    peak: dict[bool, float] = {}
    for round_ in range(steps + 1):
        # the order flips every round: whichever variant runs first pays allocator warm-up (measured)
        for use_neighbors in ((False, True) if round_ % 2 else (True, False)):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            elapsed = timed(lambda: step(use_neighbors), device)
            if round_:   # the first round is warm-up
                times[use_neighbors].append(elapsed)
            if device.type == "cuda":
                peak[use_neighbors] = torch.cuda.max_memory_allocated(device) / 1e6
    plain, with_nn = statistics.median(times[False]), statistics.median(times[True])
    keys = torch.nn.functional.normalize(torch.randn(2 * batch, DIM, device=device), dim=1)
    bare, search = floor_seconds(model.candidate_set, keys, repeats=max(3, steps))
    set_mb = {name: buffer.numel() * buffer.element_size() / 1e6
              for name, buffer in model.candidate_set.named_buffers()}
    result = {"setting": setting, "device": str(device), "amp": amp, "batch": batch, "steps": steps,
              "eq1_s": plain, "k30_s": with_nn, "overhead": with_nn / plain - 1.0,
              "eq1_images_per_s": batch / plain, "k30_images_per_s": batch / with_nn,
              "floor_s": bare, "search_s": search, "overhead_over_floor": (with_nn - plain) / bare,
              "set_features_mb": set_mb["features"], "set_total_mb": sum(set_mb.values())}
    if device.type == "cuda":
        # Without the set: the same model and step with C swapped for a 1-entry set, Eq. 1.
        model.candidate_set = CandidateSet(1, DIM).to(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        step(False)
        sync(device)
        result.update(peak_mb_k30=peak[True], peak_mb_eq1=peak[False],
                      peak_mb_without_set=torch.cuda.max_memory_allocated(device) / 1e6)
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=[*SETTINGS, "all"], default="all")
    parser.add_argument("--batch", type=int, default=None, help="per-step batch (default: per setting)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (median reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"device={device} threads={torch.get_num_threads()} amp={args.amp} torch={torch.__version__}")
    print(f"{'setting':<14}{'batch':>6}{'Eq.1 step':>11}{'K=30 step':>11}{'overhead':>10}{'floor':>10}"
          f"{'search':>10}{'ovh/floor':>10}")
    results = []
    for setting in SETTINGS if args.setting == "all" else [args.setting]:
        r = bench(setting, args.batch, args.steps, device, args.amp)
        results.append(r)
        print(f"{r['setting']:<14}{r['batch']:>6}{r['eq1_s']:>10.4f}s{r['k30_s']:>10.4f}s{r['overhead']:>+10.1%}"
              f"{r['floor_s'] * 1e3:>8.2f}ms{r['search_s'] * 1e3:>8.2f}ms{r['overhead_over_floor']:>9.1f}x")
        print(f"  candidate set: features {r['set_features_mb']:.2f} MB, all buffers {r['set_total_mb']:.2f} MB; "
              f"images/s Eq.1 {r['eq1_images_per_s']:.1f}, K=30 {r['k30_images_per_s']:.1f}"
              + (f"; peak MB K=30 {r['peak_mb_k30']:.0f}, Eq.1 {r['peak_mb_eq1']:.0f}, "
                 f"without set {r['peak_mb_without_set']:.0f}" if "peak_mb_k30" in r else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
