"""``leaderboard.csv``: one row per pre-trained model, keyed by its checkpoints' sha256.

A row gathers the measured facts of one model (pre-training dataset, method, variant, backbone,
epochs) with the sha256 of every checkpoint behind them (one per pre-training seed). A detection
record names the checkpoint it was converted from (the converter's sidecar carries its sha256 into
the record's ``checkpoint_sha256``), so it joins the row holding that sha, never a row found by name.
``synthetic-coco`` numbers get their own columns: they never share one with COCO 2017. Published
numbers stay in the tables.
"""
from __future__ import annotations

import pandas as pd

MODEL = ["pretrain_dataset", "method", "variant", "backbone", "pretrain_epochs"]
# (protocol, metric, dataset or None for "the pre-training set") -> column; kNN at k=20 (the DINO default).
COLUMNS = {("linear", "top1", None): "linear_top1", ("linear_fast", "top1", None): "linear_fast_top1",
           ("knn", "knn_top1_k20", None): "knn_top1_k20", ("semisup_1pct", "top1", None): "semisup_1pct_top1",
           ("semisup_10pct", "top1", None): "semisup_10pct_top1",
           ("detection", "AP_bbox", "coco-2017"): "detection_AP_bbox",
           ("detection", "AP_segm", "coco-2017"): "detection_AP_segm",
           ("detection", "AP_bbox", "synthetic-coco"): "synthetic_coco_AP_bbox",
           ("detection", "AP_segm", "synthetic-coco"): "synthetic_coco_AP_segm"}
FIELDS = (("mean", ""), ("std", "_std"), ("n", "_n"), ("protocol_id", "_protocol_id"), ("records", "_records"))


def _column(protocol: str, metric: str, dataset: str) -> str | None:
    return COLUMNS.get((protocol, metric, dataset if protocol == "detection" else None))


def leaderboard(facts: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard frame; rows sorted per pre-training dataset by the main metric, best first."""
    measured = facts[facts["source"] == "measured"].copy()
    measured["column"] = [_column(p, m, d) for p, m, d in zip(measured["protocol"], measured["metric"], measured["dataset"])]
    measured = measured[measured["column"].notna()]
    measured["pretrain_epochs"] = measured["epochs"]
    detection = measured["protocol"] == "detection"
    measured["pretrain_dataset"] = measured["dataset"].where(~detection, "")
    # Each checkpoint's model comes from its classification records; detection rows look theirs up by sha.
    model_of = {sha: tuple(row) for row, shas in zip(measured.loc[~detection, MODEL].itertuples(index=False),
                                                   measured.loc[~detection, "checkpoints"]) for sha in shas}
    for index in measured.index[detection]:
        found = [model_of[sha] for sha in measured.at[index, "checkpoints"] if sha in model_of]
        if found:
            measured.loc[index, MODEL] = list(found[0])
    measured["records"] = measured["records"].map("; ".join)
    grid = measured.pivot_table(index=MODEL, columns="column", values=[f for f, _ in FIELDS], aggfunc="first",
                                sort=True)
    shas = measured.groupby(MODEL)["checkpoints"].agg(lambda s: "; ".join(sorted(set().union(*s))))
    board = pd.DataFrame(index=grid.index)
    board["checkpoint_sha256"] = shas
    for column in dict.fromkeys(COLUMNS.values()):
        for field, suffix in FIELDS:
            # pivot_table leaves out what is all NaN (e.g. std where every n is 1)
            present = (field, column) in grid.columns
            board[column + suffix] = grid[(field, column)] if present else float("nan")
        board[column + "_n"] = board[column + "_n"].astype("Int64")
    board = board.reset_index()
    main = [c for c in dict.fromkeys(COLUMNS.values())]

    def rank(rows: pd.DataFrame) -> pd.DataFrame:
        metric = next((c for c in main if rows[c].notna().any()), main[0])
        return rows.sort_values([metric, "method", "variant"], ascending=[False, True, True], na_position="last",
                                kind="stable")

    blocks = [rank(rows) for _, rows in board.groupby("pretrain_dataset", sort=False)]
    order = sorted(range(len(blocks)), key=lambda i: (blocks[i]["pretrain_dataset"].iloc[0] != "imagenet-1k",
                                                     blocks[i]["pretrain_dataset"].iloc[0] == "",
                                                     blocks[i]["pretrain_dataset"].iloc[0]))
    return pd.concat([blocks[i] for i in order], ignore_index=True) if blocks else board
