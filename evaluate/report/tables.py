"""Tables 1-4 of the SNCLR paper and ``leaderboard.csv``, generated from result records.

Inputs are the JSON-lines result records that every evaluator writes (:mod:`evaluate.report.records`) and
reference CSV files of published numbers (``results/reference/paper_numbers.csv``, one number per
row with its source). Nothing here is typed by hand: a cell holds either a measured number from a
record or a reference number from a CSV row, and a cell that has neither stays blank.

Layout follows the SNCLR paper (Ge et al., ICLR 2023):

- Table 1: linear-probe top-1, (a) ResNet rows by pre-training epochs 100/200/400/800, (b) ViT rows
  by 100/200/300 epochs. For another dataset than ImageNet-1k the columns are the epochs present.
- Table 2: semi-supervised top-1/top-5 with 1% and 10% of the labels.
- Table 3: COCO detection and instance segmentation (APbb, APbb50, APbb75, APmk, APmk50, APmk75).
- Table 4: the ablation (neighbour positiveness none/binary/soft, K, loss form).

As in the paper, the best two numbers of each column are set in bold. Every table is written per
dataset, so a number measured on Fashion-MNIST never sits under an ImageNet-1k header.

Usage::

    python -m evaluate.report.tables runs/ --out-dir results/tables
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as _dt
import io
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from evaluate.report.records import PROTOCOL_FAMILIES, SCHEMA, RecordError, ResultRecord, iter_records
from pretrain.fileio import atomic_write_text

logger = logging.getLogger(__name__)

DEFAULT_REFERENCE = Path(__file__).resolve().parents[2] / "results" / "reference" / "paper_numbers.csv"

REFERENCE_COLUMNS = ("table", "protocol", "dataset", "method", "backbone", "pretrain_epochs", "metric",
                     "value", "source", "note")

# Reference files may name a protocol by the published setting rather than by our protocol family;
# the SNCLR paper's COCO numbers come from Mask R-CNN R50-FPN 1x, which is our "detection" family.
# The original string is kept as the reference's protocol id.
PROTOCOL_ALIASES = {"coco_maskrcnn_r50_fpn_1x": "detection"}

# Table 1 columns of the SNCLR paper (ResNet: 100/200/400/800 epochs; ViT: 100/200/300 epochs).
IMAGENET = "imagenet-1k"
PAPER_EPOCHS = {"resnet": (100, 200, 400, 800), "vit": (100, 200, 300)}

DATASET_NAMES = {"imagenet-1k": "ImageNet-1k", "fashion-mnist": "Fashion-MNIST", "coco-2017": "COCO 2017",
                 "synthetic-coco": "synthetic COCO-format set"}

SEMISUP_COLUMNS = (("semisup_1pct", "top1", "1% top-1"), ("semisup_1pct", "top5", "1% top-5"),
                   ("semisup_10pct", "top1", "10% top-1"), ("semisup_10pct", "top5", "10% top-5"))
DETECTION_COLUMNS = (("AP_bbox", "APbb"), ("AP50_bbox", "APbb50"), ("AP75_bbox", "APbb75"),
                     ("AP_segm", "APmk"), ("AP50_segm", "APmk50"), ("AP75_segm", "APmk75"))
# Table 4 of the paper reports linear top-1; the cheaper protocols are shown when those are what ran.
ABLATION_COLUMNS = (("linear", "top1", "linear top-1"), ("linear_fast", "top1", "linear_fast top-1"),
                    ("knn", "knn_top1_k20", "kNN top-1 (k=20)"))
ABLATION_KEYS = ("neighbors", "k", "loss_form")

# One main metric per protocol family for the leaderboard (kNN: k=20, the DINO default).
LEADERBOARD_METRICS = (("linear", "top1", "linear_top1"), ("linear_fast", "top1", "linear_fast_top1"),
                       ("knn", "knn_top1_k20", "knn_top1_k20"), ("semisup_1pct", "top1", "semisup_1pct_top1"),
                       ("semisup_10pct", "top1", "semisup_10pct_top1"), ("detection", "AP_bbox", "detection_AP_bbox"),
                       ("detection", "AP_segm", "detection_AP_segm"))
PROVENANCE_FIELDS = ("dataset", "record", "protocol_id", "checkpoint_sha256", "code_version")
CLASSIFICATION_FAMILIES = ("linear", "linear_fast", "knn", "semisup_1pct", "semisup_10pct")


class ReferenceFileError(ValueError):
    """A reference CSV that is malformed; the message names file and line."""


@dataclasses.dataclass(frozen=True)
class Fact:
    """One number that may fill a table cell, with where it came from."""
    source: str                    # "reference" or "measured"
    dataset: str
    protocol: str                  # one of PROTOCOL_FAMILIES
    method: str
    variant: tuple[tuple[str, str], ...]
    backbone: str
    pretrain_epochs: int | None
    metric: str
    value: float
    where: str                     # "file:line"
    protocol_id: str = ""
    checkpoint_sha256: str = ""
    code_version: str = ""
    ablation: bool = False         # belongs in Table 4
    pretrain_dataset: str = ""
    variant_json: str = ""         # the record's variant as written (typed values), for the leaderboard


@dataclasses.dataclass
class Row:
    keys: list[str]
    values: list[float | None]
    source: str


@dataclasses.dataclass
class Table:
    name: str                      # file stem, e.g. "table1a"
    title: str
    key_headers: list[str]
    value_headers: list[str]
    rows: list[Row]


# ----------------------------------------------------------------------------------------- inputs

def find_record_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and directories into record files.

    A directory is searched recursively: every ``results.jsonl`` is a record file, and any other
    ``*.jsonl`` is one only if its first line carries the record schema, because run directories
    also hold JSONL training logs (``metrics.jsonl``) that are not records. A file named explicitly
    is always read as records, so a broken one fails loudly instead of being skipped.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            matches = [p for p in sorted(path.rglob("*.jsonl"))
                       if p.is_file() and (p.name == "results.jsonl" or _looks_like_records(p))]
            if not matches:
                raise FileNotFoundError(f"{path}: no result records found (expected results.jsonl or *.jsonl "
                                        f"files with schema {SCHEMA!r})")
            found.extend(matches)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)  # a file reached twice is read once
    return list(unique.values())


def _looks_like_records(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip():
                try:
                    data = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(data, dict) and str(data.get("schema", "")).startswith("snclr-bench/result/")
    return False


def load_records(paths: Iterable[str | os.PathLike]) -> list[tuple[ResultRecord, str]]:
    """All records under ``paths`` as (record, "file:line"); a malformed line raises RecordError."""
    loaded = []
    for path in find_record_files(paths):
        for record, where in iter_records(path):
            _created_at(record, where)  # validate early so the error names the line
            loaded.append((record, where))
    return loaded


def _created_at(record: ResultRecord, where: str) -> _dt.datetime:
    try:
        stamp = _dt.datetime.fromisoformat(record.created_at)
    except (TypeError, ValueError):
        raise RecordError(f"{where}: created_at {record.created_at!r} is not an ISO 8601 time") from None
    # Naive times are read as UTC so that they compare with the UTC stamps records.py writes.
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=_dt.timezone.utc)


def load_references(paths: Iterable[str | os.PathLike]) -> list[Fact]:
    """Read reference CSVs (columns REFERENCE_COLUMNS); rows with a blank value are skipped.

    A blank value is an unconfirmed published number: it stays blank in the tables, never filled.
    When two files give the same number, the later file wins and a warning names both.
    """
    facts: dict[tuple, Fact] = {}
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise ReferenceFileError(f"{path}: reference file not found")
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REFERENCE_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ReferenceFileError(f"{path}:1: missing column(s) {missing}; expected {list(REFERENCE_COLUMNS)}")
            for number, row in enumerate(reader, start=2):
                fact = _reference_fact(row, f"{path}:{number}")
                if fact is None:
                    continue
                key = (fact.dataset, fact.protocol, fact.method, fact.backbone, fact.pretrain_epochs, fact.metric,
                       fact.ablation)
                if key in facts and facts[key].value != fact.value:
                    logger.warning("reference %s = %s at %s overrides %s at %s", "/".join(map(str, key[:6])),
                                   fact.value, fact.where, facts[key].value, facts[key].where)
                facts[key] = fact
    return list(facts.values())


def _reference_fact(row: dict[str, str], where: str) -> Fact | None:
    value_text = (row.get("value") or "").strip()
    if not value_text:
        return None
    protocol_text = (row.get("protocol") or "").strip()
    protocol = PROTOCOL_ALIASES.get(protocol_text, protocol_text)
    if protocol not in PROTOCOL_FAMILIES:
        raise ReferenceFileError(f"{where}: protocol {protocol_text!r} is not one of {PROTOCOL_FAMILIES} "
                                 f"or an alias {sorted(PROTOCOL_ALIASES)}")
    try:
        value = float(value_text)
    except ValueError:
        raise ReferenceFileError(f"{where}: value {value_text!r} is not a number") from None
    epochs_text = (row.get("pretrain_epochs") or "").strip()
    try:
        epochs = int(epochs_text) if epochs_text else None
    except ValueError:
        raise ReferenceFileError(f"{where}: pretrain_epochs {epochs_text!r} is not an integer") from None
    for column in ("dataset", "method", "backbone", "metric"):
        if not (row.get(column) or "").strip():
            raise ReferenceFileError(f"{where}: column {column!r} is empty")
    ablation = (row.get("table") or "").strip() == "4"
    method = row["method"].strip()
    return Fact(source="reference", dataset=row["dataset"].strip(), protocol=protocol, method=method,
                variant=_variant_from_reference(method) if ablation else (), backbone=row["backbone"].strip(),
                pretrain_epochs=epochs, metric=row["metric"].strip(), value=value, where=where,
                protocol_id=protocol_text, ablation=ablation)


def _variant_from_reference(method: str) -> tuple[tuple[str, str], ...]:
    """Read the ablation knobs from a reference method name such as "SNCLR (binary neighbors K=30)"."""
    text = method.lower()
    variant = {}
    if "no neighbo" in text:
        variant["neighbors"] = "none"
    elif "binary" in text:
        variant["neighbors"] = "binary"
    elif "soft" in text:
        variant["neighbors"] = "soft"
    match = re.search(r"\bk\s*=\s*(\d+)", text)
    if match:
        variant["k"] = match.group(1)
    return tuple(sorted(variant.items()))


def _latest_records(loaded: list[tuple[ResultRecord, str]]) -> list[tuple[ResultRecord, str]]:
    """Keep one record per cell; the newest ``created_at`` wins and a warning names both."""
    kept: dict[tuple, tuple[ResultRecord, str]] = {}
    for record, where in loaded:
        key = (record.dataset, record.protocol, record.method, _variant_items(record.variant), record.backbone,
               record.pretrain_epochs)
        if key not in kept:
            kept[key] = (record, where)
            continue
        old, old_where = kept[key]
        newer = _created_at(record, where) >= _created_at(old, old_where)
        winner, loser = ((record, where), (old, old_where)) if newer else ((old, old_where), (record, where))
        logger.warning("duplicate records for %s %s %s %s %s epochs: using %s (created_at %s), ignoring %s "
                       "(created_at %s)", record.dataset, record.protocol, _method_label(record.method, key[3]),
                       record.backbone, record.pretrain_epochs, winner[1], winner[0].created_at, loser[1],
                       loser[0].created_at)
        kept[key] = winner
    return list(kept.values())


def _variant_items(variant: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in variant.items()))


def measured_facts(loaded: list[tuple[ResultRecord, str]], metric_kind: str = "final") -> list[Fact]:
    """Flatten records into facts after dropping older duplicates.

    ``metric_kind="final"`` uses ``metrics_final`` (the number papers report). ``"best"`` uses
    ``metrics_best`` where a record has that metric and the final value otherwise, since kNN and
    detection report a single number.
    """
    if metric_kind not in ("final", "best"):
        raise ValueError(f"metric_kind must be 'final' or 'best', got {metric_kind!r}")
    facts = []
    for record, where in _latest_records(loaded):
        metrics = dict(record.metrics_final)
        if metric_kind == "best":
            metrics.update({k: v for k, v in record.metrics_best.items() if k in metrics})
        variant = _variant_items(record.variant)
        pretrain_dataset = str(record.settings.get("pretrain_dataset", "")) or (
            record.dataset if record.protocol in CLASSIFICATION_FAMILIES else "")
        for metric, value in metrics.items():
            facts.append(Fact(source="measured", dataset=record.dataset, protocol=record.protocol,
                              method=record.method, variant=variant, backbone=record.backbone,
                              pretrain_epochs=record.pretrain_epochs, metric=metric, value=float(value), where=where,
                              protocol_id=record.protocol_id, checkpoint_sha256=record.checkpoint_sha256,
                              code_version=record.code_version,
                              ablation=any(key in record.variant for key in ABLATION_KEYS),
                              pretrain_dataset=pretrain_dataset,
                              variant_json=json.dumps(record.variant, sort_keys=True) if record.variant else ""))
    return facts


# ---------------------------------------------------------------------------------------- tables

def _method_label(method: str, variant: tuple[tuple[str, str], ...], skip: Sequence[str] = ()) -> str:
    names = {"neighbors": {"none": "no neighbours", "binary": "binary", "soft": "soft"}}
    order = {key: i for i, key in enumerate(ABLATION_KEYS)}
    parts = []
    for key, value in sorted(variant, key=lambda item: (order.get(item[0], len(order)), item[0])):
        if key in skip:
            continue
        if key == "neighbors":
            parts.append(names["neighbors"].get(value, f"neighbours={value}"))
        elif key == "k":
            parts.append(f"K={value}")
        elif key == "loss_form":
            parts.append(f"{value} loss")
        else:
            parts.append(f"{key}={value}")
    return f"{method} ({', '.join(parts)})" if parts else method


def _dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


def _epochs_text(epochs: int | None) -> str:
    return "" if epochs is None else str(epochs)


def _pivot(facts: Iterable[Fact], row_key: Callable[[Fact], tuple], column_of: Callable[[Fact], int | None],
           n_columns: int, key_cells: Callable[[tuple], list[str]]) -> list[Row]:
    """Place facts into rows (by ``row_key``) and columns (by ``column_of``); reference rows first."""
    grid: dict[tuple, list[float | None]] = {}
    for fact in facts:
        column = column_of(fact)
        if column is None:
            continue
        grid.setdefault(row_key(fact), [None] * n_columns)[column] = fact.value
    order = sorted(grid, key=lambda key: (key[0] != "reference", [_sort_part(part) for part in key[1:]]))
    return [Row(keys=key_cells(key), values=grid[key], source=key[0]) for key in order]


def _sort_part(part: Any) -> tuple:
    # Numbers sort as numbers (200 before 1000), and before text.
    return (0, part, "") if isinstance(part, (int, float)) else (1, 0, str(part))


def _backbone_family(backbone: str) -> str:
    return "vit" if backbone.startswith("vit") else "resnet" if backbone.startswith("resnet") else "other"


def _source_label(source: str, protocol: str) -> str:
    # linear_fast is a labelled deviation from the linear protocol, so its rows say so.
    return f"{source} ({protocol})" if protocol != "linear" else source


def table1(facts: Sequence[Fact], dataset: str) -> list[Table]:
    """Table 1: linear top-1 by pre-training epochs, split into ResNet (a) and ViT (b) parts."""
    linear = [f for f in facts if f.dataset == dataset and f.protocol in ("linear", "linear_fast")
              and f.metric == "top1" and not (f.source == "reference" and f.ablation)]
    tables = []
    for part, family, label in (("a", "resnet", "ResNet"), ("b", "vit", "ViT"), ("c", "other", "other")):
        rows = [f for f in linear if _backbone_family(f.backbone) == family]
        if not rows:
            continue
        present = {f.pretrain_epochs for f in rows}
        standard = set(PAPER_EPOCHS.get(family, ())) if dataset == IMAGENET else set()
        # An epoch count outside the paper's columns gets its own column instead of being dropped.
        epochs = sorted((standard | present) - {None}) + ([None] if None in present else [])
        index = {e: i for i, e in enumerate(epochs)}
        table_rows = _pivot(rows, lambda f: (f.source, _method_label(f.method, f.variant), f.backbone, f.protocol),
                            lambda f: index[f.pretrain_epochs], len(epochs),
                            lambda k: [k[1], k[2], _source_label(k[0], k[3])])
        tables.append(Table(name=f"table1{part}", title=f"Table 1{part}: linear probe top-1 (%) on "
                            f"{_dataset_name(dataset)}, {label} backbones, by pre-training epochs",
                            key_headers=["Method", "Backbone", "Source"],
                            value_headers=[f"{e} ep" if e is not None else "epochs n/a" for e in epochs],
                            rows=table_rows))
    return tables


def table2(facts: Sequence[Fact], dataset: str) -> list[Table]:
    """Table 2: fine-tuning with 1% and 10% of the labels, top-1 and top-5."""
    columns = {(protocol, metric): i for i, (protocol, metric, _) in enumerate(SEMISUP_COLUMNS)}
    rows = [f for f in facts if f.dataset == dataset and (f.protocol, f.metric) in columns]
    if not rows:
        return []
    table_rows = _pivot(rows, lambda f: (f.source, _method_label(f.method, f.variant), f.backbone,
                                         f.pretrain_epochs if f.pretrain_epochs is not None else -1),
                        lambda f: columns[(f.protocol, f.metric)], len(columns), _keys_with_epochs)
    return [Table(name="table2", title=f"Table 2: semi-supervised fine-tuning accuracy (%) on {_dataset_name(dataset)}",
                  key_headers=["Method", "Backbone", "Epochs", "Source"],
                  value_headers=[header for _, _, header in SEMISUP_COLUMNS], rows=table_rows)]


def _keys_with_epochs(key: tuple) -> list[str]:
    return [key[1], key[2], _epochs_text(key[3] if key[3] >= 0 else None), key[0]]


def table3(facts: Sequence[Fact], dataset: str) -> list[Table]:
    """Table 3: detection and instance segmentation AP (Mask R-CNN R50-FPN, 1x schedule)."""
    columns = {metric: i for i, (metric, _) in enumerate(DETECTION_COLUMNS)}
    rows = [f for f in facts if f.dataset == dataset and f.protocol == "detection" and f.metric in columns]
    if not rows:
        return []
    table_rows = _pivot(rows, lambda f: (f.source, _method_label(f.method, f.variant), f.backbone,
                                         f.pretrain_epochs if f.pretrain_epochs is not None else -1),
                        lambda f: columns[f.metric], len(columns), _keys_with_epochs)
    return [Table(name="table3", title=f"Table 3: object detection and instance segmentation on "
                  f"{_dataset_name(dataset)}", key_headers=["Method", "Backbone", "Epochs", "Source"],
                  value_headers=[header for _, header in DETECTION_COLUMNS], rows=table_rows)]


def table4(facts: Sequence[Fact], dataset: str) -> list[Table]:
    """Table 4: the ablation of neighbour positiveness (none/binary/soft), K and the loss form."""
    rows = [f for f in facts if f.dataset == dataset and f.ablation]
    present = {(f.protocol, f.metric) for f in rows}
    # Linear top-1 is the paper's column; the others appear only when such runs exist.
    used = [c for c in ABLATION_COLUMNS if c[:2] in present or c[:2] == ("linear", "top1")]
    columns = {(protocol, metric): i for i, (protocol, metric, _) in enumerate(used)}
    rows = [f for f in rows if (f.protocol, f.metric) in columns]
    if not rows:
        return []

    def row_key(fact: Fact) -> tuple:
        variant = dict(fact.variant)
        method = fact.method if fact.source == "reference" else _method_label(fact.method, fact.variant,
                                                                              skip=ABLATION_KEYS)
        return (fact.source, method, fact.backbone, fact.pretrain_epochs if fact.pretrain_epochs is not None else -1,
                variant.get("neighbors", ""), variant.get("k", ""), variant.get("loss_form", ""))

    table_rows = _pivot(rows, row_key, lambda f: columns[(f.protocol, f.metric)], len(columns),
                        lambda k: [k[1], k[2], _epochs_text(k[3] if k[3] >= 0 else None), k[4], k[5], k[6], k[0]])
    return [Table(name="table4", title=f"Table 4: ablation of the neighbour positiveness on {_dataset_name(dataset)}",
                  key_headers=["Method", "Backbone", "Epochs", "Neighbours", "K", "Loss form", "Source"],
                  value_headers=[header for _, _, header in used], rows=table_rows)]


def tables_for_dataset(facts: Sequence[Fact], dataset: str) -> list[Table]:
    return table1(facts, dataset) + table2(facts, dataset) + table3(facts, dataset) + table4(facts, dataset)


# ------------------------------------------------------------------------------------- rendering

def best_two(values: Sequence[float | None]) -> set[int]:
    """Indices of the two best (highest) values, as the paper bolds them; ties at second place all count."""
    filled = sorted((v for v in values if v is not None), reverse=True)
    if not filled:
        return set()
    threshold = filled[min(1, len(filled) - 1)]
    return {i for i, v in enumerate(values) if v is not None and v >= threshold}


def format_number(value: float) -> str:
    """One decimal as in the paper, two where the number has them (Table 4 reports 73.38)."""
    return f"{value:.1f}" if round(value, 1) == round(value, 2) else f"{value:.2f}"


def _bold_map(table: Table) -> list[set[int]]:
    """For each value column, the row indices to set in bold."""
    return [best_two([row.values[c] for row in table.rows]) for c in range(len(table.value_headers))]


def _cells(table: Table, bold: Callable[[str], str]) -> list[list[str]]:
    bolds = _bold_map(table)
    lines = []
    for r, row in enumerate(table.rows):
        values = ["" if v is None else (bold(format_number(v)) if r in bolds[c] else format_number(v))
                  for c, v in enumerate(row.values)]
        lines.append(list(row.keys) + values)
    return lines


def to_markdown(table: Table) -> str:
    headers = table.key_headers + table.value_headers
    align = ["---"] * len(table.key_headers) + ["---:"] * len(table.value_headers)
    lines = [f"**{table.title}**", "", "| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    # A "|" inside a cell would end it early in GitHub Markdown.
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
              for cells in _cells(table, lambda text: f"**{text}**")]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def to_latex(table: Table) -> str:
    """A booktabs tabular; a midrule separates reference rows from measured rows."""
    spec = "l" * len(table.key_headers) + "r" * len(table.value_headers)
    headers = [_latex_escape(h) for h in table.key_headers + table.value_headers]
    lines = [f"% {_latex_escape(table.title)}", f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(headers) + r" \\", r"\midrule"]
    previous = None
    for row, cells in zip(table.rows, _cells(table, lambda text: f"\\textbf{{{text}}}")):
        if previous is not None and row.source != previous:
            lines.append(r"\midrule")
        previous = row.source
        keys = [_latex_escape(cell) for cell in cells[:len(table.key_headers)]]
        lines.append(" & ".join(keys + cells[len(table.key_headers):]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.key_headers + table.value_headers)
    for row in table.rows:
        writer.writerow(list(row.keys) + ["" if v is None else repr(float(v)) for v in row.values])
    return buffer.getvalue()


# ----------------------------------------------------------------------------------- leaderboard

def leaderboard_rows(facts: Sequence[Fact]) -> tuple[list[str], list[dict[str, str]]]:
    """One row per measured (method, variant, backbone, epochs, pre-training dataset).

    Each protocol family brings its main metric and its own provenance (dataset, record file:line,
    protocol id, checkpoint sha256, code version), since the numbers of one row come from
    different records. A detection record names the downstream set (COCO), not the pre-training
    one: it joins the row of the same method/backbone/epochs when exactly one pre-training dataset
    exists for it, unless its settings give ``pretrain_dataset``.
    """
    measured = [f for f in facts if f.source == "measured"]
    classification_sets: dict[tuple, set[str]] = {}
    for fact in measured:
        if fact.pretrain_dataset:
            classification_sets.setdefault(_model_key(fact), set()).add(fact.pretrain_dataset)
    metric_columns = [column for _, _, column in LEADERBOARD_METRICS]
    column_of = {(protocol, metric): column for protocol, metric, column in LEADERBOARD_METRICS}
    families = list(dict.fromkeys(protocol for protocol, _, _ in LEADERBOARD_METRICS))
    columns = (["method", "variant", "backbone", "pretrain_epochs", "pretrain_dataset"] + metric_columns
               + [f"{family}_{field}" for family in families for field in PROVENANCE_FIELDS])
    rows: dict[tuple, dict[str, str]] = {}
    for fact in measured:
        if (fact.protocol, fact.metric) not in column_of:
            continue
        pretrain_dataset = fact.pretrain_dataset
        if not pretrain_dataset:
            candidates = classification_sets.get(_model_key(fact), set())
            pretrain_dataset = next(iter(candidates)) if len(candidates) == 1 else ""
        key = _model_key(fact) + (pretrain_dataset,)
        row = rows.setdefault(key, {column: "" for column in columns} | {
            "method": fact.method, "variant": fact.variant_json,
            "backbone": fact.backbone, "pretrain_epochs": _epochs_text(fact.pretrain_epochs),
            "pretrain_dataset": pretrain_dataset})
        column = column_of[(fact.protocol, fact.metric)]
        if row[column] and row[f"{fact.protocol}_record"] != fact.where:
            # Two downstream sets (e.g. coco-2017 and synthetic-coco) for one model: one column.
            logger.warning("leaderboard %s: %s from %s replaces %s from %s", column, fact.value, fact.where,
                           row[column], row[f"{fact.protocol}_record"])
        row[column] = repr(fact.value)
        provenance = {"dataset": fact.dataset, "record": fact.where, "protocol_id": fact.protocol_id,
                      "checkpoint_sha256": fact.checkpoint_sha256, "code_version": fact.code_version}
        for field in PROVENANCE_FIELDS:
            row[f"{fact.protocol}_{field}"] = provenance[field]
    ordered = [rows[key] for key in sorted(rows, key=lambda k: [_sort_part(part) for part in k])]
    return columns, ordered


def _model_key(fact: Fact) -> tuple:
    return (fact.method, fact.variant, fact.backbone, fact.pretrain_epochs)


def leaderboard_csv(facts: Sequence[Fact]) -> str:
    columns, rows = leaderboard_rows(facts)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ public API

def _write_atomic(path: Path, text: str) -> Path:
    return atomic_write_text(path, text)


def collect_facts(record_paths: Iterable[str | os.PathLike], reference_paths: Iterable[str | os.PathLike],
                  metric_kind: str = "final") -> list[Fact]:
    return load_references(reference_paths) + measured_facts(load_records(record_paths), metric_kind)


def _datasets(facts: Sequence[Fact]) -> list[str]:
    # ImageNet-1k first, as in the paper; the others alphabetically.
    return sorted({f.dataset for f in facts}, key=lambda d: (d != IMAGENET, d))


def build_tables(record_paths: Iterable[str | os.PathLike], reference_paths: Iterable[str | os.PathLike],
                 out_dir: str | os.PathLike, metric_kind: str = "final") -> dict[str, Path]:
    """Write every table (Markdown, LaTeX, CSV) per dataset and ``leaderboard.csv``.

    Layout: ``out_dir/<dataset>/<table>.{md,tex,csv}``, ``out_dir/tables.md`` (all tables, for
    reading) and ``out_dir/leaderboard.csv``. Returns the written files keyed by their path relative
    to ``out_dir`` (e.g. ``"imagenet-1k/table1a.md"``).
    """
    return write_tables(collect_facts(record_paths, reference_paths, metric_kind), out_dir, metric_kind)


def write_tables(facts: Sequence[Fact], out_dir: str | os.PathLike, metric_kind: str = "final") -> dict[str, Path]:
    """The writing half of :func:`build_tables`, for facts already collected."""
    out = Path(out_dir)
    written: dict[str, Path] = {}
    sections = []
    for dataset in _datasets(facts):
        tables = tables_for_dataset(facts, dataset)
        if tables:
            sections.append(f"## {_dataset_name(dataset)} (`{dataset}`)\n")
        for table in tables:
            for suffix, render in (("md", to_markdown), ("tex", to_latex), ("csv", to_csv)):
                name = f"{dataset}/{table.name}.{suffix}"
                written[name] = _write_atomic(out / name, render(table))
            sections.append(to_markdown(table))
    legend = ("Source: `reference` = published number (results/reference, with its source); `measured` = result "
              "record of this benchmark. Bold: best two of each column. Blank: not measured, or not confirmed "
              f"from a primary source. Cells: metrics_{metric_kind}.\n")
    written["tables.md"] = _write_atomic(out / "tables.md", "\n".join([legend] + sections))
    written["leaderboard.csv"] = _write_atomic(out / "leaderboard.csv", leaderboard_csv(facts))
    return written


def table1_markdown(record_paths: Iterable[str | os.PathLike], dataset: str,
                    reference_paths: Iterable[str | os.PathLike] = (), metric_kind: str = "final") -> str:
    """Markdown of Table 1 (both parts) for one dataset, e.g. for the demo to print."""
    return table1_markdown_from_facts(collect_facts(record_paths, reference_paths, metric_kind), dataset)


def table1_markdown_from_facts(facts: Sequence[Fact], dataset: str) -> str:
    tables = table1(facts, dataset)
    if not tables:
        return f"(no linear-probe results for {dataset})\n"
    return "\n".join(to_markdown(table) for table in tables)


# ------------------------------------------------------------------------------------------- CLI

def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m evaluate.report.tables",
        description="Build Tables 1-4 of the SNCLR paper (Markdown, LaTeX, CSV) and leaderboard.csv from result "
                    "records and reference numbers.")
    parser.add_argument("records", nargs="+", help="result record files (JSONL) or run directories, searched "
                                                   "recursively for results.jsonl / *.jsonl records")
    parser.add_argument("--out-dir", default="results/tables", help="where to write the tables (default: %(default)s)")
    parser.add_argument("--reference", action="append", default=[], metavar="CSV",
                        help="extra reference CSV (same columns as results/reference/paper_numbers.csv); repeatable")
    parser.add_argument("--no-default-reference", action="store_true",
                        help=f"do not read {DEFAULT_REFERENCE.relative_to(DEFAULT_REFERENCE.parents[2])}")
    parser.add_argument("--metric-kind", choices=("final", "best"), default="final",
                        help="final: value at the end of the run, as papers report (default); best: best over epochs")
    parser.add_argument("--print-table1", metavar="DATASET", help="also print Table 1 of DATASET as Markdown")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    references = ([] if args.no_default_reference else [DEFAULT_REFERENCE]) + list(args.reference)
    try:
        facts = collect_facts(args.records, references, args.metric_kind)
    except (RecordError, ReferenceFileError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    written = write_tables(facts, args.out_dir, args.metric_kind)
    if args.print_table1:
        print(table1_markdown_from_facts(facts, args.print_table1))
    print(f"wrote {len(written)} files to {args.out_dir} (overview: {written['tables.md']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
