"""Every number that may fill a table cell, as one pandas DataFrame with its provenance.

Two sources feed it. Result records (:mod:`evaluate.report.records`) give the measured numbers:
they are validated on read, reduced to the records that fill each cell, and their seeds averaged. A
cell is one model (its ``model_id``, pretrain/identity.py) under one evaluation setting (protocol id
plus deviation set); :func:`select_records` holds the rule, and names every record it sets aside.
Reference CSVs (``results/reference/*.csv``) give published numbers, each with its source; a row
measured under another protocol than our tables' (multi-crop, Mask R-CNN C4, multi-scale training)
is kept in a separate block, never in the same column unmarked.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from evaluate.report.records import PROTOCOL_FAMILIES, find_record_files, read_record_files
from pretrain.identity import FOREIGN_RUN_ONLY_KEYS, RUN_ONLY_KEYS, model_config, pretrain_dataset
from pretrain.errors import UserError

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

# The model a cell is about: its identity (pretrain/identity.py) and the epochs it had reached; the
# data set and protocol family place the cell in a table, method and backbone label its row.
MODEL = ["dataset", "protocol", "method", "backbone", "model_id", "epochs"]
# The evaluation setting: records of one model average as seeds only within one setting.
SETTING = ["protocol_id", "deviations"]
FACT_COLUMNS = [*MODEL, "alt", "config", "metric", "mean", "std", "n", "protocol_id", "records", "checkpoints",
                "deviations", "conformant", "alternatives", "pretrain_dataset", "source", "block", "reference", "ablation"]
SET_ASIDE_COLUMNS = [*MODEL, "ref", "reason", "detail"]
# Configuration keys a row already shows in a column of its own, never repeated in its label.
OWN_COLUMNS = ("method", "backbone", "epochs")
UNSET = "unset"
# Why a record did not fill a cell, as counted under a table.
SET_ASIDE_REASONS = {"duplicate": "duplicate of a checkpoint already in its cell",
                     "conformant": "with deviations, where the model has a conformant setting",
                     "departure": "with more departures than another setting of the model"}


class ReferenceFileError(UserError, ValueError):
    """A reference CSV that is malformed; the message names file and line."""


# ------------------------------------------------------------------------------------------ records

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
    ``config`` is the pre-training configuration the record names (a legacy record's ``variant``), as
    JSON; ``deviations`` a sorted tuple, so that one deviation set is one value.
    """
    if metric_kind not in ("final", "best"):
        raise ValueError(f"metric_kind must be 'final' or 'best', got {metric_kind!r}")
    paths = list(paths)
    files = find_record_files(paths)
    # Paths as given, not resolved: a run folder reached through a symbolic link keeps its name under the base.
    bases = [os.path.abspath(p if Path(p).is_dir() else Path(p).parent) for p in paths]
    base = Path(os.path.commonpath(bases)) if bases else Path.cwd()
    rows = []
    for path, entries in read_record_files(files).items():
        relative = Path(os.path.relpath(os.path.abspath(path), base)).as_posix()
        for record, where in entries:
            metrics = dict(record.metrics_final)
            if metric_kind == "best":
                metrics.update({k: v for k, v in record.metrics_best.items() if k in metrics})
            deviations = list(record.deviations)
            if record.pretrain_complete is False:
                deviations.append(f"pre-training unfinished: epoch {record.pretrain_epochs} of "
                                  f"{record.pretrain_epochs_planned or '?'} planned")
            # Labels compare the result-changing keys only: seeds of one model then share one config.
            config = model_config(record.pretrain_config, RUN_ONLY_KEYS | FOREIGN_RUN_ONLY_KEYS) or record.variant
            common = dict(
                dataset=record.dataset, protocol=record.protocol, protocol_id=record.protocol_id,
                method=record.method, backbone=record.backbone, model_id=record.model_id,
                epochs=_epochs_text(record.pretrain_epochs, record.pretrain_epochs_planned, record.pretrain_complete),
                config=json.dumps(config), pretrain_dataset=pretrain_dataset(record.pretrain_config),
                sha=record.checkpoint_sha256, created=_utc(record.created_at),
                deviations=tuple(sorted(set(deviations))), where=where,
                ref=f"{relative}:{where.rsplit(':', 1)[1]}")
            rows += [{**common, "metric": metric, "value": float(value)} for metric, value in metrics.items()]
    return pd.DataFrame(rows, columns=[*MODEL, "protocol_id", "config", "pretrain_dataset", "sha", "created",
                                       "deviations", "where", "ref", "metric", "value"])


def _choose_settings(records: pd.DataFrame) -> tuple[dict[tuple, int], dict[tuple, tuple[str, str]]]:
    """Which settings of one model are shown, and in which order; why the others are not.

    Returns ({setting: alt}, {setting: (reason, a record of the setting that wins)}). A conformant
    setting wins; otherwise a setting whose deviation set lies inside another's wins over that one;
    what remains is shown, each setting in a row of its own (alt 0, 1, ...): the most seeds first, then
    the fewest deviations, the newest record, the first "file:line". A setting set aside names the
    first record of the shown setting that beat it: the first shown (conformant), or the one with the
    fewest deviations inside its own (which is always shown: nothing lies inside it).
    """
    summary = {}
    for key, group in records.groupby(SETTING, sort=False):
        summary[key] = (group["sha"].nunique(), group["created"].max().value, group["ref"].min())
    conformant = [key for key in summary if not key[1]]
    shown = conformant or [key for key in summary if not any(set(other[1]) < set(key[1]) for other in summary)]
    order = sorted(shown, key=lambda key: (-summary[key][0], len(key[1]), -summary[key][1], summary[key][2]))
    alts = {key: alt for alt, key in enumerate(order)}
    dropped: dict[tuple, tuple[str, str]] = {}
    for key in summary:
        if key in alts:
            continue
        if conformant:
            dropped[key] = ("conformant", summary[order[0]][2])
        else:
            inside = min((other for other in order if set(other[1]) < set(key[1])),
                         key=lambda other: (len(other[1]), alts[other]))
            dropped[key] = ("departure", summary[inside][2])
    return alts, dropped


def select_records(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The records that fill each cell, with their row (``alt``); and the records set aside, with why.

    - Seeds: one model (model_id, epochs reached), one setting (protocol id + deviation set),
      distinct checkpoints. A second record of one checkpoint in one setting is a duplicate: the
      newest is kept (then the first "file:line"), the other set aside.
    - Settings: a conformant one wins; else a deviation set that lies inside another's wins; what
      remains is shown, each setting in its own row with its own mark (``alternatives``).
    Every record set aside is named in a warning, and counted under the tables it would have filled.
    """
    records = frame.drop_duplicates("where").sort_values(["created", "ref"], ascending=[False, True], kind="stable")
    duplicate = records.duplicated([*MODEL, *SETTING, "sha"])
    first = records.groupby([*MODEL, *SETTING, "sha"], sort=False, dropna=False)["ref"].transform("first")
    aside = [dict(zip(MODEL, row[MODEL]), ref=row["ref"], reason="duplicate", detail=kept)
             for (_, row), kept in zip(records[duplicate].iterrows(), first[duplicate])]
    kept = records[~duplicate]
    alts, notes = {}, {}
    for model, group in kept.groupby(MODEL, sort=False, dropna=False):
        shown, dropped = _choose_settings(group)
        for _, row in group.iterrows():
            key = (row["protocol_id"], row["deviations"])
            if key in dropped:
                reason, instead = dropped[key]
                aside.append(dict(zip(MODEL, model), ref=row["ref"], reason=reason, detail=instead))
            else:
                alts[row["where"]] = shown[key]
                if len(shown) > 1:
                    notes[row["where"]] = (f"one of {len(shown)} settings of this model, each in a row of its own; "
                                           f"this one: {row['protocol_id']}")
    set_aside = pd.DataFrame(aside, columns=SET_ASIDE_COLUMNS).sort_values("ref", kind="stable", ignore_index=True)
    for _, row in set_aside.iterrows():
        logger.warning("%s set aside (%s): %s %s %s %s ep %s; cell filled from %s", row["ref"],
                       SET_ASIDE_REASONS[row["reason"]], row["dataset"], row["protocol"], row["method"],
                       row["backbone"], row["epochs"] or "n/a", row["detail"])
    chosen = frame[frame["where"].isin(alts)]
    chosen = chosen.assign(alt=[alts[w] for w in chosen["where"]], alternatives=[notes.get(w, "") for w in chosen["where"]])
    return chosen, set_aside


def aggregate(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, sample std and count of ``value`` per group, with the records and checkpoints behind it."""
    return (frame.groupby(by, dropna=False, sort=True)
            .agg(mean=("value", "mean"), std=("value", "std"), n=("value", "size"), protocol_id=("protocol_id", "first"),
                 records=("ref", tuple), checkpoints=("sha", lambda s: tuple(sorted(set(s)))),
                 deviations=("deviations", "first"), alternatives=("alternatives", "first"),
                 config=("config", "first"), pretrain_dataset=("pretrain_dataset", "first"))
            .reset_index())


def measured_facts(paths: Iterable[str | os.PathLike], metric_kind: str = "final") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The measured facts (one per model, setting row and metric) and the records set aside."""
    chosen, set_aside = select_records(record_frame(paths, metric_kind))
    facts = aggregate(chosen, [*MODEL, "alt", "metric"])
    # Table 4 is about pre-training variants: the measured models whose configuration sets the
    # neighbour mode (ours); the untrained baselines join them there (tables.table4).
    ablation = facts["config"].map(lambda text: "neighbors" in json.loads(text))
    return facts.assign(conformant=facts["deviations"].map(len) == 0, source="measured", block="", reference="",
                        ablation=ablation.astype(bool)), set_aside


# ------------------------------------------------------------------------------------------- rows

def config_of(text: str) -> dict:
    """A fact's configuration (its ``config`` column, JSON) as a dict."""
    return json.loads(text) if text else {}


def value_text(value) -> str:
    return "none" if value is None else str(value)


def _signature(config: dict, keys: Sequence[str]) -> str:
    return json.dumps([config.get(key, UNSET) for key in keys])


def distinguishing_keys(configs: Iterable[dict]) -> list[str]:
    """The configuration keys that tell these configurations apart, in configuration order.

    A key counts where the configurations that set it disagree; where two still look alike (one
    lacks a key the other sets), the first key they differ on is added, until none look alike.
    """
    distinct = list({json.dumps(c, sort_keys=True): c for c in configs}.values())
    order = list(dict.fromkeys(key for config in distinct for key in config if key not in OWN_COLUMNS))
    keys = [key for key in order if len({json.dumps(c[key]) for c in distinct if key in c}) > 1]
    while True:
        seen: dict[str, dict] = {}
        extra: list[str] = []
        for config in distinct:
            other = seen.setdefault(_signature(config, keys), config)
            extra = [key for key in order if key not in keys and other.get(key, UNSET) != config.get(key, UNSET)]
            if extra:
                break
        if not extra:
            return keys
        keys = [key for key in order if key in keys or key == extra[0]]


def describe_rows(facts: pd.DataFrame) -> tuple[list[str], list[str], list[str]]:
    """What tells each fact's row from its neighbours: (knobs, suffix, keys used anywhere).

    ``knobs`` is "neighbors=soft, temperature=0.1": the configuration keys that differ among the rows
    of one method and backbone (published rows: of one source and backbone, as a paper's ablation
    names each variant in its method). Two models that look alike even so (records without a
    configuration, identified by their file) get their model id as ``suffix``; a second setting of
    one model is numbered there (" [setting 2]").
    """
    configs = facts["config"].map(config_of)
    knobs = pd.Series("", index=facts.index, dtype=object)
    used: list[str] = []
    neighbours = facts["method"].where(facts["source"] == "measured", "published: " + facts["reference"].fillna(""))
    for _, group in facts.groupby([neighbours, facts["backbone"]], sort=False):
        keys = distinguishing_keys(configs[group.index])
        used += [key for key in keys if key not in used]
        for index in group.index:
            knobs[index] = ", ".join(f"{key}={value_text(configs[index][key])}" for key in keys if key in configs[index])
    measured = facts["source"] == "measured"
    models = facts[measured].assign(knobs=knobs).groupby(["method", "knobs", "backbone", "epochs", "alt"])["model_id"]
    counts = models.nunique()
    alike = {key[:2] for key in counts[counts > 1].index}
    suffixes = [(f" [{model}]" if (method, knob) in alike and is_measured else "") + (f" [setting {alt + 1}]" if alt else "")
                for method, knob, model, alt, is_measured in zip(facts["method"], knobs, facts["model_id"], facts["alt"],
                                                                 measured)]
    return knobs.tolist(), suffixes, used


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
                config=_variant_from_name(row["method"]) if row["table"] == "4" else "{}", backbone=row["backbone"],
                model_id="", alt=0, epochs=row["pretrain_epochs"], metric=METRIC_ALIASES.get(row["metric"], row["metric"]),
                mean=value, std=float("nan"), n=1, records=(Path(where).name,), checkpoints=(), deviations=(),
                conformant=True, alternatives="", pretrain_dataset="", source="published",
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
    """Measured and published facts in one frame: one row per number that may fill a cell.

    The records set aside travel with it as ``facts.attrs["set_aside"]`` (columns SET_ASIDE_COLUMNS),
    so every table can count the ones that concern it.
    """
    record_paths = list(record_paths)
    measured, set_aside = (measured_facts(record_paths, metric_kind) if record_paths
                           else (None, pd.DataFrame(columns=SET_ASIDE_COLUMNS)))
    parts = [part for part in (reference_facts(reference_paths), measured) if part is not None and not part.empty]
    facts = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=FACT_COLUMNS)
    facts.attrs["set_aside"] = set_aside
    return facts
