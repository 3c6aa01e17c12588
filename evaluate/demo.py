"""The main job, end to end on the embedded data, on CPU: ``python -m evaluate demo [--quick]``.

1. pre-train the no-neighbour baseline (Eq. 1, ``--neighbors none``) and SNCLR on Fashion-MNIST with
   the CPU recipe (ResNet-18, 32 px). Their first epoch, the neighbour warm-up, is Eq. 1 in both, so
   it is trained once and SNCLR starts from it (:mod:`pretrain.fork`, bit for bit the straight run);
2. evaluate both, and a randomly initialised ResNet-18, with the fast linear probe and kNN; SNCLR
   also with a short standard linear probe and 1% / 10% fine-tuning;
3. convert SNCLR's backbone to detectron2 and run the Mask R-CNN smoke config on a synthetic COCO set;
4. build Tables 1-4, the leaderboard and the plots in OUT (default results/demo) and print Table 1.

Each step's outputs are kept, and a rerun skips steps whose outputs exist (pre-training resumes),
so an interrupted demo continues where it stopped. The scale of every step is in ``SCALES``; the
numbers are a smoke-scale reproduction of the protocols, labelled as such in every record.

Progress tells the truth: the demo prints the machine (CPU model, vector extensions), then, after the
first pre-training steps, an estimate of its remaining time from the measured step time and the
planned work of every stage (``plan``, ``COST``), and the estimate again after every stage. The
wall and CPU time of every stage go to OUT/timings.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import resource
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from pretrain.errors import ArgumentParser, UserError, cli_main

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "results" / "studies" / "fmnist_table4"   # issue 11's seeded Table 4 (its README)
PRETRAIN_BATCH = 256   # the CPU recipe's batch: one "step" below is one step of it


@dataclass(frozen=True)
class Scale:
    train_limit: int          # pre-training images (class-balanced subset of the 60,000)
    epochs: int               # pre-training epochs
    neighbor_warmup: int      # of which the first ones use Eq. 1 (Appendix A warm-up), trained once for both runs
    eval_train: int           # labelled training images for the evaluators
    eval_val: int             # test images for every evaluator
    linear_epochs: int        # standard linear probe epochs (the fast probe uses its default)
    semisup_epochs: tuple[int, int]   # fine-tuning epochs with 1% and with 10% of the labels
    detection_images: tuple[int, int]

    @property
    def steps_per_epoch(self) -> int:
        # --train-limit takes limit // 10 images of each of Fashion-MNIST's 10 classes; the last partial batch is dropped
        return self.train_limit // 10 * 10 // PRETRAIN_BATCH


# "full" fits 15 minutes on the slower of the two 2-core machine kinds (README, "How long things
# take"): the evaluators use the shipped study's 10,000 labelled images and the whole test set, so
# the demo's numbers sit beside the study's; pre-training gets what is left.
SCALES = {
    "full": Scale(train_limit=5_120, epochs=4, neighbor_warmup=1, eval_train=10_000, eval_val=10_000, linear_epochs=2,
                  semisup_epochs=(20, 10), detection_images=(32, 8)),
    "quick": Scale(train_limit=1_024, epochs=2, neighbor_warmup=1, eval_train=2_000, eval_val=1_000, linear_epochs=1,
                   semisup_epochs=(2, 2), detection_images=(8, 4)),
}

# The cost of each kind of work, in demo pre-training steps. One step: 256 two-view pairs through
# ResNet-18 at 32 px, forward and backward, momentum branch, LARS, with its share of the epoch's
# start and checkpoint save. Calibrated from the CPU time of every stage of one full demo on one
# thread (README, "How long things take"; one step was 2.29 s of CPU there). Ratios, not seconds,
# carry over between machines: the same constants predict issue 20's AMD times of the previous demo
# within 25% for every evaluator stage (detection: 27 s against 18) and within 5% in total.
COST = {
    "pretrain_start": 1.0,      # per pre-training stage: data set, model, resume
    "embed_image": 0.00034,     # one image through the frozen backbone (features for kNN and the fast probe)
    "probe_image": 0.00033,     # one image through the frozen backbone in a probe or a fine-tuning's evaluation
    "finetune_image": 0.0016,   # one image forward and backward (fine-tuning, batch 64)
    "finetune_epoch": 0.077,    # per fine-tuning epoch: DataLoader start, schedule
    "eval_start": 1.0,          # per evaluator: imports, data set, checkpoint, record
    "detection": 8.0,           # synthetic COCO, convert + verify, Mask R-CNN smoke run (fixed sizes)
    "report": 1.6,              # tables, plots, neighbour grid
}

# The two kinds of 2-core machine this project is run on, by the wall time of one demo pre-training
# step (README, "How long things take"): this project's development VM, and issue 20's.
MACHINE_KINDS = (
    ("faster", "Intel Xeon with AVX-512 (the development machine)", 0.81),
    ("slower", "AMD EPYC with AVX2 only (issue 20)", 3.2),
)


@dataclass(frozen=True)
class Stage:
    name: str
    units: float              # planned cost in demo pre-training steps (COST)
    steps: int = 0            # pre-training steps of this stage (0: not a pre-training stage)


def plan(scale: Scale) -> list[Stage]:
    """Every stage of :func:`run_demo` in order, with its planned cost."""
    per_epoch, warmup = scale.steps_per_epoch, scale.neighbor_warmup
    rest = scale.epochs - warmup
    stages = [Stage(f"pre-train the shared Eq. 1 warm-up (epoch 1-{warmup} of {scale.epochs})",
                    COST["pretrain_start"] + warmup * per_epoch, warmup * per_epoch)]
    for name in ("eq1_baseline", "snclr"):
        stages.append(Stage(f"pre-train {name} (epochs {warmup + 1}-{scale.epochs})",
                            COST["pretrain_start"] + rest * per_epoch, rest * per_epoch))
    embed = COST["eval_start"] + (scale.eval_train + scale.eval_val) * COST["embed_image"]
    for name in ("snclr", "eq1_baseline", "random_init"):
        stages.append(Stage(f"linear-fast {name}", embed))   # extracts the features kNN then reuses
        stages.append(Stage(f"knn {name}", COST["eval_start"]))
    stages.append(Stage("standard linear probe (short) snclr", COST["eval_start"] + COST["probe_image"] * (
        scale.linear_epochs * scale.eval_train + scale.eval_val)))
    for percent, epochs in zip((1, 10), scale.semisup_epochs):
        labelled = max(10, round(scale.eval_train * percent / 100))
        stages.append(Stage(f"fine-tune {percent}% labels snclr", COST["eval_start"] + epochs * (
            COST["finetune_epoch"] + COST["finetune_image"] * labelled) + COST["probe_image"] * scale.eval_val))
    stages.append(Stage("detection: synthetic COCO, convert, Mask R-CNN smoke run", COST["detection"]))
    stages.append(Stage("tables and plots", COST["report"]))
    return stages


def estimate_remaining(stages: list[Stage], current: int, done_in_current: float, step_seconds: float) -> float:
    """Seconds left: the planned units of stage ``current`` not yet done (``done_in_current``, a
    fraction) and of every later stage, at ``step_seconds`` per unit."""
    if not 0 <= current <= len(stages):
        raise ValueError(f"stage {current} of {len(stages)}")
    left = sum(stage.units for stage in stages[current:])
    if current < len(stages):
        left -= min(max(done_in_current, 0.0), 1.0) * stages[current].units
    return left * step_seconds


def machine_kind(step_seconds: float) -> tuple[str, str, float]:
    """The known machine kind whose demo step time is nearest (by ratio) to ``step_seconds``."""
    return min(MACHINE_KINDS, key=lambda kind: abs(math.log(step_seconds / kind[2])))


def cpu_description() -> dict[str, object]:
    """CPU model, cores, vector extensions (from /proc/cpuinfo, as lscpu reads them) and torch's kernels."""
    import torch
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:   # not Linux: the model from platform, no flags
        pass
    vector = [flag for flag in ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
              if flag in flags]
    return {"model": model, "cores": os.cpu_count(), "vector_extensions": vector,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads()}


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


class Progress:
    """Stage timings and the remaining-time estimate, from the pre-training step time measured so far."""

    def __init__(self, stages: list[Stage], out: Path) -> None:
        self.stages, self.out, self.index = stages, out, 0
        self.step_seconds: float | None = None
        self.announced = False
        self.started, self.timings = time.time(), []
        self.lock = threading.Lock()

    def measured_step(self, seconds: float, fraction_done: float) -> None:
        """A step time measured by the running pre-training stage, ``fraction_done`` of the way through it."""
        with self.lock:
            self.step_seconds = seconds
            if self.announced:
                return
            self.announced = True
            left = estimate_remaining(self.stages, self.index, fraction_done, seconds)
            kind, description, reference = machine_kind(seconds)
            print(f"\n[demo] measured pre-training step: {seconds:.2f} s (batch {PRETRAIN_BATCH}); the {kind} kind of "
                  f"machine ({description}) takes about {reference:.1f} s. Estimated time left: {_minutes(left)} "
                  f"(whole demo about {_minutes(time.time() - self.started + left)}). Other programs running now (load "
                  f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores) make both numbers larger.", flush=True)

    def finished(self, name: str, wall: float, cpu: float, skipped: bool = False) -> None:
        with self.lock:
            names = [stage.name for stage in self.stages]
            self.index = names.index(name) + 1 if name in names else self.index
            self.timings.append({"stage": name, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "skipped": skipped,
                                 "planned_units": next((s.units for s in self.stages if s.name == name), None)})
            left = ("" if self.step_seconds is None or self.index >= len(self.stages) else
                    f"; about {_minutes(estimate_remaining(self.stages, self.index, 0.0, self.step_seconds))} left")
        if not skipped:
            print(f"=== {name}: {wall:.0f} s (CPU {cpu:.0f} s){left} ===", flush=True)

    def write(self, machine: dict) -> Path:
        path = self.out / "timings.json"
        path.write_text(json.dumps({"machine": machine, "step_seconds": self.step_seconds,
                                    "wall_s": round(time.time() - self.started, 1), "stages": self.timings}, indent=1))
        return path


class StepWatcher(threading.Thread):
    """Reads a running pre-training's metrics.jsonl: each line after the first gives the step time of
    its interval (the first interval includes the DataLoader's start), reported to ``progress``."""

    def __init__(self, metrics: Path, stage: Stage, first_step: int, progress: Progress) -> None:
        super().__init__(daemon=True)
        self.metrics, self.stage, self.first_step, self.progress = metrics, stage, first_step, progress
        self.stop_event = threading.Event()
        self.seen = 0

    def poll(self) -> None:
        """Report the newest interval's step time, if a line has come since the last poll."""
        try:
            rows = [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError):   # not written yet, or a line being written
            return
        rows = [row for row in rows if row.get("step", 0) > self.first_step]
        if len(rows) >= 2 and len(rows) > self.seen and rows[-1].get("images_per_s"):
            self.seen = len(rows)
            done = (rows[-1]["step"] - self.first_step) / max(self.stage.steps, 1)
            self.progress.measured_step(PRETRAIN_BATCH / rows[-1]["images_per_s"], done)

    def run(self) -> None:
        while not self.stop_event.wait(1.0):
            self.poll()

    def __enter__(self) -> "StepWatcher":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.join()
        self.poll()   # a stage shorter than the polling interval still reports its step time


class DemoStopped(UserError):
    """A stage that stopped (a signal, or a state it cannot continue from); its work is saved."""


def _step(progress: Progress, name: str, done: Path, action) -> None:
    if done.exists():
        log.info("demo: %s already done (%s)", name, done)
        progress.finished(name, 0.0, 0.0, skipped=True)
        return
    started, cpu = time.time(), cpu_seconds()
    print(f"\n=== {name} ===", flush=True)
    action()
    if not done.exists():   # a pre-training stopped by SIGTERM/SIGINT exits 0 without its final file
        raise DemoStopped(f"{name} stopped before writing {done}; rerun the demo to resume it")
    progress.finished(name, time.time() - started, cpu_seconds() - cpu)


def _call(main, argv: list[str], **kwargs) -> None:
    code = main(argv, **kwargs)
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
    from pretrain.checkpoint import CheckpointError, load_pretrain_checkpoint
    from pretrain.fork import fork_warmup
    from pretrain.train import StopRequest

    scale = SCALES[scale_name]
    stages = plan(scale)
    out.mkdir(parents=True, exist_ok=True)
    machine = cpu_description()
    print(f"[demo] machine: {machine['model']}, {machine['cores']} cores, vector extensions "
          f"{' '.join(machine['vector_extensions']) or 'none found'} (torch kernels: {machine['torch_cpu_capability']}, "
          f"{machine['torch_threads']} threads). Planned work: {sum(s.units for s in stages):.0f} pre-training steps' "
          f"worth; the time estimate follows the first steps.", flush=True)
    progress = Progress(stages, out)
    data = ["--data-dir", data_dir] if data_dir else []
    runs = {"eq1_baseline": ["--neighbors", "none"], "snclr": []}
    dirs = {name: out / "pretrain" / name for name in runs}
    checkpoints = {name: str(dirs[name] / f"snclr_resnet18_ep{scale.epochs}.pth") for name in runs}

    def pretrain_argv(name: str) -> list[str]:
        return ["--recipe", "fmnist_resnet18_cpu", "--train-limit", str(scale.train_limit), "--epochs",
                str(scale.epochs), "--neighbor-warmup-epochs", str(scale.neighbor_warmup), "--log-every", "5",
                "--output-dir", str(dirs[name]), *data, *runs[name]]

    def pretrain_stage(stage: Stage, name: str, first_step: int, **kwargs) -> None:
        with StepWatcher(dirs[name] / "metrics.jsonl", stage, first_step, progress):
            _call(pretrain_main, pretrain_argv(name), **kwargs)

    def shared_warmup() -> None:
        latest = dirs["eq1_baseline"] / "checkpoint.pth"
        if not latest.exists() or load_pretrain_checkpoint(latest)["epoch"] < scale.neighbor_warmup:
            stop = StopRequest(after_epoch=scale.neighbor_warmup)
            pretrain_stage(stages[0], "eq1_baseline", 0, stop=stop)
            if stop.received != f"after_epoch={scale.neighbor_warmup}":   # Ctrl-C or SIGTERM: saved, not done
                raise DemoStopped(f"the warm-up stopped early ({stop.received}); rerun the demo to resume it")
        try:
            fork_warmup(latest, dirs["snclr"], neighbors="soft")
        except CheckpointError as error:
            raise DemoStopped(f"{error}; delete {out / 'pretrain'} to pre-train both runs again") from None

    warmup_steps = scale.neighbor_warmup * scale.steps_per_epoch
    _step(progress, stages[0].name, dirs["snclr"] / "checkpoint.pth", shared_warmup)
    for stage, name in zip(stages[1:3], runs):
        _step(progress, stage.name, Path(checkpoints[name]), lambda: pretrain_stage(stage, name, warmup_steps))
    checkpoints["random_init"] = "random"

    limits = ["--limit-train", str(scale.eval_train), "--limit-val", str(scale.eval_val), *data,
              "--cache-dir", str(out / "eval" / "feature_cache")]
    evaluate = lambda argv: _call(evaluate_cli.main, argv)  # noqa: E731
    for name in ("snclr", "eq1_baseline", "random_init"):
        checkpoint = checkpoints[name]
        model = ["--checkpoint", checkpoint, *(["--arch", "resnet18"] if checkpoint == "random" else [])]
        for protocol in ("linear-fast", "knn"):
            run_dir = out / "eval" / name / protocol
            # kNN resizes like the fast probe (bilinear, a recorded deviation from DINO's bicubic), so it
            # reuses the features the fast probe cached instead of extracting them again.
            extra = ["--interpolation", "bilinear"] if protocol == "knn" else []
            _step(progress, f"{protocol} {name}", run_dir / "results.jsonl",
                  lambda: evaluate([protocol, *model, *limits, *extra, "--out-dir", str(run_dir)]))
    snclr = ["--checkpoint", checkpoints["snclr"], *limits]
    run_dir = out / "eval" / "snclr" / "linear"
    _step(progress, "standard linear probe (short) snclr", run_dir / "results.jsonl", lambda: evaluate(
        ["linear", *snclr, "--epochs", str(scale.linear_epochs), "--out-dir", str(run_dir)]))
    for percent, epochs in zip((1, 10), scale.semisup_epochs):
        run_dir = out / "eval" / "snclr" / f"semisup_{percent}pct"
        _step(progress, f"fine-tune {percent}% labels snclr", run_dir / "results.jsonl", lambda: evaluate(
            ["semisup", *snclr, "--percent", str(percent), "--epochs", str(epochs),
             "--eval-every", str(epochs), "--out-dir", str(run_dir)]))

    coco = out / "detection" / "synthetic_coco"
    weights = out / "detection" / "snclr_r18_d2.pkl"
    train_images, val_images = scale.detection_images
    detection_dir = out / "detection" / "run"

    def detection() -> None:
        if not (coco / "annotations" / "instances_val2017.json").exists():
            generate_synthetic_coco(coco, train=train_images, val=val_images, size=128, seed=0)
        if not weights.exists():
            _call(convert_main, [checkpoints["snclr"], str(weights), "--verify"])
        _call(detection_main, [
            "--config-file", str(ROOT / "detectron2_configs" / "mask_rcnn_R_18_FPN_smoke.yaml"), "--weights",
            str(weights), "--coco-root", str(coco), "--output-dir", str(detection_dir), "--dataset", "synthetic-coco",
            "--records", str(detection_dir / "results.jsonl")])
    _step(progress, stages[-2].name, detection_dir / "results.jsonl", detection)

    print(f"\n=== {stages[-1].name} ===", flush=True)
    report_started, report_cpu = time.time(), cpu_seconds()
    tables = out / "tables"
    # The default references: the SNCLR paper's numbers and the published baselines beside them.
    build_tables([out / "eval", out / "detection"], out_dir=tables)
    plots = out / "plots"
    for name in runs:
        plot_pretrain_curves(dirs[name] / "metrics.jsonl", plots / f"pretrain_{name}.png")
    linear_log = next((out / "eval" / "snclr" / "linear").glob("*metrics*.jsonl"), None)
    if linear_log is not None:
        plot_eval_curves(linear_log, plots / "linear_probe_snclr.png")
    grid = neighbor_grid(dirs["snclr"] / "checkpoint.pth", plots / "neighbors_snclr.png",
                         queries=4, data_dir=data_dir)
    (plots / "neighbors_snclr.json").write_text(json.dumps(grid, indent=1))
    progress.finished(stages[-1].name, time.time() - report_started, cpu_seconds() - report_cpu)
    print(table1_markdown([out / "eval"], "fashion-mnist"))
    print(closing_note(scale))
    print(shipped_study_table())
    timings = progress.write(machine)
    print(f"\ntables: {tables} (imagenet-1k/: the SNCLR paper's numbers and published baselines)\nplots: {plots}"
          f"\nstage times: {timings}")
    return tables


def closing_note(scale: Scale) -> str:
    """What this run is, including what the demo does differently from running each step on its own."""
    rest = scale.epochs - scale.neighbor_warmup
    return (f"This run pre-trains {scale.epochs} epochs on {scale.train_limit:,} images: it proves the pipeline. "
            f"The Eq. 1 baseline and SNCLR share their {scale.neighbor_warmup}-epoch Eq. 1 warm-up (trained once; "
            f"SNCLR then trains {rest} epochs with neighbours, exactly as a run of its own would). The evaluators use "
            f"{scale.eval_train:,} labelled images and {scale.eval_val:,} test images; kNN resizes bilinearly to reuse "
            f"the fast probe's features; the standard probe runs {scale.linear_epochs} epoch(s) and fine-tuning "
            f"{scale.semisup_epochs[0]} (1%) / {scale.semisup_epochs[1]} (10%) epochs. A randomly initialised "
            "ResNet-18 is a strong baseline on 32 px Fashion-MNIST, so a run this short sits at or below it; "
            "plots/pretrain_snclr.png shows the neighbour label agreement rising over the run, and the shipped study "
            "below is what longer runs of the same code give.")


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


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m evaluate demo", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "demo", help="output folder")
    parser.add_argument("--quick", action="store_true", help="tiny scale for tests/CI (about 3 minutes)")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default: Debian's location)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started, cpu = time.time(), cpu_seconds()
    run_demo(args.out, "quick" if args.quick else "full", args.data_dir)
    print(f"demo finished in {time.time() - started:.0f} s (CPU time {cpu_seconds() - cpu:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
