"""The input pipelines: per-image seeds (issue 18, section 4), the flag's resolution, in-memory data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pretrain.data as data_module
from pretrain.augment import AugmentSpec, image_tapes, sample_views
from pretrain.config import ConfigError
from pretrain.data import DataError, IndexedImageFolder
from pretrain.pipelines import DevicePipeline, in_memory, resolve_pipeline
from pretrain.train import EpochSampler


class SameImage(torch.utils.data.Dataset):
    """``count`` copies of one fixed image: any difference between views comes from the parameters."""

    def __init__(self, count: int = 16) -> None:
        from PIL import Image
        ramp = (np.arange(30 * 26 * 3).reshape(26, 30, 3) % 251).astype(np.uint8)
        self.image, self.count = Image.fromarray(ramp), count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        return self.image, index % 3, 100 + index   # ids distinct from positions, as in a Subset


def drop_image_id(monkeypatch) -> None:
    """The broken seeding each seed test must catch: (seed, epoch) only."""
    original = data_module.augmentation_seed
    monkeypatch.setattr(data_module, "augmentation_seed", lambda seed, epoch, image_id: original(seed, epoch, 0))


def check_rerun_reproduces_each_image(pipeline: DevicePipeline) -> None:
    """Another batch composition and order (another rank layout, a resumed epoch) gives every image
    the views it had; and the images' views differ, so equality is not trivial."""
    first, second = pipeline.views(2, np.arange(16))
    order = np.array([5, 3, 15, 0, 9])
    again, again_second = pipeline.views(2, order)
    assert torch.equal(again, first[order]) and torch.equal(again_second, second[order])
    flat = first.flatten(1)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(16) for j in range(i)), \
        "two images got the same view: their parameters are shared"


def check_no_shared_parameters(count: int = 5000) -> None:
    """No two images of an epoch share their draws, nor the first view's parameters (its blur sigma is
    always drawn, a continuous value). The second view's may coincide by design: an unjittered,
    unblurred view with the same integer crop box."""
    tapes = image_tapes(0, 0, np.arange(count), 8)
    assert len(np.unique(tapes, axis=0)) == count, "two images share another image's draws"
    view = sample_views(AugmentSpec(32), 0, 0, np.arange(count), 28, 28)[0]
    keys = {(tuple(c), tuple(j), s) for c, j, s in zip(view.crop, view.jitter, view.blur_sigma)}
    assert len(keys) == count, f"{count - len(keys)} images share another image's parameters"


@pytest.mark.parametrize("broken", [False, True], ids=["per-image seed", "image id dropped"])
def test_a_rerun_reproduces_the_device_views(monkeypatch, broken):
    if broken:
        drop_image_id(monkeypatch)
    pipeline = DevicePipeline(SameImage(), 16, 0.2, seed=3, batch_size=4, device=torch.device("cpu"))
    if broken:
        with pytest.raises(AssertionError, match="same view"):
            check_rerun_reproduces_each_image(pipeline)
    else:
        check_rerun_reproduces_each_image(pipeline)


@pytest.mark.parametrize("broken", [False, True], ids=["per-image seed", "image id dropped"])
def test_two_images_never_share_parameters(monkeypatch, broken):
    if broken:
        drop_image_id(monkeypatch)
        with pytest.raises(AssertionError, match="share"):
            check_no_shared_parameters()
    else:
        check_no_shared_parameters()


def test_views_change_with_epoch_and_seed():
    cpu = torch.device("cpu")
    pipeline = DevicePipeline(SameImage(), 16, 0.2, seed=3, batch_size=4, device=cpu)
    first = pipeline.views(0, np.arange(4))[0]
    assert not torch.equal(first, pipeline.views(1, np.arange(4))[0])
    other = DevicePipeline(SameImage(), 16, 0.2, seed=4, batch_size=4, device=cpu)
    assert not torch.equal(first, other.views(0, np.arange(4))[0])


def test_an_epoch_yields_the_samplers_images_in_order_with_labels_and_ids():
    pipeline = DevicePipeline(SameImage(10), 16, 0.2, seed=0, batch_size=4, device=torch.device("cpu"))
    sampler = EpochSampler(pipeline, 1, 0, seed=0)
    sampler.set_epoch(1)
    order = list(sampler)
    batches = list(pipeline.epoch(1, sampler))
    assert len(batches) == 2   # 10 images, batch 4, the last partial batch dropped as the loader does
    for step, ((x1, x2), labels, ids) in enumerate(batches):
        positions = order[4 * step:4 * step + 4]
        assert ids.tolist() == [100 + p for p in positions] and labels.tolist() == [p % 3 for p in positions]
        assert x1.shape == x2.shape == (4, 3, 16, 16) and x1.dtype == torch.float32
        assert torch.equal(x1, pipeline.views(1, np.array(positions))[0])


def test_in_memory_reads_an_image_folder_and_refuses_mixed_sizes(image_tree, tmp_path):
    folder = IndexedImageFolder(image_tree / "train")
    images, labels, ids = in_memory(folder)
    assert images.shape == (len(folder), 3, 32, 32) and images.dtype == np.uint8
    assert ids.tolist() == list(range(len(folder))) and labels.tolist() == folder.targets
    from PIL import Image
    for name, size in (("a", (32, 32)), ("b", (40, 32))):
        (tmp_path / "train" / name).mkdir(parents=True)
        Image.new("RGB", size).save(tmp_path / "train" / name / "x.png")
    with pytest.raises(DataError, match=r"b/x.png: 40x32 px, but the first image is 32x32"):
        in_memory(IndexedImageFolder(tmp_path / "train"))


def test_fashion_mnist_is_held_as_its_own_array(fashion_mnist_dir):
    from pretrain.data import FashionMNIST
    dataset = FashionMNIST(fashion_mnist_dir, "train", limit=200)
    images, labels, ids = in_memory(dataset)
    assert images.shape == (200, 1, 28, 28)
    image, label, image_id = dataset[17]
    assert np.array_equal(images[17, 0], np.asarray(image)[..., 0]) and labels[17] == label and ids[17] == image_id


@pytest.mark.parametrize("requested, dataset, device, expected", [
    ("auto", "fashion-mnist", "cpu", "device"),
    ("auto", "imagefolder", "cpu", "pil"),
    ("auto", "fashion-mnist", "cuda", "device"),
    ("pil", "fashion-mnist", "cpu", "pil"),
    ("device", "imagefolder", "cpu", "device"),
])
def test_auto_resolves_by_dataset_and_device(requested, dataset, device, expected):
    assert resolve_pipeline(requested, dataset, torch.device(device)) == expected


def test_dali_refuses_in_memory_data():
    with pytest.raises(ConfigError, match="dataset 'fashion-mnist' is held in memory"):
        resolve_pipeline("dali", "fashion-mnist", torch.device("cpu"))


@pytest.mark.parametrize("installed, expected", [(True, "dali"), (False, "pil")])
def test_auto_takes_dali_for_folders_on_cuda_when_installed(monkeypatch, installed, expected):
    import pretrain.pipelines as pipelines
    monkeypatch.setattr(pipelines, "dali_available", lambda: installed)
    assert resolve_pipeline("auto", "imagefolder", torch.device("cuda")) == expected
    assert resolve_pipeline("auto", "imagefolder", torch.device("cpu")) == "pil"


def test_dali_asked_for_but_not_installed(monkeypatch):
    import pretrain.pipelines as pipelines
    monkeypatch.setattr(pipelines, "dali_available", lambda: False)
    with pytest.raises(ConfigError, match="data_pipeline='dali' needs NVIDIA DALI"):
        resolve_pipeline("dali", "imagefolder", torch.device("cpu"))
