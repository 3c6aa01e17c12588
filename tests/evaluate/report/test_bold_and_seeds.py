"""Seed aggregation and bold, on inputs where a plausible wrong rule gives another table.

Each test names the hand-injected break it was run against (issue 17, section 4): all three
survived the suite before these tests existed.
"""
from __future__ import annotations

import pandas as pd

from evaluate.report import tables
from evaluate.report.facts import collect_facts
from evaluate.report.leaderboard import leaderboard
from evaluate.report.records import ResultRecord, write_record

REFERENCE_HEADER = "table,protocol,dataset,method,backbone,pretrain_epochs,metric,value,source,note\n"


def record(**overrides) -> ResultRecord:
    fields = dict(method="SNCLR", backbone="resnet50", dataset="imagenet-1k", protocol="linear",
                  protocol_id="linear_sgd-cos-90e-b4096-lr0.1", metrics_final={"top1": 75.5}, pretrain_epochs=800,
                  checkpoint_sha256="a" * 64, code_version="abc123", created_at="2024-01-01T00:00:00+00:00")
    return ResultRecord(**{**fields, **overrides})


def printed(capsys, *argv: str) -> str:
    """What `python -m evaluate tables ARGV` prints (run in-process)."""
    assert tables.main(list(argv)) == 0
    return capsys.readouterr().out


def row(markdown: str, first: str) -> list[str]:
    (cells,) = [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()
                if line.startswith(f"| {first} ")]
    return cells


def test_seeds_are_averaged_by_the_mean_not_the_median(tmp_path, capsys):
    """Three skewed seeds (60, 61, 80) of one model (one pre-training config, three checkpoints):
    mean 67.0, median 61.0, sample std 11.3.

    Break: aggregate() with "median" for "mean"; two seeds (all the suite had) cannot tell them apart.
    """
    for seed, value in enumerate((60.0, 61.0, 80.0)):
        config = {"method": "snclr", "backbone": "resnet50", "dataset": "imagenet", "temperature": 0.1, "seed": seed}
        write_record(tmp_path / f"seed{seed}" / "results.jsonl",
                     record(metrics_final={"top1": value}, seed=seed, checkpoint_sha256=f"{seed}" * 64,
                            pretrain_seed=seed, pretrain_config=config))
    markdown = printed(capsys, str(tmp_path), "--no-default-reference")
    assert row(markdown, "SNCLR")[6] == "67.0 ± 11.3 (3)"
    board = leaderboard(collect_facts([tmp_path]))
    assert board[["linear_top1", "linear_top1_n"]].values.tolist() == [[67.0, 3]]
    assert round(board.at[0, "linear_top1_std"], 4) == 11.2694


def test_a_tie_at_second_place_bolds_every_tied_cell(tmp_path, capsys):
    """70, 69, 69, 60 in a best-two column: three cells bold; 70, 70, 60 in a best-one column: two.

    Break: _bold() keeping the first ``best`` of the sorted values (values.index[:best]), which
    drops one of the tied 69s, or a strict > at the threshold, which drops both.
    """
    path = tmp_path / "results.jsonl"
    for method, value in (("A", 70.0), ("B", 69.0), ("C", 69.0), ("D", 60.0)):
        write_record(path, record(method=method, protocol="semisup_1pct", protocol_id="semisup",
                                  metrics_final={"top1": value}, checkpoint_sha256=method.lower() * 64))
    for method, value, sha in (("E", 70.0, "e"), ("F", 70.0, "f"), ("G", 60.0, "0")):
        write_record(path, record(method=method, backbone="vit_small", pretrain_epochs=300,
                                  metrics_final={"top1": value}, checkpoint_sha256=sha * 64))
    markdown = printed(capsys, str(tmp_path), "--no-default-reference")
    assert [row(markdown, m)[4] for m in "ABCD"] == ["**70.0**", "**69.0**", "**69.0**", "60.0"]
    assert [row(markdown, m)[5] for m in "EFG"] == ["**70.0**", "**70.0**", "60.0"]


def test_published_rows_count_when_bold_is_decided(tmp_path, capsys):
    """Two published numbers above every measured one: the measured rows are not bold, in Table 2
    (best two) nor in Table 1 (best per backbone).

    Break: _bold() deciding on the measured rows alone (the published ones left out of ``means``).
    """
    reference = tmp_path / "published.csv"
    reference.write_text(REFERENCE_HEADER
                         + "2,semi_supervised_1pct,imagenet-1k,P1,resnet50,800,top1,80.0,paper one,\n"
                         + "2,semi_supervised_1pct,imagenet-1k,P2,resnet50,800,top1,79.0,paper two,\n"
                         + "1a,linear,imagenet-1k,P3,resnet50,800,top1,76.0,paper three,\n")
    runs = tmp_path / "runs"
    for method, value in (("A", 70.0), ("B", 60.0)):
        write_record(runs / "results.jsonl", record(method=method, protocol="semisup_1pct", protocol_id="semisup",
                                                    metrics_final={"top1": value}, checkpoint_sha256=method.lower() * 64))
    for method, value in (("C", 75.0), ("D", 74.0)):
        write_record(runs / "results.jsonl", record(method=method, metrics_final={"top1": value},
                                                    checkpoint_sha256=method.lower() * 64))
    markdown = printed(capsys, str(runs), "--no-default-reference", "--reference", str(reference))
    assert [row(markdown, m)[4] for m in ("P1", "P2", "A", "B")] == ["**80.0**", "**79.0**", "70.0", "60.0"]
    assert [row(markdown, m)[6] for m in ("P3", "C", "D")] == ["**76.0**", "75.0", "74.0"]


def test_bold_needs_three_values_per_column_and_group():
    """The rule's floor, on a frame: a column (per group) of two values has no bold."""
    means = pd.DataFrame({"x": [70.0, 69.0, 50.0, 40.0], "y": [1.0, 2.0, 3.0, None]})
    groups = pd.Series(["g", "g", "g", "h"])
    bold = tables._bold(means, groups, best=2)
    assert bold["x"].tolist() == [True, True, False, False] and bold["y"].tolist() == [False, True, True, False]
    assert not tables._bold(means.iloc[:2], groups.iloc[:2], best=1).to_numpy().any()
