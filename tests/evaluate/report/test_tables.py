"""Tables 1-4 and the leaderboard, built from hand-written records whose cells can be checked by eye."""
from __future__ import annotations

import csv
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from evaluate.report import tables
from evaluate.report.records import RecordError, ResultRecord, write_record

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared"  # ../shared beside the repository root
REFERENCE = REPO / "results" / "reference" / "paper_numbers.csv"


def record(**overrides) -> ResultRecord:
    fields = dict(method="SNCLR", backbone="resnet50", dataset="imagenet-1k", protocol="linear",
                  protocol_id="linear_sgd-cos-90e-b4096-lr0.1", metrics_final={"top1": 75.5, "top5": 92.0},
                  pretrain_epochs=800, checkpoint_sha256="a" * 64, code_version="abc123",
                  created_at="2024-01-01T00:00:00+00:00")
    fields.update(overrides)
    return ResultRecord(**fields)


def rows_by_method(table: tables.Table) -> dict[tuple[str, ...], tables.Row]:
    return {tuple(row.keys): row for row in table.rows}


def markdown_row(markdown: str, startswith: str) -> list[str]:
    lines = [line for line in markdown.splitlines() if line.startswith(f"| {startswith} |")]
    assert len(lines) == 1, (startswith, markdown)
    return [cell.strip() for cell in lines[0].strip("|").split("|")]


def test_reference_copy_matches_shared_file():
    shared = SHARED / "reference" / "paper_numbers.csv"
    if not shared.is_file():
        pytest.skip(f"{shared} absent (shared reference material lives beside the repository)")
    assert REFERENCE.read_bytes() == shared.read_bytes()


def test_references_map_coco_protocol_and_keep_its_name():
    facts = tables.load_references([REFERENCE])
    assert len(facts) == 15
    (coco,) = [f for f in facts if f.dataset == "coco-2017"]
    assert (coco.protocol, coco.protocol_id, coco.metric, coco.value) == (
        "detection", "coco_maskrcnn_r50_fpn_1x", "AP_bbox", 39.4)
    ablation = {f.method: dict(f.variant) for f in facts if f.ablation}
    assert ablation["SNCLR (binary neighbors K=30)"] == {"neighbors": "binary", "k": "30"}
    assert ablation["SNCLR (no neighbors)"] == {"neighbors": "none"}


def test_table1_imagenet_cells_bold_and_blanks(tmp_path):
    path = tmp_path / "run" / "results.jsonl"
    write_record(path, record())
    write_record(path, record(dataset="fashion-mnist", backbone="resnet18", pretrain_epochs=5,
                              metrics_final={"top1": 88.0}))
    write_record(path, record(backbone="vit_small", pretrain_epochs=100, metrics_final={"top1": 60.0}))
    facts = tables.collect_facts([tmp_path], [REFERENCE])
    part_a, part_b = tables.table1(facts, "imagenet-1k")
    assert part_a.value_headers == ["100 ep", "200 ep", "300 ep", "400 ep", "800 ep", "1000 ep"]
    rows = rows_by_method(part_a)
    measured = rows[("SNCLR", "resnet50", "measured")]
    reference = rows[("SNCLR", "resnet50", "reference")]
    assert measured.values == [None, None, None, None, 75.5, None]
    assert reference.values == [None, None, None, 74.5, 75.3, None]
    # Reference rows come first, measured rows after them.
    assert [row.source for row in part_a.rows][-1] == "measured"

    markdown = tables.to_markdown(part_a)
    assert markdown_row(markdown, "SNCLR | resnet50 | measured")[3:] == ["", "", "", "", "**75.5**", ""]
    assert markdown_row(markdown, "SNCLR | resnet50 | reference")[3:] == ["", "", "", "**74.5**", "**75.3**", ""]
    assert markdown_row(markdown, "BYOL")[7] == "74.3"  # third best at 800 ep: not bold
    assert "fashion-mnist" not in markdown and "88.0" not in markdown

    assert part_b.value_headers == ["100 ep", "200 ep", "300 ep"]
    assert rows_by_method(part_b)[("SNCLR", "vit_small", "measured")].values == [60.0, None, None]

    (fashion,) = tables.table1(facts, "fashion-mnist")
    assert "Fashion-MNIST" in fashion.title and fashion.value_headers == ["5 ep"]
    assert [row.keys for row in fashion.rows] == [["SNCLR", "resnet18", "measured"]]


def test_table1_marks_linear_fast_rows_and_variants(tmp_path):
    path = tmp_path / "results.jsonl"
    write_record(path, record(dataset="fashion-mnist", backbone="resnet18", pretrain_epochs=2, protocol="linear_fast",
                              metrics_final={"top1": 81.234}, variant={"neighbors": "soft", "k": 5}))
    (table,) = tables.table1(tables.collect_facts([path], []), "fashion-mnist")
    assert table.rows[0].keys == ["SNCLR (soft, K=5)", "resnet18", "measured (linear_fast)"]
    assert "| **81.23** |" in tables.to_markdown(table)


def test_table2_semisup_top1_top5(tmp_path):
    path = tmp_path / "results.jsonl"
    write_record(path, record(protocol="semisup_1pct", metrics_final={"top1": 50.0, "top5": 75.0}))
    write_record(path, record(protocol="semisup_10pct", metrics_final={"top1": 70.0, "top5": 89.5}))
    write_record(path, record(method="BYOL", protocol="semisup_1pct", metrics_final={"top1": 53.2, "top5": 78.4}))
    write_record(path, record(method="MoCo v3", protocol="semisup_1pct", metrics_final={"top1": 49.0, "top5": 76.0}))
    (table,) = tables.table2(tables.collect_facts([path], [REFERENCE]), "imagenet-1k")
    assert table.value_headers == ["1% top-1", "1% top-5", "10% top-1", "10% top-5"]
    rows = rows_by_method(table)
    assert rows[("SNCLR", "resnet50", "800", "measured")].values == [50.0, 75.0, 70.0, 89.5]
    assert rows[("BYOL", "resnet50", "800", "measured")].values == [53.2, 78.4, None, None]
    markdown = tables.to_markdown(table)
    assert markdown_row(markdown, "SNCLR")[4:] == ["**50.0**", "75.0", "**70.0**", "**89.5**"]
    assert markdown_row(markdown, "MoCo v3")[4:] == ["49.0", "**76.0**", "", ""]


def test_table3_detection_with_reference(tmp_path):
    path = tmp_path / "results.jsonl"
    metrics = {"AP_bbox": 40.1, "AP50_bbox": 60.2, "AP75_bbox": 43.3, "AP_segm": 36.4, "AP50_segm": 57.5,
               "AP75_segm": 39.6}
    write_record(path, record(dataset="coco-2017", protocol="detection", protocol_id="mask_rcnn_R_50_FPN_1x",
                              metrics_final=metrics))
    write_record(path, record(dataset="synthetic-coco", protocol="detection", metrics_final={"AP_bbox": 3.0}))
    facts = tables.collect_facts([path], [REFERENCE])
    (table,) = tables.table3(facts, "coco-2017")
    assert table.value_headers == ["APbb", "APbb50", "APbb75", "APmk", "APmk50", "APmk75"]
    rows = rows_by_method(table)
    assert rows[("BYOL", "resnet50", "800", "reference")].values == [39.4, None, None, None, None, None]
    assert rows[("SNCLR", "resnet50", "800", "measured")].values == [40.1, 60.2, 43.3, 36.4, 57.5, 39.6]
    assert "3.0" not in tables.to_markdown(table)
    (synthetic,) = tables.table3(facts, "synthetic-coco")
    assert [row.values[0] for row in synthetic.rows] == [3.0]
    assert tables.table2(facts, "coco-2017") == []


def test_table4_ablation_rows(tmp_path):
    path = tmp_path / "results.jsonl"
    for neighbors, k, top1 in (("none", 0, 70.0), ("binary", 30, 72.0), ("soft", 30, 73.5), ("soft", 10, 73.0)):
        write_record(path, record(backbone="vit_small", pretrain_epochs=300, metrics_final={"top1": top1},
                                  variant={"neighbors": neighbors, "k": k, "loss_form": "paper"}))
    write_record(path, record(backbone="vit_small", pretrain_epochs=300, protocol="knn",
                              metrics_final={"knn_top1_k20": 65.0, "knn_top1_k200": 64.0},
                              variant={"neighbors": "soft", "k": 30, "loss_form": "official"}))
    facts = tables.collect_facts([path], [REFERENCE])
    (table,) = tables.table4(facts, "imagenet-1k")
    assert table.value_headers == ["linear top-1", "kNN top-1 (k=20)"]
    rows = rows_by_method(table)
    assert rows[("SNCLR (binary neighbors K=30)", "vit_small", "300", "binary", "30", "", "reference")].values == [
        72.24, None]
    assert rows[("SNCLR", "vit_small", "300", "soft", "30", "paper", "measured")].values == [73.5, None]
    assert rows[("SNCLR", "vit_small", "300", "none", "0", "paper", "measured")].values == [70.0, None]
    assert rows[("SNCLR", "vit_small", "300", "soft", "30", "official", "measured")].values == [None, 65.0]
    markdown = tables.to_markdown(table)
    bold = [line for line in markdown.splitlines() if "**73" in line]
    assert len(bold) == 2  # 73.5 (measured soft K=30) and 73.38 (reference soft); 73.0 is third
    # Reference ablation rows stay out of Table 1; the measured ones appear there with their variant.
    table1_keys = [row.keys[0] for part in tables.table1(facts, "imagenet-1k") for row in part.rows]
    assert "SNCLR (binary neighbors K=30)" not in table1_keys
    assert "SNCLR (binary, K=30, paper loss)" in table1_keys


def test_duplicate_records_newest_wins_with_warning(tmp_path, caplog):
    old, new = tmp_path / "a" / "results.jsonl", tmp_path / "b" / "results.jsonl"
    write_record(new, record(metrics_final={"top1": 76.0}, created_at="2024-03-01T00:00:00+00:00"))
    write_record(old, record(metrics_final={"top1": 70.0}, created_at="2024-02-01T00:00:00+00:00"))
    with caplog.at_level(logging.WARNING, logger="evaluate.report.tables"):
        facts = tables.collect_facts([tmp_path], [])
    (table,) = tables.table1(facts, "imagenet-1k")
    assert table.rows[0].values[table.value_headers.index("800 ep")] == 76.0
    (message,) = [r.getMessage() for r in caplog.records if "duplicate" in r.getMessage()]
    assert f"{new}:1" in message and f"{old}:1" in message
    assert message.index(f"{new}:1") < message.index(f"{old}:1")  # "using <new> ..., ignoring <old>"


def test_directory_search_skips_training_logs(tmp_path):
    run = tmp_path / "runs" / "r1"
    write_record(run / "eval" / "results.jsonl", record())
    write_record(run / "knn.jsonl", record(protocol="knn", metrics_final={"knn_top1_k20": 60.0}))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    files = tables.find_record_files([tmp_path / "runs"])
    assert sorted(p.name for p in files) == ["knn.jsonl", "results.jsonl"]
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        tables.find_record_files([tmp_path / "missing_dir"])
    (tmp_path / "only_logs").mkdir()
    (tmp_path / "only_logs" / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(FileNotFoundError, match="only_logs: no result records found"):
        tables.find_record_files([tmp_path / "only_logs"])


def test_malformed_record_names_file_and_line(tmp_path):
    path = tmp_path / "results.jsonl"
    write_record(path, record())
    with open(path, "a") as handle:
        handle.write('{"method": "SNCLR"\n')
    with pytest.raises(RecordError, match=rf"{path}:2: not valid JSON"):
        tables.load_records([path])
    bad_time = tmp_path / "bad_time.jsonl"
    write_record(bad_time, record(created_at="yesterday"))
    with pytest.raises(RecordError, match=rf"{bad_time}:1: created_at 'yesterday'"):
        tables.load_records([bad_time])


def test_cli_reports_malformed_record_in_one_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"method": "SNCLR", "protocol": "linear"}\n')
    result = subprocess.run([sys.executable, "-m", "evaluate.report.tables", str(path), "--out-dir", str(tmp_path / "out")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {path}:1: missing required field(s)") and "Traceback" not in result.stderr


def test_bad_reference_file_is_rejected(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text(",".join(tables.REFERENCE_COLUMNS) + "\n"
                    "1a,linear,imagenet-1k,X,resnet50,100,top1,about 70,my notes,\n")
    with pytest.raises(tables.ReferenceFileError, match=rf"{path}:2: value 'about 70' is not a number"):
        tables.load_references([path])
    path.write_text("table,method\n1a,X\n")
    with pytest.raises(tables.ReferenceFileError, match="missing column"):
        tables.load_references([path])


def test_user_reference_blank_value_stays_blank(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text(",".join(tables.REFERENCE_COLUMNS) + "\n"
                    "1a,linear,imagenet-1k,SimSiam,resnet50,100,top1,,unconfirmed,\n"
                    "1a,linear,imagenet-1k,SimSiam,resnet50,200,top1,70.0,my source,\n")
    (table,) = tables.table1(tables.load_references([path]), "imagenet-1k")
    assert rows_by_method(table)[("SimSiam", "resnet50", "reference")].values == [None, 70.0, None, None]


def test_best_two_and_number_format():
    assert tables.best_two([1.0, None, 3.0, 2.0]) == {2, 3}
    assert tables.best_two([5.0, 5.0, 4.0]) == {0, 1}
    assert tables.best_two([5.0, 4.0, 4.0]) == {0, 1, 2}  # a tie for second place bolds both
    assert tables.best_two([None, None]) == set()
    assert [tables.format_number(v) for v in (75.3, 73.38, 75.0, 81.234)] == ["75.3", "73.38", "75.0", "81.23"]


def test_latex_is_booktabs_escaped_and_separates_sources(tmp_path):
    path = tmp_path / "results.jsonl"
    write_record(path, record(method="my_method", metrics_final={"top1": 76.0}))
    (table, _) = tables.table1(tables.collect_facts([path], [REFERENCE]), "imagenet-1k")
    latex = tables.to_latex(table)
    lines = latex.splitlines()
    assert lines[2] == r"\toprule" and lines[-2] == r"\bottomrule"
    assert r"my\_method & resnet50 & measured &  &  &  &  & \textbf{76.0} &  \\" in lines
    assert r"(\%)" in lines[0]
    measured_at = next(i for i, line in enumerate(lines) if line.startswith(r"my\_method"))
    assert lines[measured_at - 1] == r"\midrule"


def test_metric_kind_best(tmp_path):
    path = tmp_path / "results.jsonl"
    write_record(path, record(metrics_final={"top1": 75.0}, metrics_best={"top1": 75.4}))
    write_record(path, record(protocol="knn", metrics_final={"knn_top1_k20": 60.0}))
    final = {(f.protocol, f.metric): f.value for f in tables.collect_facts([path], [], "final")}
    best = {(f.protocol, f.metric): f.value for f in tables.collect_facts([path], [], "best")}
    assert final[("linear", "top1")] == 75.0 and best[("linear", "top1")] == 75.4
    assert best[("knn", "knn_top1_k20")] == 60.0  # no best-over-epochs value: the final one


def test_leaderboard_rows_and_provenance(tmp_path):
    linear_path, det_path = tmp_path / "linear" / "results.jsonl", tmp_path / "det" / "results.jsonl"
    write_record(linear_path, record(dataset="fashion-mnist", backbone="resnet18", pretrain_epochs=2,
                                     protocol="linear_fast", protocol_id="linear_fast-adam-20e",
                                     metrics_final={"top1": 81.0}, checkpoint_sha256="1" * 64, code_version="c1"))
    write_record(linear_path, record(dataset="fashion-mnist", backbone="resnet18", pretrain_epochs=2, protocol="knn",
                                     protocol_id="knn-k20-t0.07", metrics_final={"knn_top1_k20": 79.5,
                                                                                 "knn_top1_k200": 78.0},
                                     checkpoint_sha256="1" * 64, code_version="c1"))
    write_record(det_path, record(dataset="synthetic-coco", backbone="resnet18", pretrain_epochs=2,
                                  protocol="detection", protocol_id="mask_rcnn_smoke",
                                  metrics_final={"AP_bbox": 2.5, "AP_segm": 1.5}, checkpoint_sha256="2" * 64,
                                  code_version="c2"))
    write_record(linear_path, record(method="random-init", dataset="fashion-mnist", backbone="resnet18",
                                     pretrain_epochs=None, protocol="linear_fast", metrics_final={"top1": 70.0},
                                     checkpoint_sha256=""))
    out = tmp_path / "out"
    written = tables.build_tables([tmp_path / "linear", det_path], [REFERENCE], out)
    assert written["leaderboard.csv"] == out / "leaderboard.csv"
    rows = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
    assert [(r["method"], r["pretrain_epochs"]) for r in rows] == [("SNCLR", "2"), ("random-init", "")]
    snclr = rows[0]
    assert snclr["pretrain_dataset"] == "fashion-mnist"
    assert (snclr["linear_fast_top1"], snclr["knn_top1_k20"], snclr["detection_AP_bbox"],
            snclr["detection_AP_segm"], snclr["linear_top1"]) == ("81.0", "79.5", "2.5", "1.5", "")
    assert snclr["linear_fast_record"] == f"{linear_path}:1"
    assert snclr["linear_fast_protocol_id"] == "linear_fast-adam-20e"
    assert snclr["linear_fast_checkpoint_sha256"] == "1" * 64 and snclr["linear_fast_code_version"] == "c1"
    assert snclr["knn_record"] == f"{linear_path}:2"
    assert (snclr["detection_dataset"], snclr["detection_record"], snclr["detection_checkpoint_sha256"],
            snclr["detection_code_version"]) == ("synthetic-coco", f"{det_path}:1", "2" * 64, "c2")
    assert "reference" not in (out / "leaderboard.csv").read_text()
    # Every format of every table is written, per dataset.
    for name in ("imagenet-1k/table1a", "imagenet-1k/table1b", "imagenet-1k/table4", "coco-2017/table3",
                 "fashion-mnist/table1a", "synthetic-coco/table3"):
        for suffix in ("md", "tex", "csv"):
            assert (out / f"{name}.{suffix}").is_file(), name
    table1a = list(csv.reader(io.StringIO((out / "fashion-mnist" / "table1a.csv").read_text())))
    assert table1a[0] == ["Method", "Backbone", "Source", "2 ep", "epochs n/a"]
    assert ["SNCLR", "resnet18", "measured (linear_fast)", "81.0", ""] in table1a
    assert ["random-init", "resnet18", "measured (linear_fast)", "", "70.0"] in table1a
    assert not list(out.rglob("*.tmp"))


def test_table1_markdown_api_and_cli(tmp_path):
    path = tmp_path / "results.jsonl"
    write_record(path, record())
    text = tables.table1_markdown([path], "imagenet-1k", [REFERENCE])
    assert "Table 1a" in text and "Table 1b" in text and "**75.5**" in text
    assert tables.table1_markdown([path], "fashion-mnist") == "(no linear-probe results for fashion-mnist)\n"
    result = subprocess.run([sys.executable, "-m", "evaluate.report.tables", str(path), "--out-dir", str(tmp_path / "out"),
                             "--print-table1", "imagenet-1k"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| SNCLR | resnet50 | measured |" in result.stdout
    assert (tmp_path / "out" / "tables.md").is_file()
    help_text = subprocess.run([sys.executable, "-m", "evaluate.report.tables", "--help"], cwd=REPO, capture_output=True,
                               text=True, timeout=120)
    assert help_text.returncode == 0 and "--metric-kind" in help_text.stdout


def test_record_fields_round_trip_through_json(tmp_path):
    # Guards the assumption that the table builder reads exactly what records.py writes.
    path = tmp_path / "results.jsonl"
    write_record(path, record(variant={"k": 30}))
    data = json.loads(path.read_text())
    ((loaded, where),) = tables.load_records([path])
    assert loaded.variant == data["variant"] == {"k": 30} and where == f"{path}:1"


def test_rows_sort_epochs_as_numbers(tmp_path):
    path = tmp_path / "results.jsonl"
    for epochs in (1000, 200, 100):
        write_record(path, record(protocol="semisup_1pct", pretrain_epochs=epochs, metrics_final={"top1": 50.0}))
    (table,) = tables.table2(tables.collect_facts([path], []), "imagenet-1k")
    assert [row.keys[2] for row in table.rows] == ["100", "200", "1000"]
