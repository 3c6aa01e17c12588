"""Data: the Fashion-MNIST IDX reader, ImageFolder trees, and the SNCLR/BYOL two-view augmentations.

Every dataset yields ``(image, label, index)``; the index is the image's identity, stored beside each
entry of the candidate set so that a query never retrieves another view of its own image.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import datasets, transforms

from pretrain.augment import BLUR_SIGMA_224, IMAGENET_MEAN, IMAGENET_STD, AugmentSpec, ViewSpec, byol_spec
from pretrain.errors import UserError

FASHION_MNIST_ENV = "SNCLR_FASHION_MNIST"
# Where Debian's package `dataset-fashion-mnist` installs the IDX files.
FASHION_MNIST_DEFAULT_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
DATASETS = ("fashion-mnist", "imagefolder")


class DataError(UserError, ValueError):
    """Unusable data on disk; the message names the path and what was expected."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzipped), the format of MNIST and Fashion-MNIST."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(4)
            if len(header) != 4 or header[0] != 0 or header[1] != 0 or header[2] != 0x08:
                raise DataError(f"{path}: not an unsigned-byte IDX file (magic {header.hex()!r})")
            ndim = header[3]
            shape = struct.unpack(f">{ndim}I", handle.read(4 * ndim))
            data = np.frombuffer(handle.read(), dtype=np.uint8)
    except (OSError, EOFError, struct.error) as error:
        raise DataError(f"{path}: cannot read IDX file ({error})") from None
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says shape {shape} but holds {data.size} values (truncated?)")
    return data.reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: no {stem}[.gz]; expected the four Fashion-MNIST IDX files there")


def resolve_fashion_mnist_dir(data_dir: str | os.PathLike | None) -> Path:
    """The directory given, else $SNCLR_FASHION_MNIST, else Debian's install location."""
    candidates = [data_dir] if data_dir else [os.environ.get(FASHION_MNIST_ENV), *FASHION_MNIST_DEFAULT_DIRS]
    for candidate in filter(None, candidates):
        if Path(candidate).is_dir():
            return Path(candidate)
        if data_dir:
            raise DataError(f"data directory {candidate} does not exist")
    raise DataError("no Fashion-MNIST copy found: install Debian's package with "
                    "`sudo apt-get install dataset-fashion-mnist` (files land in "
                    "/usr/share/datasets/fashion-mnist), or download the four IDX files from "
                    "https://github.com/zalandoresearch/fashion-mnist and pass --data-dir DIR "
                    f"(or set ${FASHION_MNIST_ENV})")


class FashionMNIST(torch.utils.data.Dataset):
    """Fashion-MNIST from its IDX files; images are returned as RGB PIL images (grey copied 3x)."""

    classes = FASHION_MNIST_CLASSES

    def __init__(self, root: str | os.PathLike | None, split: str = "train",
                 transform: Callable | None = None, limit: int | None = None) -> None:
        if split not in ("train", "test"):
            raise DataError(f"Fashion-MNIST split {split!r}; expected 'train' or 'test'")
        self.root = resolve_fashion_mnist_dir(root)
        prefix = "train" if split == "train" else "t10k"
        self.images = read_idx(_find_idx(self.root, f"{prefix}-images-idx3-ubyte"))
        self.targets = read_idx(_find_idx(self.root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        if self.images.ndim != 3 or len(self.images) != len(self.targets):
            raise DataError(f"{self.root}: {split} images {self.images.shape} and labels "
                            f"{self.targets.shape} do not match")
        if limit is not None:
            keep = balanced_subset_indices(self.targets, limit)
            self.images, self.targets = self.images[keep], self.targets[keep]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index], mode="L").convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index]), index


def balanced_subset_indices(targets: np.ndarray, limit: int) -> np.ndarray:
    """The first ``limit // classes`` images of each class (deterministic; keeps classes balanced)."""
    classes = np.unique(targets)
    per_class = max(1, limit // len(classes))
    keep = np.concatenate([np.flatnonzero(targets == c)[:per_class] for c in classes])
    return np.sort(keep)


class IndexedImageFolder(datasets.ImageFolder):
    """torchvision ImageFolder that also returns the sample index; refuses empty class folders."""

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"data directory {root} does not exist")
        empty = [d.name for d in sorted(root.iterdir()) if d.is_dir() and not any(d.iterdir())]
        if empty:
            raise DataError(f"{root}: class folder(s) {empty[:5]} contain no images")
        try:
            super().__init__(str(root), transform=transform)
        except (FileNotFoundError, RuntimeError) as error:
            raise DataError(f"{root}: not an ImageFolder tree ({error})") from None

    def __getitem__(self, index: int):
        image, target = super().__getitem__(index)
        return image, target, index


def build_dataset(name: str, root: str | os.PathLike | None, split: str,
                  transform: Callable | None = None, limit: int | None = None) -> torch.utils.data.Dataset:
    """``fashion-mnist`` (split train/test) or ``imagefolder`` (``root/split`` with split train/val)."""
    if name == "fashion-mnist":
        return FashionMNIST(root, "train" if split == "train" else "test", transform, limit)
    if name == "imagefolder":
        if root is None:
            raise DataError("dataset 'imagefolder' needs --data-dir pointing at a folder with train/ and val/")
        dataset = IndexedImageFolder(Path(root) / split, transform)
        if limit is not None:
            return torch.utils.data.Subset(dataset, balanced_subset_indices(np.array(dataset.targets), limit))
        return dataset
    raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


def dataset_targets(dataset: torch.utils.data.Dataset) -> np.ndarray:
    if isinstance(dataset, torch.utils.data.Subset):
        return np.asarray(dataset_targets(dataset.dataset))[np.asarray(dataset.indices)]
    return np.asarray(dataset.targets)


class PILGaussianBlur:
    """Gaussian blur with PIL's ``ImageFilter.GaussianBlur``, as MoCo v3's and BYOL's reference code do.

    torchvision's ``GaussianBlur(23)`` on a PIL image cost 34 ms per 224 px view against 1.8 ms here
    (one core of the H100 host, ``benchmarks/data_pipeline.py``). The sigma range is BYOL's at 224 px and
    scales with the side, so a 32 px view is blurred by the same fraction of its width as a 224 px one.
    The draw uses torch's generator, so :class:`SeededAugmentation` seeds it like every other
    torchvision transform.
    """

    def __init__(self, image_size: int, sigma: tuple[float, float] = BLUR_SIGMA_224) -> None:
        scale = image_size / 224
        self.sigma = (sigma[0] * scale, sigma[1] * scale)

    def __call__(self, image: Image.Image) -> Image.Image:
        low, high = self.sigma
        radius = low + (high - low) * float(torch.rand(()))
        return image.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self) -> str:
        return f"PILGaussianBlur(sigma=({self.sigma[0]:.4g}, {self.sigma[1]:.4g}))"


def byol_view_transform(image_size: int, blur_p: float, solarize_p: float,
                        min_scale: float = 0.08) -> transforms.Compose:
    """One view of BYOL's asymmetric augmentation (Grill et al., 2020, Table 6), as MoCo v3 uses it."""
    return spec_view_transform(AugmentSpec(image_size, min_scale), ViewSpec(blur_p, solarize_p))


def spec_view_transform(spec: AugmentSpec, view: ViewSpec) -> transforms.Compose:
    """The PIL reference of one view of ``spec`` (:mod:`pretrain.augment`), with torchvision's samplers."""
    return transforms.Compose([
        transforms.RandomResizedCrop(spec.image_size, scale=(spec.min_scale, 1.0), ratio=spec.ratio),
        transforms.RandomApply([transforms.ColorJitter(*spec.jitter)], p=spec.jitter_p),
        transforms.RandomGrayscale(p=spec.grayscale_p),
        transforms.RandomApply([PILGaussianBlur(spec.image_size)], p=view.blur_p),
        transforms.RandomSolarize(threshold=spec.solarize_threshold, p=view.solarize_p),
        transforms.RandomHorizontalFlip(p=spec.flip_p),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


class TwoViews:
    """BYOL's asymmetric pair: by default view 1 always blurred and never solarised, view 2 rarely
    blurred and solarised with p=0.2 (Grill et al., 2020, Table 6; MoCo v3 main_moco.py).

    ``spec`` is an :class:`~pretrain.augment.AugmentSpec`, or an image size with the knobs of
    :func:`~pretrain.augment.byol_spec` (``blur_p`` and ``solarize_p`` are (view 1, view 2); the
    small-image recipes set them and the jitter by measurement)."""

    def __init__(self, spec: AugmentSpec | int, min_scale: float = 0.08, **knobs) -> None:
        self.spec = spec if isinstance(spec, AugmentSpec) else byol_spec(spec, min_scale, **knobs)
        self.first, self.second = (spec_view_transform(self.spec, view) for view in self.spec.views)

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.first(image), self.second(image)


def augmentation_seed(seed: int, epoch: int, image_id: int) -> int:
    """The seed of one image's augmentation in one epoch (a SeedSequence hash: nearby inputs give
    unrelated streams)."""
    return int(np.random.SeedSequence([seed % 2**32, epoch, image_id]).generate_state(1, np.uint64)[0] >> 1)


def _sample_path(dataset: torch.utils.data.Dataset, index: int) -> str:
    while isinstance(dataset, torch.utils.data.Subset):
        dataset, index = dataset.dataset, int(dataset.indices[index])
    samples = getattr(dataset, "samples", None)
    return samples[index][0] if samples else f"sample {index} of {type(dataset).__name__}"


class SeededAugmentation(torch.utils.data.Dataset):
    """``transform`` applied to each ``(image, label, index)`` of ``dataset`` with torch's generator
    seeded from (seed, epoch, image index), then put back as it was.

    Each image gets its own stream every epoch, so ranks never share augmentations (with one seed on
    every rank and same-size images they used to apply identical crops), workers do not either, and
    the views of a step do not depend on the world size, the worker count or where a resumed epoch
    restarts. Call :meth:`set_epoch` before building each epoch's DataLoader (workers copy the dataset
    when the loader starts).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, transform: Callable, seed: int) -> None:
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            image, label, image_id = self.dataset[index]
        except OSError as error:   # PIL's UnidentifiedImageError and truncated files are OSErrors
            raise DataError(f"{_sample_path(self.dataset, index)}: cannot read image "
                            f"({type(error).__name__}: {str(error).splitlines()[0][:160]})") from None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(augmentation_seed(self.seed, self.epoch, image_id))
            views = self.transform(image)
        return views, label, image_id


def eval_transform(image_size: int, crop_ratio: float = 0.875) -> transforms.Compose:
    """Resize to image_size / crop_ratio then centre-crop (ImageNet: Resize(256) + CenterCrop(224))."""
    return transforms.Compose([
        transforms.Resize(round(image_size / crop_ratio)),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def linear_train_transform(image_size: int, min_scale: float = 0.08) -> transforms.Compose:
    """Linear-probe training augmentation: RandomResizedCrop + flip (MoCo v3 main_lincls.py)."""
    return transforms.Compose([
        transforms.RandomResizedCrop(image_size, scale=(min_scale, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
