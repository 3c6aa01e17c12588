"""``python -m evaluate SUBCOMMAND ...``: one entry point for every evaluator.

Each subcommand is a ``module:function`` taking ``argv``; modules are imported only when their
subcommand runs, so a missing optional dependency (detectron2) affects that subcommand alone. Each
function is wrapped by :func:`pretrain.errors.cli_main`: bad input exits 2 with one ``error:`` line.
"""
from __future__ import annotations

import importlib
import sys

from pretrain.errors import UsageError, cli_main

SUBCOMMANDS = {
    "linear": ("evaluate.classification.linear:main", "linear probe on a frozen backbone (MoCo v3 protocol)"),
    "linear-fast": ("evaluate.classification.linear:main_fast", "linear head on cached features (labelled deviation)"),
    "knn": ("evaluate.classification.knn:main", "weighted kNN monitor on cached features (DINO protocol)"),
    "semisup": ("evaluate.classification.semisup:main", "fine-tuning with 1% / 10% of the labels (SwAV / Barlow Twins presets)"),
    "convert": ("evaluate.detection.convert:main", "checkpoint -> detectron2 weights (.pkl), with --verify"),
    "detection": ("evaluate.detection.launcher:main", "Mask R-CNN R50-FPN transfer through detectron2 (paper Table 3)"),
    "synthetic-coco": ("evaluate.detection.synthetic_coco:main", "write a small synthetic COCO-format data set"),
    "tables": ("evaluate.report.tables:main", "paper-style Tables 1-4 and leaderboard.csv from result records"),
    "neighbors": ("evaluate.neighbors:main", "neighbour grid of a pre-training checkpoint (paper Fig. 3/4)"),
    "demo": ("evaluate.demo:main", "the main job end to end on the embedded data (make demo)"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    return ("usage: python -m evaluate SUBCOMMAND [--help] ...\n\nsubcommands:\n" + "\n".join(lines)
            + "\n\n`python -m evaluate SUBCOMMAND --help` lists a subcommand's flags.")


@cli_main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in SUBCOMMANDS:
        raise UsageError(f"unknown subcommand {argv[0]!r}; expected one of {', '.join(SUBCOMMANDS)}")
    module_name, function_name = SUBCOMMANDS[argv[0]][0].split(":")
    code = getattr(importlib.import_module(module_name), function_name)(argv[1:])
    if code:
        raise SystemExit(code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
