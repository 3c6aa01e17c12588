"""Linear probe on a frozen backbone: the standard protocol and the fast cached-feature variant.

Standard protocol (MoCo v3, Chen et al., 2021, ``main_lincls.py``; SNCLR paper Sec. 4.2): the
backbone is frozen and kept in eval mode, one linear layer (weights N(0, 0.01), bias 0) is trained
with SGD (momentum 0.9, weight decay 0) on RandomResizedCrop(224) + flip, lr = base x batch / 256
with base 0.1 (ResNet) or 3 (ViT), batch 1024, half-cosine decay over 90 epochs; validation uses
Resize(256) + CenterCrop(224). MoCo's two checks guard it: after loading only the classifier is
missing, and after training no backbone tensor (BN running statistics included) has changed.

Fast variant (a labelled deviation): features are extracted once (centre crop, or ``crops`` cached
augmented crops cycled over epochs) and the same head/optimiser/schedule runs on them.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from evaluate.classification.metrics import AccuracyCounter, classification_ks, evaluate_classifier
from evaluate.classification.training import ShardedBatchSampler, cosine_lr, fit
from pretrain.backbones import is_vit
from pretrain.distributed import is_distributed, rank, world_size
from evaluate.classification import cli_common
from evaluate.errors import ProtocolCheckError
from pretrain.errors import ArgumentParser, cli_main

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LinearSettings:
    """Linear-probe settings; defaults are MoCo v3 ``main_lincls.py`` for ResNet (ViT: base_lr 3)."""

    epochs: int = 90
    # MoCo v3 main_lincls.py defaults to a global batch of 1024 (its README's commands use it too).
    batch_size: int = 1024          # global, over all ranks
    base_lr: float = 0.1            # lr = base_lr * batch_size / 256
    momentum: float = 0.9
    weight_decay: float = 0.0
    min_scale: float = 0.08         # RandomResizedCrop default scale (0.08, 1)
    crops: int = 0                  # fast mode only: 0 = centre-crop features, n = n cached augmented crops

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / 256

    def protocol_id(self, fast: bool = False) -> str:
        core = f"sgd-cos-{self.epochs}e-b{self.batch_size}-lr{self.base_lr:g}"
        if not fast:
            return f"linear_{core}"
        return f"linear-fast_{'center' if self.crops == 0 else f'{self.crops}crops'}_{core}"


def paper_settings(arch: str) -> LinearSettings:
    """MoCo v3: base lr 0.1 for ResNet-50 (main_lincls.py default), 3 for ViT (README, ``--lr=3``)."""
    return LinearSettings(base_lr=3.0 if is_vit(arch) else 0.1)


# CPU-sized settings for the embedded 32 px Fashion-MNIST data; every difference from the paper
# settings is listed in the record's deviations.
SMALL_SCALE = {"fashion-mnist": {"epochs": 10, "batch_size": 256}}


def new_linear_head(feature_dim: int, num_classes: int) -> nn.Linear:
    """MoCo v3 main_lincls.py: ``fc.weight ~ N(0, 0.01)``, ``fc.bias = 0``."""
    head = nn.Linear(feature_dim, num_classes)
    nn.init.normal_(head.weight, mean=0.0, std=0.01)
    nn.init.zeros_(head.bias)
    return head


class LinearClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def check_only_head_missing(classifier: LinearClassifier, checkpoint_state: dict[str, torch.Tensor]) -> None:
    """MoCo check 1 (main_lincls.py: after loading, exactly the classifier's weight and bias are missing).

    Compared with the truth, the checkpoint file's backbone tensors after the loader's prefix mapping
    (``LoadedBackbone.state_dict``), not with the backbone's own state: the classifier's backbone must
    hold each of them, equal, and no other tensor, and its only other tensors are ``head.weight`` and
    ``head.bias``.
    """
    own = classifier.state_dict()
    mine = {k[len("backbone."):] for k in own if k.startswith("backbone.")}
    missing = sorted(set(checkpoint_state) - mine)
    added = sorted(mine - set(checkpoint_state))
    different = sorted(k for k in mine & set(checkpoint_state)
                       if not torch.equal(own[f"backbone.{k}"].cpu(), checkpoint_state[k].cpu()))
    others = sorted(k for k in own if not k.startswith("backbone."))
    if missing or added or different or others != ["head.bias", "head.weight"]:
        raise ProtocolCheckError(
            f"the classifier does not hold the checkpoint's backbone plus a new head: {len(missing)} checkpoint "
            f"tensor(s) missing (e.g. {missing[:3]}), {len(added)} not from the checkpoint (e.g. {added[:3]}), "
            f"{len(different)} different (e.g. {different[:3]}); non-backbone tensors {others[:4]}")


def check_backbone_unchanged(backbone: nn.Module, reference: dict[str, torch.Tensor]) -> None:
    """MoCo check 2: every backbone tensor, BN running stats included, equals the checkpoint's, and
    none was added or removed."""
    current = backbone.state_dict()
    changed = [k for k, v in reference.items() if k in current and not torch.equal(current[k].cpu(), v)]
    removed, added = sorted(set(reference) - set(current)), sorted(set(current) - set(reference))
    if changed or removed or added:
        raise ProtocolCheckError(f"the frozen backbone changed during linear training: {len(changed)} tensor(s) "
                                 f"changed, e.g. {changed[:5]} (is it in eval mode with gradients off?); "
                                 f"removed {removed[:3]}, added {added[:3]}")


def _wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    if not is_distributed():
        return module
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def sharded_eval_loader(dataset: Dataset, batch_size: int, num_workers: int) -> DataLoader:
    """Rank-strided shard of ``dataset`` without padding, so counts summed over ranks are exact."""
    shard = Subset(dataset, list(range(rank(), len(dataset), world_size())))
    return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def _resume_settings(settings: LinearSettings, extra: dict[str, Any]) -> dict[str, Any]:
    return {**dataclasses.asdict(settings), **extra}


def linear_probe(backbone: nn.Module, feature_dim: int, train_set: Dataset, val_set: Dataset, *,
                 checkpoint_state: dict[str, torch.Tensor],
                 num_classes: int, settings: LinearSettings, device: torch.device, out_dir: Path,
                 num_workers: int = 2, eval_batch_size: int = 256, seed: int = 0, resume: bool = True,
                 tensorboard: bool = True, identity: dict[str, Any] | None = None,
                 eval_every: int = 1) -> dict[str, Any]:
    """Standard linear probe (MoCo v3 main_lincls.py; see module docstring) -> metrics dict.

    ``train_set`` / ``val_set`` carry their transforms (RandomResizedCrop + flip / Resize + CenterCrop).
    ``checkpoint_state`` is what the checkpoint file holds for the backbone (``LoadedBackbone.state_dict``):
    MoCo's two checks compare the backbone with it before training and after every epoch.
    ``identity`` (checkpoint sha256, data) is stored with the resume state so a different run refuses
    to continue it. Returns ``{"final", "best", "best_epoch", "history"}`` with top1/top5 in percent.
    """
    torch.manual_seed(seed)
    backbone = backbone.to(device)
    head = new_linear_head(feature_dim, num_classes).to(device)
    classifier = LinearClassifier(backbone, head)
    reference = {k: v.detach().clone().cpu() for k, v in checkpoint_state.items()}
    check_only_head_missing(classifier, reference)
    for param in backbone.parameters():
        param.requires_grad = False
    ddp_head = _wrap_ddp(head, device)
    optimizer = torch.optim.SGD(head.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    sampler = ShardedBatchSampler(len(train_set), settings.batch_size, shuffle=True, seed=seed)
    train_loader = DataLoader(train_set, batch_sampler=sampler, num_workers=num_workers,
                              persistent_workers=num_workers > 0)
    val_loader = sharded_eval_loader(val_set, eval_batch_size, num_workers)
    ks = classification_ks(num_classes)

    def forward(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = backbone(images.to(device, non_blocking=True))
        return ddp_head(features)

    def after_epoch(epoch: int) -> None:
        check_backbone_unchanged(backbone, reference)

    return fit(trainable=head, optimizer=optimizer, lrs_at=lambda e: [cosine_lr(settings.lr, e, settings.epochs)],
               sampler=sampler, batches=lambda epoch: train_loader, forward=forward,
               evaluate=lambda: evaluate_classifier(classifier, val_loader, device, ks),
               epochs=settings.epochs, out_dir=out_dir, name="linear",
               resume_settings=_resume_settings(settings, identity or {}), resume=resume,
               tensorboard=tensorboard, train_mode=classifier.eval, after_epoch=after_epoch, eval_every=eval_every)


def linear_probe_fast(train_features: torch.Tensor, train_labels: torch.Tensor, val_features: torch.Tensor,
                      val_labels: torch.Tensor, *, num_classes: int, settings: LinearSettings,
                      device: torch.device, out_dir: Path, seed: int = 0, resume: bool = True,
                      tensorboard: bool = True, identity: dict[str, Any] | None = None,
                      eval_every: int = 1) -> dict[str, Any]:
    """Linear head on cached features: the standard probe's head, optimiser and schedule.

    ``train_features`` is (N, D) for centre-crop features or (C, N, D) for C cached augmented crops;
    epoch e uses crop ``e % C`` (every image sees each crop equally often). This departs from the
    protocol (fresh augmentation every epoch), so records carry protocol ``linear_fast``.
    """
    torch.manual_seed(seed)
    crops = train_features if train_features.dim() == 3 else train_features[None]
    head = new_linear_head(crops.shape[-1], num_classes).to(device)
    ddp_head = _wrap_ddp(head, device)
    optimizer = torch.optim.SGD(head.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    sampler = ShardedBatchSampler(crops.shape[1], settings.batch_size, shuffle=True, seed=seed)
    ks = classification_ks(num_classes)
    val_shard = torch.arange(rank(), len(val_features), world_size())

    def batches(epoch: int):
        features = crops[epoch % len(crops)]
        for indices in sampler:
            yield features[indices], train_labels[indices]

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        counter = AccuracyCounter(ks)
        for chunk in val_shard.split(4096):
            counter.update(head(val_features[chunk].to(device)), val_labels[chunk])
        return counter.result()

    return fit(trainable=head, optimizer=optimizer, lrs_at=lambda e: [cosine_lr(settings.lr, e, settings.epochs)],
               sampler=sampler, batches=batches, forward=lambda f: ddp_head(f.to(device)), evaluate=evaluate,
               epochs=settings.epochs, out_dir=out_dir, name="linear_fast",
               resume_settings=_resume_settings(settings, identity or {}), resume=resume, tensorboard=tensorboard,
               eval_every=eval_every)


def _add_linear_arguments(parser: argparse.ArgumentParser, fast: bool) -> None:
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (paper: 90)")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size over all ranks (paper: 1024)")
    parser.add_argument("--base-lr", type=float, default=None,
                        help="lr per 256 images; lr = base-lr x batch / 256 (paper: 0.1 ResNet, 3 ViT)")
    parser.add_argument("--min-scale", type=float, default=None, help="RandomResizedCrop min scale (paper: 0.08)")
    if fast:
        parser.add_argument("--crops", type=int, default=None,
                            help="cached augmented crops to cycle over epochs; 0 = centre crop only (default 0)")


def resolve_settings(arch: str, dataset: str, args: argparse.Namespace) -> tuple[LinearSettings, list[str]]:
    """Paper settings, then the data set's small-scale overrides, then explicit flags; plus deviations."""

    flags = {name: getattr(args, name, None) for name in ("epochs", "batch_size", "base_lr", "min_scale", "crops")}
    settings, deviations = cli_common.resolve_overrides(paper_settings(arch), SMALL_SCALE.get(dataset, {}), flags)
    # The crop count only exists in fast mode, whose own deviation line already describes it.
    return settings, [d for d in deviations if not d.startswith("crops:")]


@cli_main
def main(argv: list[str] | None = None, fast: bool = False) -> int | None:

    name = "linear-fast" if fast else "linear"
    parser = ArgumentParser(
        prog=f"python -m evaluate {name}",
        description=("Fast linear probe: a linear head trained on features cached once (a labelled deviation "
                     "from the protocol)." if fast else
                     "Linear probe on a frozen backbone (MoCo v3 main_lincls.py protocol).")
        + " Writes one result record to OUT_DIR/results.jsonl; resumes from OUT_DIR when a state file exists.")
    cli_common.add_common_arguments(parser)
    _add_linear_arguments(parser, fast)
    args = parser.parse_args(argv)
    with cli_common.run_context(args, name, argv) as run:
        settings, deviations = resolve_settings(run.arch, run.dataset_key, args)
        if settings.epochs < 1 or settings.batch_size < 1 or (fast and settings.crops < 0):
            raise cli_common.EvalError("--epochs and --batch-size must be >= 1 and --crops >= 0")
        identity = run.identity()
        if fast:
            deviations = ["features cached once (" + ("centre crop" if settings.crops == 0 else
                          f"{settings.crops} augmented crops cycled over epochs") + ") instead of fresh "
                          "augmentation every epoch", *deviations]
            if settings.crops == 0:
                train_feats, train_labels = run.features("train")
            else:
                stacked = [run.features("train", crop=c, min_scale=settings.min_scale) for c in range(settings.crops)]
                train_feats, train_labels = torch.stack([f for f, _ in stacked]), stacked[0][1]
            val_feats, val_labels = run.features("val")
            result = linear_probe_fast(train_feats, train_labels, val_feats, val_labels,
                                       num_classes=run.num_classes, settings=settings, device=run.device,
                                       out_dir=run.out_dir, seed=args.seed, resume=not args.restart,
                                       tensorboard=not args.no_tensorboard, identity=identity,
                                       eval_every=args.eval_every)
        else:
            result = linear_probe(run.backbone, run.feature_dim, run.train_set(augment=True, min_scale=settings.min_scale),
                                  run.val_set(), checkpoint_state=run.loaded.state_dict,
                                  num_classes=run.num_classes, settings=settings,
                                  device=run.device, out_dir=run.out_dir, num_workers=args.num_workers,
                                  eval_batch_size=args.eval_batch_size, seed=args.seed, resume=not args.restart,
                                  tensorboard=not args.no_tensorboard, identity=identity,
                                  eval_every=args.eval_every)
        resolved = {**dataclasses.asdict(settings), "lr": settings.lr, "optimizer": "sgd", "schedule": "cosine",
                    "best_epoch": result["best_epoch"], "eval_every": args.eval_every}
        if not fast:
            resolved.pop("crops")
        run.finish(protocol="linear_fast" if fast else "linear", protocol_id=settings.protocol_id(fast),
                   metrics_final=result["final"], metrics_best=result["best"], settings=resolved,
                   deviations=deviations)


def main_fast(argv: list[str] | None = None) -> int | None:
    return main(argv, fast=True)
