"""The input pipelines behind ``--data-pipeline``: they turn one rank's sampled indices into batches
of two views on the training device, each with the augmentation spec of :mod:`pretrain.augment`.

- ``pil``: the reference. DataLoader workers run torchvision's transforms on PIL images, each image
  seeded from (seed, epoch, image id) by :class:`pretrain.data.SeededAugmentation`.
- ``device``: the whole uint8 data set held on the training device (Fashion-MNIST is 47 MB), each
  batch augmented there by :func:`pretrain.augment.augment_batch` with parameters from
  :func:`pretrain.augment.sample_views`, seeded the same way.
- ``dali``: image folders decoded and augmented by NVIDIA DALI (:mod:`pretrain.dali`), fed the same
  per-image parameters.

The train loop keeps the sampler (shuffle, shard, skip on resume): every pipeline sees the same
images at every step and only the augmentation's implementation differs.
"""
from __future__ import annotations

import importlib.util
import logging
from typing import Callable, Generator, Iterator, Protocol

import numpy as np
import torch

from pretrain.augment import AugmentSpec, as_spec, augment_batch, sample_views, to_device
from pretrain.config import ConfigError
from pretrain.data import DataError, FashionMNIST, SeededAugmentation, TwoViews, _sample_path

log = logging.getLogger(__name__)

PIPELINES = ("auto", "pil", "device", "dali")
Batch = tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor, torch.Tensor]   # (views, labels, image ids)


class Pipeline(Protocol):
    """What the train loop needs: the data set's length (for the sampler) and an epoch's batches, as a
    generator that the loop closes however the epoch ends."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, sampler: torch.utils.data.Sampler) -> Generator[Batch, None, None]: ...


def dali_available() -> bool:
    return importlib.util.find_spec("nvidia.dali") is not None


def resolve_pipeline(requested: str, dataset: str, device: torch.device) -> str:
    """The pipeline ``auto`` stands for here, or ``requested`` if it can run.

    ``auto``: DALI for image folders on CUDA when it is installed; ``device`` for Fashion-MNIST
    (on CPU too: 0.39 against 1.31 CPU ms per pair at 32 px, benchmarks/README.md); PIL otherwise
    (on CPU, DALI's backend made fewer 224 px pairs/s than the PIL loader)."""
    if requested not in PIPELINES:
        raise ConfigError(f"data_pipeline={requested!r}: expected one of {', '.join(PIPELINES)}")
    if requested == "dali":
        if not dali_available():
            raise ConfigError("data_pipeline='dali' needs NVIDIA DALI: pip install nvidia-dali-cuda120 "
                              "(pinned in requirements.txt)")
        if dataset != "imagefolder":
            raise ConfigError(f"data_pipeline='dali' reads image folders; dataset {dataset!r} is held in "
                              "memory: use --data-pipeline device")
    if requested != "auto":
        return requested
    if dataset == "fashion-mnist":
        return "device"
    return "dali" if device.type == "cuda" and dali_available() else "pil"


class PilPipeline:
    """The reference: SeededAugmentation + TwoViews in DataLoader workers."""

    def __init__(self, dataset: torch.utils.data.Dataset, spec: AugmentSpec | int, min_scale: float, seed: int,
                 batch_size: int, workers: int, pin_memory: bool,
                 worker_init_fn: Callable[[int], None] | None = None) -> None:
        self.dataset = SeededAugmentation(dataset, TwoViews(as_spec(spec, min_scale)), seed)
        # worker_init_fn: the training loop's makes workers ignore stop signals (pretrain.train.ignore_signals).
        self.loader_kwargs = dict(batch_size=batch_size, num_workers=workers, drop_last=True,
                                  pin_memory=pin_memory, persistent_workers=False, worker_init_fn=worker_init_fn)

    def __len__(self) -> int:
        return len(self.dataset)

    def epoch(self, epoch: int, sampler: torch.utils.data.Sampler) -> Generator[Batch, None, None]:
        self.dataset.set_epoch(epoch)   # before the loader starts: workers copy the dataset
        return _stop_workers_when_done(iter(torch.utils.data.DataLoader(self.dataset, sampler=sampler,
                                                                        **self.loader_kwargs)))


def _stop_workers_when_done(batches: Iterator[Batch]) -> Generator[Batch, None, None]:
    """The loader's batches; however the epoch ends (exhausted, closed after a ``break``, or an error in
    a worker or in the step), its workers are stopped here and now.

    Left to the garbage collector, an iterator that an exception's traceback still references (a caller
    that keeps the exception, as pytest does) outlives the run. At interpreter exit, multiprocessing
    then sends its workers SIGTERM, which they ignore (``pretrain.train.ignore_signals``), and joins
    them: forever. ``_shutdown_workers`` is what torch's own ``__del__`` calls.
    """
    try:
        yield from batches
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)   # absent with 0 workers: nothing to stop
        if shutdown is not None:
            shutdown()


def in_memory(dataset: torch.utils.data.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 (N, C, H, W), labels, image ids) of a data set small enough to hold whole.

    Fashion-MNIST hands over its array (one grey channel); any other data set is decoded image by
    image, and its images must share one size."""
    if isinstance(dataset, FashionMNIST):
        ids = np.arange(len(dataset))
        return dataset.images[:, None], np.asarray(dataset.targets), ids
    images, labels, ids = [], [], []
    for index in range(len(dataset)):
        try:
            image, label, image_id = dataset[index]
        except OSError as error:   # PIL's UnidentifiedImageError and truncated files are OSErrors
            raise DataError(f"{_sample_path(dataset, index)}: cannot read image "
                            f"({type(error).__name__}: {str(error).splitlines()[0][:160]})") from None
        array = np.asarray(image.convert("RGB"))
        if images and array.shape != images[0].shape:
            raise DataError(f"{_sample_path(dataset, index)}: {array.shape[1]}x{array.shape[0]} px, but the "
                            f"first image is {images[0].shape[1]}x{images[0].shape[0]}; the device pipeline "
                            "holds one array of equal-size images (use --data-pipeline pil or dali)")
        images.append(array)
        labels.append(label)
        ids.append(image_id)
    return np.stack(images).transpose(0, 3, 1, 2), np.asarray(labels), np.asarray(ids)


class DevicePipeline:
    """The whole data set as one uint8 tensor on ``device``, augmented a batch at a time there."""

    def __init__(self, dataset: torch.utils.data.Dataset, spec: AugmentSpec | int, min_scale: float, seed: int,
                 batch_size: int, device: torch.device) -> None:
        images, labels, ids = in_memory(dataset)
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(device)
        self.ids = ids.astype(np.int64)
        self.ids_on_device = torch.from_numpy(self.ids).to(device)
        self.spec, self.seed, self.batch_size = as_spec(spec, min_scale), seed, batch_size
        log.info("device pipeline: %d images of %s held on %s (%.1f MB)", len(self.ids),
                 tuple(self.images.shape[1:]), device, self.images.numel() / 1e6)

    def __len__(self) -> int:
        return len(self.ids)

    def views(self, epoch: int, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views of the images at ``indices`` (positions in the data set) in ``epoch``."""
        height, width = self.images.shape[2:]
        params = sample_views(self.spec, self.seed, epoch, self.ids[indices], height, width)
        batch = self.images[to_device(indices, self.images.device)]
        first, second = (augment_batch(batch, view, self.spec) for view in params)
        return first, second

    def epoch(self, epoch: int, sampler: torch.utils.data.Sampler) -> Generator[Batch, None, None]:
        order = np.fromiter(iter(sampler), dtype=np.int64)
        for start in range(0, len(order) - self.batch_size + 1, self.batch_size):   # drop_last, as the loader
            indices = order[start:start + self.batch_size]
            on_device = to_device(indices, self.images.device)
            yield self.views(epoch, indices), self.labels[on_device], self.ids_on_device[on_device]


def build_pipeline(name: str, dataset: torch.utils.data.Dataset, *, spec: AugmentSpec, seed: int,
                   batch_size: int, workers: int, device: torch.device,
                   worker_init_fn: Callable[[int], None] | None = None) -> Pipeline:
    """The pipeline ``name`` (already resolved) over ``dataset``, yielding ``batch_size`` pairs of
    ``spec``'s views a step; ``worker_init_fn`` runs in each loader worker of the PIL path."""
    if name == "pil":
        return PilPipeline(dataset, spec, spec.min_scale, seed, batch_size, workers, device.type == "cuda",
                           worker_init_fn)
    if name == "device":
        return DevicePipeline(dataset, spec, spec.min_scale, seed, batch_size, device)
    if name == "dali":
        from pretrain.dali import DaliPipeline
        return DaliPipeline(dataset, spec, spec.min_scale, seed, batch_size, workers, device)
    raise ConfigError(f"data_pipeline={name!r}: expected one of {', '.join(PIPELINES[1:])}")
