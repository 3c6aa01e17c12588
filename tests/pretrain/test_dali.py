"""--data-pipeline dali on DALI's CPU backend (device_id=None): the PIL path's distribution, its pixels,
and per-image seeds (issue 18, sections 1 and 4). DALI is pinned in requirements.txt, so these run
wherever the tests do."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import pretrain.dali as dali_module
from pretrain.augment import AugmentSpec, ViewParams, sample_views
from pretrain.dali import DaliPipeline, folder_samples
from pretrain.data import IndexedImageFolder
from test_augment import IMAGE_SIZE, MIN_SCALE, PIL_SAMPLES, SOURCE, compare_views, device_columns, pil_draws  # noqa: F401
from test_pipelines import check_rerun_reproduces_each_image, drop_image_id

CPU = torch.device("cpu")


def write_folder(root, count: int, size: tuple[int, int], same: bool = False):
    """``count`` PNGs of ``size`` (height, width) in root/c/; one image copied when ``same``."""
    rng = np.random.default_rng(0)
    (root / "c").mkdir(parents=True)
    image = None
    for i in range(count):
        if image is None or not same:
            small = rng.integers(0, 256, (max(2, size[0] // 4), max(2, size[1] // 4), 3), dtype=np.uint8)
            image = Image.fromarray(small).resize(size[::-1], Image.BICUBIC)
        image.save(root / "c" / f"{i:05d}.png")
    return IndexedImageFolder(root)


@pytest.fixture(scope="module")
def dali_draws(tmp_path_factory):
    """The parameters DaliPipeline feeds DALI over PIL_SAMPLES files of the PIL test's source size."""
    folder = write_folder(tmp_path_factory.mktemp("dali_draws"), PIL_SAMPLES, SOURCE)
    pipeline = DaliPipeline(folder, IMAGE_SIZE, MIN_SCALE, seed=1, batch_size=500, workers=1, device=CPU)
    fed: list[list[ViewParams]] = []
    original = dali_module.sample_views

    def recording(*args):
        fed.append(original(*args))
        return fed[-1]

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(dali_module, "sample_views", recording)
        for start in range(0, PIL_SAMPLES, 500):
            pipeline.views(0, np.arange(start, start + 500))
    return [{key: np.concatenate([device_columns(batch[view])[key] for batch in fed])
             for key in device_columns(fed[0][view])} for view in range(2)]


@pytest.mark.parametrize("view", [0, 1])
def test_dali_parameters_follow_the_pil_distribution(pil_draws, dali_draws, view):
    """Image sizes from the file headers (height, width), ids from the folder, one set per view."""
    compare_views(pil_draws[view], dali_draws[view], AugmentSpec(IMAGE_SIZE, MIN_SCALE))


def test_dali_crops_are_pils_crops(tmp_path):
    """DALI's slice + antialiased linear resize of the sampled windows against PIL's crop + bilinear
    resize of the same windows: both triangle filters over the window only; they differ by 8-bit
    rounding and DALI's filter normalisation (measured at most 5 levels when shrinking, 1 enlarging)."""
    folder = write_folder(tmp_path / "f", 24, (40, 60))
    size = 24
    pipeline = DaliPipeline(folder, size, 0.08, seed=0, batch_size=24, workers=1, device=CPU)
    params = sample_views(pipeline.spec, 0, 0, pipeline.ids, 40, 60)[0]
    pipeline.pipe.feed_input("encoded", [np.fromfile(p, dtype=np.uint8) for p in pipeline.paths])
    for view in range(2):
        pipeline.pipe.feed_input(f"anchor{view}", list(params.crop[:, :2]))
        pipeline.pipe.feed_input(f"shape{view}", list(params.crop[:, 2:]))
    got = np.array(pipeline.pipe.run()[0].as_tensor()).astype(np.float64)
    for k, (top, left, h, w) in enumerate(params.crop):
        with Image.open(pipeline.paths[k]) as image:
            want = np.asarray(image.convert("RGB").crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR))
        difference = np.abs(got[k] - want)
        assert difference.max() <= 6 and difference.mean() <= 0.6, (k, difference.max(), difference.mean())


def test_dali_views_are_the_device_views(tmp_path):
    """Same parameters, same torch steps after the crop: DALI's views equal the device pipeline's up
    to the crop's resampling (6 levels, above) times the largest gain of a difference through the
    jitter: brightness 1.4, contrast f + |1 - f| = 1.8 (the mean moves too), saturation 1.4."""
    from pretrain.pipelines import DevicePipeline
    folder = write_folder(tmp_path / "f", 16, (40, 60))
    dali = DaliPipeline(folder, 24, 0.08, seed=5, batch_size=16, workers=1, device=CPU)
    device = DevicePipeline(folder, 24, 0.08, seed=5, batch_size=16, device=CPU)
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None] * 255
    for a, b in zip(dali.views(3, np.arange(16)), device.views(3, np.arange(16))):
        levels = ((a - b) * std).abs()
        assert levels.max() <= 6 * 1.4 * 1.8 * 1.4 and levels.mean() <= 1.0, (levels.max(), levels.mean())


@pytest.mark.parametrize("broken", [False, True], ids=["per-image seed", "image id dropped"])
def test_a_rerun_reproduces_the_dali_views(tmp_path, monkeypatch, broken):
    folder = write_folder(tmp_path / "f", 16, (26, 30), same=True)
    if broken:
        drop_image_id(monkeypatch)
    pipeline = DaliPipeline(folder, 16, 0.2, seed=3, batch_size=16, workers=2, device=CPU)
    if broken:
        with pytest.raises(AssertionError, match="same view"):
            check_rerun_reproduces_each_image(pipeline)
    else:
        check_rerun_reproduces_each_image(pipeline)


def test_ids_follow_the_folder_under_a_subset(tmp_path):
    folder = write_folder(tmp_path / "f", 10, (8, 8))
    subset = torch.utils.data.Subset(folder, [7, 2, 5])
    paths, labels, ids = folder_samples(subset)
    assert ids.tolist() == [item[2] for item in subset] == [7, 2, 5]
    assert paths == [folder.samples[i][0] for i in (7, 2, 5)] and labels.tolist() == [0, 0, 0]


def test_an_unreadable_file_is_named(tmp_path):
    from pretrain.data import DataError
    folder = write_folder(tmp_path / "f", 4, (8, 8))
    (tmp_path / "f" / "c" / "00002.png").write_bytes(b"not an image")
    pipeline = DaliPipeline(folder, 8, 0.2, seed=0, batch_size=4, workers=1, device=CPU)
    with pytest.raises(DataError, match="00002.png: cannot read image"):
        pipeline.views(0, np.arange(4))
