"""python -m evaluate.neighbors CHECKPOINT OUT.png: the paper's Fig. 3/4 for a trained checkpoint.

For a few query images of the pre-training set, retrieve their top-K neighbours from the checkpoint's
candidate set exactly as training does (momentum key -> cosine top-K, never the query's own image)
and label each neighbour with the weight the run gave it: its positiveness (Eq. 4, from the online
projector output, at the run's own tau_w) for a soft run, 1 for a binary one. A run without neighbours
(Eq. 1) used no weights; it is shown the Eq. 4 weights its configuration would give.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from evaluate.errors import EvalError
from evaluate.report.figures import plot_neighbor_grid
from pretrain.checkpoint import CheckpointError, load_pretrain_checkpoint
from pretrain.config import FIELDS, PretrainConfig
from pretrain.data import IMAGENET_MEAN, IMAGENET_STD, build_dataset, eval_transform
from pretrain.losses import positiveness
from pretrain.safe_load import TRUST_FLAG
from pretrain.train import model_from_config
from pretrain.errors import ArgumentParser, cli_main

log = logging.getLogger(__name__)


@torch.no_grad()
def neighbor_grid(checkpoint: str | Path, out_png: str | Path, *, queries: int = 4, k: int | None = None,
                  data_dir: str | None = None, seed: int = 0, trust: bool = False) -> dict:
    """Write the grid; returns query ids, neighbour ids, positiveness and label agreement. ``trust``
    (``--trust-checkpoint``) allows a full unpickle of a checkpoint the data-only reader refuses."""
    if queries < 1:
        raise EvalError(f"--queries {queries}: expected at least 1 query image")
    if k is not None and k < 1:
        raise EvalError(f"--k {k}: expected at least 1 neighbour per row")
    state = load_pretrain_checkpoint(checkpoint, trust=trust)
    unknown = sorted(set(state["config"]) - set(FIELDS))
    if unknown:
        raise CheckpointError(f"{checkpoint}: its config has key(s) {unknown} that this version of the code does "
                              f"not know (written by a newer or modified version?)")
    config = PretrainConfig(**state["config"])
    model = model_from_config(config)
    model.load_state_dict(state["model"])
    model.eval()
    filled = int(model.candidate_set.filled)
    k = k or min(config.k, 8) or 8   # the "none" ablation (K=0) still has a candidate set to show
    if filled < k + 1:
        raise CheckpointError(f"{checkpoint}: candidate set holds {filled} entries, fewer than K+1={k + 1}")
    dataset = build_dataset(config.dataset, data_dir or config.data_dir, "train", None, config.train_limit)
    transform = eval_transform(config.image_size, 1.0 if config.dataset == "fashion-mnist" else 0.875)
    generator = torch.Generator().manual_seed(seed)
    query_ids = torch.randperm(len(dataset), generator=generator)[:queries]
    queried = [dataset[int(i)] for i in query_ids]   # (image, label, index), each read once
    images = torch.stack([transform(image) for image, _, _ in queried])
    query_labels = [int(label) for _, label, _ in queried]
    y = model.projector(model.backbone(images))
    keys = model.momentum_projector(model.momentum_backbone(images))
    found = model.candidate_set.query(keys, query_ids, k)
    weights = neighbor_weights(config, y, found.neighbors)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    shown = lambda x: (x * std + mean).clamp(0, 1)  # noqa: E731 - undo the input normalisation
    neighbor_images = torch.stack([torch.stack([shown(transform(dataset[int(j)][0])) for j in row])
                                   for row in found.image_ids])
    classes = getattr(dataset, "classes", None) or getattr(getattr(dataset, "dataset", None), "classes", None)
    labels = None
    if classes:
        labels = [[classes[q]] + [classes[int(l)] for l in row] for q, row in zip(query_labels, found.labels)]
    plot_neighbor_grid(shown(images), neighbor_images, weights, out_png, labels=labels)
    agreement = (found.labels == torch.tensor(query_labels)[:, None]).float().mean().item()
    return {"query_ids": query_ids.tolist(), "neighbor_ids": found.image_ids.tolist(),
            "positiveness": weights.tolist(), "label_agreement": agreement, "weighting": config.neighbors,
            "positiveness_temperature": config.positiveness_temperature}


def neighbor_weights(config: PretrainConfig, attn_query: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
    """The (Q, K) weights the run of ``config`` gives each neighbour: 1 for binary, else Eq. 4 at its tau_w."""
    if config.neighbors == "binary":
        return torch.ones(neighbors.shape[:2])
    return positiveness(attn_query, neighbors, config.positiveness_temperature)


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m evaluate.neighbors", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="an snclr-bench pre-training checkpoint (it holds the candidate set)")
    parser.add_argument("out_png", help="where to write the PNG grid")
    parser.add_argument("--queries", type=int, default=4, help="query images, one row each (default 4)")
    parser.add_argument("--k", type=int, default=None, help="neighbours per row (default: the run's K, at most 8)")
    parser.add_argument("--data-dir", default=None, help="data location if it moved since pre-training")
    parser.add_argument("--seed", type=int, default=0, help="which query images (default 0)")
    parser.add_argument(TRUST_FLAG, action="store_true",
                        help="allow CHECKPOINT to be fully unpickled if it holds more than tensors and allow-listed "
                             "types; unpickling can run code, so only for files you trust")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = neighbor_grid(args.checkpoint, args.out_png, queries=args.queries, k=args.k,
                           data_dir=args.data_dir, seed=args.seed, trust=args.trust_checkpoint)
    print(f"wrote {args.out_png}: {args.queries} queries, neighbour label agreement "
          f"{100 * result['label_agreement']:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
