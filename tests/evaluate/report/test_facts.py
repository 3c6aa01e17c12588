"""The cell rules of ``evaluate/report/facts.py`` called directly, on frames and records built by hand.

test_cells.py runs the same rules end to end through the CLI; these tests pin each rule's details
(order, ties, wording) that a table shows but an end-to-end test cannot reach cheaply. They were
written against the survivors of a mutmut run of facts.py (issue 17; docs/testing.md): each
docstring names the kind of mutant it kills.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from evaluate.report import facts as F
from evaluate.report.records import ResultRecord, write_record
from pretrain.config import PretrainConfig

# One pre-training configuration: its checkpoints are seeds of one model (pretrain/identity.py).
CONFIG = PretrainConfig(backbone="resnet18", dataset="fashion-mnist", image_size=32, epochs=30, batch_size=256,
                        output_dir="runs/x", device="cpu").to_dict()


# ------------------------------------------------------------------------------ distinguishing_keys

@pytest.mark.parametrize("configs, keys", [
    ([{"a": 1, "b": 2}, {"a": 1, "b": 3}], ["b"]),
    ([{"b": 1, "a": 1}, {"b": 2, "a": 2}], ["b", "a"]),                      # configuration order, not sorted
    ([{"a": 2, "b": 1}, {"b": 2, "a": 1}], ["a", "b"]),                      # the first configuration's order
    ([{"method": "x", "epochs": 1, "backbone": "r", "a": 1},
      {"method": "y", "epochs": 2, "backbone": "s", "a": 1}], []),            # shown in columns of their own
    ([{"a": 1}, {"a": 1}], []),
    ([{"a": 1}, {"a": 1, "b": 2}], ["b"]),                                   # one lacks a key the other sets
    ([{"a": 1}, {"a": 1, "b": 2}, {"a": 1, "c": 3}], ["b", "c"]),             # two rounds of "still alike"
    ([{"a": 1, "c": 3}, {"a": 1}, {"a": 1, "b": 2}], ["c", "b"]),
    ([{"a": 1, "b": 2}, {"a": 2, "b": 2}, {"a": 2}], ["a", "b"]),             # b set twice alike, still needed
    ([{"a": [1, 2]}, {"a": [1, 2]}, {"a": [2, 1]}], ["a"]),                   # values compared as JSON
    ([{"a": None}, {}], ["a"]),                                              # None is a value, not "unset"
    ([{}, {"a": None}], ["a"]),
    ([{"a": 1, "b": 3}, {"a": 2}], ["a"]),                                   # already told apart by a
    ([{"b": None, "c": 1}, {}, {"b": 1}], ["b"]),                            # b=None and no b are apart
])
def test_distinguishing_keys(configs, keys):
    """Kills: the OWN_COLUMNS filter, the ``> 1`` disagreement test, the UNSET defaults (in
    ``_signature`` and the look-alike test), a signature that ignores the keys (every configuration
    then compared with the first), the ``break`` / ``extra[0]`` of the alike loop, and order kept
    from the configs."""
    assert F.distinguishing_keys(configs) == keys


def test_distinguishing_keys_terminates_on_many_alike_configurations():
    configs = [{"a": 1}] + [{"a": 1, f"k{i}": i} for i in range(6)]
    assert F.distinguishing_keys(configs) == [f"k{i}" for i in range(6)]


# ---------------------------------------------------------------------------------- _choose_settings

def settings_frame(*rows: tuple) -> pd.DataFrame:
    """Records of one model: (protocol_id, deviations, sha, created day, ref)."""
    return pd.DataFrame([dict(protocol_id=p, deviations=tuple(d), sha=s, created=pd.Timestamp(f"2026-01-{day:02d}", tz="UTC"),
                              ref=ref) for p, d, s, day, ref in rows])


def test_a_conformant_setting_wins_and_the_others_name_its_first_record():
    """Kills: conformant read as ``key[1]`` truthy, and the detail taken from another summary field."""
    shown, dropped = F._choose_settings(settings_frame(
        ("p", ["x"], "1", 9, "f:1"), ("p", [], "2", 1, "f:3"), ("p", [], "3", 2, "f:2"), ("p", ["y", "x"], "4", 5, "f:4")))
    assert shown == {("p", ()): 0}
    assert dropped == {("p", ("x",)): ("conformant", "f:2"), ("p", ("y", "x")): ("conformant", "f:2")}


def test_two_conformant_settings_both_show_the_most_seeds_first():
    """A setting set aside names the conformant setting shown first, whatever order records came in."""
    shown, dropped = F._choose_settings(settings_frame(
        ("p", [], "1", 1, "f:1"), ("p", ["x"], "5", 1, "f:0"), ("q", [], "2", 1, "f:2"), ("q", [], "3", 1, "f:3"),
        ("q", [], "3", 2, "f:4")))
    assert shown == {("q", ()): 0, ("p", ()): 1}   # q: 2 distinct checkpoints, not 3 records
    assert dropped == {("p", ("x",)): ("conformant", "f:2")}


def test_a_deviation_set_inside_another_wins_over_it_and_is_named():
    """Kills: ``<`` as ``<=`` (a setting would drop itself), ``min`` as ``max`` over the sets inside
    (the detail must name the smallest set's first record), and ``len`` order."""
    shown, dropped = F._choose_settings(settings_frame(
        ("p", ["x", "y", "z"], "1", 9, "f:1"), ("p", ["x", "y"], "2", 1, "f:5"), ("p", ["x"], "3", 1, "f:7"),
        ("p", ["x"], "4", 1, "f:6"), ("p", ["w"], "5", 1, "f:9")))
    assert shown == {("p", ("x",)): 0, ("p", ("w",)): 1}
    assert dropped == {("p", ("x", "y", "z")): ("departure", "f:6"), ("p", ("x", "y")): ("departure", "f:6")}
    # {a, b} sorts before {z} but has more deviations: {z} is named.
    shown, dropped = F._choose_settings(settings_frame(
        ("p", ["a", "b", "z"], "1", 1, "f:1"), ("p", ["a", "b"], "2", 1, "f:2"), ("p", ["z"], "3", 1, "f:3")))
    assert dropped == {("p", ("a", "b", "z")): ("departure", "f:3")}


@pytest.mark.parametrize("rows, order", [
    # most distinct checkpoints first
    ([("p", ["a"], "1", 1, "f:1"), ("p", ["b"], "2", 1, "f:2"), ("p", ["b"], "3", 1, "f:3")], [("b",), ("a",)]),
    # then the fewest deviations
    ([("p", ["a", "c"], "1", 1, "f:1"), ("p", ["b"], "2", 1, "f:2")], [("b",), ("a", "c")]),
    # then the newest record
    ([("p", ["a"], "1", 1, "f:1"), ("p", ["b"], "2", 3, "f:2")], [("b",), ("a",)]),
    ([("p", ["a"], "1", 3, "f:2"), ("p", ["b"], "2", 1, "f:1")], [("a",), ("b",)]),
    # then the first file:line
    ([("p", ["a"], "1", 1, "f:2"), ("p", ["b"], "2", 1, "f:1")], [("b",), ("a",)]),
])
def test_settings_that_are_all_shown_are_ordered_by_seeds_size_date_then_place(rows, order):
    shown, dropped = F._choose_settings(settings_frame(*rows))
    assert dropped == {} and sorted(shown, key=shown.get) == [("p", devs) for devs in order]
    assert sorted(shown.values()) == list(range(len(order)))


# ------------------------------------------------------------------------------------- record_frame

def record(**overrides) -> ResultRecord:
    fields = dict(method="SNCLR", backbone="resnet18", dataset="fashion-mnist", protocol="knn",
                  protocol_id="knn_cos-k20-200-T0.07", metrics_final={"knn_top1_k20": 80.0}, pretrain_epochs=30,
                  checkpoint_sha256="a" * 64, deviations=[], pretrain_config=CONFIG,
                  created_at="2026-01-01T00:00:00+00:00")
    fields.update(overrides)
    return ResultRecord(**fields)


def test_record_frame_fields(tmp_path):
    """Kills: the unfinished-schedule text and deviation, the UTC reading of a naive time, sorted and
    unique deviations, the relative ``ref``, and ``best`` taken only for metrics the record reports."""
    write_record(tmp_path / "a" / "results.jsonl", record(
        pretrain_epochs=3, pretrain_epochs_planned=10, pretrain_complete=False, deviations=["z", "b", "z"],
        created_at="2026-01-02T03:04:05", metrics_final={"top1": 50.0, "top5": 80.0},
        metrics_best={"top1": 55.0, "other": 1.0}))
    write_record(tmp_path / "b" / "results.jsonl", record(pretrain_epochs=4, pretrain_complete=False,
                                                          created_at="2026-01-02T05:04:05+02:00"))
    frame = F.record_frame([tmp_path / "a", tmp_path / "b"])
    best = F.record_frame([tmp_path / "a", tmp_path / "b"], "best")
    first = frame[frame["ref"] == "a/results.jsonl:1"].set_index("metric")
    assert first["value"].to_dict() == {"top1": 50.0, "top5": 80.0}
    assert best[best["ref"] == "a/results.jsonl:1"].set_index("metric")["value"].to_dict() == {"top1": 55.0, "top5": 80.0}
    assert set(first["epochs"]) == {"3/10"}
    assert first["deviations"].iloc[0] == ("b", "pre-training unfinished: epoch 3 of 10 planned", "z")
    second = frame[frame["ref"] == "b/results.jsonl:1"].iloc[0]
    assert second["epochs"] == "4/?" and second["deviations"] == ("pre-training unfinished: epoch 4 of ? planned",)
    assert first["created"].iloc[0] == second["created"] == pd.Timestamp("2026-01-02T03:04:05", tz="UTC")
    assert list(frame.columns[:6]) == F.MODEL
    with pytest.raises(ValueError, match="metric_kind must be 'final' or 'best', got 'last'"):
        F.record_frame([tmp_path], "last")


def test_record_frame_config_leaves_out_what_only_names_a_run(tmp_path):
    """Seeds of one model share one configuration label. Kills: the run-only keys not removed."""
    write_record(tmp_path / "results.jsonl", record())
    config = json.loads(F.record_frame([tmp_path])["config"].iloc[0])
    assert config["backbone"] == "resnet18" and config["image_size"] == 32
    assert not {"seed", "output_dir", "device"} & set(config)
    dino = {"arch": "vit_small", "lr": 0.0005, "seed": 0, "num_workers": 10, "data_path": "/data", "dist_url": "env://"}
    write_record(tmp_path / "dino" / "results.jsonl", record(pretrain_config=dino, method="DINO"))
    frame = F.record_frame([tmp_path / "dino"])
    assert json.loads(frame["config"].iloc[0]) == {"arch": "vit_small", "lr": 0.0005}   # DINO's run-only keys too


def test_record_frame_of_nothing_is_an_empty_frame():
    frame = F.record_frame([])
    assert frame.empty and list(frame.columns[:6]) == F.MODEL


def test_a_folder_name_with_a_colon_keeps_its_line_number(tmp_path):
    """Run folders are often named by time ("2026-01-01T10:00"). Kills: ``split`` for ``rsplit``."""
    write_record(tmp_path / "2026-01-01T10:00" / "results.jsonl", record())
    write_record(tmp_path / "2026-01-01T10:00" / "results.jsonl", record(checkpoint_sha256="b" * 64))
    assert F.record_frame([tmp_path])["ref"].tolist() == ["2026-01-01T10:00/results.jsonl:1",
                                                          "2026-01-01T10:00/results.jsonl:2"]


@pytest.mark.parametrize("epochs, planned, complete, text", [
    (None, 10, False, ""), (30, None, None, "30"), (30, 30, True, "30"), (3, 10, False, "3/10"), (3, None, False, "3/?")])
def test_epochs_text(epochs, planned, complete, text):
    assert F._epochs_text(epochs, planned, complete) == text


def test_record_frame_of_one_file_is_relative_to_its_folder(tmp_path):
    write_record(tmp_path / "deep" / "results.jsonl", record())
    assert F.record_frame([tmp_path / "deep" / "results.jsonl"])["ref"].tolist() == ["results.jsonl:1"]
    assert F.record_frame([tmp_path])["ref"].tolist() == ["deep/results.jsonl:1"]


# ----------------------------------------------------------------------------------- select_records

def test_select_records_keeps_the_newest_duplicate_and_names_the_others(tmp_path, caplog):
    """Kills: the sort direction (newest first), ``keep`` of the duplicate test, the detail naming the
    record kept, the order of the set-aside frame and the read of one file given twice."""
    path = tmp_path / "r" / "results.jsonl"
    write_record(path, record(metrics_final={"knn_top1_k20": 70.0}, created_at="2026-01-01T00:00:00+00:00"))
    write_record(path, record(metrics_final={"knn_top1_k20": 71.0}, created_at="2026-01-03T00:00:00+00:00"))
    write_record(path, record(metrics_final={"knn_top1_k20": 72.0}, created_at="2026-01-02T00:00:00+00:00"))
    write_record(path, record(metrics_final={"knn_top1_k20": 73.0}, created_at="2026-01-03T00:00:00+00:00"))
    with caplog.at_level(logging.WARNING, logger=F.logger.name):
        chosen, aside = F.select_records(F.record_frame([tmp_path / "r", path]))
    assert chosen["value"].tolist() == [71.0] and chosen["alt"].tolist() == [0]
    assert chosen["alternatives"].tolist() == [""]
    assert aside["ref"].tolist() == ["results.jsonl:1", "results.jsonl:3", "results.jsonl:4"]
    assert set(aside["reason"]) == {"duplicate"} and set(aside["detail"]) == {"results.jsonl:2"}
    assert list(aside.columns) == F.SET_ASIDE_COLUMNS and list(aside.index) == [0, 1, 2]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"results.jsonl:{n} set aside (duplicate of a checkpoint already in its cell): fashion-mnist knn "
                     "SNCLR resnet18 ep 30; cell filled from results.jsonl:2" for n in (1, 3, 4)]


def test_select_records_numbers_the_settings_it_shows(tmp_path, caplog):
    """Two incomparable deviation sets of one model: both shown, each with ``alt`` and the note; a third
    set containing one of them is set aside as a departure. Kills: the note's condition and text."""
    path = tmp_path / "results.jsonl"
    write_record(path, record(deviations=["x"], checkpoint_sha256="1" * 64))
    write_record(path, record(deviations=["y"], checkpoint_sha256="2" * 64, metrics_final={"knn_top1_k20": 60.0}))
    write_record(path, record(deviations=["y"], checkpoint_sha256="3" * 64, metrics_final={"knn_top1_k20": 61.0}))
    write_record(path, record(deviations=["x", "y"], checkpoint_sha256="4" * 64))
    with caplog.at_level(logging.WARNING, logger=F.logger.name):
        chosen, aside = F.select_records(F.record_frame([tmp_path]))
    by_ref = chosen.set_index("ref")
    assert by_ref["alt"].to_dict() == {"results.jsonl:1": 1, "results.jsonl:2": 0, "results.jsonl:3": 0}
    assert set(by_ref["alternatives"]) == {"one of 2 settings of this model, each in a row of its own; this one: "
                                           "knn_cos-k20-200-T0.07"}
    # x and y both lie inside {x, y}: the detail names the one shown first (y, two seeds).
    assert aside[["ref", "reason", "detail"]].values.tolist() == [["results.jsonl:4", "departure", "results.jsonl:2"]]
    assert [r.getMessage() for r in caplog.records] == [
        "results.jsonl:4 set aside (with more departures than another setting of the model): fashion-mnist knn "
        "SNCLR resnet18 ep 30; cell filled from results.jsonl:2"]


def test_a_record_with_several_metrics_is_one_record(tmp_path, caplog):
    """Kills: duplicates looked for among (record, metric) rows: a record's second metric was set aside
    as a duplicate of itself. Also the "n/a" of a record without pre-training epochs."""
    path = tmp_path / "results.jsonl"
    write_record(path, record(metrics_final={"top1": 1.0, "top5": 2.0}, pretrain_epochs=None))
    write_record(path, record(metrics_final={"top1": 3.0, "top5": 4.0}, pretrain_epochs=None,
                              created_at="2025-01-01T00:00:00+00:00"))
    with caplog.at_level(logging.WARNING, logger=F.logger.name):
        chosen, aside = F.select_records(F.record_frame([tmp_path]))
    assert chosen["value"].tolist() == [1.0, 2.0] and aside["ref"].tolist() == ["results.jsonl:2"]
    assert [r.getMessage() for r in caplog.records] == [
        "results.jsonl:2 set aside (duplicate of a checkpoint already in its cell): fashion-mnist knn SNCLR "
        "resnet18 ep n/a; cell filled from results.jsonl:1"]


def test_select_records_of_two_models_never_compare_their_settings(tmp_path):
    """A conformant record of one model does not set aside another model's records."""
    path = tmp_path / "results.jsonl"
    write_record(path, record(deviations=[], checkpoint_sha256="1" * 64))
    write_record(path, record(deviations=["x"], checkpoint_sha256="2" * 64, pretrain_epochs=60))
    chosen, aside = F.select_records(F.record_frame([tmp_path]))
    assert sorted(chosen["epochs"]) == ["30", "60"] and aside.empty and set(chosen["alt"]) == {0}


# ------------------------------------------------------------------------------------ describe_rows

def facts_frame(*rows: dict) -> pd.DataFrame:
    base = dict(method="SNCLR", backbone="resnet18", epochs="30", alt=0, model_id="m1", source="measured",
                reference="", config="{}")
    return pd.DataFrame([{**base, **row} for row in rows])


def test_describe_rows_labels_what_differs_within_one_method_and_backbone():
    """Kills: grouping by method and backbone (not all rows together), ``key in config`` guarding the
    label, the ``used`` order, and value_text's "none"."""
    knobs, suffixes, used = F.describe_rows(facts_frame(
        dict(config=json.dumps({"k": 10, "tau": 0.2}), model_id="m1"),
        dict(config=json.dumps({"k": 30, "tau": 0.2}), model_id="m2"),
        dict(config=json.dumps({"k": 10, "tau": None}), model_id="m3", backbone="vit_small"),
        dict(config=json.dumps({"k": 10, "tau": 0.1}), model_id="m4", backbone="vit_small"),
        dict(config=json.dumps({"k": 10}), model_id="m5", method="BYOL")))
    assert knobs == ["k=10", "k=30", "tau=none", "tau=0.1", ""]
    assert suffixes == [""] * 5 and used == ["k", "tau"]


def test_describe_rows_joins_several_knobs_and_lists_keys_in_row_order():
    """Kills: the ", " join, and groups visited sorted (BYOL first) instead of in row order."""
    knobs, _, used = F.describe_rows(facts_frame(
        dict(config=json.dumps({"tau": 0.2, "k": 10}), model_id="m1"),
        dict(config=json.dumps({"tau": 0.1, "k": 30}), model_id="m2"),
        dict(config=json.dumps({"lr": 1}), model_id="m3", method="BYOL"),
        dict(config=json.dumps({"lr": 2}), model_id="m4", method="BYOL")))
    assert knobs == ["tau=0.2, k=10", "tau=0.1, k=30", "lr=1", "lr=2"] and used == ["tau", "k", "lr"]


def test_describe_rows_suffixes_models_that_look_alike_and_second_settings():
    """Kills: the ``> 1`` count of look-alike models, the measured-only suffix, and the setting number."""
    knobs, suffixes, used = F.describe_rows(facts_frame(
        dict(model_id="sha256:1"), dict(model_id="sha256:2"), dict(model_id="sha256:2", alt=1),
        dict(model_id="sha256:3", method="BYOL"),
        dict(source="published", reference="paper", model_id="", method="SNCLR"),
        dict(source="published", reference="paper", model_id="", method="SNCLR", epochs="100")))
    assert knobs == [""] * 6 and used == []
    assert suffixes == [" [sha256:1]", " [sha256:2]", " [sha256:2] [setting 2]", "", "", ""]


def test_describe_rows_groups_published_rows_by_source():
    """Published variants of one paper are labelled against each other, not against our runs."""
    knobs, _, used = F.describe_rows(facts_frame(
        dict(config=json.dumps({"neighbors": "soft"})),
        dict(config=json.dumps({"neighbors": "binary"}), source="published", reference="SNCLR paper"),
        dict(config=json.dumps({"neighbors": "none"}), source="published", reference="SNCLR paper"),
        dict(config=json.dumps({"neighbors": "soft"}), source="published", reference="other paper")))
    assert knobs == ["", "neighbors=binary", "neighbors=none", ""] and used == ["neighbors"]


# ------------------------------------------------------------------------- aggregate, measured_facts

def test_measured_facts_average_seeds_and_flag_ablation_models(tmp_path):
    """Kills: sample std (ddof 1), count, sorted unique checkpoints, records in order, the ablation flag
    (a configuration that sets the neighbour mode) and ``conformant`` from the deviation set."""
    path = tmp_path / "results.jsonl"
    for sha, value in (("2", 70.0), ("1", 74.0), ("3", 72.0)):
        write_record(path, record(checkpoint_sha256=sha * 64, metrics_final={"knn_top1_k20": value}))
    write_record(path, record(checkpoint_sha256="9" * 64, pretrain_config={}, deviations=["x"], method="MoCo v3"))
    facts, aside = F.measured_facts([tmp_path])
    ours = facts[facts["method"] == "SNCLR"].iloc[0]
    assert (ours["mean"], ours["std"], ours["n"]) == (72.0, 2.0, 3)
    assert ours["checkpoints"] == ("1" * 64, "2" * 64, "3" * 64)
    assert ours["records"] == ("results.jsonl:1", "results.jsonl:2", "results.jsonl:3")
    assert bool(ours["ablation"]) and bool(ours["conformant"]) and ours["source"] == "measured"
    assert (ours["block"], ours["reference"], ours["alt"], ours["alternatives"]) == ("", "", 0, "")
    foreign = facts[facts["method"] == "MoCo v3"].iloc[0]
    assert not foreign["ablation"] and not foreign["conformant"] and foreign["deviations"] == ("x",)
    assert foreign["n"] == 1 and pd.isna(foreign["std"]) and aside.empty
    assert facts["ablation"].dtype == bool


def test_collect_facts_without_inputs_has_every_column_and_an_empty_set_aside():
    facts = F.collect_facts([], [])
    assert list(facts.columns) == F.FACT_COLUMNS and facts.empty
    assert list(facts.attrs["set_aside"].columns) == F.SET_ASIDE_COLUMNS


def test_collect_facts_carries_the_records_set_aside(tmp_path):
    path = tmp_path / "results.jsonl"
    write_record(path, record())
    write_record(path, record(created_at="2026-02-01T00:00:00+00:00"))
    reference = tmp_path / "ref.csv"
    reference.write_text(HEADER + "1a,linear,imagenet-1k,X,resnet50,100,top1,70,src,\n")
    facts = F.collect_facts([tmp_path], [reference])
    assert facts["n"].tolist() == [1, 1] and list(facts.index) == [0, 1]
    assert facts.attrs["set_aside"]["ref"].tolist() == ["results.jsonl:1"]


# ------------------------------------------------------------------------------- reference facts

HEADER = "table,protocol,dataset,method,backbone,pretrain_epochs,metric,value,source,note\n"


def test_a_reference_row_holds_what_a_published_number_is(tmp_path):
    """Kills: the fields of ``_reference_row`` that the tables read (model id, alt, std, n, records,
    the table 4 configuration, conformance) and the whitespace stripped from every cell."""
    path = tmp_path / "ref.csv"
    path.write_text(HEADER + " 1a , linear ,imagenet-1k, SNCLR (soft K=30) ,resnet50, ,top1, 75.3 ,paper,\n"
                    + "4,linear,imagenet-1k,SNCLR (binary K=30),resnet50,800,top1,73.0,paper,\n"
                    + "1a,linear,imagenet-1k,Blank,resnet50,800,top1,,paper,unconfirmed\n"
                    + "6,linear,imagenet-1k,GPU memory,resnet50,800,top1,3.0,paper,\n")
    facts = F.reference_facts([path])
    assert facts["method"].tolist() == ["SNCLR (soft K=30)", "SNCLR (binary K=30)"]
    first, second = facts.iloc[0], facts.iloc[1]
    assert (first["protocol"], first["protocol_id"], first["epochs"], first["mean"]) == ("linear", "linear", "", 75.3)
    assert first["config"] == "{}" and second["config"] == '{"k": 30, "neighbors": "binary"}'   # one text per variant
    assert (first["model_id"], first["alt"], first["n"], first["records"]) == ("", 0, 1, ("ref.csv:2",))
    assert pd.isna(first["std"]) and facts["std"].dtype == float and first["pretrain_dataset"] == ""
    assert first["checkpoints"] == () and first["deviations"] == ()
    assert bool(first["conformant"]) and not first["ablation"] and bool(second["ablation"])
    assert (first["reference"], first["source"], first["block"], first["alternatives"]) == ("paper", "published", "", "")


@pytest.mark.parametrize("row, message", [
    ("1a,linear,imagenet-1k,X,resnet50,100,top1,abc,src,", "value 'abc' is not a number"),
    ("1a,linear,imagenet-1k,X,resnet50,100,top1,nan,src,", "value 'nan' is not a finite number"),
    ("1a,linear,imagenet-1k,X,resnet50,100,top1,-inf,src,", "value '-inf' is not a finite number"),
    ("1a,linear,imagenet-1k,X,,100,top1,70,src,", "column 'backbone' is empty"),
    ("1a,linear,imagenet-1k,X,resnet50,100,,70,src,", "column 'metric' is empty"),
    ("1a,linear,imagenet-1k,X,resnet50,-1,top1,70,src,", "pretrain_epochs '-1' is not an integer"),
])
def test_a_bad_reference_value_is_one_line_naming_file_and_line(tmp_path, row, message):
    path = tmp_path / "ref.csv"
    path.write_text(HEADER + "1a,linear,imagenet-1k,ok,resnet50,100,top1,70,src,\n" + row + "\n")
    with pytest.raises(F.ReferenceFileError, match=f"^{path}:3: {message}"):
        F.reference_facts([path])


def test_a_reference_file_that_is_missing_or_lacks_columns_is_one_line(tmp_path):
    with pytest.raises(F.ReferenceFileError, match=f"^{tmp_path}/none.csv: reference file not found$"):
        F.reference_facts([tmp_path / "none.csv"])
    path = tmp_path / "short.csv"
    path.write_text("table,protocol,dataset,method,backbone,metric,value,source\n")
    with pytest.raises(F.ReferenceFileError, match=rf"^{path}:1: missing column\(s\) \['pretrain_epochs', 'note'\]; "
                                                   r"expected \['table', "):
        F.reference_facts([path])
