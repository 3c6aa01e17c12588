"""The main job at its quick scale, end to end: records, tables, leaderboard and plots."""
import csv
import json

import pytest

from evaluate.detection.d2_compat import detectron2_missing_reason


@pytest.mark.slow
def test_quick_demo_end_to_end(fashion_mnist_dir, tmp_path, capsys):
    reason = detectron2_missing_reason()
    if reason:
        pytest.skip(reason)
    from evaluate.demo import run_demo
    tables = run_demo(tmp_path, "quick", str(fashion_mnist_dir))
    records = [json.loads(line) for path in sorted(tmp_path.rglob("results.jsonl")) for line in path.open()]
    protocols = sorted((r["method"], r["variant"].get("neighbors"), r["protocol"]) for r in records)
    assert ("SNCLR", "soft", "semisup_10pct") in protocols and ("SNCLR", "none", "knn") in protocols
    assert ("random-init", None, "linear_fast") in protocols and ("SNCLR", "soft", "detection") in protocols
    assert len(records) == 3 * 2 + 3 + 1
    for record in records:
        assert record["checkpoint_sha256"] and record["code_version"] and record["protocol_id"]
    with open(tables / "leaderboard.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["method"] for row in rows} >= {"SNCLR", "random-init"}
    assert (tables / "fashion-mnist" / "table1a.md").exists() and (tables / "fashion-mnist" / "table4.tex").exists()
    for png in ("pretrain_snclr.png", "pretrain_eq1_baseline.png", "neighbors_snclr.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 5000
    out = capsys.readouterr().out
    assert "Table 1a" in out and "random-init" in out
