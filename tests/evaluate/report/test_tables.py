"""Tables 1-4 and the leaderboard, built from hand-made records whose cells can be checked by eye.

"Fails on today's code" below means: on the hand-written table builder this module replaced
(commit 2c68d43, evaluate/report/tables.py), and on the mutation of the new code named in the test.
"""
from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from evaluate.report import tables
from evaluate.report.facts import DEFAULT_REFERENCES, ReferenceFileError, collect_facts, find_record_files
from evaluate.report.leaderboard import leaderboard
from evaluate.report.records import RecordError, ResultRecord, write_record
from pretrain.config import PretrainConfig

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared"  # ../shared beside the repository root
REFERENCE = REPO / "results" / "reference"
FMNIST_DEVIATION = "image_size: 224 (paper) -> 32 (small-scale default for this data set)"


def record(**overrides) -> ResultRecord:
    fields = dict(method="SNCLR", backbone="resnet50", dataset="imagenet-1k", protocol="linear",
                  protocol_id="linear_sgd-cos-90e-b4096-lr0.1", metrics_final={"top1": 75.5, "top5": 92.0},
                  pretrain_epochs=800, checkpoint_sha256="a" * 64, code_version="abc123",
                  created_at="2024-01-01T00:00:00+00:00")
    fields.update(overrides)
    return ResultRecord(**fields)


def config(seed: int = 0, **overrides) -> dict:
    """A resolved pre-training configuration as our checkpoints carry it (Fashion-MNIST CPU scale)."""
    values = dict(backbone="resnet18", dataset="fashion-mnist", image_size=32, epochs=30, batch_size=256, k=10,
                  seed=seed, output_dir=f"runs/seed{seed}", device="cpu")
    return PretrainConfig(**{**values, **overrides}).to_dict()


def fmnist(**overrides) -> ResultRecord:
    fields = dict(dataset="fashion-mnist", backbone="resnet18", pretrain_epochs=30, protocol="linear_fast",
                  protocol_id="linear_fast-adam-100e", deviations=[FMNIST_DEVIATION])
    return record(**{**fields, **overrides})


def markdown_rows(markdown: str, first: str) -> list[list[str]]:
    """The cells of the Markdown rows whose first cell is ``first``."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith("|")]
    return [row for row in rows if row[0] == first]


def cell(table: tables.Table, column: str, **keys) -> str:
    """The rendered text of one cell of the main block, found by key values."""
    out = tables.render(table)
    rows = out.main
    for key, value in keys.items():
        rows = rows[rows[key] == value]
    assert len(rows) == 1, (keys, out.main)
    return rows.iloc[0][column]


def only(tables_list: list[tables.Table]) -> tables.Table:
    (table,) = tables_list
    return table


# ------------------------------------------------------------------------------ which record fills a cell

def test_conformant_record_beats_a_newer_one_with_deviations(tmp_path, caplog):
    """A 2-epoch debug probe written after the 90-epoch protocol run must not replace it.

    Fails on today's code (newest created_at wins: the cell shows 40.0) and on the mutation that
    sorts records by date before conformance in select_records.
    """
    path = tmp_path / "results.jsonl"
    write_record(path, record(metrics_final={"top1": 75.0}, created_at="2024-01-01T00:00:00+00:00"))
    write_record(path, record(metrics_final={"top1": 40.0}, protocol_id="linear_sgd-cos-2e-b256-lr0.1",
                              deviations=["epochs: 90 (paper) -> 2 (flag)"], created_at="2024-06-01T00:00:00+00:00"))
    with caplog.at_level(logging.WARNING, logger="evaluate.report.facts"):
        table = tables.table1(collect_facts([path]), "imagenet-1k")[0]
    assert cell(table, "800 ep", Method="SNCLR", Source="measured") == "75.0"
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("results.jsonl:2 set aside (with deviations, where the model has a conformant setting)")
    assert message.endswith("cell filled from results.jsonl:1")


def test_duplicates_of_one_run_resolved_deterministically_with_a_warning(tmp_path, caplog):
    """Same checkpoint and setting twice (same date): one is kept, said; a second conformant protocol
    id is a setting of its own, in a row of its own with its own mark, never averaged or dropped.

    Fails on today's code when the two lie in files read in the other order (it keeps the later
    read); with protocol_id left out of the key (mutation), the two protocol ids would be averaged.
    """
    for name, value in (("b", 71.0), ("a", 70.0)):
        write_record(tmp_path / name / "results.jsonl", record(metrics_final={"top1": value}))
    write_record(tmp_path / "c" / "results.jsonl", record(metrics_final={"top1": 60.0}, protocol_id="linear-other"))
    with caplog.at_level(logging.WARNING, logger="evaluate.report.facts"):
        facts = collect_facts([tmp_path])
    top1 = facts[(facts["metric"] == "top1")]
    assert top1[["mean", "n", "records", "alt"]].values.tolist() == [[70.0, 1, ("a/results.jsonl:1",), 0],
                                                                    [60.0, 1, ("c/results.jsonl:1",), 1]]
    assert top1["alternatives"].tolist()[1] == ("one of 2 settings of this model, each in a row of its own; "
                                                "this one: linear-other")
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("b/results.jsonl:1 set aside (duplicate of a checkpoint already in its cell)")
    table = tables.table1(facts, "imagenet-1k")[0]
    assert cell(table, "800 ep", Method="SNCLR [setting 2]") == "60.0 †2"
    assert "1 record set aside: 1 duplicate of a checkpoint already in its cell" in tables.to_markdown(table)


def test_unfinished_pretraining_is_marked_and_never_in_the_finished_column(tmp_path):
    """A snapshot at epoch 100 of an 800-epoch schedule is not a 100-epoch model.

    Fails on today's code (the cell sits unmarked under "100 ep").
    """
    path = tmp_path / "results.jsonl"
    write_record(path, record(pretrain_epochs=100, pretrain_epochs_planned=800, pretrain_complete=False,
                              metrics_final={"top1": 60.0}))
    (part_a,) = tables.table1(collect_facts([path]), "imagenet-1k")
    assert "100/800 ep" in part_a.columns
    assert cell(part_a, "100/800 ep", Method="SNCLR") == "60.0 †1"
    assert cell(part_a, "100 ep", Method="SNCLR") == ""
    assert "†1 pre-training unfinished: epoch 100 of 800 planned" in tables.to_markdown(part_a)


def test_deviations_carry_a_mark_and_a_footnote(tmp_path):
    """Fails on today's code (no mark) and on the mutation that drops the mark from the cell text."""
    path = tmp_path / "results.jsonl"
    write_record(path, fmnist(metrics_final={"top1": 81.0}))
    write_record(path, fmnist(protocol="knn", protocol_id="knn-k20", deviations=[], metrics_final={"knn_top1_k20": 79.0}))
    (part_a,) = tables.table1(collect_facts([path]), "fashion-mnist")
    assert cell(part_a, "30 ep", Source="measured (linear_fast)") == "81.0 †1"
    markdown = tables.to_markdown(part_a)
    assert markdown.rstrip().endswith(f"†1 {FMNIST_DEVIATION}")


@pytest.mark.parametrize("field, value, shown", [
    ("metrics_final", {"top1": float("nan")}, "metrics_final['top1'] is nan"),
    ("metrics_final", {"top1": float("inf")}, "metrics_final['top1'] is inf"),
    ("metrics_final", {"top1": True}, "metrics_final['top1'] is True"),
    ("metrics_final", {"top1": "75.5"}, "metrics_final['top1'] is '75.5'"),
    ("metrics_best", {"top1": float("-inf")}, "metrics_best['top1'] is -inf"),
    ("pretrain_epochs", float("nan"), "pretrain_epochs is nan"),
    ("pretrain_epochs", True, "pretrain_epochs is True"),
    ("pretrain_epochs", "800", "pretrain_epochs is '800'"),
    ("pretrain_epochs", 7.5, "pretrain_epochs is 7.5"),
])
def test_bad_numbers_stop_the_build_naming_file_and_line(tmp_path, field, value, shown):
    """Fails on today's code: NaN/inf were accepted (a "nan" cell, a bold "inf"), and booleans and
    pretrain_epochs were not checked at all."""
    path = tmp_path / "results.jsonl"
    write_record(path, record())
    data = json.loads(record().to_json())
    data[field] = value
    with open(path, "a") as handle:
        handle.write(json.dumps(data) + "\n")  # json writes NaN / Infinity, as Python's json does
    with pytest.raises(RecordError, match=rf"^{path}:2: {shown.replace('[', '.').replace(']', '.')}"):
        collect_facts([path])


def test_cli_stops_on_a_bad_record_with_one_line(tmp_path):
    path = tmp_path / "results.jsonl"
    data = json.loads(record().to_json())
    data["metrics_final"] = {"top1": float("nan")}
    path.write_text(json.dumps(data) + "\n")
    result = subprocess.run([sys.executable, "-m", "evaluate", "tables", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.strip() == f"error: {path}:1: metrics_final['top1'] is nan; expected a finite number"


# ---------------------------------------------------------------------------------------------- seeds

def test_seeds_of_one_model_are_averaged(tmp_path):
    """Three pre-training seeds (three checkpoints) of one variant: one cell, mean ± std (n).

    Fails on today's code (the newest seed replaces the others) and on the mutation that adds the
    checkpoint sha to the cell key.
    """
    for seed, (value, sha) in enumerate(((83.2, "1"), (83.5, "2"), (83.8, "3"))):
        write_record(tmp_path / f"s{seed}" / "results.jsonl",
                     fmnist(metrics_final={"top1": value}, checkpoint_sha256=sha * 64, deviations=[],
                            pretrain_config=config(seed)))
    facts = collect_facts([tmp_path])
    table = only(tables.table4(facts, "fashion-mnist"))
    assert cell(table, "fast-linear top-1", Method="SNCLR") == "83.5 ± 0.3 (3)"
    csv = pd.read_csv(io.StringIO(tables.to_csv(table)))
    (row,) = csv.to_dict("records")
    assert (row["mean"], round(row["std"], 6), row["n"]) == (83.5, 0.3, 3)
    assert row["records"] == "s0/results.jsonl:1; s1/results.jsonl:1; s2/results.jsonl:1"
    assert row["checkpoints"] == "; ".join(c * 64 for c in "123")
    board = leaderboard(facts)
    assert board[["linear_fast_top1", "linear_fast_top1_n"]].values.tolist() == [[83.5, 3]]
    assert board.at[0, "checkpoint_sha256"] == "; ".join(c * 64 for c in "123")


# ----------------------------------------------------------------------------------------- leaderboard

def test_detection_joins_the_row_of_the_converted_checkpoint(tmp_path):
    """Two Fashion-MNIST models of one method; the COCO record was converted from the second.

    Fails on today's code (it joins by method name: two candidate rows, the AP lands on its own
    row or the wrong one) and on the mutation that skips the sha lookup in leaderboard().
    """
    path = tmp_path / "results.jsonl"
    write_record(path, fmnist(metrics_final={"top1": 80.0}, checkpoint_sha256="1" * 64,
                              pretrain_config=config(neighbors="none")))
    write_record(path, fmnist(metrics_final={"top1": 82.0}, checkpoint_sha256="2" * 64, pretrain_config=config()))
    write_record(path, record(dataset="coco-2017", protocol="detection", protocol_id="mask-rcnn_R50-FPN_1x",
                              backbone="resnet18", pretrain_epochs=30, checkpoint_sha256="2" * 64,
                              pretrain_config=config(), metrics_final={"AP_bbox": 30.0, "AP_segm": 28.0}))
    # A detection record from before model identity: it finds its row by the checkpoint's sha256.
    write_record(path, record(dataset="synthetic-coco", protocol="detection", protocol_id="mask-rcnn_smoke",
                              backbone="resnet18", pretrain_epochs=30, checkpoint_sha256="1" * 64,
                              variant={"neighbors": "none"}, metrics_final={"AP_bbox": 2.0}))
    board = leaderboard(collect_facts([path]))
    assert board["linear_fast_top1"].tolist() == [82.0, 80.0]  # sorted by the main metric, best first
    assert board["detection_AP_bbox"].tolist()[0] == 30.0 and pd.isna(board["detection_AP_bbox"].tolist()[1])
    assert board["detection_AP_bbox_records"].tolist()[0] == "results.jsonl:3"
    # synthetic-coco has its own columns and never fills the COCO 2017 one
    assert pd.isna(board["synthetic_coco_AP_bbox"].tolist()[0]) and board["synthetic_coco_AP_bbox"].tolist()[1] == 2.0
    assert board["pretrain_dataset"].tolist() == ["fashion-mnist", "fashion-mnist"]
    assert board["eval_dataset"].tolist() == ["fashion-mnist", "fashion-mnist"]
    assert board["knobs"].tolist() == ["neighbors=soft", "neighbors=none"]


def test_leaderboard_sorts_each_dataset_by_its_main_metric(tmp_path):
    path = tmp_path / "results.jsonl"
    for method, value, sha in (("A", 70.0, "1"), ("B", 72.0, "2"), ("C", 71.0, "3")):
        write_record(path, record(method=method, metrics_final={"top1": value}, checkpoint_sha256=sha * 64))
        write_record(path, fmnist(method=method, metrics_final={"top1": 100 - value}, checkpoint_sha256=sha * 64))
    board = leaderboard(collect_facts([path]))
    assert list(zip(board["eval_dataset"], board["method"])) == [
        ("imagenet-1k", "B"), ("imagenet-1k", "C"), ("imagenet-1k", "A"),
        ("fashion-mnist", "A"), ("fashion-mnist", "C"), ("fashion-mnist", "B")]


# ------------------------------------------------------------------------------------- published numbers

def test_published_baselines_are_the_shared_file():
    for name in ("paper_numbers.csv", "published_baselines.csv"):
        shared = SHARED / "reference" / name
        if not shared.is_file():
            pytest.skip(f"{shared} absent (shared reference material lives beside the repository)")
        assert (REFERENCE / name).read_bytes() == shared.read_bytes()


def test_published_rows_of_another_protocol_sit_in_their_own_block():
    """C4 detection and multi-crop linear rows never share a block with the table's protocol.

    Fails on the mutation that drops the block from the pivot index (they would mix into the main block).
    """
    facts = collect_facts([], DEFAULT_REFERENCES)
    assert facts.groupby("block").size().to_dict() == {"": 106, "Mask R-CNN R50-C4, not R50-FPN": 30,
                                                       "multi-crop": 14, "multi-scale training": 12}
    table3 = tables.to_markdown(only(tables.table3(facts, "coco-2017")))
    main, other = table3.split(tables.OTHER_BLOCK)
    assert "Barlow Twins" not in main and "| Barlow Twins" in other and "R50-C4" in other
    assert "(mmselfsup)" not in main and "multi-scale training" in other
    table1a = tables.to_markdown(tables.table1(facts, "imagenet-1k")[0])
    main, other = table1a.split(tables.OTHER_BLOCK)
    assert "SwAV (multi-crop 2x224+6x96)" in other and "multi-crop 2x224" not in main
    assert "SwAV (no multi-crop, 2x224)" in main
    # each published row names its source under the table
    assert markdown_rows(main, "SimSiam")[0][2] == "published [3]"
    assert "[3] SimSiam paper, Chen & He CVPR 2021, arXiv:2011.10566, Table 4" in table1a


def test_reference_files_are_validated(tmp_path):
    path = tmp_path / "mine.csv"
    header = "table,protocol,dataset,method,backbone,pretrain_epochs,metric,value,source,note\n"
    path.write_text(header + "1a,linear,imagenet-1k,X,resnet50,100,top1,about 70,my notes,\n")
    with pytest.raises(ReferenceFileError, match=r"mine.csv:2: value 'about 70' is not a number"):
        collect_facts([], [path])
    path.write_text(header + "1a,linear,imagenet-1k,X,resnet50,100,top1,nan,my notes,\n")
    with pytest.raises(ReferenceFileError, match=r"mine.csv:2: value 'nan' is not a finite number"):
        collect_facts([], [path])
    path.write_text("table,method\n1a,X\n")
    with pytest.raises(ReferenceFileError, match="missing column"):
        collect_facts([], [path])
    path.write_text(header + "1a,linear,imagenet-1k,SimSiam,resnet50,100,top1,,unconfirmed,\n"
                             "1a,linear,imagenet-1k,SimSiam,resnet50,200,top1,70.0,my source,\n")
    table = tables.table1(collect_facts([], [path]), "imagenet-1k")[0]
    assert cell(table, "100 ep", Method="SimSiam") == "" and cell(table, "200 ep", Method="SimSiam") == "70.0"


# ------------------------------------------------------------------------------------------------ bold

def test_table1_bolds_the_best_per_model_size(tmp_path):
    """Fails on today's code (best two over the column, whatever the backbone)."""
    path = tmp_path / "results.jsonl"
    for method, backbone, value in (("A", "vit_small", 70.0), ("B", "vit_small", 71.0), ("C", "vit_small", 72.0),
                                    ("A", "vit_base", 75.0), ("B", "vit_base", 76.0), ("C", "vit_base", 74.0)):
        write_record(path, record(method=method, backbone=backbone, pretrain_epochs=300, metrics_final={"top1": value}))
    (part_b,) = tables.table1(collect_facts([path]), "imagenet-1k")
    bold = tables.render(part_b).main_bold["300 ep"].tolist()
    assert [m + b[4:] for m, b in zip(tables.render(part_b).main["Method"], tables.render(part_b).main["Backbone"])
            if bold.pop(0)] == ["Bbase", "Csmall"]


def test_tables_2_and_3_bold_the_best_two_and_never_a_short_column(tmp_path):
    """Fails on today's code (it bolds a column of one or two values) and on the mutation min 3 -> 1."""
    path = tmp_path / "results.jsonl"
    for method, top1, top5 in (("A", 50.0, 75.0), ("B", 52.0, 76.0), ("C", 51.0, None)):
        metrics = {"top1": top1} | ({"top5": top5} if top5 else {})
        write_record(path, record(method=method, protocol="semisup_1pct", protocol_id="semisup", metrics_final=metrics))
    table = only(tables.table2(collect_facts([path]), "imagenet-1k"))
    markdown = tables.to_markdown(table)
    assert [markdown_rows(markdown, method)[0][4:6] for method in "ABC"] == [["50.0", "75.0"], ["**52.0**", "76.0"], ["**51.0**", ""]]


def test_one_number_format_per_column(tmp_path):
    path = tmp_path / "results.jsonl"
    for method, value in (("A", 73.38), ("B", 73.0), ("C", 72.5)):
        write_record(path, record(method=method, backbone="vit_small", pretrain_epochs=300, metrics_final={"top1": value}))
    (part_b,) = tables.table1(collect_facts([path]), "imagenet-1k")
    assert tables.render(part_b).main["300 ep"].tolist() == ["73.38", "73.00", "72.50"]


# ------------------------------------------------------------------------------------- Table 4 and CLI

def _study(folder: Path) -> None:
    """A small Table 4 study: three variants x two seeds, fast-linear and kNN, plus random init."""
    variants = [{"neighbors": "none"}, {"neighbors": "binary"}, {"neighbors": "soft", "positiveness_temperature": 1.0},
                {"neighbors": "soft", "positiveness_temperature": 0.1}]
    for i, variant in enumerate(variants):
        for seed in (0, 1):
            sha = f"{i}{seed}" * 32
            run = folder / f"{variant['neighbors']}{i}_seed{seed}"
            pretrained = dict(checkpoint_sha256=sha, pretrain_config=config(seed, **variant), pretrain_seed=seed)
            write_record(run / "fast" / "results.jsonl", fmnist(**pretrained, metrics_final={"top1": 80 + i + seed / 4}))
            write_record(run / "knn" / "results.jsonl", fmnist(**pretrained, protocol="knn", protocol_id="knn-k20",
                                                               deviations=[],
                                                               metrics_final={"knn_top1_k20": 78 + i - seed / 4}))
    write_record(folder / "random" / "results.jsonl", fmnist(method="random-init", pretrain_epochs=0,
                                                             checkpoint_sha256="f" * 64, metrics_final={"top1": 79.9}))


def test_table4_rows_are_variants_and_cells_mean_std_n(tmp_path):
    _study(tmp_path)
    table = only(tables.table4(collect_facts([tmp_path]), "fashion-mnist"))
    # The knobs that tell the variants apart, read from their configurations (K=10 everywhere: not shown).
    assert table.keys == ["Method", "Backbone", "Epochs", "neighbors", "positiveness_temperature", "Source"]
    assert table.columns == ["fast-linear top-1", "kNN top-1 (k=20)", "linear top-1"]
    out = tables.render(table).main
    assert out[["neighbors", "positiveness_temperature"]].values.tolist() == [
        ["none", "1.0"], ["binary", "1.0"], ["soft", "0.1"], ["soft", "1.0"], ["", ""]]
    assert out["fast-linear top-1"].tolist() == ["80.12 ± 0.18 (2) †1", "81.12 ± 0.18 (2) †1", "83.12 ± 0.18 (2) †1",
                                                 "82.12 ± 0.18 (2) †1", "79.90 †1"]
    assert out["kNN top-1 (k=20)"].tolist()[2] == "80.88 ± 0.18 (2)"
    assert tables.render(table).main_bold["fast-linear top-1"].tolist() == [False, False, True, True, False]
    assert out["Method"].tolist() == ["SNCLR"] * 4 + ["random-init"]


def test_cli_prints_the_same_markdown_wherever_the_study_lies(tmp_path):
    """Issue 11 reproduces its README table with `python -m evaluate tables FOLDER`: byte for byte."""
    _study(tmp_path / "one" / "fmnist_table4")
    shutil.copytree(tmp_path / "one", tmp_path / "two" / "elsewhere")
    outputs = [subprocess.run([sys.executable, "-m", "evaluate", "tables", str(folder / "fmnist_table4")], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
               for folder in (tmp_path / "one", tmp_path / "two" / "elsewhere")]
    assert all(result.returncode == 0 for result in outputs), outputs[0].stderr
    assert outputs[0].stdout == outputs[1].stdout
    assert "**Table 4: ablation of the neighbour positiveness on Fashion-MNIST**" in outputs[0].stdout
    assert str(tmp_path) not in outputs[0].stdout
    assert "ImageNet-1k" not in outputs[0].stdout  # printed: the datasets the records measured


def test_cli_writes_every_format_and_the_leaderboard(tmp_path):
    _study(tmp_path / "study")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "evaluate", "tables", str(tmp_path / "study"), "--out", str(out),
                             "--print-table1", "fashion-mnist"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| SNCLR (neighbors=soft, positiveness_temperature=0.1)   | resnet18" in result.stdout
    for name in ("fashion-mnist/table1a", "fashion-mnist/table4", "imagenet-1k/table1a", "imagenet-1k/table2",
                 "coco-2017/table3"):
        for suffix in ("md", "tex", "csv"):
            assert (out / f"{name}.{suffix}").is_file(), name
    latex = (out / "fashion-mnist" / "table4.tex").read_text().splitlines()
    assert latex[2] == r"\toprule" and r"\bottomrule" in latex
    assert any(r"\textbf{83.12 $\pm$ 0.18 (2) \dag{}1}" in line for line in latex)
    assert r"positiveness\_temperature" in latex[3]
    board = pd.read_csv(out / "leaderboard.csv")
    assert len(board) == 5 and board["linear_fast_top1"].is_monotonic_decreasing
    assert "published" not in (out / "leaderboard.csv").read_text()
    assert not list(out.rglob("*.tmp"))


def test_directory_search_skips_training_logs(tmp_path):
    run = tmp_path / "runs" / "r1"
    write_record(run / "eval" / "results.jsonl", record())
    write_record(run / "knn.jsonl", record(protocol="knn", metrics_final={"knn_top1_k20": 60.0}))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    assert sorted(p.name for p in find_record_files([tmp_path / "runs"])) == ["knn.jsonl", "results.jsonl"]
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        find_record_files([tmp_path / "missing_dir"])
    (tmp_path / "only_logs").mkdir()
    (tmp_path / "only_logs" / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(FileNotFoundError, match="only_logs: no result records found"):
        find_record_files([tmp_path / "only_logs"])


def test_metric_kind_best(tmp_path):
    path = tmp_path / "results.jsonl"
    write_record(path, record(metrics_final={"top1": 75.0}, metrics_best={"top1": 75.4}))
    write_record(path, record(protocol="knn", metrics_final={"knn_top1_k20": 60.0}))
    final, best = (collect_facts([path], (), kind).set_index("metric")["mean"] for kind in ("final", "best"))
    assert final["top1"] == 75.0 and best["top1"] == 75.4 and best["knn_top1_k20"] == 60.0


def test_a_record_file_that_is_not_utf8_is_one_line_naming_the_line(tmp_path, capsys):
    """Fails on the issue-16 code: a UnicodeDecodeError traceback from the text-mode reader."""
    path = write_record(tmp_path / "results.jsonl", record())
    with open(path, "ab") as handle:
        handle.write(b'{"method": "SN\xe9CLR"}\n')
    assert tables.main([str(tmp_path), "--no-default-reference"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {path}:2: not UTF-8 text (byte 14 of the line is b'\\xe9'); records are JSON in UTF-8"]


def test_write_record_refuses_a_link_and_a_fragment_and_keeps_their_contents(tmp_path):
    """Fails on the issue-15/16 code: appended through the link to its target, and glued the record
    onto a last line that lacks its newline."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "link.jsonl").symlink_to(victim)
    with pytest.raises(RecordError, match="is a symbolic link; refusing to append"):
        write_record(tmp_path / "link.jsonl", record())
    assert victim.read_text() == "precious\n"
    fragment = tmp_path / "cut.jsonl"
    fragment.write_text('{"method": "SN')
    with pytest.raises(RecordError, match="its last line has no newline"):
        write_record(fragment, record())
    assert fragment.read_text() == '{"method": "SN'
    with pytest.raises(RecordError, match="is a directory; expected a result-record file"):
        write_record(tmp_path, record())
