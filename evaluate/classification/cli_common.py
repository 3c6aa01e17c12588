"""What every classification evaluator's CLI shares: flags, backbone + data setup, the result record.

An evaluator's ``main`` parses its own flags plus :func:`add_common_arguments`, opens
:func:`run_context`, calls its protocol function and ends with ``run.finish(...)``, which writes the
one result record. Any bad input raises a user error inside the context, which the entry point's
wrapper (:func:`pretrain.errors.cli_main`) prints as one ``error: ...`` line with exit status 2; the
record is written last, so a failed run leaves none.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset
from torchvision import transforms

from evaluate.loading import LoadedBackbone, build_loaded_backbone
from evaluate.classification.features import FeatureKey, cached_features, transform_description
from evaluate.report.records import ResultRecord, check_appendable, run_provenance, write_record
from pretrain.backbones import BACKBONES, VITS, build_backbone, is_vit
from pretrain.identity import ModelIdentity, identity_of
from pretrain.safe_load import TRUST_FLAG
from pretrain.data import (DataError, build_dataset, dataset_targets, eval_transform, linear_train_transform,
                           resolve_fashion_mnist_dir)
from pretrain.distributed import cleanup, init_distributed, is_main, world_size
from evaluate.errors import EvalError

log = logging.getLogger(__name__)

RANDOM_INIT = "random"
RAW_PIXELS = "identity"
# DINO eval_knn.py resizes with Resize(256, interpolation=3), i.e. bicubic; MoCo v3 main_lincls.py
# (linear probe, semisup validation) with torchvision's default, bilinear.
INTERPOLATIONS = {"bilinear": transforms.InterpolationMode.BILINEAR,
                  "bicubic": transforms.InterpolationMode.BICUBIC}


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """Input resolution: ImageNet Resize(256) + CenterCrop(224) (MoCo v3 main_lincls.py)."""

    image_size: int = 224
    crop_ratio: float = 0.875


# The embedded Fashion-MNIST images are 28 px: evaluate at 32 px without a centre-crop border.
SMALL_SCALE_DATA = {"fashion-mnist": {"image_size": 32, "crop_ratio": 1.0}}


def resolve_overrides(paper: Any, small_scale: dict[str, Any], flags: dict[str, Any]) -> tuple[Any, list[str]]:
    """``paper`` settings (a dataclass), then data-set small-scale overrides, then non-None flags.

    Returns (resolved settings, deviations): one "field: paper -> resolved (why)" line per field
    that differs from the paper protocol, so a record says exactly how it departs from it.
    """
    fields = {f.name for f in dataclasses.fields(paper)}
    resolved = dataclasses.replace(paper, **{k: v for k, v in small_scale.items() if k in fields})
    explicit = {k: v for k, v in flags.items() if v is not None and k in fields}
    resolved = dataclasses.replace(resolved, **explicit)
    deviations = []
    for name in sorted(fields):
        before, after = getattr(paper, name), getattr(resolved, name)
        if before != after:
            why = "flag" if name in explicit else "small-scale default for this data set"
            deviations.append(f"{name}: {before} (paper) -> {after} ({why})")
    return resolved, deviations


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backbone and data")
    group.add_argument("--checkpoint", required=True,
                       help="checkpoint to evaluate (ours, MoCo v1/v2/v3, DINO, solo-learn, torchvision, timm), "
                            f"'{RANDOM_INIT}' for a randomly initialised backbone (needs --arch; method 'random-init'), "
                            f"or '{RAW_PIXELS}' for the raw-pixel baseline (features = the flattened normalised "
                            "image, C x H x W values; method 'raw-pixels')")
    group.add_argument("--arch", choices=BACKBONES, default=None,
                       help="expected backbone; detected from the checkpoint when omitted")
    group.add_argument(TRUST_FLAG, action="store_true",
                       help="allow a full unpickle of a checkpoint that holds more than tensors and allow-listed "
                            "types (default: refused); unpickling can run code from the file, so only for files "
                            "you trust")
    group.add_argument("--vit-heads", type=int, default=None,
                       help="attention heads of a ViT (default: from the source format: ViT-S 12 for MoCo v3 and "
                            "ours, 6 for DINO/timm/solo-learn; ViT-B 12). Needed for a plain ViT-S state dict")
    group.add_argument("--method", default=None,
                       help="method name for the record (default: from the checkpoint, e.g. SNCLR, MoCo v3)")
    group.add_argument("--dataset", choices=("fashion-mnist", "imagefolder"), default="fashion-mnist",
                       help="fashion-mnist (embedded IDX files) or an ImageFolder tree with train/ and val/")
    group.add_argument("--data-dir", default=None,
                       help="Fashion-MNIST IDX folder (default: $SNCLR_FASHION_MNIST or /usr/share/datasets/"
                            "fashion-mnist) or the ImageFolder root holding train/ and val/")
    group.add_argument("--dataset-name", default=None,
                       help="data set name in the record (default: fashion-mnist; for imagefolder imagenet-1k "
                            "with 1000 classes, else the folder name)")
    group.add_argument("--limit-train", type=int, default=None, help="use a class-balanced first N training images")
    group.add_argument("--limit-val", type=int, default=None, help="use a class-balanced first N validation images")
    group.add_argument("--image-size", type=int, default=None, help="crop size (paper 224; Fashion-MNIST default 32)")
    group.add_argument("--crop-ratio", type=float, default=None,
                       help="eval resize = image-size / crop-ratio, then centre crop (paper 0.875; Fashion-MNIST 1.0)")
    run = parser.add_argument_group("run")
    run.add_argument("--out-dir", type=Path, required=True,
                     help="run folder: results.jsonl, metrics JSONL, TensorBoard, resume state")
    run.add_argument("--cache-dir", type=Path, default=None, help="feature cache folder (default OUT_DIR/feature_cache); share one between runs "
                          "of the same checkpoint by passing the same folder, one that only you can write")
    run.add_argument("--num-workers", type=int, default=2, help="data-loading worker processes (default 2)")
    run.add_argument("--eval-batch-size", type=int, default=256,
                     help="global batch for feature extraction and validation (no effect on results)")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda if available")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument("--eval-every", type=int, default=1,
                     help="validate every N epochs and after the last (training protocols; default 1: best-over-"
                          "epochs is then over all epochs)")
    run.add_argument("--restart", action="store_true",
                     help="start over even if OUT_DIR holds a resume state (default: resume automatically)")
    run.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard event files")


class TransformedView(Dataset):
    """A view of an untransformed dataset with its own transform and an optional label remapping."""

    def __init__(self, base: Dataset, transform, label_map: dict[int, int] | None = None) -> None:
        self.base, self.transform, self.label_map = base, transform, label_map

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        try:
            image, label, _ = self.base[index]
        except (OSError, SyntaxError) as error:  # PIL: UnidentifiedImageError, truncated file, "broken PNG"
            raise DataError(f"{_sample_path(self.base, index)}: unreadable image "
                            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
        if self.label_map is not None:
            label = self.label_map[label]
        return self.transform(image), label, index


def _sample_path(dataset: Dataset, index: int) -> str:
    """The file behind ``dataset[index]`` (through any Subsets), or the data set and position."""
    while isinstance(dataset, Subset):
        dataset, index = dataset.dataset, int(dataset.indices[index])
    samples = getattr(dataset, "samples", None)
    return str(samples[index][0]) if samples else f"{type(dataset).__name__} image {index}"


def _classes(dataset: Dataset) -> list[str]:
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    return list(base.classes)


def align_val_classes(train: Dataset, val: Dataset, val_dir: str) -> dict[int, int] | None:
    """Label map val index -> train index; refuses a val set with classes the train set lacks."""
    train_classes, val_classes = _classes(train), _classes(val)
    unknown = sorted(set(val_classes) - set(train_classes))
    if unknown:
        raise EvalError(f"{val_dir}: val classes {unknown[:5]} ({len(unknown)} in all) are not in the train set")
    if val_classes == train_classes:
        return None
    position = {name: i for i, name in enumerate(train_classes)}
    return {i: position[name] for i, name in enumerate(val_classes)}


def untrained_identity(method: str, arch: str, seed: int | None) -> ModelIdentity:
    """Identity of an untrained baseline: what builds it is its configuration. Random init of one
    architecture is one model whose seeds pick the weights; raw pixels are the image itself."""
    config = {"method": method, "backbone": arch, "seed": seed} if method == "random-init" else {"method": method}
    return identity_of(config, "", method)


def _untrained_meta(method: str, arch: str, seed: int | None) -> dict[str, Any]:
    identity = untrained_identity(method, arch, seed)
    return {"method": method, "pretrain_epochs": 0, "model_id": identity.model_id, "pretrain_seed": identity.seed,
            "pretrain_config": identity.config}


def random_init_backbone(arch: str | None, image_size: int, seed: int) -> tuple[nn.Module, int, LoadedBackbone]:
    """A seeded random backbone, identified by a digest of its weights (for the feature cache)."""
    if arch is None:
        raise EvalError(f"--checkpoint {RANDOM_INIT} needs --arch (one of {', '.join(BACKBONES)})")
    torch.manual_seed(seed)
    model, dim = build_backbone(arch, image_size)
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    loaded = LoadedBackbone(state_dict=model.state_dict(), arch=arch, source_format="random-init",
                            sha256=digest.hexdigest(), path=RANDOM_INIT, image_size=image_size,
                            meta=_untrained_meta("random-init", arch, seed),
                            vit_heads=VITS[arch].num_heads if is_vit(arch) else None,
                            vit_heads_source="our builder" if is_vit(arch) else None)
    return model, dim, loaded


class RawPixels(nn.Module):
    """The normalised image itself, flattened: the baseline any learned representation has to beat."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)


def raw_pixel_backbone(arch: str | None, image_size: int) -> tuple[nn.Module, int, LoadedBackbone]:
    """The parameter-free raw-pixel "backbone": C x H x W features of the evaluation crop."""
    if arch is not None:
        raise EvalError(f"--checkpoint {RAW_PIXELS} has no architecture; drop --arch {arch}")
    loaded = LoadedBackbone(state_dict={}, arch="raw-pixels", source_format="raw-pixels",
                            sha256=hashlib.sha256(b"raw-pixels").hexdigest(), path=RAW_PIXELS,
                            image_size=image_size, meta=_untrained_meta("raw-pixels", "raw-pixels", None))
    return RawPixels(), 3 * image_size * image_size, loaded


@dataclasses.dataclass
class RunContext:
    args: argparse.Namespace
    name: str
    device: torch.device
    out_dir: Path
    cache_dir: Path
    backbone: nn.Module
    feature_dim: int
    loaded: LoadedBackbone
    data: DataSettings
    data_deviations: list[str]
    train_base: Dataset
    val_base: Dataset
    val_label_map: dict[int, int] | None
    num_classes: int
    dataset_name: str
    started: float
    provenance: dict[str, Any]

    @property
    def arch(self) -> str:
        return self.loaded.arch

    @property
    def dataset_key(self) -> str:
        return self.args.dataset

    def _identity(self, split: str) -> str:
        root = self.args.data_dir
        if self.args.dataset == "fashion-mnist":
            root = str(resolve_fashion_mnist_dir(root))
        limit = self.args.limit_train if split == "train" else self.args.limit_val
        size = len(self.train_base if split == "train" else self.val_base)
        return f"{self.args.dataset}:{Path(root).resolve()}:{split}:limit={limit}:n={size}"

    def identity(self) -> dict[str, Any]:
        """What a resume state must match: weights (and a ViT's head count), data, input resolution and
        every run flag that changes the result (seed, validation cadence); the caller adds the protocol."""
        return {"checkpoint_sha256": self.loaded.sha256, "vit_heads": self.loaded.vit_heads,
                "train_data": self._identity("train"), "val_data": self._identity("val"),
                **dataclasses.asdict(self.data), "seed": self.args.seed, "eval_every": self.args.eval_every}

    def eval_transform(self, interpolation: str = "bilinear"):
        transform = eval_transform(self.data.image_size, self.data.crop_ratio)
        resize = transform.transforms[0]
        transform.transforms[0] = transforms.Resize(resize.size, interpolation=INTERPOLATIONS[interpolation])
        return transform

    def train_set(self, augment: bool = True, min_scale: float = 0.08, base: Dataset | None = None,
                  interpolation: str = "bilinear") -> Dataset:
        transform = (linear_train_transform(self.data.image_size, min_scale) if augment
                     else self.eval_transform(interpolation))
        return TransformedView(self.train_base if base is None else base, transform)

    def val_set(self, interpolation: str = "bilinear") -> Dataset:
        return TransformedView(self.val_base, self.eval_transform(interpolation), self.val_label_map)

    def features(self, split: str, crop: int = -1, min_scale: float = 0.08,
                 interpolation: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
        """Cached features of ``split``: the eval transform, or the ``crop``-th augmented crop (crop >= 0)."""
        if split == "train":
            dataset = self.train_set(augment=crop >= 0, min_scale=min_scale, interpolation=interpolation)
        else:
            dataset = self.val_set(interpolation)
        libraries = self.provenance["libraries"]
        versions = " ".join([f"code={self.provenance['code_version']}",
                             *(f"{name}={libraries[name]}" for name in ("torch", "torchvision", "timm"))])
        # The head count is part of the function, not of the weights: it keys the cache too.
        arch = self.arch if self.loaded.vit_heads is None else f"{self.arch}/{self.loaded.vit_heads}heads"
        key = FeatureKey(weights_sha256=self.loaded.sha256, arch=arch,
                         transform=transform_description(dataset.transform), dataset=self._identity(split),
                         versions=versions, crop=crop, seed=self.args.seed)
        return cached_features(self.backbone, dataset, key, self.cache_dir, device=self.device,
                               batch_size=max(1, self.args.eval_batch_size // world_size()),
                               num_workers=self.args.num_workers)

    def finish(self, *, protocol: str, protocol_id: str, metrics_final: dict[str, float],
               metrics_best: dict[str, float], settings: dict[str, Any], deviations: list[str]) -> None:
        """Write the one result record (rank 0) and print its summary line."""
        if not is_main():
            return
        meta = self.loaded.meta
        method = self.args.method or meta.get("method") or "unknown"
        limits = [f"{flag}: {value} class-balanced images (protocol: the whole {split} set)"
                  for flag, value, split in (("--limit-train", self.args.limit_train, "training"),
                                             ("--limit-val", self.args.limit_val, "validation"))
                  if value is not None]
        provenance = {**self.provenance, "pretrain_code_version": meta.get("pretrain_code_version")}
        full_settings = {**settings, **dataclasses.asdict(self.data), "world_size": world_size(),
                         "limit_train": self.args.limit_train, "limit_val": self.args.limit_val,
                         "num_classes": self.num_classes, "source_format": self.loaded.source_format,
                         "vit_heads": self.loaded.vit_heads, "vit_heads_source": self.loaded.vit_heads_source,
                         "train_size": len(self.train_base), "val_size": len(self.val_base)}
        record = ResultRecord(method=method, backbone=self.arch, dataset=self.dataset_name, protocol=protocol,
                              protocol_id=protocol_id, metrics_final=metrics_final, metrics_best=metrics_best,
                              pretrain_epochs=meta.get("pretrain_epochs"),
                              pretrain_epochs_planned=meta.get("pretrain_epochs_planned"),
                              pretrain_complete=meta.get("pretrain_complete"), checkpoint_path=self.loaded.path,
                              checkpoint_sha256=self.loaded.sha256, settings=full_settings,
                              model_id=meta.get("model_id", ""), pretrain_seed=meta.get("pretrain_seed"),
                              pretrain_config=dict(meta.get("pretrain_config") or {}),
                              deviations=[*self.data_deviations, *limits, *deviations], seed=self.args.seed,
                              provenance=provenance, code_version=self.provenance["code_version"],
                              wall_time_s=round(time.time() - self.started, 2))
        path = write_record(self.out_dir / "results.jsonl", record)
        values = ", ".join(f"{k} {v:.2f}" for k, v in metrics_final.items())
        best = f" (best top1 {metrics_best['top1']:.2f})" if "top1" in metrics_best else ""
        print(f"{method} {self.arch} on {self.dataset_name}, {protocol_id}: {values}{best} -> {path}")


def _build_context(args: argparse.Namespace, name: str, started: float, argv: list[str]) -> RunContext:
    provenance = {**run_provenance([f"python -m evaluate {name}", *argv]),
                  "resolved_args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    device = init_distributed(args.device)
    check_appendable(args.out_dir / "results.jsonl")   # before the evaluation, not after it
    if args.num_workers < 0:
        raise EvalError(f"--num-workers must be >= 0, got {args.num_workers}")
    for flag in ("limit_train", "limit_val", "image_size", "eval_every"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise EvalError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.crop_ratio is not None and not 0 < args.crop_ratio <= 1:
        raise EvalError(f"--crop-ratio must be in (0, 1], got {args.crop_ratio}")
    data, data_deviations = resolve_overrides(DataSettings(), SMALL_SCALE_DATA.get(args.dataset, {}),
                                              {"image_size": args.image_size, "crop_ratio": args.crop_ratio})
    if args.checkpoint == RANDOM_INIT:
        if args.vit_heads is not None:
            raise EvalError(f"--vit-heads sets a checkpoint's head count; --checkpoint {RANDOM_INIT} uses our builder's")
        backbone, dim, loaded = random_init_backbone(args.arch, data.image_size, args.seed)
    elif args.checkpoint == RAW_PIXELS:
        backbone, dim, loaded = raw_pixel_backbone(args.arch, data.image_size)
    else:
        backbone, dim, loaded = build_loaded_backbone(args.checkpoint, args.arch, trust=args.trust_checkpoint,
                                                      vit_heads=args.vit_heads)
        if is_vit(loaded.arch) and loaded.image_size != data.image_size:
            raise EvalError(f"{args.checkpoint}: ViT built for {loaded.image_size} px inputs (position embedding), "
                            f"but the evaluation uses --image-size {data.image_size}")
    train_base = build_dataset(args.dataset, args.data_dir, "train", None, args.limit_train)
    val_base = build_dataset(args.dataset, args.data_dir, "val", None, args.limit_val)
    label_map = align_val_classes(train_base, val_base, f"{args.data_dir}/val") \
        if args.dataset == "imagefolder" else None
    num_classes = len(_classes(train_base))
    if len(np.unique(dataset_targets(train_base))) < 2:
        raise EvalError("the training set has fewer than 2 classes")
    dataset_name = args.dataset_name or (
        "fashion-mnist" if args.dataset == "fashion-mnist"
        else "imagenet-1k" if num_classes == 1000 else Path(args.data_dir).resolve().name)
    out_dir = args.out_dir
    if is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
    # Inside the run's own folder: beside it, --out-dir /tmp/x would share /tmp/feature_cache with
    # every user of the machine, and anyone could plant features there.
    cache_dir = args.cache_dir or out_dir / "feature_cache"
    return RunContext(args=args, name=name, device=device, out_dir=out_dir, cache_dir=cache_dir,
                      backbone=backbone.to(device), feature_dim=dim, loaded=loaded, data=data,
                      data_deviations=data_deviations, train_base=train_base, val_base=val_base,
                      val_label_map=label_map, num_classes=num_classes, dataset_name=dataset_name, started=started,
                      provenance=provenance)


@contextlib.contextmanager
def run_context(args: argparse.Namespace, name: str, argv: list[str] | None = None) -> Iterator[RunContext]:
    """Set up logging, DDP, backbone and data, and leave DDP however the run ends.

    Bad input (a :class:`~pretrain.errors.UserError`) and environment failures (an unwritable or
    full out-dir, an unreadable image) propagate to the entry point's :func:`~pretrain.errors.cli_main`,
    which prints the one line. ``argv`` is recorded in the result's provenance.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.time()
    try:
        yield _build_context(args, name, started, list(sys.argv[1:] if argv is None else argv))
    finally:
        cleanup()
