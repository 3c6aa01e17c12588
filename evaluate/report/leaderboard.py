"""``leaderboard.csv``: one row per pre-trained model and evaluation data set, keyed by model identity.

A row is one model (``model_id``, pretrain/identity.py, at the epochs it had reached) evaluated on
one classification data set (``eval_dataset``); ``pretrain_dataset`` is what its configuration
pre-trained on (blank when the checkpoint does not say). Its cells are the facts of
:mod:`evaluate.report.facts`, so seeds, settings and records set aside follow the tables' rules; each
cell carries its deviations and ``protocol_conformant``, so a smoke number never passes for a protocol
number. A model with two settings of one protocol that no rule decides between gets a second row
(``setting`` 2). Detection results join the row of their model: a detection record names the
checkpoint it was converted from, and with it the model (a legacy record without an identity is
matched by that checkpoint's sha256). ``synthetic-coco`` numbers get their own columns: they never
share one with COCO 2017. Published numbers stay in the tables.
"""
from __future__ import annotations

import pandas as pd

from evaluate.report.facts import describe_rows

ROW = ["eval_dataset", "model_id", "pretrain_epochs", "alt"]
DESCRIBED = ["pretrain_dataset", "method", "backbone", "knobs"]
# (protocol, metric, dataset or None for the row's evaluation set) -> column; kNN at k=20 (the DINO default).
COLUMNS = {("linear", "top1", None): "linear_top1", ("linear_fast", "top1", None): "linear_fast_top1",
           ("knn", "knn_top1_k20", None): "knn_top1_k20", ("semisup_1pct", "top1", None): "semisup_1pct_top1",
           ("semisup_10pct", "top1", None): "semisup_10pct_top1",
           ("detection", "AP_bbox", "coco-2017"): "detection_AP_bbox",
           ("detection", "AP_segm", "coco-2017"): "detection_AP_segm",
           ("detection", "AP_bbox", "synthetic-coco"): "synthetic_coco_AP_bbox",
           ("detection", "AP_segm", "synthetic-coco"): "synthetic_coco_AP_segm"}
FIELDS = (("mean", ""), ("std", "_std"), ("n", "_n"), ("protocol_id", "_protocol_id"),
          ("deviations", "_deviations"), ("conformant", "_protocol_conformant"), ("records", "_records"))


def _column(protocol: str, metric: str, dataset: str) -> str | None:
    return COLUMNS.get((protocol, metric, dataset if protocol == "detection" else None))


def _detection_rows(measured: pd.DataFrame) -> pd.DataFrame:
    """Give each detection fact the row of its model: the one classification data set it was
    evaluated on (blank when none or several), its model found by identity or, failing that, by sha."""
    detection = measured["protocol"] == "detection"
    classification = measured[~detection]
    model_by_sha = {sha: model for model, shas in zip(classification["model_id"], classification["checkpoints"])
                    for sha in shas}
    eval_sets = classification.groupby("model_id")["dataset"].agg(lambda s: sorted(set(s)))
    measured = measured.copy()
    for index in measured.index[detection]:
        model = measured.at[index, "model_id"]
        if model not in eval_sets.index:
            model = next((model_by_sha[sha] for sha in measured.at[index, "checkpoints"] if sha in model_by_sha), model)
        sets = eval_sets.get(model, [])
        measured.at[index, "model_id"] = model
        measured.at[index, "eval_dataset"] = sets[0] if len(sets) == 1 else ""
    return measured


def leaderboard(facts: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard frame; rows sorted per pre-training dataset by the main metric, best first."""
    measured = facts[facts["source"] == "measured"].copy()
    measured["column"] = [_column(p, m, d) for p, m, d in zip(measured["protocol"], measured["metric"], measured["dataset"])]
    measured = measured[measured["column"].notna()]
    measured["eval_dataset"] = measured["dataset"]
    measured["pretrain_epochs"] = measured["epochs"]
    measured = _detection_rows(measured)
    # What the tables' row labels show, among the rows described here; a detection fact that joined
    # a classification row takes that row's (its configuration may be a legacy record's).
    joined = (measured["protocol"] == "detection") & (measured["eval_dataset"] != "")
    measured["knobs"] = ""
    measured.loc[~joined, "knobs"] = describe_rows(measured[~joined])[0]
    if measured.duplicated([*ROW, "column"]).any():
        raise AssertionError("two facts for one leaderboard cell: facts.select_records must keep one setting per row")
    measured["records"] = measured["records"].map("; ".join)
    measured["deviations"] = measured["deviations"].map(lambda d: "; ".join(d))
    # Descriptions from the classification facts where there are any (a detection fact may lack them).
    described = measured.sort_values("protocol", key=lambda p: p == "detection", kind="stable")
    describe = described.groupby(ROW, sort=False)[DESCRIBED].agg(lambda s: next((v for v in s if v), ""))
    shas = measured.groupby(ROW)["checkpoints"].agg(lambda s: "; ".join(sorted(set().union(*s))))
    board = describe.sort_index()
    board["checkpoint_sha256"] = shas
    for column in dict.fromkeys(COLUMNS.values()):
        cells = measured[measured["column"] == column].set_index(ROW)
        for field, suffix in FIELDS:
            board[column + suffix] = cells[field].reindex(board.index) if not cells.empty else None
        board[column + "_n"] = board[column + "_n"].astype("Int64")
        board[column] = board[column].astype(float)
    board = board.reset_index()
    board["setting"] = board.pop("alt") + 1
    first = ["eval_dataset", "pretrain_dataset", "method", "backbone", "knobs", "pretrain_epochs", "setting", "model_id",
             "checkpoint_sha256"]
    board = board[first + [c for c in board.columns if c not in first]]
    main = list(dict.fromkeys(COLUMNS.values()))

    def rank(rows: pd.DataFrame) -> pd.DataFrame:
        metric = next((c for c in main if rows[c].notna().any()), main[0])
        return rows.sort_values([metric, "method", "knobs"], ascending=[False, True, True], na_position="last",
                                kind="stable")

    blocks = [rank(rows) for _, rows in board.groupby("eval_dataset", sort=False)]
    order = sorted(range(len(blocks)), key=lambda i: (blocks[i]["eval_dataset"].iloc[0] != "imagenet-1k",
                                                     blocks[i]["eval_dataset"].iloc[0] == "",
                                                     blocks[i]["eval_dataset"].iloc[0]))
    return pd.concat([blocks[i] for i in order], ignore_index=True) if blocks else board
