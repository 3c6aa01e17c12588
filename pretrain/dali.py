"""``--data-pipeline dali``: image folders decoded, cropped and resized by NVIDIA DALI, then the rest of
the augmentation spec applied on the same device by :func:`pretrain.augment.augment_batch`.

How it differs from the field's reference, solo-learn's ``solo/data/dali_dataloader.py``:
- **Who draws the parameters.** solo-learn samples with DALI's own generators (``ops.random.*``,
  a ``Mux`` per probability) seeded per device, so a resume restarts the streams. Here DALI draws
  nothing: the crop window of each view comes from :func:`pretrain.augment.sample_views` (seed,
  epoch, image id) through ``external_source``, so the views are those of any other rank layout,
  a rerun reproduces them and a mid-epoch resume is exact without ``enable_checkpointing``.
- **Who shards.** solo-learn's ``readers.File`` shards and shuffles (``shard_id``, ``num_shards``,
  ``shuffle_after_epoch``). Here the train loop's sampler does, as for every pipeline, and this
  class reads the files it is given, so every pipeline sees the same images at every step.
- **The colour steps.** solo-learn uses ``ColorTwist`` (one fixed order; contrast about mid-grey,
  not the image's mean), a 23 px Gaussian window and CUBIC crops. Those would change the
  distribution the PIL path defines, so DALI stops after the crop and the rest runs in torch
  (ColorJitter's random order, the grey mean, PIL's box blur), the code the device pipeline runs.
- **One decode per image.** As in solo-learn, both views are cut from one decoded image (a fused
  ROI decode per view would decode every file twice); each crop is ``fn.slice`` then ``fn.resize``
  (linear, antialiased: PIL's bilinear ``resize`` of a cropped image; a resize with ``roi_start``
  would filter in pixels from outside the window, which PIL never sees).

On CUDA the decode runs on the GPU (``device="mixed"``: nvJPEG, and the hardware JPEG decoder where
the GPU has one); without one (``device_id=None``) DALI's CPU backend runs the same graph, which is
what the tests use.
"""
from __future__ import annotations

import logging
from typing import Generator

import numpy as np
import torch
from PIL import Image

from pretrain.augment import AugmentSpec, as_spec, augment_batch, sample_views, to_device
from pretrain.data import DataError

log = logging.getLogger(__name__)


def folder_samples(dataset: torch.utils.data.Dataset) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(file paths, labels, image ids) of an ImageFolder or a Subset of one, in dataset order; the
    ids are what the dataset's items carry (the folder index, also under a Subset)."""
    positions = np.arange(len(dataset))
    while isinstance(dataset, torch.utils.data.Subset):
        positions, dataset = np.asarray(dataset.indices)[positions], dataset.dataset
    samples = getattr(dataset, "samples", None)
    if samples is None:
        raise DataError(f"data_pipeline='dali' reads image folders; {type(dataset).__name__} is not one")
    return [samples[i][0] for i in positions], np.array([samples[i][1] for i in positions]), positions


def _graph(image_size: int, decoder: str):
    from nvidia.dali import fn, types
    encoded = fn.external_source(name="encoded", dtype=types.UINT8)
    # PIL's loader ignores EXIF orientation; so must the decode, or the two paths see other images.
    images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB, adjust_orientation=False)
    views = []
    for view in range(2):
        anchor = fn.external_source(name=f"anchor{view}", dtype=types.INT64)
        shape = fn.external_source(name=f"shape{view}", dtype=types.INT64)
        crop = fn.slice(images, anchor, shape, axis_names="HW", out_of_bounds_policy="error")
        views.append(fn.resize(crop, size=[image_size, image_size], interp_type=types.INTERP_LINEAR,
                               antialias=True))
    return tuple(views)


class DaliPipeline:
    """Reads the files of this rank's batch, DALI decodes and crops both views, torch does the rest."""

    def __init__(self, dataset: torch.utils.data.Dataset, spec: AugmentSpec | int, min_scale: float, seed: int,
                 batch_size: int, workers: int, device: torch.device) -> None:
        from nvidia.dali import pipeline_def
        self.paths, labels, ids = folder_samples(dataset)
        self.labels, self.ids = torch.from_numpy(labels.astype(np.int64)), ids.astype(np.int64)
        self.spec, self.seed, self.batch_size, self.device = as_spec(spec, min_scale), seed, batch_size, device
        self.sizes: dict[int, tuple[int, int]] = {}
        on_gpu = device.type == "cuda"
        build = pipeline_def(_graph, batch_size=batch_size, num_threads=max(1, workers),
                             device_id=(device.index or 0) if on_gpu else None, prefetch_queue_depth=1,
                             exec_async=False, exec_pipelined=False)
        self.pipe = build(image_size=self.spec.image_size, decoder="mixed" if on_gpu else "cpu")
        self.pipe.build()
        log.info("DALI pipeline: %d files, decode on %s, %d CPU threads", len(self.paths),
                 "the GPU" if on_gpu else "the CPU", max(1, workers))

    def __len__(self) -> int:
        return len(self.paths)

    def _size(self, position: int) -> tuple[int, int]:
        """(height, width) from the file's header, read once (the crop needs it before the decode)."""
        if position not in self.sizes:
            try:
                with Image.open(self.paths[position]) as image:
                    self.sizes[position] = (image.height, image.width)
            except OSError as error:
                raise DataError(f"{self.paths[position]}: cannot read image ({type(error).__name__}: "
                                f"{str(error).splitlines()[0][:160]})") from None
        return self.sizes[position]

    def views(self, epoch: int, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views of the images at ``indices`` (positions in the data set) in ``epoch``."""
        from nvidia.dali.plugin.pytorch import feed_ndarray
        sizes = np.array([self._size(int(i)) for i in indices])
        params = sample_views(self.spec, self.seed, epoch, self.ids[indices], sizes[:, 0], sizes[:, 1])
        self.pipe.feed_input("encoded", [np.fromfile(self.paths[int(i)], dtype=np.uint8) for i in indices])
        for view, p in enumerate(params):
            self.pipe.feed_input(f"anchor{view}", list(p.crop[:, :2]))
            self.pipe.feed_input(f"shape{view}", list(p.crop[:, 2:]))
        outputs = self.pipe.run()
        views = []
        for output, p in zip(outputs, params):
            dense = output.as_tensor()
            batch = torch.empty(dense.shape(), dtype=torch.uint8, device=self.device)
            feed_ndarray(dense, batch, cuda_stream=torch.cuda.current_stream() if self.device.type == "cuda" else None)
            views.append(augment_batch(batch.permute(0, 3, 1, 2), p, self.spec, cropped=True))
        return views[0], views[1]

    def epoch(self, epoch: int, sampler: torch.utils.data.Sampler) -> Generator:
        order = np.fromiter(iter(sampler), dtype=np.int64)
        for start in range(0, len(order) - self.batch_size + 1, self.batch_size):   # drop_last, as the loader
            indices = order[start:start + self.batch_size]
            yield (self.views(epoch, indices), to_device(self.labels[indices], self.device),
                   to_device(self.ids[indices], self.device))
