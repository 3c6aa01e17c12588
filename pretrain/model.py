"""The SNCLR model (paper Fig. 2): online encoder + projector + predictor, momentum encoder +
projector, and the candidate neighbour set; forward returns the symmetrised loss. Also the supervised
upper bound of a study: the same backbone trained with labels on the same views."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrain import distributed as dist
from pretrain.backbones import build_backbone, is_vit
from pretrain.losses import positiveness, snclr_loss
from pretrain.neighbors import CandidateSet, NeighborQuery

NEIGHBOR_MODES = ("soft", "binary", "none")
METHODS = ("SNCLR", "supervised")


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, last_bn: bool) -> nn.Sequential:
    """Linear-BN-ReLU blocks then a final Linear (optionally followed by a non-affine BN, MoCo v3)."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


@dataclass
class StepStats:
    """Loss plus detached monitors (tensors, so logging decides when to synchronise a GPU).

    The mean of Eq. 4's weights is 1/K by construction, so the positiveness monitors are its largest
    weight and its entropy (log K when uniform, 0 when one neighbour takes all)."""
    loss: torch.Tensor
    # None when the step ran with monitor=False.
    positiveness_max: torch.Tensor | None = None      # mean over rows of the largest neighbour weight
    positiveness_entropy: torch.Tensor | None = None  # mean over rows of the entropy of the weights
    neighbor_agreement: torch.Tensor | None = None    # fraction of neighbours sharing the key's label
    neighbor_rows: torch.Tensor | None = None         # fraction of rows that had K valid neighbours
    train_top1: torch.Tensor | None = None            # supervised only: accuracy on the step's views

    MONITORS = ("positiveness_max", "positiveness_entropy", "neighbor_agreement", "neighbor_rows", "train_top1")


class SNCLR(nn.Module):
    def __init__(self, backbone: str, *, image_size: int = 224, proj_hidden_dim: int = 4096, dim: int = 256,
                 temperature: float = 0.2, candidate_set_size: int = 128_000, k: int = 30,
                 neighbors: str = "soft", loss_form: str = "paper", positiveness_temperature: float = 1.0,
                 detach_weights: bool = False) -> None:
        super().__init__()
        if neighbors not in NEIGHBOR_MODES:
            raise ValueError(f"neighbors={neighbors!r}; expected one of {NEIGHBOR_MODES}")
        if k > candidate_set_size:
            raise ValueError(f"k={k} is larger than the candidate set size {candidate_set_size}")
        self.backbone, feature_dim = build_backbone(backbone, image_size)
        if is_vit(backbone):   # MoCo v3 vit: 3-layer projector, 2-layer predictor, last BN non-affine
            self.projector = mlp(feature_dim, proj_hidden_dim, dim, num_layers=3, last_bn=True)
            self.predictor = mlp(dim, proj_hidden_dim, dim, num_layers=2, last_bn=True)
        else:                  # BYOL's ResNet projector/predictor (Grill et al., 2020, Sec. 3.3): FC-BN-ReLU-FC
            self.projector = mlp(feature_dim, proj_hidden_dim, dim, num_layers=2, last_bn=False)
            self.predictor = mlp(dim, proj_hidden_dim, dim, num_layers=2, last_bn=False)
        self.momentum_backbone = copy.deepcopy(self.backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        for param in [*self.momentum_backbone.parameters(), *self.momentum_projector.parameters()]:
            param.requires_grad = False
        self.candidate_set = CandidateSet(candidate_set_size, dim)
        self.temperature, self.k, self.neighbors, self.loss_form = temperature, k, neighbors, loss_form
        self.positiveness_temperature, self.detach_weights = positiveness_temperature, detach_weights

    @torch.no_grad()
    def update_momentum(self, momentum: float) -> None:
        online = [*self.backbone.parameters(), *self.projector.parameters()]
        target = [*self.momentum_backbone.parameters(), *self.momentum_projector.parameters()]
        torch._foreach_lerp_(target, online, 1.0 - momentum)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, image_ids: torch.Tensor, labels: torch.Tensor,
                momentum: float, use_neighbors: bool = True, monitor: bool = True) -> StepStats:
        """One SNCLR step on the local views; ``use_neighbors=False`` is Eq. 1 (neighbour warm-up).
        ``monitor=False`` skips the positiveness monitors (they are only read on logging steps)."""
        y1, y2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))
        z1, z2 = self.predictor(y1), self.predictor(y2)
        with torch.no_grad():
            self.update_momentum(momentum)
            local_k1 = self.momentum_projector(self.momentum_backbone(x1))
            local_k2 = self.momentum_projector(self.momentum_backbone(x2))
            local_keys, local_ids = torch.cat([local_k2, local_k1]).float(), image_ids.repeat(2)
            k = self.k if (use_neighbors and self.neighbors != "none") else 0
            # C is identical on every rank, so each rank searches only its own keys, both views in one
            # pass over C, and the (N_local, K) results are gathered: 1/world of the search per rank.
            index, similarity = self.candidate_set.search(local_keys, local_ids, k)
            keys_and_similarity = _gather_views(torch.cat([local_keys, similarity], dim=1))
            ids_and_index = _gather_views(torch.cat([local_ids[:, None], labels.repeat(2)[:, None], index], dim=1))
            dim = local_keys.shape[1]
            k2, k1 = (rows[:, :dim] for rows in keys_and_similarity)
            similarity2, similarity1 = (rows[:, dim:] for rows in keys_and_similarity)
            index2, index1 = (rows[:, 2:] for rows in ids_and_index)
            all_ids, all_labels = ids_and_index[0][:, 0], ids_and_index[0][:, 1]
            found2 = self.candidate_set.lookup(index2, similarity2)
            found1 = self.candidate_set.lookup(index1, similarity1)
        offset = dist.rank() * x1.shape[0]
        options = dict(temperature=self.temperature, offset=offset, form=self.loss_form,
                       weighting="binary" if self.neighbors == "binary" else "soft",
                       positiveness_temperature=self.positiveness_temperature,
                       detach_weights=self.detach_weights)
        # MoCo v3 symmetrisation: ctr(q1, k2) + ctr(q2, k1), each scaled by 2T.
        loss = 2 * self.temperature * (
            snclr_loss(z1, y1, k2, found2.neighbors, neighbor_mask=found2.valid, **options)
            + snclr_loss(z2, y2, k1, found1.neighbors, neighbor_mask=found1.valid, **options))
        # View 2's keys enter C, after both searches, as in the official code (builder_snclr_factor.py:
        # memory_bank(k2_, update=True)).
        self.candidate_set.push(k2, all_ids, all_labels)
        if not monitor:
            return StepStats(loss=loss)
        return StepStats(loss=loss, **self._monitor(y1, found2, all_labels, offset))

    @torch.no_grad()
    def _monitor(self, y1: torch.Tensor, found: NeighborQuery, all_labels: torch.Tensor,
                 offset: int) -> dict[str, torch.Tensor]:
        zero = y1.new_zeros(())
        rows = slice(offset, offset + y1.shape[0])
        valid = found.valid[rows]
        if found.neighbors.shape[1] == 0 or not valid.any():
            return dict(positiveness_max=zero, positiveness_entropy=zero, neighbor_agreement=zero,
                        neighbor_rows=valid.float().mean() if found.neighbors.shape[1] else zero)
        weights = positiveness(y1[valid], found.neighbors[rows][valid], self.positiveness_temperature)
        entropy = -(weights * weights.clamp_min(1e-12).log()).sum(dim=1)
        agree = (found.labels[rows][valid] == all_labels[rows][valid, None]).float()
        return dict(positiveness_max=weights.max(dim=1).values.mean(), positiveness_entropy=entropy.mean(),
                    neighbor_agreement=agree.mean(), neighbor_rows=valid.float().mean())


def _gather_views(local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather rows laid out [view 2; view 1] per rank into (view 2, view 1) of the global batch."""
    gathered = dist.all_gather(local)
    per_rank = gathered.view(dist.world_size(), 2, local.shape[0] // 2, *local.shape[1:])
    return per_rank[:, 0].flatten(0, 1), per_rank[:, 1].flatten(0, 1)


class Supervised(nn.Module):
    """The upper bound of a study: ``backbone`` and a linear classifier trained with cross-entropy on
    both augmented views of each image, so it sees exactly SNCLR's views, steps and epochs. Its
    checkpoint keeps the backbone under ``backbone.`` like SNCLR's, so every evaluator loads it."""

    def __init__(self, backbone: str, num_classes: int, *, image_size: int = 224) -> None:
        super().__init__()
        self.backbone, feature_dim = build_backbone(backbone, image_size)
        self.classifier = nn.Linear(feature_dim, num_classes)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, image_ids: torch.Tensor, labels: torch.Tensor,
                momentum: float, use_neighbors: bool = True, monitor: bool = True) -> StepStats:
        """Same signature as :meth:`SNCLR.forward` (the training loop drives both); the momentum and
        neighbour arguments play no part."""
        logits = self.classifier(self.backbone(torch.cat([x1, x2])))
        targets = labels.repeat(2)
        loss = F.cross_entropy(logits.float(), targets)
        if not monitor:
            return StepStats(loss=loss)
        return StepStats(loss=loss, train_top1=(logits.argmax(dim=1) == targets).float().mean())
