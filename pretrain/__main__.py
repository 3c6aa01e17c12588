"""python -m pretrain --recipe NAME [--any-config-field VALUE ...]

Pre-trains SNCLR. Recipes live in pretrain/recipes/ (paper settings and a CPU recipe); every config
field can be overridden by a flag. Multi-GPU / multi-node: launch the same command with torchrun,
e.g. `torchrun --nproc_per_node 8 -m pretrain --recipe resnet50_800ep --data-dir /data/imagenet`.
"""
from __future__ import annotations

import argparse
import logging
import sys

from pretrain.checkpoint import CheckpointError
from pretrain.config import ConfigError, add_override_flags, recipe_names, resolve
from pretrain.data import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help=f"one of {', '.join(recipe_names())}, or a YAML path")
    parser.add_argument("--resume", default=None, help="checkpoint to resume from (default: OUTPUT_DIR/"
                        "checkpoint.pth when it exists)")
    add_override_flags(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {k: v for k, v in vars(args).items() if k not in ("recipe", "resume")}
    try:
        config = resolve(args.recipe, overrides)
        from pretrain.train import train
        final = train(config, resume=args.resume)
    except (ConfigError, CheckpointError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"checkpoint: {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
