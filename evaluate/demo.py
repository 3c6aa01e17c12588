"""The main job, end to end on the embedded data, on CPU: ``python -m evaluate demo [--quick]``.

1. pre-train SNCLR and the no-neighbour baseline (Eq. 1, same code with ``--neighbors none``) on
   Fashion-MNIST with the CPU recipe (ResNet-18, 32 px);
2. evaluate both, and a randomly initialised ResNet-18, with the fast linear probe and kNN; SNCLR
   also with a short standard linear probe and 1% / 10% fine-tuning;
3. convert SNCLR's backbone to detectron2 and run the Mask R-CNN smoke config on a synthetic COCO set;
4. build Tables 1-4, the leaderboard and the plots in OUT (default results/demo) and print Table 1.

Each step's outputs are kept, and a rerun skips steps whose outputs exist (pre-training resumes),
so an interrupted demo continues where it stopped. The scale of every step is in ``SCALES``; the
numbers are a smoke-scale reproduction of the protocols, labelled as such in every record.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "results" / "studies" / "fmnist_table4"   # issue 11's seeded Table 4 (its README)


@dataclass(frozen=True)
class Scale:
    train_limit: int          # pre-training images (class-balanced subset of the 60,000)
    epochs: int               # pre-training epochs
    neighbor_warmup: int      # of which the first ones use Eq. 1 (Appendix A warm-up)
    eval_train: int           # labelled training images for the evaluators
    eval_val: int             # test images for every evaluator
    linear_epochs: int        # standard linear probe epochs (the fast probe uses its default)
    semisup_epochs: int
    detection_images: tuple[int, int]


SCALES = {
    "full": Scale(train_limit=10_000, epochs=6, neighbor_warmup=1, eval_train=20_000, eval_val=10_000, linear_epochs=3,
                  semisup_epochs=20, detection_images=(32, 8)),
    "quick": Scale(train_limit=1_024, epochs=2, neighbor_warmup=1, eval_train=2_000, eval_val=1_000, linear_epochs=1,
                   semisup_epochs=2, detection_images=(8, 4)),
}


def _step(name: str, done: Path, action) -> None:
    if done.exists():
        log.info("demo: %s already done (%s)", name, done)
        return
    started = time.time()
    print(f"\n=== {name} ===", flush=True)
    action()
    if not done.exists():   # a pre-training stopped by SIGTERM/SIGINT exits 0 without its final file
        raise SystemExit(f"error: {name} stopped before writing {done}; rerun the demo to resume it")
    print(f"=== {name}: {time.time() - started:.0f} s ===", flush=True)


def _call(main, argv: list[str]) -> None:
    code = main(argv)
    if code not in (None, 0):
        raise SystemExit(code)


def run_demo(out: Path, scale_name: str, data_dir: str | None) -> Path:
    from evaluate import __main__ as evaluate_cli
    from evaluate.detection.convert import main as convert_main
    from evaluate.detection.launcher import main as detection_main
    from evaluate.report.figures import plot_eval_curves, plot_pretrain_curves
    from evaluate.neighbors import neighbor_grid
    from evaluate.detection.synthetic_coco import generate_synthetic_coco
    from evaluate.report.tables import build_tables, table1_markdown
    from pretrain.__main__ import main as pretrain_main

    scale = SCALES[scale_name]
    out.mkdir(parents=True, exist_ok=True)
    data = ["--data-dir", data_dir] if data_dir else []
    runs = {"snclr": [], "eq1_baseline": ["--neighbors", "none"]}
    checkpoints = {}
    for name, extra in runs.items():
        run_dir = out / "pretrain" / name
        final = run_dir / f"snclr_resnet18_ep{scale.epochs}.pth"
        _step(f"pre-train {name}", final, lambda: _call(pretrain_main, [
            "--recipe", "fmnist_resnet18_cpu", "--train-limit", str(scale.train_limit), "--epochs",
            str(scale.epochs), "--neighbor-warmup-epochs", str(scale.neighbor_warmup), "--output-dir", str(run_dir), *data, *extra]))
        checkpoints[name] = str(final)
    checkpoints["random_init"] = "random"

    limits = ["--limit-train", str(scale.eval_train), "--limit-val", str(scale.eval_val), *data,
              "--cache-dir", str(out / "eval" / "feature_cache")]
    evaluate = lambda argv: _call(evaluate_cli.main, argv)  # noqa: E731
    for name, checkpoint in checkpoints.items():
        model = ["--checkpoint", checkpoint, *(["--arch", "resnet18"] if checkpoint == "random" else [])]
        for protocol in ("linear-fast", "knn"):
            run_dir = out / "eval" / name / protocol
            _step(f"{protocol} {name}", run_dir / "results.jsonl",
                  lambda: evaluate([protocol, *model, *limits, "--out-dir", str(run_dir)]))
    snclr = ["--checkpoint", checkpoints["snclr"], *limits]
    run_dir = out / "eval" / "snclr" / "linear"
    _step("standard linear probe (short) snclr", run_dir / "results.jsonl", lambda: evaluate(
        ["linear", *snclr, "--epochs", str(scale.linear_epochs), "--out-dir", str(run_dir)]))
    for percent in (1, 10):
        run_dir = out / "eval" / "snclr" / f"semisup_{percent}pct"
        _step(f"fine-tune {percent}% labels snclr", run_dir / "results.jsonl", lambda: evaluate(
            ["semisup", *snclr, "--percent", str(percent), "--epochs", str(scale.semisup_epochs),
             "--eval-every", str(scale.semisup_epochs), "--out-dir", str(run_dir)]))

    coco = out / "detection" / "synthetic_coco"
    weights = out / "detection" / "snclr_r18_d2.pkl"
    train_images, val_images = scale.detection_images
    _step("synthetic COCO", coco / "annotations" / "instances_val2017.json", lambda: generate_synthetic_coco(
        coco, train=train_images, val=val_images, size=128, seed=0))
    _step("convert to detectron2 (+verify)", weights, lambda: _call(convert_main, [
        checkpoints["snclr"], str(weights), "--verify"]))
    detection_dir = out / "detection" / "run"
    _step("Mask R-CNN smoke run", detection_dir / "results.jsonl", lambda: _call(detection_main, [
        "--config-file", str(ROOT / "detectron2_configs" / "mask_rcnn_R_18_FPN_smoke.yaml"), "--weights",
        str(weights), "--coco-root", str(coco), "--output-dir", str(detection_dir), "--dataset", "synthetic-coco",
        "--records", str(detection_dir / "results.jsonl")]))

    print("\n=== tables and plots ===", flush=True)
    tables = out / "tables"
    # The default references: the SNCLR paper's numbers and the published baselines beside them.
    build_tables([out / "eval", out / "detection"], out_dir=tables)
    plots = out / "plots"
    for name in runs:
        plot_pretrain_curves(out / "pretrain" / name / "metrics.jsonl", plots / f"pretrain_{name}.png")
    linear_log = next((out / "eval" / "snclr" / "linear").glob("*metrics*.jsonl"), None)
    if linear_log is not None:
        plot_eval_curves(linear_log, plots / "linear_probe_snclr.png")
    grid = neighbor_grid(out / "pretrain" / "snclr" / "checkpoint.pth", plots / "neighbors_snclr.png",
                         queries=4, data_dir=data_dir)
    (plots / "neighbors_snclr.json").write_text(json.dumps(grid, indent=1))
    print(table1_markdown([out / "eval"], "fashion-mnist"))
    print(f"This run pre-trains {scale.epochs} epochs on {scale.train_limit:,} images: it proves the pipeline. A "
          "randomly initialised ResNet-18 is a strong baseline on 32 px Fashion-MNIST, so a run this short may "
          "sit at or below it; the shipped study below is what longer runs of the same code give.")
    print(shipped_study_table())
    print(f"\ntables: {tables} (imagenet-1k/: the SNCLR paper's numbers and published baselines)\nplots: {plots}")
    return tables


def shipped_study_table(study: Path = STUDY) -> str:
    """The shipped Table 4 study as Markdown, labelled with its seeds and schedule (README of the study)."""
    from evaluate.report.tables import table4_markdown

    if not (study / "records").is_dir():
        return f"(no shipped study at {study})"
    configs = sorted((study / "pretrain_logs").glob("*.config.yaml"))
    seeds = len({path.name.split(".config")[0].rpartition("_s")[2] for path in configs})
    schedule = yaml.safe_load(configs[0].read_text()) if configs else {}
    label = (f"Shipped study ({study.relative_to(ROOT) if study.is_relative_to(ROOT) else study}), {seeds} seeds, "
             f"schedule: {schedule.get('epochs', '?')} epochs on {schedule.get('train_limit') or 60_000:,} images "
             f"({schedule.get('neighbor_warmup_epochs', '?')} Eq. 1 warm-up), ResNet-18 at 32 px; mean ± std (n):")
    return f"\n{label}\n\n{table4_markdown([study / 'records'], 'fashion-mnist')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluate demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "demo", help="output folder")
    parser.add_argument("--quick", action="store_true", help="tiny scale for tests/CI (about 3 minutes)")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default: Debian's location)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.time()
    run_demo(args.out, "quick" if args.quick else "full", args.data_dir)
    print(f"demo finished in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
