"""Shared fixtures: tiny real image trees, the embedded Fashion-MNIST copy, ../shared reference data."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    path = SHARED / "reference"
    if not path.is_dir():
        pytest.skip(f"{path} not present (it sits beside the repository in CI, not in a user's clone)")
    return path


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    from pretrain.data import DataError, resolve_fashion_mnist_dir
    try:
        return resolve_fashion_mnist_dir(None)
    except DataError as error:
        pytest.skip(f"Fashion-MNIST not installed: {error}")


def write_image_tree(root: Path, classes=("a", "b", "c", "d"), per_class=16, size=32, seed=0) -> Path:
    """ImageFolder tree root/{train,val}/<class>/*.png of coloured noise with a class-specific tint."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", max(2, per_class // 4))):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
                pixels[..., index % 3] += np.uint8(120)
                Image.fromarray(pixels).save(folder / f"{name}_{i}.png")
    return root


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory) -> Path:
    return write_image_tree(tmp_path_factory.mktemp("tree"))


@pytest.fixture
def detectron2_installed() -> None:
    """Used through d2_support.needs_detectron2: skip only when detectron2 is not installed."""
    from d2_support import require_detectron2
    require_detectron2()
