"""Data paths checked against independent truths: BYOL's view asymmetry, the eval crop, the IDX reader."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision import transforms

from pretrain.data import (IMAGENET_MEAN, IMAGENET_STD, DataError, PILGaussianBlur, TwoViews, eval_transform,
                           read_idx)


class _Counting:
    """Wraps a transform and counts how often RandomApply actually ran it."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0

    def __call__(self, image):
        self.calls += 1
        return self.inner(image)


def _count_blurs(pipeline: transforms.Compose) -> _Counting:
    [apply] = [t for t in pipeline.transforms if isinstance(t, transforms.RandomApply)
               and isinstance(t.transforms[0], PILGaussianBlur)]
    apply.transforms[0] = _Counting(apply.transforms[0])
    return apply.transforms[0]


def test_view_one_always_blurred_never_solarised_view_two_the_other_way():
    """BYOL Table 6: blur p = 1.0 / 0.1, solarisation p = 0.0 / 0.2 for views 1 / 2.

    Blur is counted where it runs; solarisation is seen in the pixels: a white image stays >= 153
    after any brightness jitter (factor >= 0.6), and solarising at 128 turns it below 128.
    Mutations tried, each failing this test: the two views' blur and solarisation probabilities
    exchanged; view 1's blur p = 0.5; view 1 solarised with p = 0.2."""
    torch.manual_seed(0)
    views = TwoViews(16)
    blurs = _count_blurs(views.first), _count_blurs(views.second)
    white = Image.new("RGB", (16, 16), (255, 255, 255))
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    solarised = [0, 0]
    trials = 300
    for _ in range(trials):
        for index, view in enumerate(views(white)):
            pixels = (view * std + mean) * 255
            solarised[index] += int(pixels.max() < 128)
    assert blurs[0].calls == trials
    assert 10 <= blurs[1].calls <= 55        # Binomial(300, 0.1): mean 30, sd 5.2
    assert solarised[0] == 0
    assert 35 <= solarised[1] <= 90          # Binomial(300, 0.2): mean 60, sd 6.9


def test_blur_sigma_scales_with_the_image_side():
    """At 32 px the sigma range is BYOL's [0.1, 2.0] times 32 / 224; the draw comes from torch.

    Mutation tried: the scale dropped (sigma in [0.1, 2.0] at every size); this test fails."""
    blur = PILGaussianBlur(32)
    assert blur.sigma == pytest.approx((0.1 * 32 / 224, 2.0 * 32 / 224))
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    torch.manual_seed(5)
    draw = float(torch.rand(()))
    expected = image.filter(ImageFilter.GaussianBlur(radius=(0.1 + 1.9 * draw) * 32 / 224))
    torch.manual_seed(5)
    assert np.array_equal(np.asarray(blur(image)), np.asarray(expected))


def _ramp(width: int) -> Image.Image:
    """Grey image whose pixel value is its column index."""
    row = np.arange(width, dtype=np.uint8)
    return Image.fromarray(np.repeat(np.tile(row, (width, 1))[..., None], 3, axis=2))


def _columns(tensor: torch.Tensor) -> np.ndarray:
    """Undo Normalize + ToTensor: pixel values of the first channel's first row."""
    return ((tensor[0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255).numpy()


def test_eval_crop_keeps_the_central_crop_ratio_of_the_image():
    """Resize to side / ratio, centre-crop side: with ratio 0.875 a 64 px ramp (column c has value c)
    cropped to 56 px keeps columns 4..59; with ratio 0.5 the middle half, columns ~16..47.

    Mutation tried: the ratio ignored (Resize(image_size) then CenterCrop); this test fails."""
    cropped = _columns(eval_transform(56, crop_ratio=0.875)(_ramp(64)))
    assert cropped[0] == pytest.approx(4, abs=0.01) and cropped[-1] == pytest.approx(59, abs=0.01)
    half = _columns(eval_transform(56, crop_ratio=0.5)(_ramp(64)))
    assert abs(half[0] - 16) <= 1 and abs(half[-1] - 47) <= 1
    whole = _columns(eval_transform(64, crop_ratio=1.0)(_ramp(64)))
    assert whole[0] == pytest.approx(0, abs=0.01) and whole[-1] == pytest.approx(63, abs=0.01)


def _write_idx(path, shape, payload: bytes) -> None:
    header = bytes([0, 0, 0x08, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(header + payload)


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_reader_reads_the_shape_and_refuses_truncated_or_padded_files(tmp_path, name):
    """A header that promises 3 x 2 x 2 = 12 values: 12 read back as written, 11 or 13 refused.

    Mutation tried: the size check removed; the truncated file then fails in numpy's reshape with a
    ValueError that names no file, and so does the padded one (this test fails on both)."""
    good = tmp_path / name
    _write_idx(good, (3, 2, 2), bytes(range(12)))
    assert np.array_equal(read_idx(good), np.arange(12, dtype=np.uint8).reshape(3, 2, 2))
    for count in (11, 13):
        bad = tmp_path / f"bad{count}-{name}"
        _write_idx(bad, (3, 2, 2), bytes(range(count)))
        with pytest.raises(DataError, match=rf"{bad.name}: header says shape \(3, 2, 2\) but holds {count} values"):
            read_idx(bad)


def test_augmentation_knobs_reach_each_view():
    """The config's per-view probabilities and jitter strength are what the transforms apply: with
    blur off, view 1 solarised always and view 2 never, and the jitter half as strong as BYOL's.

    Mutations tried, each failing this test: TwoViews passing view 1's probabilities to view 2;
    jitter_strength ignored (BYOL's 0.4 brightness range kept)."""
    torch.manual_seed(0)
    views = TwoViews(16, blur_p=(0.0, 0.0), solarize_p=(1.0, 0.0), jitter_strength=0.5, jitter_p=1.0)
    blurs = _count_blurs(views.first), _count_blurs(views.second)
    jitter = views.first.transforms[1].transforms[0]
    assert jitter.brightness == pytest.approx((0.8, 1.2)) and jitter.hue == pytest.approx((-0.05, 0.05))
    white = Image.new("RGB", (16, 16), (255, 255, 255))
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    for _ in range(50):
        first, second = ((view * std + mean) * 255 for view in views(white))
        assert first.max() < 128 <= second.max()     # brightness >= 0.8 keeps white >= 204 before solarising
    assert blurs[0].calls == blurs[1].calls == 0
