"""The candidate neighbour set C of SNCLR (paper Sec. 3.2): a FIFO of momentum-projector outputs."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class NeighborQuery:
    neighbors: torch.Tensor     # (N, K, d) L2-normalised entries of C
    similarity: torch.Tensor    # (N, K) cosine similarity of each key to its neighbours
    labels: torch.Tensor        # (N, K) dataset labels of the neighbours (-1 where unknown)
    image_ids: torch.Tensor     # (N, K) dataset index of each neighbour's image
    valid: torch.Tensor         # (N,) True where all K neighbours are real entries of other images


class CandidateSet(nn.Module):
    """FIFO of ``size`` x ``dim`` keys with the image index (and label, for monitoring) of each entry.

    All state is in registered buffers, so it lives on the training device and goes into checkpoints.
    Under DDP the caller pushes the *all-gathered* keys, so C is identical on every rank and does not
    depend on the number of GPUs. Slots that were never written are never returned (the official code
    fills C with random vectors at start), nor are entries of the querying key's own image
    ("samples from other images", paper Fig. 2).
    """

    def __init__(self, size: int, dim: int, chunk_rows: int = 1024) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"candidate set size must be positive, got {size}")
        self.size, self.dim, self.chunk_rows = size, dim, chunk_rows
        self.register_buffer("features", torch.zeros(size, dim))
        self.register_buffer("image_ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor, image_ids: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Enqueue keys (oldest entries are overwritten first); keeps the last ``size`` if more."""
        keys, image_ids = keys[-self.size:], image_ids[-self.size:]
        labels = torch.full_like(image_ids, -1) if labels is None else labels[-self.size:]
        slots = (self.pointer + torch.arange(keys.shape[0], device=keys.device)) % self.size
        self.features[slots] = F.normalize(keys.float(), dim=-1)
        self.image_ids[slots] = image_ids.long()
        self.labels[slots] = labels.long()
        self.pointer.copy_((self.pointer + keys.shape[0]) % self.size)
        self.filled.copy_(torch.clamp(self.filled + keys.shape[0], max=self.size))

    @torch.no_grad()
    def query(self, keys: torch.Tensor, image_ids: torch.Tensor, k: int) -> NeighborQuery:
        """Top-``k`` entries by cosine similarity (Eq. 3) for every key, never its own image."""
        if k > self.size:
            raise ValueError(f"K={k} neighbours requested but the candidate set holds only {self.size}")
        if k == 0:   # Eq. 1 steps (warm-up, "none" ablation) skip the N x size similarity entirely
            n = keys.shape[0]
            return NeighborQuery(neighbors=keys.new_zeros(n, 0, self.dim), similarity=keys.new_zeros(n, 0),
                                 labels=image_ids.new_zeros(n, 0), image_ids=image_ids.new_zeros(n, 0), valid=torch.zeros(n, dtype=torch.bool,
                                                                                     device=keys.device))
        keys = F.normalize(keys.float(), dim=-1)
        unusable = self.image_ids < 0
        written = self.image_ids[~unusable]
        # An image has at most `copies` entries in C, so its top-(k + copies) always holds k entries of
        # other images: exclude its own ones there instead of masking the whole (N, size) block.
        copies = int(torch.bincount(written).max()) if written.numel() else 0
        width = min(k + copies, self.size)
        similarity, index = [], []
        # Chunked so that the (N, size) similarity matrix is never held whole (4096 x 128k fp32 = 2 GB).
        for start in range(0, keys.shape[0], self.chunk_rows):
            block = (keys[start:start + self.chunk_rows] @ self.features.T).masked_fill_(unusable, float("-inf"))
            top = block.topk(width, dim=1)
            own = self.image_ids[top.indices] == image_ids[start:start + self.chunk_rows, None]
            values = top.values.masked_fill(own, float("-inf"))
            keep = values.argsort(dim=1, descending=True, stable=True)[:, :k]
            similarity.append(values.gather(1, keep))
            index.append(top.indices.gather(1, keep))
        similarity, index = torch.cat(similarity), torch.cat(index)
        valid = torch.isfinite(similarity).all(dim=1)
        return NeighborQuery(neighbors=self.features[index], similarity=similarity,
                             labels=self.labels[index], image_ids=self.image_ids[index], valid=valid)
