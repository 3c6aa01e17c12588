"""Paper Table 4 at small scale: Eq. 1 vs binary vs soft neighbours on Fashion-MNIST, several seeds,
beside the baselines every number needs: raw pixels, a random-init backbone and a supervised bound.

Each unit pre-trains one (variant, seed) and runs every evaluator of its tier on the checkpoint with
identical settings, all evaluators in one process (one interpreter and CUDA start per checkpoint);
units are resumable (a finished step is skipped), so a killed study restarts where it was. Records,
pre-training metric logs and the resolved configs are copied into ``--ship`` (no checkpoints).

CPU tier (results/studies/fmnist_table4/README.md gives the exact commands and the wall time):

    OMP_NUM_THREADS=1 python scripts/study_fmnist_table4.py --tier cpu --units none:0 binary:0 ...

GPU tier (issue 19; ``scripts/gpu_study.sh`` is the one prepared command, ``--dry-run`` prints the
plan and the projected time of every unit from the arithmetic in :func:`projection`):

    python scripts/study_fmnist_table4.py --tier gpu --units none:0 binary:0 soft:0 ... \\
        --baselines supervised:0 random:0 raw-pixels:0 --parallel 3 --work W --ship S
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # the driver reads recipes and counts FLOPs with the project's own code
log = logging.getLogger("study")


@dataclass(frozen=True)
class Tier:
    recipe: str
    train_limit: int | None   # pre-training images (class-balanced); None = all 60,000
    epochs: int
    neighbor_warmup: int      # first epochs use Eq. 1 (Appendix A warm-up), identical for every variant
    eval_train: int | None    # labelled training images for every evaluator; None = all
    linear_epochs: int        # the standard probe's short schedule (stated in the README)
    semisup_epochs: int
    device: str
    protocols: tuple[str, ...] = ("linear-fast", "knn", "linear", "semisup_1", "semisup_10")
    extra: tuple[str, ...] = ()        # pre-training flags
    eval_extra: tuple[str, ...] = ()   # evaluator flags
    # The shipped CPU tier was made by the PIL path; every other tier augments on the device
    # (benchmarks/README.md: 0.39 against 1.31 CPU ms per 32 px pair, and no loader cap on a GPU).
    data_pipeline: str = "device"


GPU_PROTOCOLS = ("linear-fast", "knn", "linear")   # issue 19: fast probe, kNN k=20, standard probe
TIERS = {
    # Sized for 2 CPU cores running two units side by side with one thread each (about 2 h).
    "cpu": Tier("fmnist_resnet18_cpu", data_pipeline="pil", train_limit=10_000, epochs=12, neighbor_warmup=2, eval_train=10_000,
                linear_epochs=3, semisup_epochs=20, device="cpu"),
    # One GPU, 9 minutes for everything: resnet18_cifar on all 60,000 images (recipe fmnist_resnet18_gpu),
    # every checkpoint evaluated on all 60,000 / 10,000 images. See projection() for the arithmetic.
    "gpu": Tier("fmnist_resnet18_gpu", train_limit=None, epochs=5, neighbor_warmup=1, eval_train=None,
                linear_epochs=5, semisup_epochs=0, device="cuda", protocols=GPU_PROTOCOLS,
                eval_extra=("--num-workers", "12", "--eval-batch-size", "1024")),
    # The CUDA path of the GPU tier end to end in about a minute per unit (a check, not the GPU tier).
    "gpu_smoke": Tier("fmnist_resnet18_gpu", train_limit=None, epochs=1, neighbor_warmup=0, eval_train=None,
                      linear_epochs=1, semisup_epochs=0, device="cuda", protocols=GPU_PROTOCOLS,
                      eval_extra=("--num-workers", "12", "--eval-batch-size", "1024")),
    # The GPU tier's recipe, units and evaluators at CPU-seconds scale (16 px, 64 images): what CI and
    # `gpu_study.sh --dry-run` run. Its numbers mean nothing about the method.
    "gpu_cpu_smoke": Tier("fmnist_resnet18_gpu", train_limit=64, epochs=2, neighbor_warmup=1, eval_train=200,
                          linear_epochs=1, semisup_epochs=0, device="cpu", protocols=GPU_PROTOCOLS,
                          extra=("--batch-size", "32", "--candidate-set-size", "256", "--k", "4",
                                 "--proj-hidden-dim", "64", "--dim", "32", "--image-size", "16", "--workers", "0",
                                 "--log-every", "1", "--warmup-epochs", "1"),
                          eval_extra=("--limit-val", "100", "--image-size", "16", "--num-workers", "0")),
    # Seconds-long check of the CPU tier's driver path.
    "smoke": Tier("fmnist_resnet18_cpu", train_limit=512, epochs=2, neighbor_warmup=1, eval_train=1_000,
                  linear_epochs=1, semisup_epochs=1, device="cpu",
                  extra=("--batch-size", "128", "--candidate-set-size", "1024"), eval_extra=("--limit-val", "500")),
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
BASELINES = ("supervised", "random", "raw-pixels")


def variant_args(name: str) -> list[str]:
    """``soft_tau0.05`` = soft, K=10, positiveness temperature 0.05 (a sharper Eq. 4)."""
    if name.startswith("soft_tau"):
        return ["--neighbors", "soft", "--k", "10", "--positiveness-temperature", name[len("soft_tau"):]]
    if name.startswith("cifar_"):
        return [*variant_args(name[len("cifar_"):]), "--backbone", "resnet18_cifar"]
    if name not in VARIANTS:
        raise SystemExit(f"error: unknown variant {name!r}; expected one of {', '.join(VARIANTS)} or soft_tauT")
    return VARIANTS[name]


def parse_spec(spec: str, kinds: tuple[str, ...] | None = None) -> tuple[str, int]:
    """``soft:0`` -> ("soft", 0); ``kinds`` restricts the name (baselines)."""
    name, sep, seed = spec.rpartition(":")
    if not sep or not seed.isdigit() or (kinds is not None and name not in kinds):
        expected = f"one of {', '.join(kinds)}" if kinds else "a variant"
        raise SystemExit(f"error: {spec!r}: expected NAME:SEED with NAME {expected} and SEED an integer")
    if kinds is None:
        variant_args(name)
    return name, int(seed)


def run(argv: list[str], log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("$ %s", " ".join(argv))
    with open(log_path, "a") as handle:
        code = subprocess.call(argv, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"error: step failed with exit {code}; see {log_path}")


def pretrain_command(tier: Tier, seed: int, run_dir: Path, data: list[str], method_args: list[str]) -> list[str]:
    limit = ["--train-limit", str(tier.train_limit) if tier.train_limit else "none"]   # none: all 60,000
    return [sys.executable, "-m", "pretrain", "--recipe", tier.recipe, *limit, "--epochs", str(tier.epochs),
            "--neighbor-warmup-epochs", str(tier.neighbor_warmup), "--seed", str(seed), "--device", tier.device,
            "--output-dir", str(run_dir), *data_pipeline_args(tier), *tier.extra, *method_args, *data]


def data_pipeline_args(tier: Tier) -> list[str]:
    """The tier's pipeline, named so that a change of the ``auto`` default cannot change a tier."""
    return ["--data-pipeline", tier.data_pipeline]


def final_checkpoint(run_dir: Path, epochs: int) -> Path | None:
    found = sorted(run_dir.glob(f"*_ep{epochs}.pth"))
    return found[0] if found else None


def unit(tier: Tier, name: str, seed: int, work: Path, ship: Path, data: list[str], method_args: list[str]) -> None:
    """Pre-train one unit (an SNCLR variant, or the supervised bound), evaluate it, ship its logs."""
    unit_name = f"{name}_s{seed}"
    run_dir = work / "pretrain" / unit_name
    started = time.time()
    if final_checkpoint(run_dir, tier.epochs) is None:
        run(pretrain_command(tier, seed, run_dir, data, method_args), work / "logs" / f"{unit_name}.log")
    checkpoint = final_checkpoint(run_dir, tier.epochs)
    if checkpoint is None:
        raise SystemExit(f"error: {run_dir}: no final checkpoint after pre-training")
    evaluate(tier, unit_name, ["--checkpoint", str(checkpoint)], seed, work, data)
    (ship / "pretrain_logs").mkdir(parents=True, exist_ok=True)
    shutil.copy(run_dir / "metrics.jsonl", ship / "pretrain_logs" / f"{unit_name}.jsonl")
    shutil.copy(run_dir / "config.yaml", ship / "pretrain_logs" / f"{unit_name}.config.yaml")
    collect(work, ship, unit_name)
    log.info("unit %s done in %.0f s", unit_name, time.time() - started)


def evaluation_argvs(tier: Tier, name: str, model: list[str], seed: int, work: Path, data: list[str]) -> list[list[str]]:
    """The ``python -m evaluate`` argument lists of every protocol of ``tier`` not yet finished."""
    limits = [*(["--limit-train", str(tier.eval_train)] if tier.eval_train else []), *data,
              "--device", tier.device, "--seed", str(seed), "--cache-dir", str(work / "feature_cache"),
              *tier.eval_extra]
    flags = {"linear-fast": [], "knn": [], "linear": ["--epochs", str(tier.linear_epochs)],
             **{f"semisup_{p}": ["--percent", str(p), "--epochs", str(tier.semisup_epochs),
                                 "--eval-every", str(tier.semisup_epochs)] for p in (1, 10)}}
    argvs = []
    for protocol in tier.protocols:
        tag = protocol + ("pct" if protocol.startswith("semisup") else "")
        out = work / "eval" / name / tag
        if not (out / "results.jsonl").exists():
            argvs.append([protocol.split("_")[0], *model, *limits, *flags[protocol], "--out-dir", str(out)])
    return argvs


def evaluate(tier: Tier, name: str, model: list[str], seed: int, work: Path, data: list[str]) -> None:
    argvs = evaluation_argvs(tier, name, model, seed, work, data)
    if argvs:   # one process for all of them: the interpreter, CUDA and the data are started once
        run([sys.executable, str(Path(__file__).resolve()), "--run-evaluations", json.dumps(argvs)],
            work / "logs" / f"{name}.eval.log")


def run_evaluations(argvs: list[list[str]]) -> int:
    """Run ``python -m evaluate ARGV`` for each argument list in this process, in order."""
    from evaluate.__main__ import main as evaluate_main
    for argv in argvs:
        log.info("evaluate %s", " ".join(argv))
        evaluate_main(argv)
    return 0


def collect(work: Path, ship: Path, name: str) -> None:
    """Copy unit ``name``'s finished evaluation record lines into ship/records/<name>.jsonl."""
    lines = [path.read_text() for path in sorted((work / "eval" / name).glob("*/results.jsonl"))]
    if lines:
        (ship / "records").mkdir(parents=True, exist_ok=True)
        (ship / "records" / f"{name}.jsonl").write_text("".join(lines))


def baseline(tier: Tier, kind: str, seed: int, work: Path, ship: Path, data: list[str]) -> None:
    if kind == "supervised":   # same recipe, views, epochs and loop, with labels (pretrain.model.Supervised)
        unit(tier, "supervised", seed, work, ship, data, ["--method", "supervised"])
        return
    from pretrain.config import load_recipe
    model = (["--checkpoint", "random", "--arch", load_recipe(tier.recipe)["backbone"]] if kind == "random"
             else ["--checkpoint", "identity"])   # evaluate/classification/cli_common.py RAW_PIXELS
    started = time.time()
    evaluate(tier, f"{kind}_s{seed}", model, seed, work, data)
    collect(work, ship, f"{kind}_s{seed}")
    log.info("baseline %s_s%d done in %.0f s", kind, seed, time.time() - started)


# ---------------------------------------------------------------------------------------------------
# The projection `--dry-run` prints. Every constant is stated; replace them with the measured
# images_per_s of a real run (pretrain_logs/*.jsonl) when one exists.
ASSUMED_TFLOPS = 100.0      # effective bf16 throughput of ResNet-18 training on one H100/H200: ~10% of
                            # the dense peak (989 TFLOP/s), small 4x4..32x32 maps and memory-bound BN/ReLU
# PIL workers: 12 fed ~5,400 pairs/s on an H100 host (gpu_smoke, issue 11); the host's 16 cores cap all
# processes together at 16/12 of that. The device pipeline (branch h18pipe) augments on the GPU: no cap.
PIL_PAIRS_PER_S = 5_400 * 16 / 12
TRAIN_START_S = 20.0        # interpreter + CUDA context + reading the IDX files, per pre-training run
EVAL_START_S = 12.0         # per evaluation process (measured on an H100 host with gpu_smoke, issue 11)
FULL_TRAIN, FULL_TEST = 60_000, 10_000


def backbone_gflops(backbone: str, image_size: int) -> tuple[float, float]:
    """(forward, forward + backward) GFLOP per image, counted by torch.utils.flop_counter on CPU."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pretrain.backbones import build_backbone
    model, _ = build_backbone(backbone, image_size)
    images = torch.randn(2, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images)
    forward = counter.get_total_flops() / 2 / 1e9
    with FlopCounterMode(display=False) as counter:
        model(images).sum().backward()
    return forward, counter.get_total_flops() / 2 / 1e9


def projection(tier: Tier, units: list[tuple[str, int]], baselines: list[tuple[str, int]], parallel: int,
               tflops: float = ASSUMED_TFLOPS, device_pipeline: bool = True) -> dict:
    """Projected busy seconds (GPU, or PIL input where slower) per unit, and the tier's wall time.

    Per image and epoch, SNCLR computes both views forward and backward through the online backbone
    and both forward through the momentum one (2 x fwd+bwd + 2 x fwd); the supervised bound only the
    first part. Without the device pipeline a unit takes at least its pairs / ``PIL_PAIRS_PER_S``
    (the loader workers of all units share the host's cores). Each evaluated checkpoint costs one
    feature pass over train + test (fast probe and kNN share the cache) and ``linear_epochs``
    augmented passes over train + test (standard probe). Projector, predictor and neighbour search
    add about 1% (40 + 67 MFLOP per image against 8.9 GFLOP) and are left out. Wall time = all busy seconds in sequence (one GPU,
    one host) + start-up seconds divided over ``parallel`` processes.
    """
    from pretrain.config import load_recipe
    recipe = load_recipe(tier.recipe)
    size = recipe["image_size"]
    forward, both = backbone_gflops(recipe["backbone"], size)
    images = tier.train_limit or FULL_TRAIN
    eval_images = (tier.eval_train or FULL_TRAIN) + FULL_TEST
    eval_gflop = eval_images * forward * (1 + (tier.linear_epochs if "linear" in tier.protocols else 0))
    rows = []
    for name, seed in [*baselines, *units]:
        train_gflop = {"random": 0.0, "raw-pixels": 0.0, "supervised": images * tier.epochs * 2 * both}.get(
            name, images * tier.epochs * (2 * both + 2 * forward))
        train_s = train_gflop / (tflops * 1e3)
        if train_gflop and not device_pipeline:
            train_s = max(train_s, images * tier.epochs / PIL_PAIRS_PER_S)
        busy_s = train_s + (0.0 if name == "raw-pixels" else eval_gflop / (tflops * 1e3))
        start_s = (TRAIN_START_S if train_gflop else 0.0) + EVAL_START_S
        rows.append({"unit": f"{name}_s{seed}", "train_tflop": round(train_gflop / 1e3, 1),
                     "busy_s": round(busy_s, 1), "start_s": start_s})
    busy_total = sum(row["busy_s"] for row in rows)
    start_total = sum(row["start_s"] for row in rows)
    return {"backbone": recipe["backbone"], "image_size": size, "gflop_forward": round(forward, 3),
            "gflop_forward_backward": round(both, 3), "assumed_tflops": tflops, "train_images": images,
            "device_pipeline": device_pipeline,
            "epochs": tier.epochs, "eval_images": eval_images, "units": rows, "busy_s": round(busy_total),
            "start_s": round(start_total), "parallel": parallel,
            "wall_s": round(busy_total + start_total / parallel)}


def print_plan(args: argparse.Namespace, tier: Tier, units: list[tuple[str, int]],
               baselines: list[tuple[str, int]], data: list[str]) -> None:
    device_pipeline = tier.data_pipeline == "device" or tier.device != "cuda"
    plan = projection(tier, units, baselines, args.parallel, device_pipeline=device_pipeline)
    lines = [f"tier {args.tier}: recipe {tier.recipe}, {plan['backbone']} at {plan['image_size']} px, "
             f"{plan['train_images']:,} images x {tier.epochs} epochs; evaluators {', '.join(tier.protocols)} on "
             f"{plan['eval_images']:,} images",
             f"arithmetic: {plan['gflop_forward']} GFLOP forward, {plan['gflop_forward_backward']} GFLOP forward+backward "
             f"per image (torch.utils.flop_counter); SNCLR = 2 x fwd+bwd + 2 x fwd per image, supervised = 2 x "
             f"fwd+bwd; at an assumed {plan['assumed_tflops']:g} effective TFLOP/s; start-up {TRAIN_START_S:g} s per "
             f"pre-training, {EVAL_START_S:g} s per evaluation process",
             "input: " + ("augmentations on the GPU (--data-pipeline device)" if plan["device_pipeline"] else
                          f"PIL workers, at most {PIL_PAIRS_PER_S:,.0f} pairs/s over all units"),
             f"{'unit':<22}{'train TFLOP':>12}{'busy s':>8}{'start s':>9}"]
    lines += [f"{row['unit']:<22}{row['train_tflop']:>12}{row['busy_s']:>8}{row['start_s']:>9g}" for row in plan["units"]]
    lines.append(f"projected: {plan['busy_s']} busy s + {plan['start_s']} start-up s / {plan['parallel']} processes "
                 f"= {plan['wall_s']} s wall" + (f" (deadline {args.deadline_s:g} s: later units are skipped)"
                                                 if args.deadline_s else ""))
    if tier.device == "cuda":
        other = projection(tier, units, baselines, args.parallel, device_pipeline=not device_pipeline)
        lines.append(f"with {'PIL workers' if device_pipeline else 'the device pipeline'} instead: {other['wall_s']} s wall")
    first = units[0] if units else None
    if first:
        lines.append("first unit: " + " ".join(pretrain_command(tier, first[1], args.work / "pretrain" /
                                                                 f"{first[0]}_s{first[1]}", data,
                                                                 variant_args(first[0]))[1:]))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", choices=sorted(TIERS))
    parser.add_argument("--units", nargs="+", default=[], help="VARIANT:SEED, started in this order")
    parser.add_argument("--baselines", nargs="*", default=[],
                        help="KIND:SEED with KIND supervised (trained with labels, same recipe and epochs), random "
                             "(random-init backbone of the recipe) or raw-pixels")
    parser.add_argument("--work", type=Path, help="checkpoints, caches and logs (not shipped)")
    parser.add_argument("--ship", type=Path, help="records and metric logs to commit")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--parallel", type=int, default=1, help="units run at once (one GPU holds several)")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="start no new unit after this many seconds (a GPU lease is short)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and the projected seconds per unit, run nothing")
    parser.add_argument("--run-evaluations", metavar="JSON", help=argparse.SUPPRESS)   # internal: see evaluate()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.run_evaluations:
        return run_evaluations(json.loads(args.run_evaluations))
    for flag in ("tier", "work", "ship"):
        if getattr(args, flag) is None:
            parser.error(f"--{flag} is required")
    if args.parallel < 1:
        parser.error("--parallel must be at least 1")
    tier, data = TIERS[args.tier], (["--data-dir", args.data_dir] if args.data_dir else [])
    units = [parse_spec(spec) for spec in args.units]
    baselines = [parse_spec(spec, BASELINES) for spec in args.baselines]
    if args.dry_run:
        print_plan(args, tier, units, baselines, data)
        return 0
    # Baselines first: every variant is read against them, and random / raw pixels cost seconds.
    jobs = [(f"{kind}:{seed}", lambda k=kind, s=seed: baseline(tier, k, s, args.work, args.ship, data))
            for kind, seed in baselines]
    jobs += [(f"{name}:{seed}", lambda n=name, s=seed: unit(tier, n, s, args.work, args.ship, data, variant_args(n)))
             for name, seed in units]
    started = time.time()
    status: dict[str, dict] = {}
    lock = threading.Lock()

    def attempt(spec: str, job) -> None:
        if args.deadline_s is not None and time.time() - started > args.deadline_s:
            log.warning("deadline reached: %s not started", spec)
            outcome = {"status": "skipped (deadline)"}
        else:
            begun = time.time()
            try:
                job()
                outcome = {"status": "done"}
            except SystemExit as error:
                log.error("unit %s failed (%s)", spec, error)
                outcome = {"status": f"failed: {error}"}
            outcome["wall_s"] = round(time.time() - begun)
        with lock:
            status[spec] = outcome

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = [pool.submit(attempt, spec, job) for spec, job in jobs]
    for future in futures:
        future.result()   # a bug in the driver itself surfaces here, not silently in a thread
    args.ship.mkdir(parents=True, exist_ok=True)
    with open(args.ship / "wall_times.jsonl", "a") as handle:
        handle.write(json.dumps({"tier": args.tier, "units": args.units, "baselines": args.baselines,
                                 "parallel": args.parallel, "wall_s": round(time.time() - started),
                                 "status": {spec: status.get(spec) for spec, _ in jobs}}) + "\n")
    failed = [spec for spec, outcome in status.items() if outcome["status"].startswith("failed")]
    if failed and args.deadline_s is None:
        raise SystemExit(f"error: {len(failed)} unit(s) failed: {', '.join(failed)}; logs under {args.work / 'logs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
