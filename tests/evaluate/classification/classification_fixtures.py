"""Tiny, learnable classification data for the evaluator tests (imported by the test modules)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared"  # ../shared beside the repository root
PYTHON = sys.executable  # the interpreter running the tests: a venv, conda or system install alike
FASHION_MNIST = Path(os.environ.get("SNCLR_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))

# One colour per class: a linear probe on almost any features separates them.
COLOURS = ((220, 30, 30), (30, 200, 40), (40, 60, 230), (230, 220, 40))


def write_image_folder(root: Path, classes: int = 3, per_class: int = 6, size: int = 16,
                       prefix_with_class: bool = True, seed: int = 0) -> Path:
    """root/<class>/<class>_<i>.png with noisy solid colours; returns root."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(COLOURS[c % len(COLOURS)]) + rng.normal(0, 20, (size, size, 3)), 0, 255)
            name = f"{folder.name}_{i}.png" if prefix_with_class else f"img{i}.png"
            Image.fromarray(pixels.astype(np.uint8)).save(folder / name)
    return root


def write_split_tree(root: Path, classes: int = 3, train_per_class: int = 8, val_per_class: int = 4) -> Path:
    write_image_folder(root / "train", classes, train_per_class, seed=0)
    write_image_folder(root / "val", classes, val_per_class, seed=1)
    return root


class TinyBackbone(torch.nn.Module):
    """conv -> BN -> ReLU -> global pool: has BN running statistics, runs in milliseconds."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, dim, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))


class TensorImages(torch.utils.data.Dataset):
    """(image, label, index) from tensors, as pretrain.data datasets yield them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.targets = images, labels

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.images[index], int(self.targets[index]), index


def colour_blobs(n: int, classes: int = 3, size: int = 8, seed: int = 0, noise: float = 0.5) -> TensorImages:
    """Images whose class is a colour channel offset, plus noise: separable, but not trivially."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randn(n, 3, size, size, generator=generator) * noise
    images[torch.arange(n), labels % 3] += 1.0
    return TensorImages(images, labels)
