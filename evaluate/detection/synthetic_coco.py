"""Small synthetic COCO-format instance-segmentation sets, for tests and the demo.

No COCO subset can be downloaded on our machines, so the detection pipeline (registration,
Mask R-CNN training, COCOEvaluator) is exercised on images of drawn shapes instead. Each object
is a filled polygon; its annotation is that same polygon, so the ground truth is exact and
feeding it back as predictions scores AP = 1.0 through pycocotools (tests/evaluate/detection/test_synthetic_coco.py).

The layout is COCO 2017's, which detectron2's ``register_coco_instances`` and our launcher read:

    OUT_DIR/annotations/instances_train2017.json
    OUT_DIR/annotations/instances_val2017.json
    OUT_DIR/train2017/000000000001.jpg ...
    OUT_DIR/val2017/...

Usage: python -m evaluate.detection.synthetic_coco OUT_DIR --train 32 --val 8 --size 128 --seed 0
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from evaluate.errors import DetectionError
from pretrain.errors import ArgumentParser, cli_main
from pretrain.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

# Three classes whose outlines differ, so a detector can tell them apart from shape alone
# (colours are drawn at random per object and carry no class information).
CATEGORIES = ({"id": 1, "name": "square", "supercategory": "shape"},
              {"id": 2, "name": "triangle", "supercategory": "shape"},
              {"id": 3, "name": "disk", "supercategory": "shape"})
_DISK_VERTICES = 24
_MIN_SIZE = 32  # shapes are size/6..size/2.5 wide: smaller images give objects of a few pixels


def _shape_polygon(category_id: int, x0: float, y0: float, extent: float) -> list[float]:
    """Flat [x1, y1, x2, y2, ...] outline of one shape inside the square box (x0, y0, extent)."""
    if category_id == 1:
        points = [(x0, y0), (x0 + extent, y0), (x0 + extent, y0 + extent), (x0, y0 + extent)]
    elif category_id == 2:
        points = [(x0 + extent / 2, y0), (x0 + extent, y0 + extent), (x0, y0 + extent)]
    else:
        radius = extent / 2
        points = [(x0 + radius + radius * math.cos(2 * math.pi * k / _DISK_VERTICES),
                   y0 + radius + radius * math.sin(2 * math.pi * k / _DISK_VERTICES))
                  for k in range(_DISK_VERTICES)]
    # Integer vertices: the drawn pixels and the annotation then rasterise the same way.
    return [float(round(c)) for point in points for c in point]


def _polygon_area(flat: list[float]) -> float:
    xs, ys = flat[0::2], flat[1::2]
    return 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs))))


def _boxes_overlap(a: tuple[float, float, float], b: tuple[float, float, float], gap: float) -> bool:
    ax, ay, asz = a
    bx, by, bsz = b
    return not (ax + asz + gap <= bx or bx + bsz + gap <= ax or ay + asz + gap <= by or by + bsz + gap <= ay)


def draw_image(rng: np.random.Generator, size: int, max_objects: int
               ) -> tuple[Image.Image, list[tuple[int, list[float]]]]:
    """One image with 1..max_objects non-overlapping shapes; returns it and (category_id, polygon) pairs.

    Shapes never overlap, so no object is occluded and each drawn region is exactly its polygon.
    """
    background = rng.integers(0, 256, size=3)
    noise = rng.normal(0.0, 8.0, size=(size, size, 3))
    pixels = np.clip(background[None, None, :] + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)  # uint8 (H, W, 3): RGB
    draw = ImageDraw.Draw(image)
    placed: list[tuple[float, float, float]] = []
    objects: list[tuple[int, list[float]]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(50):
            extent = float(rng.uniform(size / 6, size / 2.5))
            x0 = float(rng.uniform(1, size - extent - 2))
            y0 = float(rng.uniform(1, size - extent - 2))
            if not any(_boxes_overlap((x0, y0, extent), other, gap=2.0) for other in placed):
                break
        else:
            continue
        category_id = int(rng.integers(1, len(CATEGORIES) + 1))
        polygon = _shape_polygon(category_id, x0, y0, extent)
        # A colour far from the background keeps every shape visible.
        colour = tuple(int(c) for c in (background + rng.integers(80, 176, size=3)) % 256)
        draw.polygon(list(zip(polygon[0::2], polygon[1::2])), fill=colour)
        placed.append((x0, y0, extent))
        objects.append((category_id, polygon))
    return image, objects



def _write_split(out_dir: Path, split: str, count: int, size: int, rng: np.random.Generator,
                 first_image_id: int, max_objects: int) -> dict[str, Any]:
    image_dir = out_dir / f"{split}2017"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for offset in range(count):
        image_id = first_image_id + offset
        image, objects = draw_image(rng, size, max_objects)
        file_name = f"{image_id:012d}.jpg"
        tmp = image_dir / f".{file_name}.tmp"
        image.save(tmp, format="JPEG", quality=95)
        os.replace(tmp, image_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for category_id, polygon in objects:
            xs, ys = polygon[0::2], polygon[1::2]
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": [polygon],
                "area": _polygon_area(polygon),
                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                "iscrowd": 0,
            })
    return {"info": {"description": f"snclr-bench synthetic shapes ({split})", "version": "1.0"},
            "licenses": [], "images": images, "annotations": annotations, "categories": list(CATEGORIES)}


def generate_synthetic_coco(out_dir: str | os.PathLike, *, train: int = 32, val: int = 8, size: int = 128,
                            seed: int = 0, max_objects: int = 3) -> dict[str, Path]:
    """Write a synthetic COCO-format instance-segmentation set in the COCO 2017 layout.

    The same (train, val, size, seed, max_objects) always gives the same annotations and pixels.
    Returns the paths of the two annotation files, keyed "train" and "val".
    """
    if train < 1 or val < 1:
        raise DetectionError(f"--train and --val must be at least 1, got train={train}, val={val}")
    if size < _MIN_SIZE:
        raise DetectionError(f"--size must be at least {_MIN_SIZE} pixels, got {size}")
    if max_objects < 1:
        raise DetectionError(f"--max-objects must be at least 1, got {max_objects}")
    out_dir = Path(out_dir)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = {}
    # Distinct image ids across splits, as in COCO, so a mixed-up split shows up in evaluation.
    for split, count, first_id in (("train", train, 1), ("val", val, train + 1)):
        data = _write_split(out_dir, split, count, size, rng, first_id, max_objects)
        path = out_dir / "annotations" / f"instances_{split}2017.json"
        atomic_write_bytes(path, json.dumps(data).encode("utf-8"))
        log.info("wrote %s: %d images, %d objects", path, len(data["images"]), len(data["annotations"]))
        paths[split] = path
    return paths


@cli_main
def main(argv: list[str] | None = None) -> int | None:
    parser = ArgumentParser(
        prog="python -m evaluate.detection.synthetic_coco",
        description="Write a small synthetic COCO-format instance-segmentation set (drawn squares, triangles "
                    "and disks with exact polygon masks) in the COCO 2017 layout, for tests and the demo.")
    parser.add_argument("out_dir", help="output folder (annotations/, train2017/, val2017/ are created in it)")
    parser.add_argument("--train", type=int, default=32, help="number of training images (default 32)")
    parser.add_argument("--val", type=int, default=8, help="number of validation images (default 8)")
    parser.add_argument("--size", type=int, default=128, help="square image side in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--max-objects", type=int, default=3, help="most objects per image (default 3)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = generate_synthetic_coco(args.out_dir, train=args.train, val=args.val, size=args.size,
                                    seed=args.seed, max_objects=args.max_objects)
    print(f"wrote {paths['train']} and {paths['val']}")


if __name__ == "__main__":
    sys.exit(main())
