"""Which of the two 2-core machine kinds is this, and how long will `make demo` take on it?

Times the demo's pre-training step: the CPU recipe's model (ResNet-18 at 32 px, projector 1024 -> 128,
candidate set 8,192 x 128, K = 10 soft neighbours, LARS) on a synthetic batch of 256 two-view pairs,
so no data set is needed and no loader competes with it. It prints the CPU model and vector
extensions (as lscpu reads them from /proc/cpuinfo), torch's kernel level, the median wall and CPU
time per step, the nearest known machine kind, and the demo's planned work times this step. Nothing
depends on its timing; other programs running at the same time make every number larger.

    python benchmarks/machine_speed.py                 # 3 timed steps after one warm-up step
    python benchmarks/machine_speed.py --json speed.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluate.demo import PRETRAIN_BATCH, SCALES, cpu_description, machine_kind, plan  # noqa: E402
from pretrain.config import resolve  # noqa: E402
from pretrain.optim import build_optimizer  # noqa: E402
from pretrain.train import model_from_config  # noqa: E402


def time_steps(steps: int, batch: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of ``steps`` demo pre-training steps (after one untimed warm-up step)."""
    config = resolve("fmnist_resnet18_cpu", {})
    torch.manual_seed(0)
    model = model_from_config(config)
    optimizer = build_optimizer(config.optimizer, [p for p in model.parameters() if p.requires_grad],
                                lr=config.base_lr, weight_decay=config.weight_decay)
    size = config.image_size
    x1, x2 = torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 10, (batch,))
    walls, cpus = [], []
    for index in range(steps + 1):
        ids = torch.arange(index * batch, (index + 1) * batch)   # new images each step, as in training
        wall, cpu = time.perf_counter(), time.process_time()
        stats = model(x1, x2, ids, labels, config.momentum, use_neighbors=index > 0, monitor=False)
        optimizer.zero_grad(set_to_none=True)
        stats.loss.backward()
        optimizer.step()
        if index:   # the first step pays for allocations and fills the candidate set
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    return walls, cpus


def measure(steps: int = 3, batch: int = PRETRAIN_BATCH) -> dict:
    load = os.getloadavg()[0]   # before the steps, so it counts only the other programs
    walls, cpus = time_steps(steps, batch)
    # Scaled to the demo's batch: at these sizes a step's cost grows in proportion to the batch.
    step = round(statistics.median(walls) * PRETRAIN_BATCH / batch, 3)
    kind, description, reference = machine_kind(step)
    planned = round(sum(stage.units for stage in plan(SCALES["full"])), 1)
    return {"machine": cpu_description(), "batch": batch, "steps": steps, "step_wall_s": step,
            "step_cpu_s": round(statistics.median(cpus) * PRETRAIN_BATCH / batch, 3),
            "kind": kind, "kind_description": description, "kind_step_s": reference,
            "demo_planned_steps": planned, "demo_estimate_s": round(planned * step), "load_average": round(load, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument("--batch", type=int, default=PRETRAIN_BATCH, help="pairs per step (times are scaled to 256)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result to this JSON file")
    args = parser.parse_args(argv)
    result = measure(args.steps, args.batch)
    machine = result["machine"]
    print(f"cpu: {machine['model']}, {machine['cores']} cores; vector extensions: "
          f"{' '.join(machine['vector_extensions']) or 'none found'}; torch kernels: {machine['torch_cpu_capability']}, "
          f"{machine['torch_threads']} threads")
    print(f"demo pre-training step (batch {PRETRAIN_BATCH}): {result['step_wall_s']:.2f} s wall, "
          f"{result['step_cpu_s']:.2f} s CPU (median of {result['steps']}, batch {result['batch']})")
    busy = result["load_average"] > 0.5 * (machine["cores"] or 1)
    print(f"load: {result['load_average']:.2f} on {machine['cores']} cores before the steps"
          + ("; other programs are using the CPU, so the step is slower than this machine can do and the kind "
             "below may be wrong" if busy else ""))
    print(f"kind: the {result['kind']} one ({result['kind_description']}: about {result['kind_step_s']:.2f} s a step)")
    print(f"make demo: about {result['demo_estimate_s'] / 60:.1f} min ({result['demo_planned_steps']:.0f} steps' "
          "worth of work at this step time, set-up not included)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
