"""One augmentation spec (BYOL's two asymmetric views), its per-image parameters, and a batched torch
implementation of it that runs on whatever device holds the images.

Every pipeline (``pil``, ``device``, ``dali``) applies the same spec:
:func:`pretrain.data.byol_view_transform` builds the PIL reference from it, :func:`augment_batch`
applies it to a uint8 batch with one tensor op per step, and the DALI pipeline feeds it the same
parameter arrays. The parameters of one image in one epoch come from a generator seeded by
:func:`pretrain.data.augmentation_seed` (seed, epoch, image id), so two images never share them, a
rerun reproduces them, and a resumed epoch draws exactly what the uninterrupted one drew.

:func:`sample_views` turns each image's seeded stream into a fixed "tape" of uniforms (one slot per
random decision), then maps the whole batch's tapes to parameters with vectorised numpy, following
torchvision's samplers step by step (RandomResizedCrop's ten tries and central fallback, ColorJitter's
random order, RandomApply's coin), so the distribution is the PIL path's; ``tests/pretrain/
test_augment.py`` checks this against torchvision's own draws.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

# torchvision's ImageNet statistics, used by every backbone here and by the detectron2 configs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# BYOL Table 6 / MoCo v3 main_moco.py: Gaussian blur with sigma drawn from [0.1, 2.0] at 224 px.
BLUR_SIGMA_224 = (0.1, 2.0)
# ITU-R 601-2 luma, what PIL's convert("L") and torchvision's rgb_to_grayscale use.
LUMA = (0.299, 0.587, 0.114)
# BYOL's colour jitter (Table 6): brightness, contrast, saturation, hue.
BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)
CROP_TRIES = 10   # torchvision RandomResizedCrop.get_params
BLUR_PASSES = 3   # PIL's GaussianBlur: three extended box blurs


@dataclasses.dataclass(frozen=True)
class ViewSpec:
    """What differs between BYOL's two views (Grill et al., 2020, Table 6)."""
    blur_p: float
    solarize_p: float


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """BYOL's two-view augmentation as MoCo v3 uses it; the defaults are the paper's values."""
    image_size: int
    min_scale: float = 0.08
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: tuple[float, float, float, float] = BYOL_JITTER
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    flip_p: float = 0.5
    solarize_threshold: int = 128
    views: tuple[ViewSpec, ...] = (ViewSpec(blur_p=1.0, solarize_p=0.0), ViewSpec(blur_p=0.1, solarize_p=0.2))

    @property
    def blur_sigma(self) -> tuple[float, float]:
        """BYOL's range at 224 px scaled with the side: a 32 px view is blurred by the same fraction of
        its width as a 224 px one."""
        scale = self.image_size / 224
        return BLUR_SIGMA_224[0] * scale, BLUR_SIGMA_224[1] * scale

    @property
    def jitter_ranges(self) -> tuple[tuple[float, float], ...]:
        b, c, s, h = self.jitter
        return (1 - b, 1 + b), (1 - c, 1 + c), (1 - s, 1 + s), (-h, h)


def byol_spec(image_size: int, min_scale: float = 0.08, *, jitter_strength: float = 1.0, jitter_p: float = 0.8,
              grayscale_p: float = 0.2, blur_p: tuple[float, float] = (1.0, 0.1),
              solarize_p: tuple[float, float] = (0.0, 0.2)) -> AugmentSpec:
    """BYOL's spec with the knobs the recipes set (``PretrainConfig``'s augmentation fields):
    ``jitter_strength`` scales BYOL's jitter; ``blur_p`` and ``solarize_p`` are (view 1, view 2)."""
    return AugmentSpec(image_size, min_scale, jitter=tuple(jitter_strength * value for value in BYOL_JITTER),
                       jitter_p=jitter_p, grayscale_p=grayscale_p,
                       views=(ViewSpec(blur_p[0], solarize_p[0]), ViewSpec(blur_p[1], solarize_p[1])))


def as_spec(spec: AugmentSpec | int, min_scale: float = 0.08) -> AugmentSpec:
    """``spec`` itself, or BYOL's spec at image size ``spec`` with crops no smaller than ``min_scale``."""
    return spec if isinstance(spec, AugmentSpec) else AugmentSpec(spec, min_scale)


@dataclasses.dataclass
class ViewParams:
    """The parameters of one view for a batch of images (numpy arrays, one row per image).

    ``crop`` is (top, left, height, width) in source pixels, as torchvision's ``get_params`` returns;
    ``jitter`` holds brightness, contrast, saturation and hue factors (identity where not jittered);
    ``jitter_order`` the order of the four ops (0..3 as ColorJitter numbers them); ``blur_sigma`` is
    0 where the view is not blurred."""
    crop: np.ndarray
    flip: np.ndarray
    jittered: np.ndarray
    jitter: np.ndarray
    jitter_order: np.ndarray
    grayscale: np.ndarray
    blur_sigma: np.ndarray
    solarize: np.ndarray


# One slot per random decision of a view: 2 per crop try, the crop offset, RandomApply's coin and the
# four jitter factors, the op order, grayscale, blur coin and sigma, solarize, flip.
_CROP, _OFFSET, _JITTER_P, _FACTORS, _ORDER = 0, 2 * CROP_TRIES, 2 * CROP_TRIES + 2, 2 * CROP_TRIES + 3, 2 * CROP_TRIES + 7
_GRAY, _BLUR_P, _SIGMA, _SOLARIZE, _FLIP = _ORDER + 4, _ORDER + 5, _ORDER + 6, _ORDER + 7, _ORDER + 8
SLOTS_PER_VIEW = _FLIP + 1


def image_tapes(seed: int, epoch: int, image_ids: np.ndarray, slots: int) -> np.ndarray:
    """``slots`` uniforms in [0, 1) per image, from the image's own generator (seed, epoch, image id)."""
    from pretrain.data import augmentation_seed   # data.py builds the PIL views from this module
    return np.stack([np.random.default_rng(augmentation_seed(seed, epoch, int(i))).random(slots)
                     for i in np.asarray(image_ids).reshape(-1)]).reshape(-1, slots)


def _crop_boxes(u: np.ndarray, heights: np.ndarray, widths: np.ndarray, scale: tuple[float, float],
                ratio: tuple[float, float]) -> np.ndarray:
    """torchvision's RandomResizedCrop.get_params for every row of ``u`` at once."""
    area = (heights * widths).astype(np.float64)[:, None]
    tries = u[:, _CROP:_CROP + 2 * CROP_TRIES].reshape(-1, CROP_TRIES, 2)
    target = area * (scale[0] + (scale[1] - scale[0]) * tries[..., 0])
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(log_low + (log_high - log_low) * tries[..., 1])
    w = np.round(np.sqrt(target * aspect)).astype(np.int64)   # numpy and Python both round half to even
    h = np.round(np.sqrt(target / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= widths[:, None]) & (h > 0) & (h <= heights[:, None])
    first = fits.argmax(axis=1)
    rows = np.arange(len(u))
    h, w, found = h[rows, first], w[rows, first], fits.any(axis=1)
    top = np.floor(u[:, _OFFSET] * (heights - h + 1)).astype(np.int64)
    left = np.floor(u[:, _OFFSET + 1] * (widths - w + 1)).astype(np.int64)
    # After ten misses: the central crop of the largest box the ratio range allows.
    in_ratio = widths / heights
    fall_w = np.where(in_ratio < min(ratio), widths,
                      np.where(in_ratio > max(ratio), np.round(heights * max(ratio)), widths)).astype(np.int64)
    fall_h = np.where(in_ratio < min(ratio), np.round(widths / min(ratio)), heights).astype(np.int64)
    h, w = np.where(found, h, fall_h), np.where(found, w, fall_w)
    top = np.where(found, top, (heights - h) // 2)
    left = np.where(found, left, (widths - w) // 2)
    return np.stack([top, left, h, w], axis=1)


def sample_views(spec: AugmentSpec, seed: int, epoch: int, image_ids, heights, widths) -> list[ViewParams]:
    """The parameters of every view of every image in ``image_ids`` (source sizes ``heights`` x
    ``widths``, scalars or one per image), in the order of ``spec.views``."""
    ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
    heights = np.broadcast_to(np.asarray(heights, dtype=np.int64), ids.shape)
    widths = np.broadcast_to(np.asarray(widths, dtype=np.int64), ids.shape)
    tape = image_tapes(seed, epoch, ids, SLOTS_PER_VIEW * len(spec.views))
    sigma_low, sigma_high = spec.blur_sigma
    views = []
    for index, view in enumerate(spec.views):
        u = tape[:, index * SLOTS_PER_VIEW:(index + 1) * SLOTS_PER_VIEW]
        jittered = u[:, _JITTER_P] < spec.jitter_p
        factors = np.stack([low + (high - low) * u[:, _FACTORS + k]
                            for k, (low, high) in enumerate(spec.jitter_ranges)], axis=1)
        factors = np.where(jittered[:, None], factors, np.array([1.0, 1.0, 1.0, 0.0]))
        blurred = u[:, _BLUR_P] < view.blur_p
        views.append(ViewParams(
            crop=_crop_boxes(u, heights, widths, (spec.min_scale, 1.0), spec.ratio),
            flip=u[:, _FLIP] < spec.flip_p,
            jittered=jittered,
            jitter=factors,
            jitter_order=np.argsort(u[:, _ORDER:_ORDER + 4], axis=1),   # a uniform random permutation
            grayscale=u[:, _GRAY] < spec.grayscale_p,
            blur_sigma=np.where(blurred, sigma_low + (sigma_high - sigma_low) * u[:, _SIGMA], 0.0),
            solarize=u[:, _SOLARIZE] < view.solarize_p,
        ))
    return views


# ---- the batched implementation ---------------------------------------------------------------

def to_device(values, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Host values on ``device`` without a host sync: a blocking copy to a GPU waits for all queued
    work (the previous training step), so the views of the next batch could not be prepared while
    it runs. Pinned memory and ``non_blocking`` keep the copy in the stream's order instead."""
    tensor = torch.as_tensor(values, dtype=dtype)
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def resize_matrices(start: torch.Tensor, length: torch.Tensor, source: int, size: int,
                    flip: torch.Tensor | None = None) -> torch.Tensor:
    """(N, size, source) matrices that crop ``[start, start + length)`` of an axis and resize it to
    ``size`` as PIL's bilinear ``Image.resize`` does: a triangle filter widened by the scale when
    shrinking (PIL's antialias), its weights normalised over the crop, so the crop's edge pixels are
    repeated, never its neighbours read. ``flip`` reverses the output axis of the chosen rows."""
    device = start.device
    start, length = start.to(torch.float64)[:, None, None], length.to(torch.float64)[:, None, None]
    scale = length / size
    support = scale.clamp(min=1.0)
    out = torch.arange(size, device=device, dtype=torch.float64)[None, :, None]
    centre = (out + 0.5) * scale
    pixel = torch.arange(source, device=device, dtype=torch.float64)[None, None, :] - start
    weight = (1 - ((pixel + 0.5 - centre) / support).abs()).clamp(min=0)
    weight = torch.where((pixel >= 0) & (pixel < length), weight, torch.zeros((), dtype=weight.dtype, device=device))
    weight = weight / weight.sum(dim=2, keepdim=True)
    if flip is not None:
        weight = torch.where(flip[:, None, None], weight.flip(1), weight)
    return weight.to(torch.float32)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """RGB -> HSV, hue + shift (in turns), -> RGB, per sample (torchvision's adjust_hue, batched)."""
    r, g, b = x.unbind(1)
    high, low = x.max(dim=1).values, x.min(dim=1).values
    chroma = high - low
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(high == r, ((g - b) / safe) % 6,
                      torch.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    hue = torch.where(chroma > 0, hue, torch.zeros_like(hue))
    hue = (hue + shift[:, None, None]) % 1.0
    saturation = torch.where(high > 0, chroma / torch.where(high > 0, high, torch.ones_like(high)),
                             torch.zeros_like(high))
    k = (torch.arange(5.0, 0.0, -2.0, device=x.device)[None, :, None, None] + 6 * hue[:, None]) % 6   # 5, 3, 1
    ramp = torch.minimum(k, 4 - k).clamp(0, 1)
    return high[:, None] * (1 - saturation[:, None] * ramp)


def _color_jitter(x: torch.Tensor, factors: torch.Tensor, order: np.ndarray, jittered: np.ndarray) -> torch.Tensor:
    """ColorJitter with each sample's own factors and op order. Brightness, contrast and saturation
    are blends ``f * x + (1 - f) * d`` with d = black, the grey level's mean, the grey image
    (PIL's ImageEnhance); hue rotates the HSV hue.

    Which samples take which op at each position is known on the host (the parameters are numpy),
    so each op runs only on its samples, with index tensors sent to the device: no host sync, and
    the costly hue runs once per jittered sample rather than at all four positions."""
    x = x.clone()
    for position in range(4):
        ops = order[:, position]
        linear = np.flatnonzero(jittered & (ops != 3))
        hue = to_device(np.flatnonzero(jittered & (ops == 3)), x.device)
        op = to_device(ops[linear], x.device)[:, None, None, None]
        linear = to_device(linear, x.device)
        chosen, factor = x[linear], factors[linear, op[:, 0, 0, 0]][:, None, None, None]
        gray = _gray(chosen)
        degenerate = torch.where(op == 0, torch.zeros_like(gray),
                                 torch.where(op == 1, gray.mean(dim=(2, 3), keepdim=True), gray))
        x[linear] = (factor * chosen + (1 - factor) * degenerate).clamp(0, 1)
        x[hue] = _shift_hue(x[hue], factors[hue, 3])
    return x


def box_blur_radius(sigma: torch.Tensor, passes: int = BLUR_PASSES) -> torch.Tensor:
    """The fractional box radius whose ``passes``-fold box blur has standard deviation ``sigma``
    (Gwosdek et al., 2011, Eqs. 7, 11, 14), as PIL's GaussianBlur computes it; 0 for sigma 0."""
    variance = sigma.to(torch.float64) ** 2 / passes
    whole = torch.floor((torch.sqrt(12 * variance + 1) - 1) / 2)
    fraction = (2 * whole + 1) * (whole * (whole + 1) - 3 * variance) / (6 * (variance - (whole + 1) ** 2))
    return whole + fraction


def _box_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """PIL's GaussianBlur: three extended box blurs per axis, edges repeated, each sample its own
    radius (grouped convolutions, one kernel per sample and channel)."""
    n, c, height, width = x.shape
    radius = box_blur_radius(sigma)
    reach = int(box_blur_radius(torch.tensor([max_sigma]))[0].floor()) + 1
    offset = torch.arange(-reach, reach + 1, device=x.device, dtype=torch.float64).abs()[None, :]
    whole, fraction = radius.floor()[:, None], (radius - radius.floor())[:, None]
    kernel = torch.where(offset <= whole, torch.ones_like(offset),
                         torch.where(offset == whole + 1, fraction, torch.zeros_like(offset)))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(x.dtype).repeat_interleave(c, dim=0)
    flat = x.reshape(1, n * c, height, width)
    for _ in range(BLUR_PASSES):
        flat = torch.nn.functional.conv2d(torch.nn.functional.pad(flat, (reach, reach, 0, 0), mode="replicate"),
                                          kernel[:, None, None, :], groups=n * c)
    for _ in range(BLUR_PASSES):
        flat = torch.nn.functional.conv2d(torch.nn.functional.pad(flat, (0, 0, reach, reach), mode="replicate"),
                                          kernel[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, height, width)


def augment_batch(images: torch.Tensor, params: ViewParams, spec: AugmentSpec, cropped: bool = False) -> torch.Tensor:
    """One view of a uint8 batch (N, C, H, W), C = 1 or 3, on its own device: crop + resize (PIL's
    bilinear), jitter, grayscale, blur, solarize, flip, normalise; returns (N, 3, S, S) float32.

    ``cropped``: the images are the views' crops already resized to S (DALI does that step), so
    only the flip remains of it. Otherwise the flip is folded into the resize (it commutes with
    every later step: they are pointwise, global or symmetric)."""
    device, size = images.device, spec.image_size
    n, _, height, width = images.shape

    def tensor(array, dtype=None):
        return to_device(array, device, dtype)

    x = images.to(torch.float32) / 255
    if cropped:
        if (height, width) != (size, size):
            raise ValueError(f"cropped views are {height}x{width}, expected {size}x{size}")
        x = torch.where(tensor(params.flip)[:, None, None, None], x.flip(3), x)
    else:
        crop = tensor(params.crop)
        rows = resize_matrices(crop[:, 0], crop[:, 2], height, size)
        cols = resize_matrices(crop[:, 1], crop[:, 3], width, size, flip=tensor(params.flip))
        x = rows[:, None] @ x @ cols[:, None].transpose(2, 3)
    x = x.expand(n, 3, size, size) if x.shape[1] == 1 else x
    x = _color_jitter(x, tensor(params.jitter, torch.float32), params.jitter_order, params.jittered)
    x = torch.where(tensor(params.grayscale)[:, None, None, None], _gray(x).expand_as(x), x)
    x = _box_blur(x, tensor(params.blur_sigma, torch.float32), spec.blur_sigma[1])
    # PIL solarises the rounded 8-bit value: v >= threshold, i.e. x >= (threshold - 0.5) / 255.
    bright = x >= (spec.solarize_threshold - 0.5) / 255
    x = torch.where(tensor(params.solarize)[:, None, None, None] & bright, 1 - x, x)
    mean = tensor(IMAGENET_MEAN, torch.float32)[None, :, None, None]
    std = tensor(IMAGENET_STD, torch.float32)[None, :, None, None]
    return ((x - mean) / std).contiguous()
