"""Every table of one record set, compared as text with a reviewed copy (``golden/``).

The record set touches each table (1a-c, 2, 3, kNN, 4) and each rule of their layout: the
paper's epoch columns, published rows and their sources, another protocol's block, a fast probe
beside the standard one, deviation marks and their footnotes, seeds averaged, untrained baselines
closing Table 4, and the legend. Mutation testing of tables.py (docs/testing.md) found titles,
labels, row order and notes that no other test read.

After a deliberate change of the output, regenerate with ``SNCLR_REGENERATE_GOLDEN=1 pytest
tests/evaluate/report/test_golden_tables.py`` and review the diff of ``golden/`` before committing.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from evaluate.report import tables
from evaluate.report.records import ResultRecord, write_record
from pretrain.config import PretrainConfig

GOLDEN = Path(__file__).resolve().parent / "golden"
LINEAR = "linear_sgd-cos-90e-b1024-lr0.1"
REFERENCE = """table,protocol,dataset,method,backbone,pretrain_epochs,metric,value,source,note
1a,linear,imagenet-1k,SNCLR,resnet50,200,top1,73.7,SNCLR paper Table 1,
1a,linear,imagenet-1k,BYOL,resnet50,100,top1,66.5,BYOL paper,
1b,linear,imagenet-1k,DINO (with multi-crop),vit_small,300,top1,76.1,DINO paper,
2,semi_supervised_1pct,imagenet-1k,SNCLR,resnet50,800,top1,57.7,SNCLR paper Table 2,
2,semi_supervised_10pct,imagenet-1k,SNCLR,resnet50,800,top1,70.9,SNCLR paper Table 2,
3,coco_maskrcnn_r50_fpn_1x,coco-2017,SNCLR,resnet50,800,AP_bbox,40.5,SNCLR paper Table 3,
3,coco_maskrcnn_r50_c4_1x,coco-2017,MoCo v2,resnet50,800,AP_bbox,38.9,MoCo v2 paper,
4,linear,imagenet-1k,SNCLR (binary K=30),resnet50,100,top1,69.0,SNCLR paper Table 4,
4,linear,imagenet-1k,SNCLR (soft K=30),resnet50,100,top1,70.1,SNCLR paper Table 4,
"""


def config(backbone: str, dataset: str, epochs: int, **overrides) -> dict:
    return PretrainConfig(backbone=backbone, dataset=dataset, epochs=epochs, output_dir="runs/x", device="cpu",
                          **overrides).to_dict()


def record(sha: str, value: float | dict, **overrides) -> ResultRecord:
    fields = dict(method="SNCLR", backbone="resnet50", dataset="imagenet-1k", protocol="linear", protocol_id=LINEAR,
                  metrics_final=value if isinstance(value, dict) else {"top1": value}, pretrain_epochs=100,
                  checkpoint_sha256=sha * 64, deviations=[], pretrain_config=config("resnet50", "imagenet-1k", 100),
                  created_at="2026-01-01T00:00:00+00:00")
    fields.update(overrides)
    return ResultRecord(**fields)


def write_records(folder: Path) -> None:
    path = folder / "results.jsonl"
    seed1 = config("resnet50", "imagenet-1k", 100, seed=1)
    small = ["--limit-train: 100 images", "image_size: 224 -> 32"]
    for item in (
        # Table 1: two seeds, a run with deviations, a ViT, another family, a fast probe
        record("1", 70.04), record("2", 71.06, pretrain_config=seed1, pretrain_seed=1),
        record("3", 72.5, backbone="vit_small", pretrain_epochs=300, pretrain_config=config("vit_small", "imagenet-1k", 300)),
        record("4", 60.0, pretrain_epochs=200, deviations=small, pretrain_config=config("resnet50", "imagenet-1k", 200)),
        record("5", 65.0, method="MoCo v3", backbone="convnext_tiny", pretrain_config={}),
        record("1", 69.0, protocol="linear_fast", protocol_id="linear_fast_lbfgs"),
        # Table 2
        record("1", {"top1": 50.25, "top5": 75.5}, protocol="semisup_1pct", protocol_id="semisup_1pct_x"),
        record("1", {"top1": 65.0, "top5": 86.75}, protocol="semisup_10pct", protocol_id="semisup_10pct_x"),
        # Table 3
        record("1", {"AP_bbox": 38.21, "AP50_bbox": 58.0, "AP75_bbox": 41.5, "AP_segm": 33.4, "AP50_segm": 55.0,
                     "AP75_segm": 35.25}, dataset="coco-2017", protocol="detection", protocol_id="mask_rcnn_r50_fpn_1x"),
        # kNN and Table 4 on a small set: three variants and an untrained baseline
        *[record(sha, {"knn_top1_k20": v, "knn_top5_k20": v + 10}, dataset="fashion-mnist", protocol="knn",
                 protocol_id="knn_cos-k20-T0.07", backbone="resnet18", pretrain_epochs=30, deviations=["image_size: 32"],
                 pretrain_config=config("resnet18", "fashion-mnist", 30, image_size=32, neighbors=mode, k=k))
          for sha, v, mode, k in (("a", 80.5, "soft", 30), ("b", 79.0, "binary", 30), ("c", 78.25, "none", 30),
                                  ("d", 81.0, "soft", 10), ("f", 76.0, "soft", 100))],   # k=100 sorts after 30
        record("e", {"knn_top1_k20": 77.0}, dataset="fashion-mnist", protocol="knn", protocol_id="knn_cos-k20-T0.07",
               backbone="resnet18", method="random init", pretrain_epochs=0, deviations=["image_size: 32"],
               pretrain_config={}),
        record("a", 71.0, dataset="fashion-mnist", protocol="linear_fast", protocol_id="linear_fast_lbfgs",
               backbone="resnet18", pretrain_epochs=30, deviations=["image_size: 32"],
               pretrain_config=config("resnet18", "fashion-mnist", 30, image_size=32, neighbors="soft", k=30)),
    ):
        write_record(path, item)


@pytest.fixture
def record_set(tmp_path) -> tuple[Path, Path]:
    """(the records folder, the reference CSV) of the golden build."""
    write_records(tmp_path / "records")
    reference = tmp_path / "reference.csv"
    reference.write_text(REFERENCE)
    return tmp_path / "records", reference


def test_every_table_as_text(tmp_path, record_set):
    records, reference = record_set
    out = tmp_path / "out"
    written = tables.build_tables([records], [reference], out)
    got = {"files.txt": "\n".join(sorted(written)) + "\n", "tables.md": (out / "tables.md").read_text(),
           "leaderboard.csv": (out / "leaderboard.csv").read_text(),
           "table4.tex": (out / "fashion-mnist" / "table4.tex").read_text(),
           "table1a.csv": (out / "imagenet-1k" / "table1a.csv").read_text()}
    if os.environ.get("SNCLR_REGENERATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        for name, text in got.items():
            (GOLDEN / name).write_text(text, encoding="utf-8")
        pytest.skip(f"regenerated {GOLDEN}: review its diff")
    for name, text in got.items():
        assert text == (GOLDEN / name).read_text(encoding="utf-8"), f"{name} differs from {GOLDEN / name}"


def test_the_demos_table1_and_table4_are_those_of_the_full_build(record_set):
    """``table1_markdown`` / ``table4_markdown`` (what the demo prints) show the same text as the
    full build, and say so when a data set has none."""
    records, reference = record_set
    golden = (GOLDEN / "tables.md").read_text(encoding="utf-8")
    table1 = tables.table1_markdown([records], "imagenet-1k", [reference])
    assert table1.startswith("**Table 1a:") and "**Table 1c:" in table1 and table1 in golden
    table4 = tables.table4_markdown([records], "fashion-mnist")
    assert table4.startswith("**Table 4: ablation") and table4 in golden
    assert tables.table1_markdown([records], "coco-2017", ()) == "(no linear-probe results for coco-2017)\n"
    assert tables.table4_markdown([records], "coco-2017") == "(no ablation results for coco-2017)\n"


def test_a_manifest_that_is_not_ours_removes_nothing(tmp_path, record_set, caplog):
    """The manifest names what an earlier build wrote, and only those files are removed. One that
    cannot be read, is not a list, or lists non-strings is never a licence to delete."""
    out = tmp_path / "out"
    tables.build_tables([record_set[0]], [], out)
    manifest = out / tables.MANIFEST
    only_fmnist = tmp_path / "fmnist"
    write_record(only_fmnist / "results.jsonl", record("a", 71.0, dataset="fashion-mnist", protocol="linear_fast",
                                                       protocol_id="linear_fast_lbfgs", backbone="resnet18"))
    kept = out / "imagenet-1k" / "table2.md"
    for text in ("{not json", '{"imagenet-1k/table2.md": 1}', '[5, null, ["imagenet-1k/table2.md"]]'):
        manifest.write_text(text)
        caplog.clear()
        with caplog.at_level("INFO", logger="evaluate.report.tables"):
            tables.build_tables([only_fmnist], [], out)
        assert kept.is_file(), text
        assert not [r for r in caplog.records if "removed" in r.getMessage()], text
    assert [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()] == []
    manifest.write_text("{not json")
    with caplog.at_level("WARNING", logger="evaluate.report.tables"):
        caplog.clear()
        tables.build_tables([only_fmnist], [], out)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [f"{manifest}: unreadable"]
    assert caplog.records[0].getMessage().endswith("; files of an earlier run may remain")
    manifest.write_text('[5, "imagenet-1k/table2.md"]')
    tables.build_tables([only_fmnist], [], out)
    assert not kept.exists() and (out / "imagenet-1k" / "table2.tex").is_file()   # only what is listed
