"""Standard vs fast linear probe, side by side: wall time and accuracy on the same data and settings.

The standard probe (MoCo v3 main_lincls.py) runs the frozen backbone on freshly augmented images
every epoch; the fast probe embeds the centre-cropped images once and trains the same head with the
same optimiser and schedule on the cached features. Timed twice: with a cold feature cache (the
extraction is paid) and a warm one (a re-run on the same checkpoint).

    python benchmarks/linear_fast_vs_standard.py --checkpoint random --arch resnet18 \\
        --limit-train 5000 --limit-val 2000 --epochs 5 --out-dir runs/bench_linear
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluate.classification import cli_common  # noqa: E402
from evaluate.classification.linear import linear_probe, linear_probe_fast, resolve_settings  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli_common.add_common_arguments(parser)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of both probes (default 5)")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch of both probes")
    parser.add_argument("--base-lr", type=float, default=None, help="lr per 256 images of both probes")
    args = parser.parse_args(argv)
    args.restart = True  # timings of a resumed run would mean nothing
    with cli_common.run_context(args, "benchmark") as run:
        settings, _ = resolve_settings(run.arch, run.dataset_key, args)
        common = dict(num_classes=run.num_classes, settings=settings, device=run.device, resume=False,
                      tensorboard=False)
        began = time.perf_counter()
        standard = linear_probe(run.backbone, run.feature_dim, run.train_set(augment=True), run.val_set(),
                                checkpoint_state=run.loaded.state_dict, out_dir=run.out_dir / "standard", num_workers=args.num_workers,
                                eval_batch_size=args.eval_batch_size, **common)
        standard_s = time.perf_counter() - began

        timings = {}
        for cache in ("cold", "warm"):
            if cache == "cold" and run.cache_dir.exists():
                shutil.rmtree(run.cache_dir)
            began = time.perf_counter()
            train_feats, train_labels = run.features("train")
            val_feats, val_labels = run.features("val")
            fast = linear_probe_fast(train_feats, train_labels, val_feats, val_labels,
                                     out_dir=run.out_dir / f"fast_{cache}", **common)
            timings[cache] = time.perf_counter() - began
        summary = {
            "checkpoint": run.loaded.path, "arch": run.arch, "dataset": run.dataset_name,
            "train_images": len(run.train_base), "val_images": len(run.val_base), "epochs": settings.epochs,
            "batch_size": settings.batch_size, "lr": settings.lr, "device": str(run.device),
            "standard_s": round(standard_s, 2), "fast_cold_s": round(timings["cold"], 2),
            "fast_warm_s": round(timings["warm"], 2),
            "speedup_cold": round(standard_s / timings["cold"], 2),
            "speedup_warm": round(standard_s / timings["warm"], 2),
            "standard_top1": round(standard["final"]["top1"], 2), "fast_top1": round(fast["final"]["top1"], 2),
            "top1_difference_fast_minus_standard": round(fast["final"]["top1"] - standard["final"]["top1"], 2),
        }
        (run.out_dir / "benchmark.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
