"""Paper Table 4 at small scale: Eq. 1 vs binary vs soft neighbours on Fashion-MNIST, several seeds.

Each unit pre-trains one (variant, seed) and runs every evaluator on its checkpoint with identical
settings; units are resumable (a finished step is skipped), so a killed study restarts where it was.
Records, pre-training metric logs and the resolved configs are copied into ``--ship`` (no checkpoints).

CPU tier (results/studies/fmnist_table4/README.md gives the exact commands and the wall time):

    OMP_NUM_THREADS=1 python scripts/study_fmnist_table4.py --tier cpu --units none:0 binary:0 ...

GPU tier (one script for a CUDA machine, ``benchmarks/gpu_study.sh``): ``--tier gpu``.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("study")


@dataclass(frozen=True)
class Tier:
    train_limit: int | None   # pre-training images (class-balanced); None = all 60,000
    epochs: int
    neighbor_warmup: int      # first epochs use Eq. 1 (Appendix A warm-up), identical for every variant
    eval_train: int | None    # labelled training images for every evaluator; None = all
    linear_epochs: int        # the standard probe's short schedule (stated in the README)
    semisup_epochs: int
    device: str
    extra: tuple[str, ...] = ()        # pre-training flags
    eval_extra: tuple[str, ...] = ()   # evaluator flags


TIERS = {
    # Sized for 2 CPU cores running two units side by side with one thread each (about 2 h).
    "cpu": Tier(train_limit=10_000, epochs=12, neighbor_warmup=2, eval_train=10_000, linear_epochs=3,
                semisup_epochs=20, device="cpu"),
    # One H100: all 60,000 images, 5x the CPU tier's samples. Measured with gpu_smoke on an H100 host:
    # 12 loader workers feed ~5,400 pairs/s (the CPU input pipeline, not the GPU, is the limit), so a
    # unit is ~110 s of pre-training plus ~75 s of evaluations (each evaluator start costs ~12 s).
    "gpu": Tier(train_limit=None, epochs=10, neighbor_warmup=1, eval_train=None, linear_epochs=5,
                semisup_epochs=30, device="cuda", extra=("--amp", "bf16", "--workers", "12"), eval_extra=("--num-workers", "12")),
    # The CUDA path of the study end to end in about a minute per unit (a check, not the GPU tier).
    "gpu_smoke": Tier(train_limit=None, epochs=2, neighbor_warmup=1, eval_train=None, linear_epochs=1,
                      semisup_epochs=2, device="cuda", extra=("--amp", "bf16", "--workers", "12"),
                      eval_extra=("--num-workers", "12")),
    # Seconds-long check of the driver itself (tests, and before spending a GPU lease).
    "smoke": Tier(train_limit=512, epochs=2, neighbor_warmup=1, eval_train=1_000, linear_epochs=1,
                  semisup_epochs=1, device="cpu", extra=("--batch-size", "128", "--candidate-set-size", "1024"),
                  eval_extra=("--limit-val", "500")),
}

# Table 4 variants: the neighbour mode and its knobs; everything else is the recipe's.
VARIANTS = {
    "none": ["--neighbors", "none"],
    "binary": ["--neighbors", "binary", "--k", "10"],
    "soft": ["--neighbors", "soft", "--k", "10"],
    "soft_official": ["--neighbors", "soft", "--k", "10", "--loss-form", "official"],
}
for k in (5, 10, 30):   # GPU tier's K sweep
    VARIANTS[f"soft_k{k}"] = ["--neighbors", "soft", "--k", str(k)]


def variant_args(name: str) -> list[str]:
    """``soft_tau0.05`` = soft, K=10, positiveness temperature 0.05 (a sharper Eq. 4)."""
    if name.startswith("soft_tau"):
        return ["--neighbors", "soft", "--k", "10", "--positiveness-temperature", name[len("soft_tau"):]]
    if name.startswith("cifar_"):
        return [*variant_args(name[len("cifar_"):]), "--backbone", "resnet18_cifar"]
    if name not in VARIANTS:
        raise SystemExit(f"error: unknown variant {name!r}; expected one of {', '.join(VARIANTS)} or soft_tauT")
    return VARIANTS[name]


def run(argv: list[str], log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("$ %s", " ".join(argv))
    with open(log_path, "a") as handle:
        code = subprocess.call(argv, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"error: step failed with exit {code}; see {log_path}")


def unit(tier: Tier, variant: str, seed: int, work: Path, ship: Path, data: list[str]) -> None:
    name = f"{variant}_s{seed}"
    run_dir = work / "pretrain" / name
    final = run_dir / f"snclr_resnet18_ep{tier.epochs}.pth"
    started = time.time()
    if not final.exists():
        limit = ["--train-limit", str(tier.train_limit) if tier.train_limit else "none"]   # none: all 60,000
        run([sys.executable, "-m", "pretrain", "--recipe", "fmnist_resnet18_cpu", *limit, "--epochs", str(tier.epochs),
             "--neighbor-warmup-epochs", str(tier.neighbor_warmup), "--seed", str(seed), "--device", tier.device,
             "--output-dir", str(run_dir), *tier.extra, *variant_args(variant), *data], work / "logs" / f"{name}.log")
    evaluate(tier, name, str(final), seed, work, data)
    (ship / "pretrain_logs").mkdir(parents=True, exist_ok=True)
    shutil.copy(run_dir / "metrics.jsonl", ship / "pretrain_logs" / f"{name}.jsonl")
    shutil.copy(run_dir / "config.yaml", ship / "pretrain_logs" / f"{name}.config.yaml")
    collect(work, ship)
    log.info("unit %s done in %.0f s", name, time.time() - started)


def evaluate(tier: Tier, name: str, checkpoint: str, seed: int, work: Path, data: list[str],
             extra: tuple[str, ...] = ()) -> None:
    limits = [*(["--limit-train", str(tier.eval_train)] if tier.eval_train else []), *data,
              "--device", tier.device, "--seed", str(seed), "--cache-dir", str(work / "feature_cache"),
              *tier.eval_extra, *extra]
    model = ["--checkpoint", checkpoint]
    steps = [("linear-fast", []), ("knn", []), ("linear", ["--epochs", str(tier.linear_epochs)])]
    steps += [("semisup", ["--percent", str(p), "--epochs", str(tier.semisup_epochs), "--eval-every",
                           str(tier.semisup_epochs)]) for p in (1, 10)]
    for protocol, flags in steps:
        tag = protocol + (f"_{flags[1]}pct" if protocol == "semisup" else "")
        out = work / "eval" / name / tag
        if (out / "results.jsonl").exists():
            continue
        run([sys.executable, "-m", "evaluate", protocol, *model, *limits, *flags, "--out-dir", str(out)],
            work / "logs" / f"{name}.{tag}.log")


def collect(work: Path, ship: Path) -> None:
    """Copy every finished evaluation's record line into ship/records/<unit>.jsonl."""
    records = ship / "records"
    records.mkdir(parents=True, exist_ok=True)
    for unit_dir in sorted((work / "eval").glob("*")):
        lines = [path.read_text() for path in sorted(unit_dir.glob("*/results.jsonl"))]
        if lines:
            (records / f"{unit_dir.name}.jsonl").write_text("".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", choices=sorted(TIERS), required=True)
    parser.add_argument("--units", nargs="+", default=[], help="VARIANT:SEED, run in this order")
    parser.add_argument("--baselines", nargs="*", default=[], help="'random:SEED' or 'raw-pixels:SEED' backbones")
    parser.add_argument("--work", type=Path, required=True, help="checkpoints, caches and logs (not shipped)")
    parser.add_argument("--ship", type=Path, required=True, help="records and metric logs to commit")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="start no new unit after this many seconds (a GPU lease is short)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    tier, data = TIERS[args.tier], (["--data-dir", args.data_dir] if args.data_dir else [])
    started = time.time()
    for spec in args.units:
        if args.deadline_s is not None and time.time() - started > args.deadline_s:
            log.warning("deadline reached: %s and later units not started", spec)
            break
        variant, seed = spec.split(":")
        try:
            unit(tier, variant, int(seed), args.work, args.ship, data)
        except SystemExit as error:
            if args.deadline_s is None:
                raise
            log.error("unit %s failed (%s); going on with the next", spec, error)
    for spec in args.baselines:
        kind, seed = spec.split(":")
        checkpoint, extra = ("random", ("--arch", "resnet18")) if kind == "random" else ("identity", ())
        evaluate(tier, f"{kind}_s{seed}", checkpoint, int(seed), args.work, data, extra)
        collect(args.work, args.ship)
    (args.ship / "wall_times.jsonl").parent.mkdir(parents=True, exist_ok=True)
    with open(args.ship / "wall_times.jsonl", "a") as handle:
        handle.write(json.dumps({"tier": args.tier, "units": args.units, "baselines": args.baselines,
                                 "wall_s": round(time.time() - started)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
