"""Backbone features of a whole data set, split across DDP ranks, with an on-disk cache.

The kNN monitor and the fast linear probe both work on features extracted once. A cache entry is
keyed by the weights (the checkpoint's sha256), the exact transform (its ``repr``, which spells out
every parameter), the data set's identity, the code and library versions (a new torchvision resize
or a fixed backbone changes the features without changing any of the rest) and, for augmented
crops, the crop number and seed; the key is stored inside the file and compared on load, so a hash
collision or a stale file can never hand back features of another model or transform. The file also
stores the sha256 of its feature and label tensors, checked on every read: an edited or damaged cache
stops the run with its path, as does a file that cannot be read at all, rather than being used or
silently overwritten. (The digest catches edits, not a forger who also rewrites it: keep the cache
in a folder only you can write, which is why it defaults to OUT_DIR/feature_cache.)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from evaluate.classification.metrics import collective_device
from evaluate.errors import EvalError
from pretrain.checkpoint import save_atomic
from pretrain.distributed import barrier, is_distributed, is_main, rank, world_size

log = logging.getLogger(__name__)

CACHE_FORMAT = "snclr-bench/features/v3"  # v2: the key holds the code and library versions; v3: tensor digest


@dataclasses.dataclass(frozen=True)
class FeatureKey:
    weights_sha256: str   # sha256 of the checkpoint file (or of the random-init weights)
    arch: str
    transform: str        # repr() of the torchvision transform
    dataset: str          # e.g. "fashion-mnist:/usr/share/datasets/fashion-mnist:train:limit=None:n=60000"
    versions: str         # e.g. "code=2c68d4312345 torch=2.14.1 torchvision=0.29.1 timm=1.0.31"
    crop: int = -1        # -1: deterministic transform; i >= 0: the i-th cached augmented crop
    seed: int = 0

    def digest(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tensors_sha256(*tensors: torch.Tensor) -> str:
    """sha256 over the dtype, shape and bytes of each tensor, in order."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(f"{tensor.dtype} {tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def transform_description(transform) -> str:
    """A one-line description of a transform that changes whenever any of its parameters does."""
    return " ".join(repr(transform).split())


def _gather_rows(local: torch.Tensor, positions: torch.Tensor, total: int) -> torch.Tensor:
    """Reassemble rows computed on rank-strided shards into dataset order on every rank."""
    if not is_distributed():
        out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
        out[positions] = local
        return out
    device = collective_device()
    # all_gather needs equal shapes: pad every shard to the longest one, mark padding with -1.
    longest = -(-total // world_size())
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[:len(local)] = local.to(device)
    padded_positions = torch.full((longest,), -1, dtype=torch.int64, device=device)
    padded_positions[:len(positions)] = positions.to(device)
    rows = [torch.empty_like(padded) for _ in range(world_size())]
    where = [torch.empty_like(padded_positions) for _ in range(world_size())]
    dist.all_gather(rows, padded)
    dist.all_gather(where, padded_positions)
    rows, where = torch.cat(rows).cpu(), torch.cat(where).cpu()
    keep = where >= 0
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
    out[where[keep]] = rows[keep]
    return out


@torch.no_grad()
def extract_features(backbone: nn.Module, dataset: Dataset, *, device: torch.device, batch_size: int = 256,
                     num_workers: int = 2, seed: int | None = None,
                     desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D) float32, labels (N,) int64) of ``dataset`` in its order, on every rank.

    Each rank embeds positions ``rank, rank + world, ...`` (no padding, so nothing is counted
    twice) and the shards are gathered. ``seed`` fixes the random draws of an augmenting transform.
    """
    n = len(dataset)
    positions = torch.arange(rank(), n, world_size())
    generator = None
    if seed is not None:
        # Random transforms draw from the global RNG (num_workers=0) or from worker seeds derived
        # from the loader's generator; seeding both makes a cached crop reproducible.
        torch.manual_seed(seed + rank())
        generator = torch.Generator().manual_seed(seed + rank())
    loader = DataLoader(Subset(dataset, positions.tolist()), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, generator=generator, persistent_workers=False)
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    for batch in tqdm(loader, desc=desc, disable=not is_main(), leave=False):
        features.append(backbone(batch[0].to(device, non_blocking=True)).float().cpu())
        labels.append(torch.as_tensor(batch[1], dtype=torch.int64))
    backbone.train(was_training)
    local = torch.cat(features) if features else torch.empty((0, 0))
    local_labels = torch.cat(labels) if labels else torch.empty((0,), dtype=torch.int64)
    if is_distributed():
        # A rank with an empty shard (N < world) still has to know the feature width.
        dim = torch.tensor([local.shape[1] if len(local) else 0], device=collective_device())
        dist.all_reduce(dim, op=dist.ReduceOp.MAX)
        if not len(local):
            local = torch.empty((0, int(dim.item())))
    return _gather_rows(local, positions, n), _gather_rows(local_labels, positions, n)


def _everyone_has(path: Path) -> bool:
    """True only if every rank sees ``path`` (a cache on a non-shared disk is recomputed)."""
    present = torch.tensor([int(path.is_file())], device=collective_device())
    if is_distributed():
        dist.all_reduce(present, op=dist.ReduceOp.MIN)
    return bool(present.item())


def cached_features(backbone: nn.Module, dataset: Dataset, key: FeatureKey, cache_dir: str | os.PathLike, *,
                    device: torch.device, batch_size: int = 256,
                    num_workers: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of ``dataset`` from ``cache_dir`` if present for ``key``, else extracted and stored."""
    path = Path(cache_dir) / f"{key.digest()[:32]}.pt"
    if _everyone_has(path):
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - a truncated or foreign file fails in many ways
            raise EvalError(f"{path}: corrupt feature cache ({type(error).__name__}); delete the file and "
                            "run again to recompute it") from None
        if not isinstance(stored, dict):
            raise EvalError(f"{path}: corrupt feature cache (a {type(stored).__name__}, not a dict); delete the "
                            "file and run again to recompute it")
        if stored.get("format") == CACHE_FORMAT and stored.get("key") == dataclasses.asdict(key) \
                and len(stored["labels"]) == len(dataset):
            if tensors_sha256(stored["features"], stored["labels"]) != stored.get("sha256"):
                raise EvalError(f"{path}: feature cache does not match the digest stored with it (edited or "
                                "damaged); delete the file and run again to recompute it")
            log.info("features from cache %s", path)
            return stored["features"], stored["labels"]
        log.warning("cache file %s does not match its key; recomputing", path)
    seed = key.seed * 1000 + key.crop if key.crop >= 0 else None
    desc = f"features {key.dataset.split(':')[0]} crop {key.crop}" if key.crop >= 0 else "features"
    features, labels = extract_features(backbone, dataset, device=device, batch_size=batch_size,
                                        num_workers=num_workers, seed=seed, desc=desc)
    if is_main():
        save_atomic({"format": CACHE_FORMAT, "key": dataclasses.asdict(key), "features": features,
                     "labels": labels, "sha256": tensors_sha256(features, labels)}, path)
        log.info("cached %s features at %s", tuple(features.shape), path)
    barrier()
    return features, labels
