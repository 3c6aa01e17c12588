"""The candidate neighbour set C of SNCLR (paper Sec. 3.2): a FIFO of momentum-projector outputs."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrain.losses import autocast_disabled


@dataclass
class NeighborQuery:
    neighbors: torch.Tensor     # (N, K, d) L2-normalised entries of C
    similarity: torch.Tensor    # (N, K) cosine similarity of each key to its neighbours (-inf: none found)
    labels: torch.Tensor        # (N, K) dataset labels of the neighbours (-1 where unknown)
    image_ids: torch.Tensor     # (N, K) dataset index of each neighbour's image
    valid: torch.Tensor         # (N,) True where all K neighbours are real entries of other images
    index: torch.Tensor         # (N, K) slots of C holding the neighbours


class CandidateSet(nn.Module):
    """FIFO of ``size`` x ``dim`` keys with the image index (and label, for monitoring) of each entry.

    All state is in registered buffers, so it lives on the training device and goes into checkpoints.
    Under DDP the caller pushes the *all-gathered* keys, so C is identical on every rank and does not
    depend on the number of GPUs. Slots that were never written are never returned (the official code
    fills C with random vectors at start), nor are entries of the querying key's own image
    ("samples from other images", paper Fig. 2).

    Neither :meth:`push` nor :meth:`search` reads a device tensor on the host, so a training step
    never waits for the GPU here. What the search needs, the bound on how many entries one image can
    hold, is kept on the host from the lengths of the pushes. On CPU tensors a push counts repeated
    ids exactly. Elsewhere it takes the ids of one push to be distinct, which holds for a global batch
    drawn without replacement. A repeat there can only cost a row its neighbours (``valid`` False);
    it never returns the row's own image.
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
        # 0 for written slots, -inf for empty ones: added to the similarity inside the matmul (addmm).
        self.register_buffer("slot_bias", torch.full((size,), float("-inf")), persistent=False)
        self._pushes: deque[list[int]] = deque()   # [length, copies of one image] of the pushes still in C

    @property
    def copies_bound(self) -> int:
        """Upper bound on the entries one image holds in C (host-side; no device read)."""
        return sum(copies for _, copies in self._pushes)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        # Once per checkpoint load, not per step: rebuild the host-side bookkeeping from the buffers.
        written = self.image_ids >= 0
        self.slot_bias.copy_(torch.where(written, 0.0, float("-inf")))
        ids = self.image_ids[written]
        copies = int(torch.bincount(ids).max()) if ids.numel() else 0
        self._pushes = deque([[int(self.filled), copies]] if copies else [])

    @torch.no_grad()
    def push(self, keys: torch.Tensor, image_ids: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Enqueue keys (oldest entries are overwritten first); keeps the last ``size`` if more."""
        keys, image_ids = keys[-self.size:], image_ids[-self.size:]
        labels = torch.full_like(image_ids, -1) if labels is None else labels[-self.size:]
        count = keys.shape[0]
        slots = (self.pointer + torch.arange(count, device=keys.device)) % self.size
        self.features[slots] = F.normalize(keys.float(), dim=-1)
        self.image_ids[slots] = image_ids.long()
        self.labels[slots] = labels.long()
        self.slot_bias.index_fill_(0, slots, 0.0)   # `[slots] = 0.0` copies a host scalar: a sync on CUDA
        self.pointer.copy_((self.pointer + count) % self.size)
        self.filled.copy_(torch.clamp(self.filled + count, max=self.size))
        copies = int(torch.bincount(image_ids).max()) if image_ids.device.type == "cpu" and count else 1
        self._pushes.append([count, copies])
        # Drop pushes that newer ones have overwritten completely.
        held = sum(length for length, _ in self._pushes)
        while held - self._pushes[0][0] >= self.size:
            held -= self._pushes.popleft()[0]

    @torch.no_grad()
    def search(self, keys: torch.Tensor, image_ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots and cosine similarities (N, K) of the top-``k`` entries of other images for every key
        (Eq. 3), in fp32 whatever autocast is active; a similarity of -inf marks a missing neighbour."""
        if k > self.size:
            raise ValueError(f"K={k} neighbours requested but the candidate set holds only {self.size}")
        n = keys.shape[0]
        if k == 0:   # Eq. 1 steps (warm-up, "none" ablation) skip the N x size similarity entirely
            return (torch.zeros(n, 0, dtype=torch.long, device=keys.device),
                    torch.zeros(n, 0, device=keys.device))
        # Under bf16 autocast the matmul ran in bf16 and only 62% of rows kept their fp32 top-30.
        with autocast_disabled(keys.device):
            keys = F.normalize(keys.float(), dim=-1)
            # An image has at most `copies_bound` entries in C, so its top-(k + copies) always holds k
            # entries of other images: exclude its own ones there instead of masking the (N, size) block.
            width = min(k + self.copies_bound, self.size)
            similarity, index = [], []
            # Chunked so that the (N, size) similarity matrix is never held whole (4096 x 128k fp32 = 2 GB).
            for start in range(0, n, self.chunk_rows):
                block = torch.addmm(self.slot_bias, keys[start:start + self.chunk_rows], self.features.T)
                top = block.topk(width, dim=1)
                own = self.image_ids[top.indices] == image_ids[start:start + self.chunk_rows, None]
                values = top.values.masked_fill(own, float("-inf"))
                keep = values.argsort(dim=1, descending=True, stable=True)[:, :k]
                similarity.append(values.gather(1, keep))
                index.append(top.indices.gather(1, keep))
        return torch.cat(index), torch.cat(similarity)

    @torch.no_grad()
    def lookup(self, index: torch.Tensor, similarity: torch.Tensor) -> NeighborQuery:
        """The entries at ``index`` (from :meth:`search`, possibly gathered from other ranks)."""
        return NeighborQuery(neighbors=self.features[index], similarity=similarity, labels=self.labels[index],
                             image_ids=self.image_ids[index], valid=torch.isfinite(similarity).all(dim=1)
                             & (similarity.shape[1] > 0), index=index)

    @torch.no_grad()
    def query(self, keys: torch.Tensor, image_ids: torch.Tensor, k: int) -> NeighborQuery:
        """Top-``k`` entries by cosine similarity (Eq. 3) for every key, never its own image."""
        return self.lookup(*self.search(keys, image_ids, k))
