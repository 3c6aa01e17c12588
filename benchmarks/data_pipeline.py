"""Cost of the two-view augmentation: the PIL path before and after its blur change, and the input
pipelines behind --data-pipeline side by side.

Makes real-size JPEGs (default 500 x 375, the typical ImageNet photo) in a temporary folder, then
1. times decode + ``TwoViews`` per image on one thread, for the torchvision ``GaussianBlur(23)`` view 1
   used before (rebuilt here) and the PIL blur used now, alternating image by image;
2. measures images/s through a DataLoader (the training path: ImageFolder + SeededAugmentation)
   for 1..N workers, both variants.

    python benchmarks/data_pipeline.py --images 48 --max-workers 2
    python benchmarks/data_pipeline.py --json out.json      # also write the numbers as JSON

With ``--pipelines`` it compares the pipelines instead (pretrain/pipelines.py):
3. 32 px, Fashion-MNIST (or random IDX files of its shape): pairs/s of the device pipeline on
   ``--device`` against SeededAugmentation + DataLoader for each worker count, and the CPU time of
   one pair on one thread for both;
4. 224 px JPEG folder: pairs/s of DALI (``--device cuda``: GPU decode; cpu: its CPU backend) for each
   thread count in ``--dali-threads``, against the PIL loader.

    python benchmarks/data_pipeline.py --pipelines --workers 0,1,2 --dali-threads 1,2
    python benchmarks/data_pipeline.py --pipelines --device cuda --workers 4,8,16 --dali-threads 2,4 --batch 256
"""
from __future__ import annotations

import argparse
import copy
import gzip
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
from pretrain.data import (BLUR_SIGMA_224, DataError, FashionMNIST, IndexedImageFolder, PILGaussianBlur,  # noqa: E402
                           SeededAugmentation, TwoViews, resolve_fashion_mnist_dir)
from pretrain.pipelines import DevicePipeline, dali_available  # noqa: E402


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


def fashion_mnist_or_random(tmp: Path, limit: int) -> tuple[FashionMNIST, str]:
    """The installed Fashion-MNIST, else random IDX files of its shape (the cost does not depend on
    the pixels)."""
    try:
        return FashionMNIST(resolve_fashion_mnist_dir(None), "train", limit=limit), "Fashion-MNIST"
    except DataError:   # no copy installed: random data of the same shape
        rng = np.random.default_rng(0)
        for stem, header, data in (("train-images-idx3-ubyte", (3, limit, 28, 28), rng.integers(0, 256, (limit, 28, 28))),
                                   ("train-labels-idx1-ubyte", (1, limit), np.arange(limit) % 10)):
            with gzip.open(tmp / f"{stem}.gz", "wb") as handle:
                handle.write(bytes([0, 0, 8, header[0]]) + b"".join(v.to_bytes(4, "big") for v in header[1:]))
                handle.write(data.astype(np.uint8).tobytes())
        return FashionMNIST(tmp, "train"), "random 28 x 28 IDX"


def _timed(function, device: torch.device) -> tuple[float, float]:
    """(wall, CPU) seconds of ``function()``, the device synchronised."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu


def small_pipelines(tmp: Path, device: torch.device, workers: list[int], batch: int, batches: int) -> dict:
    """32 px pairs/s: the device pipeline against SeededAugmentation + DataLoader."""
    dataset, source = fashion_mnist_or_random(tmp, 12000)
    order = np.random.default_rng(0).permutation(len(dataset))
    pipeline = DevicePipeline(dataset, 32, 0.2, seed=0, batch_size=batch, device=device)
    pipeline.views(0, order[:batch])   # warm-up (allocations, cuDNN)

    def device_batches():
        for k in range(batches):
            pipeline.views(0, order[k * batch:(k + 1) * batch])

    wall, cpu = _timed(device_batches, device)
    result = {"source": source, "batch": batch, "device": str(device),
              "device_pipeline": {"pairs_per_s": batches * batch / wall, "cpu_ms_per_pair": cpu * 1e3 / (batches * batch)}}
    seeded = SeededAugmentation(dataset, TwoViews(32, 0.2), seed=0)
    start = time.process_time()
    for index in order[:batch]:
        seeded[int(index)]
    result["pil_one_thread_cpu_ms_per_pair"] = (time.process_time() - start) * 1e3 / batch
    result["pil_loader_pairs_per_s"] = {}
    for count in workers:
        loader = torch.utils.data.DataLoader(seeded, batch_size=batch, shuffle=True, num_workers=count, drop_last=True,
                                             persistent_workers=count > 0, generator=torch.Generator().manual_seed(0))
        iterator = iter(loader)
        for _ in range(max(1, count)):   # worker start-up not timed
            next(iterator)
        start, seen = time.perf_counter(), 0
        for _ in range(batches * max(1, count)):
            (x1, _), _, _ = next(iterator)
            seen += x1.shape[0]
        result["pil_loader_pairs_per_s"][count] = seen / (time.perf_counter() - start)
        del iterator, loader
    return result


def folder_pipelines(root: Path, device: torch.device, threads: list[int], batch: int, batches: int,
                     image_size: int) -> dict:
    """224 px JPEG folder pairs/s through DALI for each thread count."""
    if not dali_available():
        return {"dali": "not installed"}
    from pretrain.dali import DaliPipeline
    folder = IndexedImageFolder(root / "train")
    order = np.resize(np.arange(len(folder)), batch * (batches + 1))
    rates = {}
    for count in threads:
        pipeline = DaliPipeline(folder, image_size, 0.08, seed=0, batch_size=batch, workers=count, device=device)
        pipeline.views(0, order[:batch])   # warm-up, and every file's header read once

        def run():
            for k in range(1, batches + 1):
                pipeline.views(0, order[k * batch:(k + 1) * batch])

        wall, cpu = _timed(run, device)
        rates[count] = {"pairs_per_s": batches * batch / wall, "main_thread_cpu_ms_per_pair": cpu * 1e3 / (batches * batch)}
        del pipeline
    return {"dali": rates, "device": str(device), "batch": batch}


def pipelines_main(args, width: int, height: int) -> dict:
    device = torch.device(args.device)
    workers = [int(w) for w in args.workers.split(",")] if args.workers else list(range(0, args.max_workers + 1))
    threads = [int(t) for t in args.dali_threads.split(",")]
    torch.set_num_threads(1)
    result: dict = {"cores": os.cpu_count(), "torch": torch.__version__, "device": str(device)}
    with tempfile.TemporaryDirectory() as tmp:
        result["small_32px"] = small_pipelines(Path(tmp), device, workers, args.batch, args.batches)
        print(json.dumps(result["small_32px"], indent=1))
        root = Path(tmp) / "jpegs"
        make_jpegs(root, args.images, width, height)
        result["folder_224px"] = folder_pipelines(root, device, threads, args.batch, args.batches, args.image_size)
        result["folder_224px"]["pil_loader_pairs_per_s"] = {
            count: loader_images_per_s(root, TwoViews(args.image_size), count, args.batch, args.batches)
            for count in workers if count > 0}
        print(json.dumps(result["folder_224px"], indent=1))
    return result


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
    parser.add_argument("--pipelines", action="store_true", help="compare the --data-pipeline pipelines instead")
    parser.add_argument("--device", default="cpu", help="device of the device and DALI pipelines (with --pipelines)")
    parser.add_argument("--dali-threads", default="1,2", help="DALI CPU thread counts to time (with --pipelines)")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.pipelines:
        result = pipelines_main(args, width, height)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return result
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
