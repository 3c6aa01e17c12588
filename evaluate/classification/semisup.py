"""Semi-supervised evaluation: fine-tune the whole network with 1% or 10% of the labels (paper Table 2).

Label subsets. On ImageNet the subsets are SimCLR's lists (google-research/simclr,
``imagenet_subsets/1percent.txt`` and ``10percent.txt``): one bare training file name per line,
``<wnid>_<id>.JPEG``, the class being the part before the first underscore. Both ship with the
project (``evaluate/classification/subsets/``, Apache-2.0) and are used unless ``--subset-file``
names another copy; either way the list is checked against its known line count and sha256 (of
the text with CRLF made LF and a final newline added) and against the ImageFolder tree (every
file present, all 1,000 classes covered). For other data sets a deterministic,
class-balanced, seeded subset is generated and saved in the same one-name-per-line format:

- ImageFolder trees: the file's base name when it already starts with ``<class>_`` (as ImageNet's
  do), else ``<class>_<base name>``;
- Fashion-MNIST (no file names): ``<label>_<position>.png``, e.g. ``7_00123.png`` is the image at
  position 123 of the training set as built (after ``--limit-train``), whose label is 7.

Presets (both 20 epochs, SGD momentum 0.9, weight decay 0, batch 256, new linear head):

- ``swav`` (default; SwAV, Caron et al., 2020, ``eval_semisup.py`` and README): trunk / head lr
  0.02 / 5 with 1% labels and 0.01 / 0.2 with 10%, decayed x0.2 at epochs 12 and 16;
- ``barlow`` (Barlow Twins, Zbontar et al., 2021, ``evaluate.py --weights finetune``): trunk 0.002,
  head 0.5, cosine decay.

Both presets share one implementation, which departs from each reference in one point that the
record lists as a deviation: the head is initialised N(0, 0.01), bias 0 (Barlow Twins), where SwAV
keeps PyTorch's default ``nn.Linear`` init; and under DDP BN is synchronised over ranks (SwAV's
``convert_sync_batchnorm``), where Barlow Twins keeps per-GPU BN.
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from evaluate.classification.metrics import classification_ks, evaluate_classifier
from evaluate.classification.training import ShardedBatchSampler, cosine_lr, fit, step_lr
from evaluate.classification.linear import LinearClassifier, new_linear_head, sharded_eval_loader
from pretrain.distributed import barrier, convert_sync_batchnorm, is_distributed, is_main, world_size, wrap_ddp
from pretrain.fileio import atomic_write_text, file_problem
from evaluate.classification import cli_common
from evaluate.errors import SubsetFileError
from pretrain.errors import ArgumentParser, cli_main

log = logging.getLogger(__name__)

# SimCLR's ImageNet lists: percent -> (line count, sha256) (shared/reference/README.md).
SIMCLR_SUBSETS = {
    1: (12811, "71e82a48ba78252683ae334c4d019ebd5c6e855b9599c1389fbe83eb9549cf17"),
    10: (128116, "6d09de11e7bdaf5b1f3b1f249b6183695f97310cdd20f0c03e7235b6b9392091"),
}
IMAGENET_CLASSES = 1000
SHIPPED_SUBSETS = Path(__file__).resolve().parent / "subsets"


def shipped_subset(percent: int) -> Path:
    """The project's copy of SimCLR's ``<percent>percent.txt`` (gzipped; see subsets/README.md)."""
    return SHIPPED_SUBSETS / f"{percent}percent.txt.gz"


@dataclasses.dataclass(frozen=True)
class FineTuneSettings:
    preset: str = "swav"
    epochs: int = 20
    batch_size: int = 256           # global, over all ranks
    trunk_lr: float = 0.02
    head_lr: float = 5.0
    schedule: str = "step"          # "step" (milestones, gamma) or "cosine"
    milestones: tuple[int, ...] = (12, 16)
    gamma: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 0.0
    min_scale: float = 0.08         # RandomResizedCrop scale (0.08, 1) as both presets

    def protocol_id(self, percent: int) -> str:
        schedule = "step" + "-".join(str(m) for m in self.milestones) if self.schedule == "step" else "cos"
        return (f"semisup-{percent}pct_{self.preset}_sgd-{schedule}-{self.epochs}e-b{self.batch_size}"
                f"-lr{self.trunk_lr:g}-head{self.head_lr:g}")

    def lrs_at(self, epoch: int) -> list[float]:
        if self.schedule == "cosine":
            return [cosine_lr(self.trunk_lr, epoch, self.epochs), cosine_lr(self.head_lr, epoch, self.epochs)]
        return [step_lr(self.trunk_lr, epoch, self.milestones, self.gamma),
                step_lr(self.head_lr, epoch, self.milestones, self.gamma)]


PRESETS = ("swav", "barlow")


def preset_settings(preset: str, percent: int) -> FineTuneSettings:
    """The paper-protocol settings of ``preset`` for ``percent`` (1 or 10) labels (module docstring)."""
    if preset == "swav":
        trunk, head = {1: (0.02, 5.0), 10: (0.01, 0.2)}[percent]
        return FineTuneSettings(preset="swav", trunk_lr=trunk, head_lr=head)
    if preset == "barlow":
        return FineTuneSettings(preset="barlow", trunk_lr=0.002, head_lr=0.5, schedule="cosine", milestones=())
    raise ValueError(f"unknown preset {preset!r}; expected one of {PRESETS}")


def small_scale_overrides(dataset: str, preset: str, percent: int) -> dict[str, Any]:
    """CPU-sized settings for the embedded Fashion-MNIST data (32 px), listed in the record's
    deviations. Measured on a 16-epoch CPU SNCLR checkpoint and a random-init ResNet-18, 1% labels
    (200 images of a 20,000-image pool), SwAV preset, 10,000 test images:

    - batch 64 keeps the number of steps meaningful with 200 / 2,000 labelled images;
    - head lr 0.05 instead of 5 (1%) / 0.2 (10%): the ImageNet values diverge on these features
      (train loss 18 -> 105 in two epochs at 0.5; 10% top-1, chance, at 5);
    - RandomResizedCrop scale (0.5, 1) instead of (0.08, 1): 8% of a 28 px image is a 2 px patch.
      With both changes SNCLR / random-init reach 53.5% / 42.7% top-1, against 16.0% / 12.7%
      with head lr 0.5 and scale 0.2.
    """
    if dataset != "fashion-mnist":
        return {}
    overrides: dict[str, Any] = {"batch_size": 64, "min_scale": 0.5}
    if preset == "swav":
        overrides["head_lr"] = 0.05
    return overrides


# --- label subsets ------------------------------------------------------------------------------

def class_of(name: str) -> str:
    return name.split("_", 1)[0]


# SimCLR's 10% ImageNet list is 2.6 MB of text; ten times that bounds what a list file may expand to,
# so a small gzip bomb given as --subset-file is refused instead of filling memory.
MAX_SUBSET_BYTES = 32 * 2**20


def _read_bounded(path: Path) -> bytes:
    """The file's bytes (gunzipped for .gz), refusing more than MAX_SUBSET_BYTES."""
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as handle:
        raw = handle.read(MAX_SUBSET_BYTES + 1)
    if len(raw) > MAX_SUBSET_BYTES:
        raise SubsetFileError(f"{path}: expands to more than {MAX_SUBSET_BYTES // 2**20} MB; a label list "
                              "(one name per line) is far smaller, so this is not one")
    return raw


def subset_text(path: str | os.PathLike) -> str:
    """The text of a list file (gunzipped if it ends in .gz), CRLF made LF, with a final newline.

    Normalised so that a list saved with Windows line ends, or without a last newline, reads and
    hashes as the same list.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise SubsetFileError(f"subset file {path} {problem}")
    try:
        raw = _read_bounded(path)
        text = raw.decode("utf-8")
    except (OSError, EOFError) as error:
        raise SubsetFileError(f"{path}: not a readable gzip file ({error})") from None
    except UnicodeDecodeError as error:
        raise SubsetFileError(f"{path}: not UTF-8 text (byte {error.start}: {raw[error.start:error.start + 1]!r}); "
                              "expected one '<class>_<id>' name per line") from None
    text = text.replace("\r\n", "\n")
    return text if text.endswith("\n") or not text else text + "\n"


def subset_sha256(path: str | os.PathLike) -> str:
    """sha256 of the normalised list text (:func:`subset_text`)."""
    return hashlib.sha256(subset_text(path).encode("utf-8")).hexdigest()


def read_subset_file(path: str | os.PathLike) -> list[str]:
    """Names listed in ``path``, one per line (blank lines ignored); each must look like ``<class>_<rest>``."""
    path = Path(path)
    names = [line.strip() for line in subset_text(path).splitlines() if line.strip()]
    if not names:
        raise SubsetFileError(f"{path}: empty; expected one '<class>_<id>' name per line")
    bad = [n for n in names if "_" not in n or "/" in n or n.startswith("_")]
    if bad:
        raise SubsetFileError(f"{path}: {len(bad)} line(s) are not '<class>_<id>' names, e.g. {bad[:3]}")
    duplicated = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicated:
        raise SubsetFileError(f"{path}: {len(duplicated)} name(s) listed twice, e.g. {duplicated[:3]}")
    return names


def check_simclr_subset(path: str | os.PathLike, names: list[str], percent: int) -> None:
    """Refuse anything but SimCLR's ImageNet ``<percent>percent.txt`` (line count, sha256, 1,000 classes)."""
    lines, sha256 = SIMCLR_SUBSETS[percent]
    classes = len({class_of(n) for n in names})
    if len(names) != lines or classes != IMAGENET_CLASSES:
        raise SubsetFileError(f"{path}: {len(names)} lines / {classes} classes, but SimCLR's {percent}percent.txt "
                              f"has {lines} lines / {IMAGENET_CLASSES} classes")
    actual = subset_sha256(path)
    if actual != sha256:
        raise SubsetFileError(f"{path}: sha256 {actual[:16]}... is not that of SimCLR's {percent}percent.txt "
                              f"({sha256[:16]}...); use the unmodified list")


def _base_and_positions(dataset: Dataset) -> tuple[Dataset, dict[int, int] | None]:
    """The underlying dataset and, for a Subset, base index -> position in the subset."""
    if isinstance(dataset, Subset):
        return dataset.dataset, {int(b): p for p, b in enumerate(dataset.indices)}
    return dataset, None


def _targets(dataset: Dataset) -> np.ndarray:
    base, positions = _base_and_positions(dataset)
    targets = np.asarray(base.targets)
    if positions is None:
        return targets
    return targets[np.asarray(dataset.indices)]


def subset_names(dataset: Dataset, indices: np.ndarray) -> list[str]:
    """The list-file names of ``dataset[indices]`` (formats in the module docstring)."""
    base, _ = _base_and_positions(dataset)
    if hasattr(base, "samples"):
        base_indices = np.asarray(dataset.indices)[indices] if isinstance(dataset, Subset) else indices
        names = []
        for i in base_indices:
            file_path, label = base.samples[int(i)]
            cls, stem = base.classes[label], Path(file_path).name
            names.append(stem if stem.startswith(f"{cls}_") else f"{cls}_{stem}")
        return names
    targets = _targets(dataset)
    return [f"{int(targets[i])}_{int(i):05d}.png" for i in indices]


def resolve_subset(names: list[str], dataset: Dataset, where: str) -> np.ndarray:
    """Positions in ``dataset`` of the listed names; refuses missing images or class mismatches."""
    base, positions = _base_and_positions(dataset)
    found, missing = [], []
    if hasattr(base, "samples"):
        lookup = {}
        for index, (file_path, label) in enumerate(base.samples):
            lookup[(base.classes[label], Path(file_path).name)] = index
        for name in names:
            cls = class_of(name)
            index = lookup.get((cls, name), lookup.get((cls, name[len(cls) + 1:])))
            if index is not None and positions is not None:
                index = positions.get(index)
            (missing.append(name) if index is None else found.append(index))
    else:
        targets = _targets(dataset)
        for name in names:
            cls, rest = name.split("_", 1)
            stem = rest.split(".", 1)[0]
            ok = cls.isdigit() and stem.isdigit() and int(stem) < len(targets) and int(targets[int(stem)]) == int(cls)
            (found.append(int(stem)) if ok else missing.append(name))
    if missing:
        raise SubsetFileError(f"{where}: {len(missing)} listed image(s) are not in the training set (or have "
                              f"another class), e.g. {missing[:3]}")
    return np.asarray(found, dtype=np.int64)


def generate_subset(targets: np.ndarray, percent: float, seed: int) -> np.ndarray:
    """Class-balanced subset: ``max(1, round(percent% of each class))`` images per class, drawn with
    ``numpy.random.default_rng(seed)`` class by class in sorted class order; sorted positions."""
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(targets):
        members = np.flatnonzero(targets == cls)
        count = max(1, int(round(len(members) * percent / 100.0)))
        chosen.append(rng.permutation(members)[:count])
    return np.sort(np.concatenate(chosen))


def write_subset_file(path: str | os.PathLike, names: list[str]) -> Path:
    return atomic_write_text(path, "".join(f"{name}\n" for name in names))


def label_subset(dataset: Dataset, percent: int, *, subset_file: str | os.PathLike | None, imagenet: bool,
                 seed: int, generated_path: Path) -> tuple[np.ndarray, str]:
    """Positions of the labelled subset in ``dataset`` and the list file they came from.

    ImageNet uses SimCLR's list, the shipped copy unless ``subset_file`` names another; other data
    sets use ``subset_file`` when given, else a generated list written to ``generated_path`` (rank 0)
    so the run can be repeated from it.
    """
    num_classes = len(np.unique(_targets(dataset)))
    if subset_file is None and imagenet:
        subset_file = shipped_subset(percent)
    if subset_file is not None:
        names = read_subset_file(subset_file)
        if imagenet:
            check_simclr_subset(subset_file, names, percent)
        indices = resolve_subset(names, dataset, str(subset_file))
        classes = len({class_of(n) for n in names})
        if classes != num_classes:
            raise SubsetFileError(f"{subset_file}: covers {classes} classes, but the training set has {num_classes}")
        return indices, str(subset_file)
    indices = generate_subset(_targets(dataset), percent, seed)
    if is_main():
        write_subset_file(generated_path, subset_names(dataset, indices))
        log.info("generated %d%% subset of %d images -> %s", percent, len(indices), generated_path)
    barrier()
    return indices, str(generated_path)


# --- fine-tuning --------------------------------------------------------------------------------

def fine_tune(backbone: nn.Module, feature_dim: int, train_set: Dataset, val_set: Dataset, *, num_classes: int,
              settings: FineTuneSettings, device: torch.device, out_dir: Path, name: str = "semisup",
              num_workers: int = 2, eval_batch_size: int = 256, seed: int = 0, resume: bool = True,
              tensorboard: bool = True, identity: dict[str, Any] | None = None,
              eval_every: int = 1) -> dict[str, Any]:
    """Fine-tune backbone + a new linear head (N(0, 0.01), bias 0) on ``train_set`` (the labelled
    subset, with RandomResizedCrop + flip), all layers in train mode, two lr groups (trunk / head)
    per ``settings``; SyncBN under DDP. Returns ``{"final", "best", "best_epoch", "history"}``.
    """
    torch.manual_seed(seed)
    classifier = LinearClassifier(backbone, new_linear_head(feature_dim, num_classes)).to(device)
    trainable = classifier
    if is_distributed():
        # Per-rank batches are small (256 / ranks); synchronised BN makes BN statistics those of the
        # global batch (torch's SyncBN on GPUs, the cross-rank BN of pre-training on CPU).
        classifier = convert_sync_batchnorm(classifier, device)
        trainable = wrap_ddp(classifier, device)
    trunk = [p for p in classifier.backbone.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD([{"params": trunk, "lr": settings.trunk_lr},
                                 {"params": classifier.head.parameters(), "lr": settings.head_lr}],
                                momentum=settings.momentum, weight_decay=settings.weight_decay)
    sampler = ShardedBatchSampler(len(train_set), settings.batch_size, shuffle=True, seed=seed)
    train_loader = DataLoader(train_set, batch_sampler=sampler, num_workers=num_workers,
                              persistent_workers=num_workers > 0)
    val_loader = sharded_eval_loader(val_set, eval_batch_size, num_workers)
    resume_settings = {**dataclasses.asdict(settings), **(identity or {}), "train_size": len(train_set)}
    return fit(trainable=classifier, optimizer=optimizer, lrs_at=settings.lrs_at, sampler=sampler,
               batches=lambda epoch: train_loader, forward=lambda x: trainable(x.to(device, non_blocking=True)),
               evaluate=lambda: evaluate_classifier(classifier, val_loader, device, classification_ks(num_classes)),
               epochs=settings.epochs, out_dir=out_dir, name=name, resume_settings=resume_settings,
               resume=resume, tensorboard=tensorboard, train_mode=classifier.train, eval_every=eval_every)


def implementation_deviations(preset: str, world: int) -> list[str]:
    """Where the shared fine-tuning code departs from ``preset``'s reference script (module docstring)."""
    deviations = []
    if preset == "swav":
        deviations.append("head init: N(0, 0.01), bias 0 (SwAV eval_semisup.py: PyTorch's default nn.Linear init)")
    if preset == "barlow" and world > 1:
        deviations.append(f"BN synchronised over the {world} ranks (Barlow Twins evaluate.py: per-GPU BN)")
    return deviations


def resolve_settings(preset: str, percent: int, dataset: str,
                     args: argparse.Namespace) -> tuple[FineTuneSettings, list[str]]:

    flags = {name: getattr(args, name, None) for name in ("epochs", "batch_size", "trunk_lr", "head_lr", "min_scale")}
    return cli_common.resolve_overrides(preset_settings(preset, percent), small_scale_overrides(dataset, preset, percent), flags)


@cli_main
def main(argv: list[str] | None = None) -> int | None:

    parser = ArgumentParser(
        prog="python -m evaluate semisup",
        description="Semi-supervised evaluation (paper Table 2): fine-tune the whole network with a new linear "
                    "head on 1%% or 10%% of the training labels; writes one semisup_1pct / semisup_10pct record. "
                    "ImageNet uses SimCLR's lists, shipped with the project; other data sets get a generated, "
                    "seeded, class-balanced list saved in OUT_DIR.")
    cli_common.add_common_arguments(parser)
    parser.add_argument("--percent", type=int, choices=(1, 10), required=True, help="labelled fraction in percent")
    parser.add_argument("--subset-file", default=None,
                        help="list of labelled images, one '<class>_<id>' name per line (SimCLR format; .gz read "
                             "too). Default: ImageNet uses SimCLR's 1percent/10percent list shipped in "
                             "evaluate/classification/subsets/, other data sets a generated, seeded list")
    parser.add_argument("--preset", choices=PRESETS, default="swav",
                        help="swav (default: step decay, trunk/head lr 0.02/5 at 1%%, 0.01/0.2 at 10%%) or barlow "
                             "(cosine, 0.002/0.5)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (both presets: 20)")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size (paper: 256)")
    parser.add_argument("--trunk-lr", type=float, default=None, help="backbone lr (default from the preset)")
    parser.add_argument("--head-lr", type=float, default=None, help="linear head lr (default from the preset)")
    parser.add_argument("--min-scale", type=float, default=None, help="RandomResizedCrop min scale (0.08)")
    args = parser.parse_args(argv)
    with cli_common.run_context(args, "semisup", argv) as run:
        settings, deviations = resolve_settings(args.preset, args.percent, run.dataset_key, args)
        if settings.epochs < 1 or settings.batch_size < 1:
            raise cli_common.EvalError("--epochs and --batch-size must be >= 1")
        generated = run.out_dir / (f"{run.dataset_name}_train-limit{args.limit_train}_{args.percent}pct_"
                                   f"seed{args.seed}.txt")
        indices, list_file = label_subset(run.train_base, args.percent, subset_file=args.subset_file,
                                          imagenet=run.dataset_name == "imagenet-1k", seed=args.seed,
                                          generated_path=generated)
        labelled = run.train_set(augment=True, min_scale=settings.min_scale, base=Subset(run.train_base, indices))
        identity = {**run.identity(), "subset_sha256": subset_sha256(list_file)}
        deviations = [*deviations, *implementation_deviations(settings.preset, world_size())]
        result = fine_tune(run.backbone, run.feature_dim, labelled, run.val_set(), num_classes=run.num_classes,
                           settings=settings, device=run.device, out_dir=run.out_dir,
                           name=f"semisup_{args.percent}pct", num_workers=args.num_workers,
                           eval_batch_size=args.eval_batch_size, seed=args.seed, resume=not args.restart,
                           tensorboard=not args.no_tensorboard, identity=identity, eval_every=args.eval_every)
        resolved = {**dataclasses.asdict(settings), "milestones": list(settings.milestones), "percent": args.percent,
                    "subset_file": list_file, "subset_sha256": identity["subset_sha256"],
                    "labelled_images": len(indices), "optimizer": "sgd", "best_epoch": result["best_epoch"],
                    "eval_every": args.eval_every}
        run.finish(protocol=f"semisup_{args.percent}pct", protocol_id=settings.protocol_id(args.percent),
                   metrics_final=result["final"], metrics_best=result["best"], settings=resolved,
                   deviations=deviations)
