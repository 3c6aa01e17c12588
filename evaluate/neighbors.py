"""python -m evaluate.neighbors CHECKPOINT OUT.png: the paper's Fig. 3/4 for a trained checkpoint.

For a few query images of the pre-training set, retrieve their top-K neighbours from the checkpoint's
candidate set exactly as training does (momentum key -> cosine top-K, never the query's own image)
and label each neighbour with its positiveness (Eq. 4, from the online projector output).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from evaluate.report.figures import plot_neighbor_grid
from pretrain.checkpoint import CheckpointError, load_pretrain_checkpoint
from pretrain.config import PretrainConfig
from pretrain.data import IMAGENET_MEAN, IMAGENET_STD, DataError, build_dataset, eval_transform
from pretrain.losses import positiveness
from pretrain.train import model_from_config

log = logging.getLogger(__name__)


@torch.no_grad()
def neighbor_grid(checkpoint: str | Path, out_png: str | Path, *, queries: int = 4, k: int | None = None,
                  data_dir: str | None = None, seed: int = 0) -> dict:
    """Write the grid; returns query ids, neighbour ids, positiveness and label agreement."""
    state = load_pretrain_checkpoint(checkpoint)
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
    weights = positiveness(y, found.neighbors)
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
            "positiveness": weights.tolist(), "label_agreement": agreement}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluate.neighbors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="an snclr-bench pre-training checkpoint (it holds the candidate set)")
    parser.add_argument("out_png", help="where to write the PNG grid")
    parser.add_argument("--queries", type=int, default=4, help="query images, one row each (default 4)")
    parser.add_argument("--k", type=int, default=None, help="neighbours per row (default: the run's K, at most 8)")
    parser.add_argument("--data-dir", default=None, help="data location if it moved since pre-training")
    parser.add_argument("--seed", type=int, default=0, help="which query images (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = neighbor_grid(args.checkpoint, args.out_png, queries=args.queries, k=args.k,
                               data_dir=args.data_dir, seed=args.seed)
    except (CheckpointError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out_png}: {args.queries} queries, neighbour label agreement "
          f"{100 * result['label_agreement']:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
