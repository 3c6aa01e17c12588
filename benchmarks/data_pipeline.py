"""CPU cost of the two-view augmentation at 224 px, before and after the PIL blur, side by side.

Makes real-size JPEGs (default 500 x 375, the typical ImageNet photo) in a temporary folder, then
1. times decode + ``TwoViews`` per image on one thread, for the torchvision ``GaussianBlur(23)`` view 1
   used before (rebuilt here) and the PIL blur used now, alternating image by image;
2. measures images/s through a DataLoader (the training path: ImageFolder + SeededAugmentation)
   for 1..N workers, both variants.

    python benchmarks/data_pipeline.py --images 48 --max-workers 2
    python benchmarks/data_pipeline.py --json out.json      # also write the numbers as JSON
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pretrain.data import BLUR_SIGMA_224, IndexedImageFolder, PILGaussianBlur, SeededAugmentation, TwoViews  # noqa: E402


def before_two_views(image_size: int) -> TwoViews:
    """TwoViews with the blur of the code before: torchvision GaussianBlur(23) on the PIL image."""
    views = TwoViews(image_size)
    for pipeline in (views.first, views.second):
        for step in pipeline.transforms:
            if isinstance(step, transforms.RandomApply) and isinstance(step.transforms[0], PILGaussianBlur):
                step.transforms = [transforms.GaussianBlur(23, sigma=BLUR_SIGMA_224)]
    return views


def make_jpegs(root: Path, count: int, width: int, height: int) -> None:
    """Smooth random photos-like content (low-frequency noise), JPEG quality 90, in root/train/c/."""
    folder = root / "train" / "c"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        small = rng.integers(0, 256, size=(height // 16, width // 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.BICUBIC)
        image.save(folder / f"{i:05d}.jpg", quality=90)


def per_image_ms(files: list[Path], variants: dict[str, TwoViews], rounds: int) -> dict[str, dict[str, float]]:
    """Median ms per image on one thread: decode alone, and decode + two views per variant."""
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {"decode": [], **{name: [] for name in variants}}
    for _ in range(rounds):
        for path in files:
            start = time.perf_counter()
            with Image.open(path) as handle:
                handle.convert("RGB")
            times["decode"].append(time.perf_counter() - start)
            for name, views in variants.items():   # the variants alternate image by image
                start = time.perf_counter()
                with Image.open(path) as handle:
                    views(handle.convert("RGB"))
                times[name].append(time.perf_counter() - start)
    decode = statistics.median(times["decode"]) * 1e3
    return {name: {"decode_ms": decode, "pair_ms": statistics.median(times[name]) * 1e3,
                   "views_ms": statistics.median(times[name]) * 1e3 - decode} for name in variants}


def step_breakdown_ms(files: list[Path], image_size: int, rounds: int) -> dict[str, float]:
    """Median ms of each step of view 1 (every random step forced on), on one thread: where the time goes."""
    torch.set_num_threads(1)
    crop = transforms.RandomResizedCrop(image_size)
    steps = {"random_resized_crop": crop,
             "color_jitter (all four)": transforms.ColorJitter(0.4, 0.4, 0.2, 0.1),
             "  of which hue": transforms.ColorJitter(hue=0.1),
             "grayscale": transforms.Grayscale(3),
             "blur (PIL)": PILGaussianBlur(image_size),
             "blur (torchvision, 23 px)": transforms.GaussianBlur(23, sigma=BLUR_SIGMA_224),
             "solarize": transforms.RandomSolarize(128, p=1.0),
             "to_tensor + normalize": transforms.Compose([transforms.ToTensor(),
                                                          transforms.Normalize((0.5,) * 3, (0.25,) * 3)])}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for path in files:
            with Image.open(path) as handle:
                image = handle.convert("RGB")
            view = crop(image)
            for name, step in steps.items():
                start = time.perf_counter()
                step(image if step is crop else view)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def loader_images_per_s(root: Path, views: TwoViews, workers: int, batch: int, batches: int) -> float:
    dataset = SeededAugmentation(IndexedImageFolder(root / "train"), views, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(0))
    iterator = iter(loader)

    def next_batch():
        nonlocal iterator
        try:
            return next(iterator)
        except StopIteration:   # a small folder: start another pass
            iterator = iter(loader)
            return next(iterator)

    for _ in range(max(1, workers)):   # worker start-up and the first batch of each worker are not timed
        next_batch()
    seen, start = 0, time.perf_counter()
    for _ in range(batches * max(1, workers)):   # enough batches that every worker delivers several
        (x1, _), _, _ = next_batch()
        seen += x1.shape[0]
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48, help="JPEGs to make (default 48)")
    parser.add_argument("--size", default="500x375", help="JPEG width x height (default 500x375)")
    parser.add_argument("--image-size", type=int, default=224, help="view side (default 224)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the JPEGs for the per-image timing")
    parser.add_argument("--max-workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="DataLoader workers 1..N (default: 2 or the core count)")
    parser.add_argument("--workers", default=None,
                        help="comma-separated worker counts to time instead of 1..N (e.g. 1,2,4,8)")
    parser.add_argument("--batch", type=int, default=16, help="DataLoader batch (default 16)")
    parser.add_argument("--batches", type=int, default=3, help="timed DataLoader batches per worker")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    variants = {"before (torchvision GaussianBlur(23))": before_two_views(args.image_size),
                "after (PIL GaussianBlur)": TwoViews(args.image_size)}
    result: dict = {"cores": os.cpu_count(), "torch": torch.__version__, "jpeg": f"{width}x{height}",
                    "image_size": args.image_size, "per_image": {}, "loader_images_per_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_jpegs(root, args.images, width, height)
        files = sorted((root / "train" / "c").glob("*.jpg"))
        result["per_image"] = per_image_ms(files, variants, args.rounds)
        print(f"one thread, {width}x{height} JPEG -> two {args.image_size} px views (median ms per image):")
        for name, row in result["per_image"].items():
            print(f"  {name:<40} decode {row['decode_ms']:6.2f}  two views {row['views_ms']:6.2f}"
                  f"  total {row['pair_ms']:6.2f}")
        result["view_step_ms"] = step_breakdown_ms(files, args.image_size, args.rounds)
        print("  one view, step by step (ms): " + ", ".join(f"{k.strip()} {v:.2f}"
                                                        for k, v in result["view_step_ms"].items()))
        torch.set_num_threads(1)
        for name, views in variants.items():
            rates = {}
            counts = [int(w) for w in args.workers.split(",")] if args.workers else range(1, args.max_workers + 1)
            for workers in counts:
                rates[workers] = loader_images_per_s(root, copy.deepcopy(views), workers, args.batch, args.batches)
                print(f"  {name:<40} {workers} worker(s): {rates[workers]:7.1f} images/s")
            result["loader_images_per_s"][name] = rates
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
