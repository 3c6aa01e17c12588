"""What fills a cell: one model (its identity), one evaluation setting, distinct checkpoints as seeds.

Each test builds records by hand, runs ``python -m evaluate tables`` as a user would, and reads the
cell from what it wrote. Each docstring names the break of the earlier builder (cells keyed by method
name and four hand-picked knobs, the newest non-conformant record winning) that made it fail.
"""
from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from evaluate.report.records import ResultRecord, write_record
from pretrain.config import PretrainConfig
from pretrain.identity import identity_of

REPO = Path(__file__).resolve().parents[3]
SMALL = "image_size: 224 (paper) -> 32 (small-scale default for this data set)"
LIMIT_300 = "--limit-train: 300 class-balanced images (protocol: the whole training set)"


def config(seed: int = 0, **overrides) -> dict:
    values = dict(backbone="resnet18", dataset="fashion-mnist", image_size=32, epochs=30, batch_size=256, k=10,
                  seed=seed, output_dir=f"runs/seed{seed}", device="cpu")
    return PretrainConfig(**{**values, **overrides}).to_dict()


def record(**overrides) -> ResultRecord:
    """A Fashion-MNIST kNN record of an SNCLR checkpoint pre-trained with ``config()``."""
    fields = dict(method="SNCLR", backbone="resnet18", dataset="fashion-mnist", protocol="knn",
                  protocol_id="knn_cos-k20-200-T0.07", metrics_final={"knn_top1_k20": 80.0}, pretrain_epochs=30,
                  checkpoint_sha256="a" * 64, deviations=[SMALL], pretrain_config=config(), pretrain_seed=0,
                  created_at="2026-01-01T00:00:00+00:00")
    fields.update(overrides)
    return ResultRecord(**fields)


def build(records: Path, tmp_path: Path, *extra: str) -> tuple[str, pd.DataFrame, str]:
    """Run ``python -m evaluate tables`` on ``records``: (tables.md, leaderboard.csv, the log).

    In this process (``tables.main`` with the CLI's argv and its log format), so that mutation testing
    sees what these tests cover; test_tables.py runs the same command as a subprocess."""
    from evaluate.report import tables

    out = tmp_path / "tables_out"
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter(tables.LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        status = tables.main([str(records), "--out", str(out), "--no-default-reference", *extra])
    finally:
        root.removeHandler(handler)
    assert status == 0, log.getvalue()
    return (out / "tables.md").read_text(encoding="utf-8"), pd.read_csv(out / "leaderboard.csv"), log.getvalue()


def table(markdown: str, number: str) -> str:
    start = markdown.index(f"**Table {number}")
    end = markdown.find("\n**Table", start + 1)
    return markdown[start:end if end > 0 else None]


def rows(markdown: str, first: str) -> list[list[str]]:
    lines = [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("|")]
    return [line for line in lines if line[0] == first]


def column(markdown: str, name: str) -> int:
    header = next(line for line in markdown.splitlines() if line.startswith("|"))
    return [c.strip() for c in header.strip("|").split("|")].index(name)


def knn(markdown: str, first: str) -> list[str]:
    """The kNN cells of Table 4's rows whose Method is ``first``."""
    part = table(markdown, "4")
    return [row[column(part, "kNN top-1 (k=20)")] for row in rows(part, first)]


# ----------------------------------------------------------------------------------- model identity

def test_two_checkpoints_of_unknown_configuration_are_two_models(tmp_path):
    """Broke on: cells keyed by method name. Two foreign checkpoints "seed 0" each (73.8, 60.0) printed
    as one cell "66.9 ± 9.8 (2)" and one leaderboard row."""
    for name, value, sha in (("a", 73.8, "1"), ("b", 60.0, "2")):
        write_record(tmp_path / "r" / name / "results.jsonl",
                     record(dataset="imagenet-1k", protocol="linear", protocol_id="linear_sgd-cos-90e-b1024-lr0.1",
                            metrics_final={"top1": value}, checkpoint_sha256=sha * 64, pretrain_config={},
                            pretrain_seed=None, method="MoCo v3", deviations=[]))
    markdown, board, _ = build(tmp_path / "r", tmp_path)
    part = table(markdown, "1a")
    cells = [row[column(part, "30 ep")] for name in ("1", "2") for row in rows(part, f"MoCo v3 [sha256:{name * 16}]")]
    assert cells == ["73.8", "60.0"]
    assert "(2)" not in markdown
    assert sorted(board["linear_top1"]) == [60.0, 73.8] and set(board["linear_top1_n"]) == {1}


def test_two_configurations_are_two_rows_labelled_by_what_differs(tmp_path):
    """Broke on: the four-knob cell key. Two runs differing in temperature and --detach-weights (and
    in neither of the four knobs) printed as one cell "19.0 ± 0.0 (2)"."""
    write_record(tmp_path / "r" / "results.jsonl", record(metrics_final={"knn_top1_k20": 19.0}))
    write_record(tmp_path / "r" / "results.jsonl",
                 record(metrics_final={"knn_top1_k20": 19.0}, checkpoint_sha256="b" * 64,
                        pretrain_config=config(temperature=0.1, detach_weights=True)))
    markdown, board, _ = build(tmp_path / "r", tmp_path)
    part = table(markdown, "4")
    assert column(part, "temperature") and column(part, "detach_weights")
    got = [(row[column(part, "temperature")], row[column(part, "detach_weights")], row[column(part, "kNN top-1 (k=20)")])
           for row in rows(part, "SNCLR")]
    assert sorted(got) == [("0.1", "True", "19.0 †1"), ("0.2", "False", "19.0 †1")]
    assert sorted(board["knobs"]) == ["detach_weights=False, temperature=0.2", "detach_weights=True, temperature=0.1"]


def _two_seeds_and_a_duplicate(path: Path) -> None:
    """Checkpoints 0 and 1 (seeds 0 and 1 of one config), then a second, older record of checkpoint 0."""
    write_record(path, record(metrics_final={"knn_top1_k20": 80.0}, checkpoint_sha256="0" * 64))
    write_record(path, record(metrics_final={"knn_top1_k20": 82.0}, checkpoint_sha256="1" * 64,
                              pretrain_config=config(seed=1), pretrain_seed=1))
    write_record(path, record(metrics_final={"knn_top1_k20": 50.0}, checkpoint_sha256="0" * 64, seed=1,
                              created_at="2025-01-01T00:00:00+00:00"))


def test_seeds_of_one_configuration_average_and_two_records_of_one_checkpoint_do_not(tmp_path):
    """Broke on: seeds keyed by (checkpoint, seed): one checkpoint evaluated with --seed 0 and --seed 1
    counted as two seeds. Here: two checkpoints (seeds 0 and 1 of one config) make (2); a second
    record of checkpoint 0 is a duplicate, set aside and counted under the table."""
    path = tmp_path / "r" / "results.jsonl"
    _two_seeds_and_a_duplicate(path)
    markdown, board, stderr = build(tmp_path / "r", tmp_path)
    assert knn(markdown, "SNCLR") == ["81.0 ± 1.4 (2) †1"]
    assert "1 record set aside: 1 duplicate of a checkpoint already in its cell" in table(markdown, "4")
    assert "r/results.jsonl:3 set aside" in stderr or "results.jsonl:3 set aside" in stderr
    assert board[["knn_top1_k20", "knn_top1_k20_n"]].values.tolist() == [[81.0, 2]]


# --------------------------------------------------------------------------------- settings: choice

def test_a_smaller_data_limit_never_replaces_the_full_run(tmp_path):
    """Broke on: among non-conformant records the newest won. A newer --limit-train 300 kNN run
    replaced the full-data 83.02 in the table and in leaderboard.csv."""
    path = tmp_path / "r" / "results.jsonl"
    write_record(path, record(metrics_final={"knn_top1_k20": 83.02}))
    write_record(path, record(metrics_final={"knn_top1_k20": 71.5}, deviations=[SMALL, LIMIT_300],
                              created_at="2026-06-01T00:00:00+00:00"))
    markdown, board, _ = build(tmp_path / "r", tmp_path)
    assert knn(markdown, "SNCLR") == ["83.02 †1"]
    assert "1 record set aside: 1 with more departures than another setting of the model" in table(markdown, "4")
    assert board["knn_top1_k20"].tolist() == [83.02]
    assert board["knn_top1_k20_deviations"].tolist() == [SMALL]
    assert board["knn_top1_k20_protocol_conformant"].tolist() == [False]


def test_a_one_epoch_smoke_probe_never_replaces_the_longer_seeds(tmp_path):
    """Broke on: the newest non-conformant record won. A 1-epoch smoke linear probe replaced two
    90-epoch seeds; here neither setting's deviations lie inside the other's (10 vs 1 epochs by
    flag), so each gets its own row and mark, and the seeds stay (2)."""
    path = tmp_path / "r" / "results.jsonl"
    ten = "epochs: 90 (paper) -> 10 (flag)"
    for seed in (0, 1):
        write_record(path, record(protocol="linear", protocol_id="linear_sgd-cos-10e-b256-lr0.1",
                                  metrics_final={"top1": 70.0 + seed}, checkpoint_sha256=str(seed) * 64,
                                  pretrain_config=config(seed), pretrain_seed=seed, deviations=[SMALL, ten]))
    write_record(path, record(protocol="linear", protocol_id="linear_sgd-cos-1e-b256-lr0.1", metrics_final={"top1": 40.0},
                              deviations=[SMALL, "epochs: 90 (paper) -> 1 (flag)"], created_at="2026-06-01T00:00:00+00:00"))
    markdown, board, _ = build(tmp_path / "r", tmp_path)
    part = table(markdown, "4")
    linear = column(part, "linear top-1")
    assert [row[linear] for row in rows(part, "SNCLR")] == ["70.5 ± 0.7 (2) †1"]
    assert [row[linear] for row in rows(part, "SNCLR [setting 2]")] == ["40.0 †2"]
    assert "one of 2 settings of this model, each in a row of its own; this one: linear_sgd-cos-1e-b256-lr0.1" in part
    assert board[["setting", "linear_top1", "linear_top1_n"]].values.tolist() == [[1, 70.5, 2], [2, 40.0, 1]]


def test_a_conformant_record_of_another_protocol_id_does_not_replace_conformant_seeds(tmp_path):
    """Broke on: "another protocol id fills this cell": a newer record with an unknown protocol_id and
    no deviations replaced two conformant seeds and showed unmarked."""
    path = tmp_path / "r" / "results.jsonl"
    for seed in (0, 1):
        write_record(path, record(dataset="imagenet-1k", protocol="linear", protocol_id="linear_sgd-cos-90e-b1024-lr0.1",
                                  metrics_final={"top1": 70.0 + seed}, checkpoint_sha256=str(seed) * 64, deviations=[],
                                  pretrain_config=config(seed), pretrain_seed=seed))
    write_record(path, record(dataset="imagenet-1k", protocol="linear", protocol_id="my-probe", deviations=[],
                              metrics_final={"top1": 99.0}, created_at="2026-06-01T00:00:00+00:00"))
    markdown, _, _ = build(tmp_path / "r", tmp_path)
    part = table(markdown, "1a")
    assert rows(part, "SNCLR")[0][column(part, "30 ep")] == "70.5 ± 0.7 (2) †1"
    assert rows(part, "SNCLR [setting 2]")[0][column(part, "30 ep")] == "99.0 †2"
    assert "†2 one of 2 settings of this model, each in a row of its own; this one: my-probe" in part


def test_seeds_with_different_deviations_are_not_averaged(tmp_path):
    """Broke on: seeds averaged across deviation sets with the union of footnotes: "73.4 ± 11.6 (3) †1".
    Here the third seed ran with an extra deviation: it is set aside, the two alike stay (2)."""
    path = tmp_path / "r" / "results.jsonl"
    for seed, value, deviations in ((0, 80.0, [SMALL]), (1, 80.4, [SMALL]), (2, 60.0, [SMALL, LIMIT_300])):
        write_record(path, record(metrics_final={"knn_top1_k20": value}, checkpoint_sha256=str(seed) * 64,
                                  pretrain_config=config(seed), pretrain_seed=seed, deviations=deviations))
    markdown, _, _ = build(tmp_path / "r", tmp_path)
    assert knn(markdown, "SNCLR") == ["80.2 ± 0.3 (2) †1"]
    part = table(markdown, "4")
    assert f"†1 {SMALL}" in part and "300 class-balanced" not in part
    assert "1 record set aside: 1 with more departures than another setting of the model" in part


def test_a_record_without_created_at_is_refused_with_one_line(tmp_path):
    """Broke on: a record without created_at was dated "now" and beat every dated duplicate."""
    path = tmp_path / "r" / "results.jsonl"
    write_record(path, record())
    data = json.loads(record(checkpoint_sha256="b" * 64).to_json())
    del data["created_at"]
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(data) + "\n")
    result = subprocess.run([sys.executable, "-m", "evaluate", "tables", str(path)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.strip() == f"error: {path}:2: missing required field(s) ['created_at']"


# ------------------------------------------------------------------------------------- leaderboard

def test_detection_results_of_one_model_aggregate_as_seeds_or_take_their_own_row(tmp_path):
    """Broke on: the leaderboard pivot kept the first of two detection results of one row and
    dropped the other without a word."""
    path = tmp_path / "r" / "results.jsonl"
    single = "MODEL.RESNETS.NORM: SyncBN -> BN (one process)"
    detection = dict(dataset="coco-2017", protocol="detection", protocol_id="mask-rcnn_R18-FPN_bn_b16-lr0.02-90000it",
                     deviations=[single])
    for seed in (0, 1):
        pretrained = dict(checkpoint_sha256=str(seed) * 64, pretrain_config=config(seed), pretrain_seed=seed)
        write_record(path, record(metrics_final={"knn_top1_k20": 80.0 + seed}, **pretrained))
        write_record(path, record(**detection, **pretrained, metrics_final={"AP_bbox": 30.0 + 2 * seed, "AP_segm": 28.0}))
    # The same model under a shorter schedule on 8 GPUs: neither deviation set holds the other, its own row.
    write_record(path, record(**{**detection, "protocol_id": "mask-rcnn_short", "deviations": ["MAX_ITER: 90000 -> 20"]},
                              metrics_final={"AP_bbox": 1.0, "AP_segm": 0.5}))
    markdown, board, _ = build(tmp_path / "r", tmp_path)
    assert board[["setting", "detection_AP_bbox", "detection_AP_bbox_n"]].values.tolist() == [[1, 31.0, 2], [2, 1.0, 1]]
    assert board["detection_AP_bbox_deviations"].tolist() == [single, "MAX_ITER: 90000 -> 20"]
    assert board["detection_AP_bbox_protocol_conformant"].tolist() == [False, False]
    assert board["knn_top1_k20"].tolist()[0] == 80.5
    part = table(markdown, "3")
    assert rows(part, "SNCLR")[0][column(part, "APbb")] == "31.0 ± 1.4 (2) †1"
    assert rows(part, "SNCLR [setting 2]")[0][column(part, "APbb")] == "1.0 †2"


def test_leaderboard_pretrain_dataset_comes_from_the_configuration(tmp_path):
    """Broke on: pretrain_dataset held the evaluation data set, so a model pre-trained on one set and
    evaluated on another was misfiled, and one checkpoint could appear as two rows."""
    path = tmp_path / "r" / "results.jsonl"
    folder = config(dataset="imagefolder", data_dir="/data/imagenet100", image_size=224)
    write_record(path, record(dataset="imagenet-1k", protocol="linear", protocol_id="linear_sgd-cos-90e-b1024-lr0.1",
                              metrics_final={"top1": 60.0}, deviations=[], pretrain_config=folder))
    write_record(path, record(dataset="imagenet-1k", pretrain_config=folder, deviations=[]))
    write_record(path, record(method="DINO", checkpoint_sha256="d" * 64, pretrain_config={}, pretrain_seed=None))
    _, board, _ = build(tmp_path / "r", tmp_path)
    assert board[["eval_dataset", "pretrain_dataset", "method"]].fillna("").values.tolist() == [
        ["imagenet-1k", "imagefolder:imagenet100", "SNCLR"], ["fashion-mnist", "", "DINO"]]
    assert board["model_id"].tolist()[0] == identity_of(folder, "a" * 64).model_id


# ---------------------------------------------------------------------------------------------- bold

def test_table1_never_bolds_the_fast_probe_against_the_standard_probe(tmp_path):
    """Broke on: Table 1 bolded the best per backbone whatever the protocol, so a fast cached-feature
    probe (81) took the bold from the standard linear probe (72). The shipped study's Table 1a did."""
    path = tmp_path / "r" / "results.jsonl"
    for i, (value, temperature) in enumerate(((70.0, 0.1), (71.0, 0.2), (72.0, 0.3))):
        pretrained = dict(checkpoint_sha256=str(i) * 64, pretrain_config=config(temperature=temperature))
        write_record(path, record(protocol="linear", protocol_id="linear_sgd-cos-90e-b256-lr0.1",
                                  metrics_final={"top1": value}, **pretrained))
        write_record(path, record(protocol="linear_fast", protocol_id="linear_fast-adam-10e",
                                  metrics_final={"top1": 79.0 + i}, **pretrained))
    markdown, _, _ = build(tmp_path / "r", tmp_path)
    part = table(markdown, "1a")
    bold = [(line.split("|")[1].strip(), line.split("|")[3].strip()) for line in part.splitlines()
            if line.startswith("|") and "**" in line]
    assert bold == [("SNCLR (temperature=0.3)", "measured"), ("SNCLR (temperature=0.3)", "measured (linear_fast)")]


def test_bold_is_decided_on_the_numbers_as_printed(tmp_path):
    """Broke on: bold compared unrounded means, so of two cells both printed 70.0 only one was bold."""
    path = tmp_path / "r" / "results.jsonl"
    for i, (value, temperature) in enumerate(((70.004, 0.1), (70.001, 0.2), (65.05, 0.3))):
        write_record(path, record(dataset="imagenet-1k", protocol="linear", protocol_id="linear_sgd-cos-90e-b1024-lr0.1",
                                  metrics_final={"top1": value}, deviations=[], checkpoint_sha256=str(i) * 64,
                                  pretrain_config=config(temperature=temperature)))
    markdown, _, _ = build(tmp_path / "r", tmp_path)
    part = table(markdown, "1a")
    assert part.count("**70.00**") == 2 and "**65.05**" not in part


@pytest.mark.parametrize("variant", ["none", "soft"])
def test_shipped_study_records_carry_identity_and_their_limit(variant):
    """Broke on: the study's pre-trained records lacked the --limit-train 10000 deviation they ran with."""
    study = REPO / "results" / "studies" / "fmnist_table4" / "records"
    for path in study.glob(f"{variant}_s*.jsonl"):
        for line in path.read_text().splitlines():
            data = json.loads(line)
            assert data["model_id"].startswith("snclr:") and data["pretrain_config"]["neighbors"] == variant
            assert any(d.startswith("--limit-train: 10000") for d in data["deviations"])


def test_every_record_set_aside_is_named_in_one_warning_line(tmp_path):
    """The build log names each record set aside, why, what cell it belonged to and which record
    filled that cell, in file order. Mutations tried (found by mutmut in ``select_records``), each
    failing this test: the data set, protocol, method, backbone or epochs left out of the line; the
    filling record (``detail``) dropped from a duplicate; the model's keys dropped from a departure."""
    path = tmp_path / "r" / "results.jsonl"
    _two_seeds_and_a_duplicate(path)
    write_record(path, record(metrics_final={"knn_top1_k20": 71.5}, deviations=[SMALL, LIMIT_300],
                              created_at="2026-06-01T00:00:00+00:00"))
    _, _, stderr = build(tmp_path / "r", tmp_path)
    lines = [line.split("evaluate.report.facts: ", 1)[1] for line in stderr.splitlines() if "set aside (" in line]
    assert lines == [
        "results.jsonl:3 set aside (duplicate of a checkpoint already in its cell): fashion-mnist knn SNCLR "
        "resnet18 ep 30; cell filled from results.jsonl:1",
        "results.jsonl:4 set aside (with more departures than another setting of the model): fashion-mnist knn "
        "SNCLR resnet18 ep 30; cell filled from results.jsonl:1"]
