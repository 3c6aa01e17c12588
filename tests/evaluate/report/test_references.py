"""Published Table 4 rows: their ablation knobs are read from the method name, as the paper writes it.

Break tried (mutation testing of facts.py, issue 17): every change to ``_variant_from_name`` (a
marker, the order in which markers are tried, the K pattern) survived the suite before this test.
"""
from __future__ import annotations

import json

import pytest

from evaluate.report.facts import ReferenceFileError, _variant_from_name, collect_facts


@pytest.mark.parametrize("method, knobs", [
    ("SNCLR (soft positiveness K=30)", {"neighbors": "soft", "k": 30}),
    ("SNCLR (binary neighbors K=30)", {"neighbors": "binary", "k": 30}),
    ("SNCLR (no neighbors)", {"neighbors": "none"}),
    ("SNCLR (No Neighbours, k = 300)", {"neighbors": "none", "k": 300}),
    ("SNCLR (binary, not soft)", {"neighbors": "binary"}),        # the first marker found decides
    ("SNCLR (soft, NK=3)", {"neighbors": "soft"}),                # K must be a word of its own
    ("SNCLR", {}),
])
def test_knobs_from_a_published_method_name(method, knobs):
    assert json.loads(_variant_from_name(method)) == knobs


HEADER = "table,protocol,dataset,method,backbone,pretrain_epochs,metric,value,source,note\n"


@pytest.mark.parametrize("row, message", [
    ("1a,linear_probe,imagenet-1k,X,resnet50,100,top1,70,src,", "mine.csv:2: protocol 'linear_probe' is not one of"),
    ("1a,linear,imagenet-1k,,resnet50,100,top1,70,src,", "mine.csv:2: column 'method' is empty"),
    ("1a,linear,,X,resnet50,100,top1,70,src,", "mine.csv:2: column 'dataset' is empty"),
    ("1a,linear,imagenet-1k,X,resnet50,100,top1,70,,", "mine.csv:2: column 'source' is empty"),
    ("1a,linear,imagenet-1k,X,resnet50,800ep,top1,70,src,", "mine.csv:2: pretrain_epochs '800ep' is not an integer"),
    ("1a,linear,imagenet-1k,X,resnet50,100,top1,inf,src,", "mine.csv:2: value 'inf' is not a finite number"),
])
def test_a_bad_reference_row_is_one_line(tmp_path, row, message):
    path = tmp_path / "mine.csv"
    path.write_text(HEADER + row + "\n")
    with pytest.raises(ReferenceFileError) as error:
        collect_facts([], [path])
    assert str(error.value).startswith(f"{tmp_path}/{message}")


def test_reference_rows_are_mapped_to_our_protocols_metrics_and_blocks(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text(HEADER
                    + "2,semi_supervised_1pct,imagenet-1k,A,resnet50,800,top1,50.5,src,\n"
                    + "3,coco_maskrcnn_r50_c4_1x,coco-2017,B,resnet50,200,AP_mask,33.3,src,\n"
                    + "3,coco_maskrcnn_r50_fpn_1x_mstrain,coco-2017,C,resnet50,200,AP_bbox_50,60.1,src,\n"
                    + "1a,linear,imagenet-1k,D,resnet50,200,top1,75.3,src,trained with multi-crop\n"
                    + "1a,linear,imagenet-1k,E,resnet50,200,top1,71.0,src,no multi-crop\n"
                    + "5,linear,imagenet-1k,F,resnet50,200,top1,70.0,src,Table 5 is not a table cell\n"
                    + "1b,linear,imagenet-1k,G (with multi-crop),vit_small,300,top1,77.0,src,\n"
                    + "4,linear,imagenet-1k,H (soft K=30),vit_small,300,top1,73.4,src,\n")
    facts = collect_facts([], [path]).set_index("method")
    assert sorted(facts.index) == ["A", "B", "C", "D", "E", "G (with multi-crop)", "H (soft K=30)"]
    assert facts.loc["G (with multi-crop)", "block"] == "multi-crop"  # said in the method name, not the note
    knobs = facts["variant" if "variant" in facts else "config"].map(json.loads)
    assert knobs["H (soft K=30)"] == {"neighbors": "soft", "k": 30} and knobs["A"] == {}
    assert facts["ablation"].tolist() == [name.startswith("H") for name in facts.index]
    assert facts.loc["A", "protocol_id"] == "semi_supervised_1pct" and facts["std"].isna().all()
    assert facts.loc["A", ["protocol", "metric", "mean", "block"]].tolist() == ["semisup_1pct", "top1", 50.5, ""]
    assert facts.loc["B", ["protocol", "metric", "block"]].tolist() == ["detection", "AP_segm",
                                                                        "Mask R-CNN R50-C4, not R50-FPN"]
    assert facts.loc["C", ["metric", "block"]].tolist() == ["AP50_bbox", "multi-scale training"]
    assert facts.loc["D", "block"] == "multi-crop" and facts.loc["E", "block"] == ""
    assert (facts["source"] == "published").all() and (facts["n"] == 1).all()
