"""Every number that may fill a table cell, as one pandas DataFrame with its provenance.

Two sources feed it. Result records (:mod:`evaluate.report.records`) give the measured numbers:
they are validated on read, reduced to the records that fill each cell, and their seeds averaged.
Reference CSVs (``results/reference/*.csv``) give published numbers, each with its source; a row
measured under another protocol than our tables' (multi-crop, Mask R-CNN C4, multi-scale training)
is kept in a separate block, never in the same column unmarked.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from evaluate.report.records import PROTOCOL_FAMILIES, SCHEMA, iter_records

logger = logging.getLogger(__name__)

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "results" / "reference"
DEFAULT_REFERENCES = (REFERENCE_DIR / "paper_numbers.csv", REFERENCE_DIR / "published_baselines.csv")
REFERENCE_COLUMNS = ("table", "protocol", "dataset", "method", "backbone", "pretrain_epochs", "metric",
                     "value", "source", "note")
# The tables of the SNCLR paper that reference rows may fill; other rows (Tables 5-6: candidate-set size,
# GPU memory) are facts about the method, not table cells.
REFERENCE_TABLES = ("1a", "1b", "2", "3", "4")
# Published protocol names -> our protocol family. The paper's Table 3 setting is Mask R-CNN R50-FPN 1x.
PROTOCOL_ALIASES = {"coco_maskrcnn_r50_fpn_1x": "detection", "coco_maskrcnn_r50_c4_1x": "detection",
                    "coco_maskrcnn_r50_fpn_1x_mstrain": "detection", "semi_supervised_1pct": "semisup_1pct",
                    "semi_supervised_10pct": "semisup_10pct"}
# What makes a published protocol differ from the one our tables report (SNCLR Table 1 is "without
# multi-crop"; Table 3 is R50-FPN, single-scale 1x).
OTHER_PROTOCOLS = {"coco_maskrcnn_r50_c4_1x": "Mask R-CNN R50-C4, not R50-FPN",
                   "coco_maskrcnn_r50_fpn_1x_mstrain": "multi-scale training"}
MULTI_CROP = re.compile(r"(?:with|uses|includes|;|\()\s*multi-crop", re.IGNORECASE)
METRIC_ALIASES = {"AP_mask": "AP_segm", "AP_bbox_50": "AP50_bbox", "AP_bbox_75": "AP75_bbox",
                  "AP_mask_50": "AP50_segm", "AP_mask_75": "AP75_segm"}

ABLATION_KEYS = ("neighbors", "k", "loss_form", "positiveness_temperature")
# A table cell: the same model (method, variant, backbone, schedule) under one protocol family.
CELL = ["dataset", "protocol", "method", "variant", "backbone", "epochs"]
FACT_COLUMNS = [*CELL, "metric", "mean", "std", "n", "protocol_id", "records", "checkpoints", "deviations", "source",
                "block", "reference", "ablation"]


class ReferenceFileError(ValueError):
    """A reference CSV that is malformed; the message names file and line."""


# ------------------------------------------------------------------------------------------ records

def find_record_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and directories into record files.

    A directory is searched recursively: every ``results.jsonl`` is a record file, and any other
    ``*.jsonl`` is one only if its first line carries the record schema, because run directories
    also hold JSONL training logs (``metrics.jsonl``). A file named explicitly is always read.
    """
    found: dict[Path, Path] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = [p for p in sorted(path.rglob("*.jsonl"))
                       if p.is_file() and (p.name == "results.jsonl" or _looks_like_records(p))]
            if not matches:
                raise FileNotFoundError(f"{path}: no result records found (expected results.jsonl or *.jsonl "
                                        f"files with schema {SCHEMA!r})")
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
        for match in matches:
            found.setdefault(match.resolve(), match)  # a file reached twice is read once
    return list(found.values())


def _looks_like_records(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as handle:
        first = next((line for line in handle if line.strip()), "")
    try:
        data = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict) and str(data.get("schema", "")).startswith("snclr-bench/result/")


def _epochs_text(epochs: int | None, planned: int | None, complete: bool | None) -> str:
    # An unfinished schedule is written "done/planned" so it never lands in a finished-epochs column.
    if epochs is None:
        return ""
    return f"{epochs}/{planned if planned is not None else '?'}" if complete is False else str(epochs)


def _utc(stamp: str) -> pd.Timestamp:
    # Naive times are read as UTC, the zone records.py writes.
    time = pd.Timestamp(stamp)
    return time.tz_localize("UTC") if time.tzinfo is None else time.tz_convert("UTC")


def record_frame(paths: Iterable[str | os.PathLike], metric_kind: str = "final") -> pd.DataFrame:
    """One row per (record, metric) of every record under ``paths``; a bad line raises RecordError.

    ``ref`` is "file:line" relative to the folder passed in (their common folder when several are),
    so the tables do not depend on where the results lie. ``metric_kind="best"`` takes ``metrics_best``
    where a record has that metric (kNN and detection report one number, so their final value stays).
    """
    if metric_kind not in ("final", "best"):
        raise ValueError(f"metric_kind must be 'final' or 'best', got {metric_kind!r}")
    paths = list(paths)
    files = find_record_files(paths)
    bases = [Path(p).resolve() if Path(p).is_dir() else Path(p).resolve().parent for p in paths]
    base = Path(os.path.commonpath(bases)) if bases else Path.cwd()
    rows = []
    for path in files:
        relative = path.resolve().relative_to(base).as_posix()
        for record, where in iter_records(path):
            metrics = dict(record.metrics_final)
            if metric_kind == "best":
                metrics.update({k: v for k, v in record.metrics_best.items() if k in metrics})
            deviations = list(record.deviations)
            if record.pretrain_complete is False:
                deviations.append(f"pre-training unfinished: epoch {record.pretrain_epochs} of "
                                  f"{record.pretrain_epochs_planned or '?'} planned")
            common = dict(
                dataset=record.dataset, protocol=record.protocol, protocol_id=record.protocol_id,
                method=record.method, variant=json.dumps(record.variant, sort_keys=True),
                backbone=record.backbone,
                epochs=_epochs_text(record.pretrain_epochs, record.pretrain_epochs_planned, record.pretrain_complete),
                sha=record.checkpoint_sha256, seed=record.seed, conformant=record.protocol_conformant,
                created=_utc(record.created_at),
                deviations=tuple(deviations), where=where, ref=f"{relative}:{where.rsplit(':', 1)[1]}",
                pretrain_dataset=str(record.settings.get("pretrain_dataset", "")))
            rows += [{**common, "metric": metric, "value": float(value)} for metric, value in metrics.items()]
    return pd.DataFrame(rows, columns=[*CELL, "protocol_id", "sha", "seed", "conformant", "created", "deviations",
                                       "where", "ref", "pretrain_dataset", "metric", "value"])


def select_records(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep, per cell, the records that fill it; every record set aside is named in a warning.

    - A protocol-conformant record beats one with deviations, whatever their dates.
    - The same checkpoint evaluated twice under the same protocol id and seed is a duplicate:
      conformant first, then the newest, then the first "file:line" in sort order is kept.
    - Several protocol ids for one cell: the one of the best-ranked record fills it.
    What remains are the seeds (checkpoints or evaluation seeds) of one model, averaged later.
    """
    records = frame.drop_duplicates("where").sort_values(["conformant", "created", "ref"],
                                                            ascending=[False, False, True], kind="stable")
    best = records.groupby(CELL, sort=False, dropna=False)
    records = records.assign(best_ref=best["ref"].transform("first"), best_conformant=best["conformant"].transform("any"),
                             best_protocol=best["protocol_id"].transform("first"))
    duplicate = records.duplicated([*CELL, "protocol_id", "sha", "seed"])
    reasons = pd.Series("", index=records.index)
    reasons[records["best_protocol"] != records["protocol_id"]] = "another protocol id fills this cell"
    reasons[records["best_conformant"] & ~records["conformant"]] = "it has deviations and a conformant record exists"
    reasons[duplicate] = "duplicate of the same checkpoint, protocol id and seed"
    for _, row in records[reasons != ""].iterrows():
        logger.warning("%s ignored (%s): %s %s %s %s ep %s; cell filled from %s", row["ref"], reasons[row.name],
                       row["dataset"], row["method"], row["backbone"], row["epochs"] or "n/a", row["protocol_id"],
                       row["best_ref"])
    return frame[frame["where"].isin(records.loc[reasons == "", "where"])]


def _union(values: Iterable[tuple]) -> tuple:
    return tuple(sorted(set().union(*values)))


def aggregate(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, sample std and count of ``value`` per group, with the records and checkpoints behind it."""
    return (frame.groupby(by, dropna=False, sort=True)
            .agg(mean=("value", "mean"), std=("value", "std"), n=("value", "size"), protocol_id=("protocol_id", "first"),
                 records=("ref", tuple), checkpoints=("sha", lambda s: tuple(sorted(set(s)))),
                 deviations=("deviations", _union))
            .reset_index())


def measured_facts(paths: Iterable[str | os.PathLike], metric_kind: str = "final") -> pd.DataFrame:
    facts = aggregate(select_records(record_frame(paths, metric_kind)), [*CELL, "metric"])
    ablation = facts["variant"].map(lambda text: any(key in json.loads(text) for key in ABLATION_KEYS))
    return facts.assign(source="measured", block="", reference="", ablation=ablation.astype(bool))


# --------------------------------------------------------------------------------------- references

def _variant_from_name(method: str) -> str:
    """Ablation knobs from a reference method name such as "SNCLR (binary neighbors K=30)"."""
    text = method.lower()
    variant: dict[str, object] = {}
    for mode, marker in (("none", "no neighbo"), ("binary", "binary"), ("soft", "soft")):
        if marker in text:
            variant["neighbors"] = mode
            break
    match = re.search(r"\bk\s*=\s*(\d+)", text)
    if match:
        variant["k"] = int(match.group(1))
    return json.dumps(variant, sort_keys=True)


def _other_protocol(protocol: str, method: str, note: str) -> str:
    if protocol in OTHER_PROTOCOLS:
        return OTHER_PROTOCOLS[protocol]
    return "multi-crop" if MULTI_CROP.search(f"{method} {note}") else ""


def _reference_row(row: dict[str, str], where: str) -> dict | None:
    if not row["value"] or row["table"] not in REFERENCE_TABLES:
        return None  # a blank value is an unconfirmed number: it stays a blank cell
    protocol = PROTOCOL_ALIASES.get(row["protocol"], row["protocol"])
    if protocol not in PROTOCOL_FAMILIES:
        raise ReferenceFileError(f"{where}: protocol {row['protocol']!r} is not one of {PROTOCOL_FAMILIES} "
                                 f"or an alias {sorted(PROTOCOL_ALIASES)}")
    for column in ("dataset", "method", "backbone", "metric", "source"):
        if not row[column]:
            raise ReferenceFileError(f"{where}: column {column!r} is empty")
    try:
        value = float(row["value"])
    except ValueError:
        raise ReferenceFileError(f"{where}: value {row['value']!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ReferenceFileError(f"{where}: value {row['value']!r} is not a finite number")
    if row["pretrain_epochs"] and not row["pretrain_epochs"].isdigit():
        raise ReferenceFileError(f"{where}: pretrain_epochs {row['pretrain_epochs']!r} is not an integer")
    return dict(dataset=row["dataset"], protocol=protocol, protocol_id=row["protocol"], method=row["method"],
                variant=_variant_from_name(row["method"]) if row["table"] == "4" else "{}", backbone=row["backbone"],
                epochs=row["pretrain_epochs"], metric=METRIC_ALIASES.get(row["metric"], row["metric"]), mean=value,
                std=float("nan"), n=1, records=(Path(where).name,), checkpoints=(), deviations=(), source="published",
                block=_other_protocol(row["protocol"], row["method"], row["note"]), reference=row["source"],
                ablation=row["table"] == "4")


def reference_facts(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Published numbers of the reference CSVs (columns REFERENCE_COLUMNS, ``quote`` optional)."""
    rows = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise ReferenceFileError(f"{path}: reference file not found")
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = [column for column in REFERENCE_COLUMNS if column not in table.columns]
        if missing:
            raise ReferenceFileError(f"{path}:1: missing column(s) {missing}; expected {list(REFERENCE_COLUMNS)}")
        for number, row in enumerate(table.to_dict("records"), start=2):
            fact = _reference_row({k: str(v).strip() for k, v in row.items()}, f"{path}:{number}")
            if fact is not None:
                rows.append(fact)
    return pd.DataFrame(rows)


def collect_facts(record_paths: Iterable[str | os.PathLike], reference_paths: Iterable[str | os.PathLike] = (),
                  metric_kind: str = "final") -> pd.DataFrame:
    """Measured and published facts in one frame: one row per number that may fill a cell."""
    record_paths = list(record_paths)
    parts = [reference_facts(reference_paths), measured_facts(record_paths, metric_kind) if record_paths else None]
    parts = [part for part in parts if part is not None and not part.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=FACT_COLUMNS)
