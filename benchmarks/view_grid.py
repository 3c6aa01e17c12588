"""A PNG of two-view augmentations from each pipeline, for a person to compare by eye.

Eight Fashion-MNIST training images (random 28 x 28 noise if no copy is installed) at 32 px. For
each pipeline (pil, device, and dali on its CPU backend when installed) a panel with one row per
image: the image, then view 1 and view 2 in four epochs. The pipelines draw from different streams
(PIL from torch's generator, the others from augment.sample_views), so a cell in one panel is not
the same draw as the cell beside it; what should match is the spread of crops, colours, blur and
solarisation across cells. The pixel-level agreement for equal parameters is tested in
tests/pretrain/test_augment.py and test_dali.py.

    python benchmarks/view_grid.py --out benchmarks/results/views_by_pipeline.png
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from pretrain.data import IndexedImageFolder, SeededAugmentation, TwoViews  # noqa: E402
from pretrain.pipelines import DevicePipeline, dali_available  # noqa: E402
from data_pipeline import fashion_mnist_or_random  # noqa: E402

SIZE, MIN_SCALE, EPOCHS, ZOOM = 32, 0.2, 4, 3


def to_tile(view: torch.Tensor) -> Image.Image:
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    pixels = ((view.cpu() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels).resize((SIZE * ZOOM, SIZE * ZOOM), Image.NEAREST)


def panel(title: str, originals: list[Image.Image], views: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> Image.Image:
    """Rows: images; columns: the original, then (view 1, view 2) for each epoch."""
    tile, gap, top = SIZE * ZOOM, 4, 40
    columns = 1 + 2 * EPOCHS
    canvas = Image.new("RGB", (columns * (tile + gap) + gap, top + len(originals) * (tile + gap) + gap), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 4), title, fill="black")
    for c in range(EPOCHS):
        draw.text((gap + (1 + 2 * c) * (tile + gap), 22), f"epoch {c}: view 1, view 2", fill="black")
    for r, original in enumerate(originals):
        y = top + r * (tile + gap)
        canvas.paste(original.resize((tile, tile), Image.NEAREST), (gap, y))
        for epoch in range(EPOCHS):
            for v in range(2):
                canvas.paste(to_tile(views[epoch][v][r]), (gap + (1 + 2 * epoch + v) * (tile + gap), y))
    return canvas


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/views_by_pipeline.png")
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        dataset, source = fashion_mnist_or_random(Path(tmp), 1000)
        indices = np.arange(args.images)
        originals = [dataset[int(i)][0] for i in indices]
        seeded = SeededAugmentation(dataset, TwoViews(SIZE, MIN_SCALE), seed=0)
        pil = {}
        for epoch in range(EPOCHS):
            seeded.set_epoch(epoch)
            pairs = [seeded[int(i)][0] for i in indices]
            pil[epoch] = (torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]))
        device = DevicePipeline(dataset, SIZE, MIN_SCALE, seed=0, batch_size=args.images, device=torch.device("cpu"))
        panels = [panel(f"pil (SeededAugmentation + TwoViews), {source}", originals, pil),
                  panel("device (augment.augment_batch)", originals,
                        {epoch: device.views(epoch, indices) for epoch in range(EPOCHS)})]
        if dali_available():
            from pretrain.dali import DaliPipeline
            folder = Path(tmp) / "folder" / "c"
            folder.mkdir(parents=True)
            for i, image in enumerate(originals):
                image.save(folder / f"{i:03d}.png")
            dali = DaliPipeline(IndexedImageFolder(folder.parent), SIZE, MIN_SCALE, seed=0, batch_size=args.images,
                                workers=1, device=torch.device("cpu"))
            panels.append(panel("dali (CPU backend; crops by DALI, the rest augment_batch)", originals,
                                {epoch: dali.views(epoch, indices) for epoch in range(EPOCHS)}))
    width = max(p.width for p in panels)
    grid = Image.new("RGB", (width, sum(p.height for p in panels)), "white")
    y = 0
    for p in panels:
        grid.paste(p, (0, y))
        y += p.height
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    print(out)
    return out


if __name__ == "__main__":
    main()
