"""The augmentation spec's two implementations: the batched one (pretrain/augment.py) draws its
parameters from the PIL path's distribution and renders the PIL path's pixels.

The PIL path's draws are recorded from torchvision's own samplers and functions while TwoViews runs
(no re-implementation), so a drift on either side shows up here."""
from __future__ import annotations

import math

import numpy as np
import PIL.ImageFilter
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms

from pretrain.augment import (IMAGENET_MEAN, IMAGENET_STD, AugmentSpec, ViewParams, augment_batch,
                              box_blur_radius, sample_views)
from pretrain.data import TwoViews, augmentation_seed

SOURCE = (28, 36)      # (height, width): not square, so the aspect ratio and its fallback matter
IMAGE_SIZE = 32
MIN_SCALE = 0.08
PIL_SAMPLES = 3000     # per view; the tolerances below follow from these sizes
DEVICE_SAMPLES = 20000
SE_LIMIT = 5.0         # a mean or rate may differ by 5 standard errors (p ~ 6e-7 per check)
KS_C = 2.47            # two-sample Kolmogorov-Smirnov at alpha = 1e-5: sqrt(-ln(alpha / 2) / 2)


# ---- the PIL path's draws, recorded ---------------------------------------------------------------

def record_pil_draws(monkeypatch, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Run TwoViews on ``count`` images (each seeded as SeededAugmentation does) and record, per view,
    what torchvision's samplers returned and which functions ran."""
    current: dict = {}

    def recorder(name, function):
        def wrapped(*args, **kwargs):
            result = function(*args, **kwargs)
            current[name] = (args, kwargs, result)
            return result
        return wrapped

    monkeypatch.setattr(transforms.RandomResizedCrop, "get_params",
                        staticmethod(recorder("crop", transforms.RandomResizedCrop.get_params)))
    monkeypatch.setattr(transforms.ColorJitter, "get_params",
                        staticmethod(recorder("jitter", transforms.ColorJitter.get_params)))
    for name in ("rgb_to_grayscale", "solarize", "hflip"):
        monkeypatch.setattr(TF, name, recorder(name, getattr(TF, name)))
    monkeypatch.setattr(PIL.ImageFilter, "GaussianBlur", recorder("blur", PIL.ImageFilter.GaussianBlur))

    views = TwoViews(IMAGE_SIZE, MIN_SCALE)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (*SOURCE, 3), dtype=np.uint8))
    rows: list[list[dict]] = [[], []]
    for image_id in range(count):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(augmentation_seed(seed, 0, image_id))
            for index, view in enumerate((views.first, views.second)):
                current.clear()
                view(image)
                rows[index].append(dict(current))
    return [_pil_columns(view_rows) for view_rows in rows]


def _pil_columns(rows: list[dict]) -> dict[str, np.ndarray]:
    crop = np.array([row["crop"][2] for row in rows])
    jittered = np.array(["jitter" in row for row in rows])
    jitter = [row["jitter"][2] for row in rows if "jitter" in row]
    return {"crop": crop, "flip": np.array(["hflip" in row for row in rows]), "jittered": jittered,
            "jitter": np.array([[b, c, s, h] for _, b, c, s, h in jitter]),
            "jitter_order": np.array([order.numpy() for order, *_ in jitter]),
            "grayscale": np.array(["rgb_to_grayscale" in row for row in rows]),
            "blurred": np.array(["blur" in row for row in rows]),
            "blur_sigma": np.array([row["blur"][1]["radius"] for row in rows if "blur" in row]),
            "solarize": np.array(["solarize" in row for row in rows])}


def device_columns(params: ViewParams) -> dict[str, np.ndarray]:
    jittered = params.jittered
    return {"crop": params.crop, "flip": params.flip, "jittered": jittered, "jitter": params.jitter[jittered],
            "jitter_order": params.jitter_order[jittered], "grayscale": params.grayscale,
            "blurred": params.blur_sigma > 0, "blur_sigma": params.blur_sigma[params.blur_sigma > 0],
            "solarize": params.solarize}


# ---- the comparison ------------------------------------------------------------------------------

def assert_same_mean(name: str, a: np.ndarray, b: np.ndarray) -> None:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        assert len(a) == len(b) == 0, f"{name}: drawn on one side only ({len(a)} vs {len(b)})"
        return
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    if se == 0:
        assert a.mean() == b.mean(), f"{name}: constant {a.mean()} vs {b.mean()}"
        return
    assert abs(a.mean() - b.mean()) <= SE_LIMIT * se, \
        f"{name}: mean {a.mean():.4f} vs {b.mean():.4f} ({abs(a.mean() - b.mean()) / se:.1f} standard errors)"


def assert_same_distribution(name: str, a: np.ndarray, b: np.ndarray) -> None:
    """Means within SE_LIMIT standard errors and the two-sample KS distance under its critical value."""
    assert_same_mean(name, a, b)
    a, b = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    grid = np.concatenate([a, b])
    distance = np.abs(np.searchsorted(a, grid, side="right") / len(a)
                      - np.searchsorted(b, grid, side="right") / len(b)).max()
    critical = KS_C * math.sqrt((len(a) + len(b)) / (len(a) * len(b)))
    assert distance <= critical, f"{name}: KS distance {distance:.4f} > {critical:.4f}"


def assert_same_range(name: str, a: np.ndarray, b: np.ndarray, low: float, high: float) -> None:
    """Both samples inside [low, high] and reaching within 1% of the range of each end."""
    margin = 0.01 * (high - low)
    for side, values in (("PIL", a), ("batched", b)):
        assert values.min() >= low - 1e-6 and values.max() <= high + 1e-6, f"{name} ({side}) outside [{low}, {high}]"
        assert values.min() <= low + margin and values.max() >= high - margin, \
            f"{name} ({side}) spans only [{values.min():.4f}, {values.max():.4f}] of [{low}, {high}]"


def compare_views(pil: dict[str, np.ndarray], batched: dict[str, np.ndarray], spec: AugmentSpec) -> None:
    height, width = SOURCE
    for side in (pil, batched):
        top, left, h, w = side["crop"].T
        assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    for name, column in (("crop area", lambda c: c[:, 2] * c[:, 3] / (height * width)),
                         ("crop log aspect", lambda c: np.log(c[:, 3] / c[:, 2])),
                         ("crop top", lambda c: c[:, 0] / np.maximum(height - c[:, 2], 1)),
                         ("crop left", lambda c: c[:, 1] / np.maximum(width - c[:, 3], 1))):
        assert_same_distribution(name, column(pil["crop"]), column(batched["crop"]))
    for rate in ("flip", "jittered", "grayscale", "blurred", "solarize"):
        assert_same_mean(f"{rate} rate", pil[rate], batched[rate])
    for k, (name, (low, high)) in enumerate(zip(("brightness", "contrast", "saturation", "hue"), spec.jitter_ranges)):
        assert_same_distribution(name, pil["jitter"][:, k], batched["jitter"][:, k])
        assert_same_range(name, pil["jitter"][:, k], batched["jitter"][:, k], low, high)
    for op in range(4):   # ColorJitter's random order: where each op lands
        for position in range(4):
            assert_same_mean(f"op {op} at position {position}", pil["jitter_order"][:, position] == op,
                             batched["jitter_order"][:, position] == op)
    if len(pil["blur_sigma"]) or len(batched["blur_sigma"]):
        assert_same_distribution("blur sigma", pil["blur_sigma"], batched["blur_sigma"])
        assert_same_range("blur sigma", pil["blur_sigma"], batched["blur_sigma"], *spec.blur_sigma)


@pytest.fixture(scope="module")
def pil_draws():
    with pytest.MonkeyPatch.context() as monkeypatch:
        return record_pil_draws(monkeypatch, PIL_SAMPLES)


def batched_draws(spec: AugmentSpec, seed: int = 1) -> list[dict[str, np.ndarray]]:
    return [device_columns(view) for view in sample_views(spec, seed, 0, np.arange(DEVICE_SAMPLES), *SOURCE)]


@pytest.mark.parametrize("view", [0, 1])
def test_batched_parameters_follow_the_pil_distribution(pil_draws, view):
    spec = AugmentSpec(IMAGE_SIZE, MIN_SCALE)
    compare_views(pil_draws[view], batched_draws(spec)[view], spec)


@pytest.mark.parametrize("mutation, message", [
    (dict(ratio=(0.5, 2.0)), "crop (area|log aspect)"),   # rejection couples the two
    (dict(min_scale=0.2), "crop area"),
    (dict(jitter=(0.4, 0.4, 0.2, 0.2)), "hue"),
    (dict(jitter_p=0.7), "jittered rate"),
    (dict(grayscale_p=0.25), "grayscale rate"),
    (dict(flip_p=0.45), "flip rate"),
])
def test_the_distribution_check_catches_a_changed_sampler(pil_draws, mutation, message):
    """Each check can fail: the batched sampler with one parameter off is told apart from PIL's."""
    spec = AugmentSpec(IMAGE_SIZE, MIN_SCALE)
    wrong = AugmentSpec(**{**dict(image_size=IMAGE_SIZE, min_scale=MIN_SCALE), **mutation})
    with pytest.raises(AssertionError, match=message):
        compare_views(pil_draws[1], batched_draws(wrong)[1], spec)


def test_the_distribution_check_catches_a_fixed_jitter_order(pil_draws):
    spec = AugmentSpec(IMAGE_SIZE, MIN_SCALE)
    batched = batched_draws(spec)[0]
    batched["jitter_order"] = np.tile(np.arange(4), (len(batched["jitter_order"]), 1))
    with pytest.raises(AssertionError, match="op 0 at position 0"):
        compare_views(pil_draws[0], batched, spec)


# ---- pixels: one step at a time against the PIL path -------------------------------------------

def _smooth_image(height=28, width=36) -> np.ndarray:
    small = np.random.default_rng(3).integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC))


def identity_params(height: int, width: int, **changes) -> ViewParams:
    params = ViewParams(crop=np.array([[0, 0, height, width]]), flip=np.array([False]), jittered=np.array([False]),
                        jitter=np.array([[1.0, 1.0, 1.0, 0.0]]), jitter_order=np.array([[0, 1, 2, 3]]),
                        grayscale=np.array([False]), blur_sigma=np.array([0.0]), solarize=np.array([False]))
    for key, value in changes.items():
        setattr(params, key, np.array([value]))
    params.jittered = np.array(["jitter" in changes])
    return params


def batched_levels(image: np.ndarray, params: ViewParams, size: int) -> np.ndarray:
    """The batched view in 0..255 levels (un-normalised), H x W x 3."""
    spec = AugmentSpec(size)
    out = augment_batch(torch.from_numpy(image.copy()).permute(2, 0, 1)[None].contiguous(), params, spec)[0]
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((out * std + mean) * 255).permute(1, 2, 0).numpy().astype(np.float64)


# Tolerances in 8-bit levels. PIL rounds to 8 bits after every pass (the batched path keeps floats):
# a resize is two passes (<= 1 level), the blur six box passes (<= 3), a jitter op one blend (<= 1)
# plus, for contrast and saturation, PIL's grey (mean) rounded to a whole level (<= 0.5 |1 - f|).
# Hue: PIL holds hue in 1/255 turns, rounded on the way in (<= 0.5/255) and torchvision truncates the
# shift to a whole step (< 1/255); 1.5/255 of a turn moves a saturated channel by up to 9 levels.
PIXEL_CASES = [
    ("crop + downscale", dict(crop=[3, 5, 20, 30]), 16, lambda im: im.crop((5, 3, 35, 23)).resize((16, 16), Image.BILINEAR), 1.0),
    ("crop + upscale", dict(crop=[2, 4, 14, 11]), 32, lambda im: im.crop((4, 2, 15, 16)).resize((32, 32), Image.BILINEAR), 1.0),
    ("crop + flip", dict(crop=[2, 4, 14, 11], flip=True), 32,
     lambda im: TF.hflip(im.crop((4, 2, 15, 16)).resize((32, 32), Image.BILINEAR)), 1.0),
    ("brightness", dict(jitter=[1.3, 1, 1, 0]), None, lambda im: TF.adjust_brightness(im, 1.3), 1.0),
    ("contrast", dict(jitter=[1, 0.7, 1, 0]), None, lambda im: TF.adjust_contrast(im, 0.7), 1.2),
    ("saturation", dict(jitter=[1, 1, 1.2, 0]), None, lambda im: TF.adjust_saturation(im, 1.2), 1.2),
    ("hue", dict(jitter=[1, 1, 1, 0.08]), None, lambda im: TF.adjust_hue(im, 0.08), 9.0),
    ("contrast then brightness", dict(jitter=[1.4, 0.6, 1, 0], jitter_order=[1, 0, 2, 3]), None,
     lambda im: TF.adjust_brightness(TF.adjust_contrast(im, 0.6), 1.4), 2.0),
    ("grayscale", dict(grayscale=True), None, lambda im: TF.rgb_to_grayscale(im, 3), 1.0),
    ("blur", dict(blur_sigma=1.3), None, lambda im: im.filter(PIL.ImageFilter.GaussianBlur(1.3)), 3.0),
    ("solarize", dict(solarize=True), None, lambda im: TF.solarize(im, 128), 1.0),
]


@pytest.mark.parametrize("name, changes, size, reference, tolerance", PIXEL_CASES, ids=[c[0] for c in PIXEL_CASES])
def test_one_step_matches_the_pil_view(name, changes, size, reference, tolerance):
    image = _smooth_image()
    height, width = image.shape[:2]
    if size is None:   # a square crop of the image at its own size: the resize is the identity
        image, size = image[:, :height], height
        width = height
    got = batched_levels(image, identity_params(height, width, **changes), size)
    want = np.asarray(reference(Image.fromarray(image)), dtype=np.float64)
    want = want if want.ndim == 3 else np.repeat(want[..., None], 3, axis=2)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= tolerance + 1e-3, f"{name}: {np.abs(got - want).max():.2f} levels"


def test_a_step_that_changes_nothing_changes_nothing():
    image = _smooth_image()[:, :28]
    got = batched_levels(image, identity_params(28, 28), 28)
    assert np.abs(got - image).max() < 1e-3


def test_box_blur_radius_is_pils():
    """Gwosdek et al.'s fractional box radius as PIL computes it: sigma^2 = passes * var(box)."""
    sigma = torch.tensor([0.3, 1.0, 2.0, 5.0])
    radius = box_blur_radius(sigma).double()
    whole, fraction = radius.floor(), radius - radius.floor()
    # The variance of the extended box [a, 1, ..., 1, a] / (2r + 1) is the target sigma^2 / 3.
    offsets = [torch.arange(-int(w) - 1, int(w) + 2).double() for w in whole]
    variance = torch.stack([((o ** 2) * torch.where(o.abs() <= w, 1.0, f)).sum() / (2 * r + 1)
                            for o, w, f, r in zip(offsets, whole, fraction, radius)])
    assert torch.allclose(3 * variance, sigma.double() ** 2, rtol=1e-6)


@pytest.mark.parametrize("height, width", [(2, 400), (400, 2), (30, 30)])
def test_crop_fallback_is_torchvisions(height, width):
    """When no try fits (a 2 x 400 image at scale >= 0.5), torchvision falls back to a central crop
    clipped to the ratio range; the square case never falls back. Compared with get_params itself."""
    spec = AugmentSpec(IMAGE_SIZE, min_scale=0.5)
    crop = sample_views(spec, 0, 0, np.arange(200), height, width)[0].crop
    image = Image.new("RGB", (width, height))
    torch.manual_seed(0)
    want = {transforms.RandomResizedCrop.get_params(image, [0.5, 1.0], list(spec.ratio)) for _ in range(200)}
    got = {tuple(int(v) for v in box) for box in crop}
    if height == width:
        assert len(got) > 20 and len(want) > 20   # random boxes, no fallback
        assert all(h * w >= 0.5 * height * width - 30 for _, _, h, w in got)
    else:
        assert got == want and len(got) == 1, (got, want)
