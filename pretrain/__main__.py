"""python -m pretrain --recipe NAME [--any-config-field VALUE ...]

Pre-trains SNCLR. Recipes live in pretrain/recipes/ (paper settings and a CPU recipe); every config
field can be overridden by a flag. Multi-GPU / multi-node: launch the same command with torchrun,
e.g. `torchrun --nproc_per_node 8 -m pretrain --recipe resnet50_800ep --data-dir /data/imagenet`;
on SLURM use `python -m pretrain.submit`.

SIGTERM or Ctrl-C saves at the next step boundary and exits 0; rerunning the same command resumes
from OUTPUT_DIR/checkpoint.pth exactly where it stopped. DataLoader workers ignore these signals, so
signalling the whole process group (as SLURM and systemd do) stops the run the same way. A second
signal before that save ends the run at once, unsaved, with a line naming the last checkpoint.
"""
from __future__ import annotations

import argparse
import logging
import sys

from pretrain.config import add_override_flags, recipe_names, resolve
from pretrain.errors import ArgumentParser, cli_main
from pretrain.safe_load import TRUST_FLAG

# Flags that steer this command rather than set a config field.
CLI_ONLY = ("recipe", "resume", "extend_schedule", "trust_checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m pretrain", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help=f"one of {', '.join(recipe_names())}, or a YAML path")
    parser.add_argument("--resume", default=None, help="checkpoint to resume from (default: OUTPUT_DIR/"
                        "checkpoint.pth when it exists)")
    parser.add_argument("--extend-schedule", action="store_true",
                        help="allow a resumed run to grow --epochs (the cosine schedule is stretched from "
                             "the current step; the change is recorded in the checkpoint)")
    parser.add_argument(TRUST_FLAG, action="store_true",
                        help="allow the checkpoint resumed from to be fully unpickled if it holds more than tensors "
                             "and allow-listed types; unpickling can run code, so only for files you trust")
    add_override_flags(parser)
    return parser


@cli_main
def main(argv: list[str] | None = None, stop=None) -> int:
    """Run the CLI; ``stop`` (a :class:`pretrain.train.StopRequest`) chooses the stop signals.

    Bad input exits 2 and a diverged run 3, each with one ``error:`` line (:mod:`pretrain.errors`)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {k: v for k, v in vars(args).items() if k not in CLI_ONLY}
    config = resolve(args.recipe, overrides)
    from pretrain.train import StopInsisted, train
    try:
        result = train(config, resume=args.resume, extend_schedule=args.extend_schedule, stop=stop,
                       trust_checkpoint=args.trust_checkpoint)
    except StopInsisted as error:   # not an error of input: the user stopped the run twice
        print(f"stopped: {error}", file=sys.stderr)
        return 128 + error.signum
    if result.finished:
        print(f"checkpoint: {result.checkpoint}")
    else:
        print(f"stopped by {result.stop_signal} at epoch {result.epoch} step {result.step_in_epoch} "
              f"(global step {result.global_step}); saved {result.checkpoint}; rerun the same command to resume")
    return 0


if __name__ == "__main__":
    sys.exit(main())
