"""python -m pretrain --recipe NAME [--any-config-field VALUE ...]

Pre-trains SNCLR. Recipes live in pretrain/recipes/ (paper settings and a CPU recipe); every config
field can be overridden by a flag. Multi-GPU / multi-node: launch the same command with torchrun,
e.g. `torchrun --nproc_per_node 8 -m pretrain --recipe resnet50_800ep --data-dir /data/imagenet`;
on SLURM use `python -m pretrain.submit`.

SIGTERM or Ctrl-C saves at the next step boundary and exits 0; rerunning the same command resumes
from OUTPUT_DIR/checkpoint.pth exactly where it stopped.
"""
from __future__ import annotations

import argparse
import logging
import sys

from pretrain.checkpoint import CheckpointError
from pretrain.config import ConfigError, add_override_flags, recipe_names, resolve
from pretrain.data import DataError
from pretrain.fileio import OutputDirError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help=f"one of {', '.join(recipe_names())}, or a YAML path")
    parser.add_argument("--resume", default=None, help="checkpoint to resume from (default: OUTPUT_DIR/"
                        "checkpoint.pth when it exists)")
    parser.add_argument("--extend-schedule", action="store_true",
                        help="allow a resumed run to grow --epochs (the cosine schedule is stretched from "
                             "the current step; the change is recorded in the checkpoint)")
    add_override_flags(parser)
    return parser


def one_line(error: BaseException) -> str:
    """The error's own line. An error raised in a DataLoader worker arrives re-wrapped with the
    worker's traceback; its last line is the original message."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    line = lines[-1] if lines else type(error).__name__
    return line.removeprefix(f"{type(error).__module__}.{type(error).__name__}: ")


def main(argv: list[str] | None = None, stop=None) -> int:
    """Run the CLI; ``stop`` (a :class:`pretrain.train.StopRequest`) chooses the stop signals."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {k: v for k, v in vars(args).items() if k not in ("recipe", "resume", "extend_schedule")}
    try:
        config = resolve(args.recipe, overrides)
        from pretrain.train import train
        result = train(config, resume=args.resume, extend_schedule=args.extend_schedule, stop=stop)
    except (ConfigError, CheckpointError, DataError, OutputDirError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except FloatingPointError as error:   # a diverged run: nothing poisoned was saved
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 3
    if result.finished:
        print(f"checkpoint: {result.checkpoint}")
    else:
        print(f"stopped by {result.stop_signal} at epoch {result.epoch} step {result.step_in_epoch} "
              f"(global step {result.global_step}); saved {result.checkpoint}; rerun the same command to resume")
    return 0


if __name__ == "__main__":
    sys.exit(main())
