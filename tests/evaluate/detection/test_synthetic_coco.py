"""The synthetic COCO set is exact: its ground truth fed back as predictions scores AP = 1.0."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from evaluate.detection.synthetic_coco import CATEGORIES, generate_synthetic_coco

REPO = Path(__file__).resolve().parents[3]


def _ground_truth_as_predictions(coco: COCO) -> list[dict]:
    predictions = []
    for ann in coco.loadAnns(coco.getAnnIds()):
        image = coco.imgs[ann["image_id"]]
        rles = mask_util.frPyObjects(ann["segmentation"], image["height"], image["width"])
        rle = mask_util.merge(rles)
        rle["counts"] = rle["counts"].decode("ascii")
        predictions.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": ann["bbox"],
                            "segmentation": rle, "score": 1.0})
    return predictions


def _average_precision(coco: COCO, predictions: list[dict], iou_type: str) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(coco, coco.loadRes(predictions), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0])


def test_ground_truth_as_predictions_scores_ap_one(tmp_path: Path) -> None:
    paths = generate_synthetic_coco(tmp_path, train=2, val=12, size=96, seed=0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(paths["val"]))
    predictions = _ground_truth_as_predictions(coco)
    assert len(predictions) >= 12  # at least one object per image
    assert _average_precision(coco, predictions, "bbox") == 1.0
    assert _average_precision(coco, predictions, "segm") == 1.0
    # A sanity check that the metric can fail: shifting every box by half its width loses AP.
    shifted = [dict(p, bbox=[p["bbox"][0] + p["bbox"][2] / 2, *p["bbox"][1:]]) for p in predictions]
    for p in shifted:
        p.pop("segmentation")
    assert _average_precision(coco, shifted, "bbox") < 0.2


def test_layout_images_and_masks_agree(tmp_path: Path) -> None:
    paths = generate_synthetic_coco(tmp_path, train=3, val=2, size=64, seed=1)
    train = json.loads(paths["train"].read_text())
    val = json.loads(paths["val"].read_text())
    assert [c["name"] for c in train["categories"]] == [c["name"] for c in CATEGORIES]
    assert {i["id"] for i in train["images"]}.isdisjoint({i["id"] for i in val["images"]})
    for split, data in (("train", train), ("val", val)):
        for image in data["images"]:
            pixels = np.asarray(Image.open(tmp_path / f"{split}2017" / image["file_name"]))
            assert pixels.shape == (64, 64, 3)
    # The drawn shape differs from the background: the mask region's mean colour is far from the rest.
    ann = train["annotations"][0]
    image = next(i for i in train["images"] if i["id"] == ann["image_id"])
    pixels = np.asarray(Image.open(tmp_path / "train2017" / image["file_name"])).astype(float)
    mask = mask_util.decode(mask_util.merge(mask_util.frPyObjects(ann["segmentation"], 64, 64))).astype(bool)
    x, y, w, h = ann["bbox"]
    assert mask.sum() == pytest.approx(ann["area"], rel=0.25)
    assert x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
    others = [a for a in train["annotations"] if a["image_id"] == ann["image_id"]]
    background = np.ones_like(mask)
    for other in others:
        background &= ~mask_util.decode(mask_util.merge(mask_util.frPyObjects(other["segmentation"], 64, 64))
                                        ).astype(bool)
    assert np.abs(pixels[mask].mean(0) - pixels[background].mean(0)).max() > 30


def test_same_seed_same_set_other_seed_other_set(tmp_path: Path) -> None:
    a = generate_synthetic_coco(tmp_path / "a", train=4, val=2, size=64, seed=0)
    b = generate_synthetic_coco(tmp_path / "b", train=4, val=2, size=64, seed=0)
    c = generate_synthetic_coco(tmp_path / "c", train=4, val=2, size=64, seed=1)
    assert a["train"].read_bytes() == b["train"].read_bytes()
    assert (tmp_path / "a/train2017/000000000001.jpg").read_bytes() == \
        (tmp_path / "b/train2017/000000000001.jpg").read_bytes()
    assert a["train"].read_bytes() != c["train"].read_bytes()


def test_cli_writes_layout_and_rejects_bad_size(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "evaluate.detection.synthetic_coco", str(tmp_path / "out"), "--train", "2",
                          "--val", "1", "--size", "48", "--seed", "0"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out/annotations/instances_train2017.json").is_file()
    assert len(list((tmp_path / "out/val2017").glob("*.jpg"))) == 1
    bad = subprocess.run([sys.executable, "-m", "evaluate.detection.synthetic_coco", str(tmp_path / "bad"), "--size", "8"],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1].startswith("error: --size must be at least")
