"""Tables 1-4 of the SNCLR paper (Ge et al., ICLR 2023) from result records and published numbers.

Every cell is a fact of :mod:`evaluate.report.facts`: a measured mean over seeds with its records, or a
published number with its source. Layout follows the paper:

- Table 1: linear-probe top-1 by pre-training epochs, (a) ResNet, (b) ViT; on ImageNet-1k the paper's
  epochs (ResNet 100/200/400/800, ViT 100/200/300) are always columns. Bold: the best per model size
  and protocol (the fast cached-feature probe is never ranked against the standard one).
- Table 2: fine-tuning with 1% and 10% of the labels, top-1 and top-5. Bold: the best two per column.
- Table 3: COCO detection and instance segmentation AP. Bold: the best two per column.
- Table 4: the ablation (neighbours none/binary/soft, K, loss form, tau_w) under each protocol.

A row is one model (pretrain/identity.py) and, where a model has several evaluation settings that
neither a conformant run nor a smaller deviation set decides between, one setting. Its label shows the
configuration keys that tell it from the rows of the same method and backbone (Table 4: as columns),
so no two rows look alike. Bold is decided on the numbers as printed.

Usage::

    python -m evaluate tables results/studies/fmnist_table4            # print the tables (Markdown)
    python -m evaluate tables runs/ --out results/tables               # write md/tex/csv + leaderboard.csv
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from evaluate.report.facts import (DEFAULT_REFERENCES, SET_ASIDE_REASONS, collect_facts, config_of, describe_rows,
                                   value_text)
from evaluate.report.leaderboard import leaderboard
from pretrain.fileio import atomic_write_text
from pretrain.errors import ArgumentParser, cli_main

logger = logging.getLogger(__name__)
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"   # the build log on stderr (tests read its lines)

IMAGENET = "imagenet-1k"
PAPER_EPOCHS = {"resnet": (100, 200, 400, 800), "vit": (100, 200, 300)}
DATASET_NAMES = {"imagenet-1k": "ImageNet-1k", "fashion-mnist": "Fashion-MNIST", "coco-2017": "COCO 2017",
                 "synthetic-coco": "synthetic COCO-format set"}
SEMISUP_COLUMNS = (("semisup_1pct", "top1", "1% top-1"), ("semisup_1pct", "top5", "1% top-5"),
                   ("semisup_10pct", "top1", "10% top-1"), ("semisup_10pct", "top5", "10% top-5"))
DETECTION_COLUMNS = (("detection", "AP_bbox", "APbb"), ("detection", "AP50_bbox", "APbb50"),
                     ("detection", "AP75_bbox", "APbb75"), ("detection", "AP_segm", "APmk"),
                     ("detection", "AP50_segm", "APmk50"), ("detection", "AP75_segm", "APmk75"))
# Table 4 of the paper reports linear top-1; our small-scale study runs every protocol on each checkpoint.
# kNN at k=20, the DINO eval_knn.py default.
ABLATION_COLUMNS = (("linear_fast", "top1", "fast-linear top-1"), ("knn", "knn_top1_k20", "kNN top-1 (k=20)"),
                    ("linear", "top1", "linear top-1"), ("semisup_1pct", "top1", "1% top-1"),
                    ("semisup_10pct", "top1", "10% top-1"))
# Knob values sort as the paper lists the neighbour modes (Table 4: none, binary, soft), the rest by value.
VALUE_ORDER = {"none": 0, "binary": 1, "soft": 2}
# Every model evaluated with kNN, foreign checkpoints (DINO, MoCo v3) included; DINO reports k=20 and 200.
KNN_COLUMNS = (("knn", "knn_top1_k20", "k=20 top-1"), ("knn", "knn_top5_k20", "k=20 top-5"),
               ("knn", "knn_top1_k200", "k=200 top-1"), ("knn", "knn_top5_k200", "k=200 top-5"))
MARK = "†"
OTHER_BLOCK = "Published under another protocol (not comparable with the rows above):"


@dataclasses.dataclass
class Table:
    name: str             # file stem, e.g. "table1a"
    title: str
    keys: list[str]       # row-key headers, e.g. ["Method", "Backbone", "Source"]
    columns: list[str]    # value headers in order
    cells: pd.DataFrame   # facts placed: key columns, "column", "sort" (the row order), "bold_group"
    best: int             # how many values of a column (per bold group) are set in bold
    set_aside: pd.DataFrame | None = None  # records that would have filled a cell here (facts.SET_ASIDE_COLUMNS)


# ---------------------------------------------------------------------------------------- labels

def _label_rows(cells: pd.DataFrame, knobs_in_label: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """Each cell's row label, "SNCLR (neighbors=soft, temperature=0.1)", and the knobs used anywhere
    (facts.describe_rows); ``knobs_in_label=False`` leaves them out (Table 4 shows them as columns)."""
    knobs, suffixes, keys = describe_rows(cells)
    labels = [method + (f" ({knob})" if knob and knobs_in_label else "") + suffix
              for method, knob, suffix in zip(cells["method"], knobs, suffixes)]
    return cells.assign(Method=labels), keys


def _epochs_number(epochs: str) -> float:
    return float(epochs.split("/")[0]) if epochs else float("inf")


def _source(source: str, protocol: str) -> str:
    # Table 1 shows linear and fast-linear rows side by side; the fast probe is a labelled deviation.
    return "published" if source == "published" else "measured" if protocol == "linear" else f"measured ({protocol})"


def _natural(label: str) -> tuple:
    """``label`` as a sort key that orders the numbers in it by value: "k=30" before "k=100"."""
    parts = re.split(r"(\d+(?:\.\d+)?)", label)
    return tuple(_number_or_text(float(part) if index % 2 else part) for index, part in enumerate(parts))


def _family(backbone: str) -> str:
    return "vit" if backbone.startswith("vit") else "resnet" if backbone.startswith("resnet") else "other"


def dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


# ---------------------------------------------------------------------------------------- tables

def _common(cells: pd.DataFrame) -> pd.DataFrame:
    labelled, _ = _label_rows(cells)
    return labelled.assign(Backbone=cells["backbone"], Epochs=cells["epochs"], Source=cells["source"], bold_group="")


def _set_aside(facts: pd.DataFrame, cells: pd.DataFrame, protocols: Iterable[str]) -> pd.DataFrame | None:
    """The records set aside (facts.select_records) that would have filled a cell of this table: of
    its data set, of one of its protocols, of a model it shows (a model always keeps one setting)."""
    aside = facts.attrs.get("set_aside")
    if aside is None or aside.empty or cells.empty:
        return None
    return aside[(aside["dataset"] == cells["dataset"].iloc[0]) & aside["protocol"].isin(list(protocols))
                 & aside["model_id"].isin(set(cells["model_id"]))]


def table1(facts: pd.DataFrame, dataset: str) -> list[Table]:
    """Table 1: linear top-1 by pre-training epochs; bold is the best per model size (backbone) and protocol."""
    linear = facts[(facts["dataset"] == dataset) & facts["protocol"].isin(["linear", "linear_fast"])
                   & (facts["metric"] == "top1") & ~((facts["source"] == "published") & facts["ablation"])]
    tables = []
    for part, family, label in (("a", "resnet", "ResNet"), ("b", "vit", "ViT"), ("c", "other", "other")):
        cells = _common(linear[linear["backbone"].map(_family) == family])
        if cells.empty:
            continue
        # An epoch count outside the paper's columns gets its own column rather than being dropped.
        standard = {str(e) for e in PAPER_EPOCHS.get(family, ())} if dataset == IMAGENET else set()
        epochs = sorted(standard | set(cells["epochs"]), key=lambda e: (_epochs_number(e), e))
        header = {e: f"{e} ep" if e else "epochs n/a" for e in epochs}
        # Bold ranks rows of one model size under one protocol: a fast-probe number is not a linear-probe one.
        cells = cells.assign(column=cells["epochs"].map(header), Source=list(map(_source, cells["source"], cells["protocol"])),
                             sort=[(b, s != "published", _natural(m), s) for b, s, m in
                                   zip(cells["backbone"], cells["source"], cells["Method"])],
                             bold_group=cells["backbone"] + " " + cells["protocol"])
        tables.append(Table(f"table1{part}", f"Table 1{part}: linear probe top-1 (%) on {dataset_name(dataset)}, "
                            f"{label} backbones, by pre-training epochs", ["Method", "Backbone", "Source"],
                            [header[e] for e in epochs], cells, best=1,
                            set_aside=_set_aside(facts, cells, ("linear", "linear_fast"))))
    return tables


def _by_metric(facts: pd.DataFrame, dataset: str, columns: Sequence[tuple[str, str, str]]) -> pd.DataFrame:
    header = {(protocol, metric): name for protocol, metric, name in columns}
    wanted = pd.MultiIndex.from_frame(facts[["protocol", "metric"]]).isin(list(header))
    chosen = facts[(facts["dataset"] == dataset) & wanted]
    return _common(chosen).assign(column=[header[k] for k in zip(chosen["protocol"], chosen["metric"])])


def _metric_table(facts: pd.DataFrame, dataset: str, name: str, title: str,
                  columns: Sequence[tuple[str, str, str]]) -> list[Table]:
    cells = _by_metric(facts[~facts["ablation"] | (facts["source"] == "measured")], dataset, columns)
    if cells.empty:
        return []
    cells = cells.assign(sort=[(s != "published", _natural(m), b, _epochs_number(e), e) for s, m, b, e in
                                          zip(cells["source"], cells["Method"], cells["backbone"], cells["epochs"])])
    return [Table(name, title, ["Method", "Backbone", "Epochs", "Source"], [c for _, _, c in columns], cells, best=2,
                  set_aside=_set_aside(facts, cells, {p for p, _, _ in columns}))]


def table2(facts: pd.DataFrame, dataset: str) -> list[Table]:
    """Table 2: semi-supervised fine-tuning with 1% and 10% of the labels."""
    return _metric_table(facts, dataset, "table2", f"Table 2: semi-supervised fine-tuning accuracy (%) on "
                         f"{dataset_name(dataset)}", SEMISUP_COLUMNS)


def table3(facts: pd.DataFrame, dataset: str) -> list[Table]:
    """Table 3: detection and instance segmentation AP (Mask R-CNN R50-FPN, 1x schedule)."""
    return _metric_table(facts, dataset, "table3", f"Table 3: object detection and instance segmentation on "
                         f"{dataset_name(dataset)}", DETECTION_COLUMNS)


def table_knn(facts: pd.DataFrame, dataset: str) -> list[Table]:
    """kNN top-1 / top-5 of every model (not a table of the paper): the one place where a foreign
    checkpoint's kNN result, which belongs to no ablation, is shown. Columns: the k values measured."""
    tables = _metric_table(facts, dataset, "knn", f"kNN classification accuracy (%) on {dataset_name(dataset)} "
                           f"(weighted kNN, DINO eval_knn.py)", KNN_COLUMNS)
    for table in tables:
        table.columns = [column for column in table.columns if column in set(table.cells["column"])]
    return tables


def table4(facts: pd.DataFrame, dataset: str) -> list[Table]:
    """Table 4: pre-training variants x protocols; untrained baselines (no pre-training epochs) close it."""
    baseline = (facts["source"] == "measured") & facts["epochs"].isin(["", "0"])
    cells = _by_metric(facts[facts["ablation"] | baseline], dataset, ABLATION_COLUMNS)
    if cells.empty:
        return []
    present = set(cells["column"])
    columns = [c for p, m, c in ABLATION_COLUMNS if c in present or (p, m) == ("linear", "top1")]
    cells, keys = _label_rows(cells, knobs_in_label=False)
    configs = cells["config"].map(config_of)
    for key in keys:
        cells[key] = configs.map(lambda config, key=key: value_text(config[key]) if key in config else "")

    def order(row: pd.Series) -> tuple:
        config = config_of(row["config"])
        knobs = tuple((VALUE_ORDER.get(str(config[key]), 3), _number_or_text(config[key])) if key in config else (4, (0, 0.0, ""))
                      for key in keys)
        return (row["source"] != "published", not any(key in config for key in keys), knobs,
                row["Method"], row["backbone"], _epochs_number(row["epochs"]), row["epochs"])

    cells = cells.assign(sort=cells.apply(order, axis=1))
    return [Table("table4", f"Table 4: ablation of the neighbour positiveness on {dataset_name(dataset)}",
                  ["Method", "Backbone", "Epochs", *keys, "Source"], columns, cells, best=2,
                  set_aside=_set_aside(facts, cells, {p for p, _, _ in ABLATION_COLUMNS}))]


def _number_or_text(value) -> tuple:
    return (0, float(value), "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0.0, str(value))


def tables_for_dataset(facts: pd.DataFrame, dataset: str) -> list[Table]:
    # kNN before Table 4: the ablation closes each data set's section, as the study README quotes it
    return (table1(facts, dataset) + table2(facts, dataset) + table3(facts, dataset) + table_knn(facts, dataset)
            + table4(facts, dataset))


# ------------------------------------------------------------------------------------- rendering

@dataclasses.dataclass
class Rendered:
    """A table laid out: cell texts, which cells are bold, and the notes that go under it."""
    main: pd.DataFrame
    main_bold: pd.DataFrame
    other: pd.DataFrame   # the published rows of another protocol (may be empty)
    notes: list[str]


def _bold(means: pd.DataFrame, groups: pd.Series, best: int) -> pd.DataFrame:
    """The ``best`` highest values of each column (per group); ties at the threshold all count
    (70, 69, 69, 60 with best two: three cells).

    A column (group) with fewer than three values has no bold: a best of one or two says nothing.
    """
    bold = pd.DataFrame(False, index=means.index, columns=means.columns)
    for _, rows in means.groupby(groups.values, sort=False):
        for column in rows.columns:
            values = rows[column].dropna().sort_values(ascending=False)
            if len(values) >= 3:
                bold.loc[values.index[values >= values.iloc[best - 1]], column] = True
    return bold


def _decimals(values: pd.Series) -> int:
    # One format per column: two decimals where any value has them (Table 4 reports 73.38), else one.
    filled = values.dropna()
    return 2 if (filled.round(1) != filled.round(2)).any() else 1


def render(table: Table) -> Rendered:
    """Pivot the cells into rows x columns and write each cell: mean[ ± std (n)][ †mark]."""
    index = ["block", "sort", *table.keys, "reference", "bold_group"]
    cells = table.cells.assign(reference=table.cells["reference"].fillna(""), block=table.cells["block"].fillna(""),
                               mark=[deviations + ((note,) if note else ()) for deviations, note in
                                     zip(table.cells["deviations"], table.cells["alternatives"].fillna(""))])
    grid = cells.pivot_table(index=index, columns="column", aggfunc="first", sort=True,
                             values=["mean", "std", "n", "mark"])
    if cells.duplicated([*index, "column"]).any():
        logger.warning("%s: two facts for one cell; the first is shown", table.name)
    means = grid["mean"].reindex(columns=table.columns)
    notes, sources, marks = [], {}, {}
    for text in grid.index.get_level_values("reference"):
        if text:  # published sources are numbered in row order
            sources.setdefault(text, len(sources) + 1)
    texts = pd.DataFrame("", index=means.index, columns=table.columns)
    printed = means.copy()  # bold compares the numbers a reader sees
    for column in table.columns:
        digits = _decimals(means[column])
        printed[column] = means[column].round(digits)
        for row in means.index[means[column].notna()]:
            text = f"{means.at[row, column]:.{digits}f}"
            count = grid.at[row, ("n", column)]
            if count > 1:
                text += f" ± {grid.at[row, ('std', column)]:.{digits}f} ({int(count)})"
            deviations = grid.at[row, ("mark", column)]
            if deviations:
                text += f" {MARK}{marks.setdefault(deviations, len(marks) + 1)}"
            texts.at[row, column] = text
    keys = grid.index.to_frame(index=False)
    keys["Source"] = [f"published [{sources[r]}]" + (f", {b}" if b else "") if r else s
                      for s, r, b in zip(keys["Source"], keys["reference"], keys["block"])]
    frame = pd.concat([keys[table.keys], texts.reset_index(drop=True)], axis=1)
    other = (keys["block"] != "").to_numpy()
    bold = _bold(printed[~other].reset_index(drop=True), keys["bold_group"][~other].reset_index(drop=True), table.best)
    notes += [f"[{number}] {text}" for text, number in sources.items()]
    notes += [f"{MARK}{number} {'; '.join(deviations)}" for deviations, number in marks.items()]
    if table.set_aside is not None and not table.set_aside.empty:
        counts = table.set_aside["reason"].value_counts(sort=False)
        reasons = ", ".join(f"{count} {SET_ASIDE_REASONS[reason]}" for reason, count in counts.items())
        total = len(table.set_aside)
        notes.append(f"{total} record{'s' if total > 1 else ''} set aside: {reasons} (each named in the build log)")
    return Rendered(frame[~other].reset_index(drop=True), bold, frame[other].reset_index(drop=True), notes)


# ------------------------------------------------------------------------- text that cannot mislead

def one_line(text: object) -> str:
    """Any run of whitespace or control characters as one space: a name never breaks a row or a comment."""
    return re.sub(r"[\s\x00-\x1f\x7f-\x9f]+", " ", str(text)).strip()


def markdown_text(text: object) -> str:
    """A Markdown table cell: one line, ``|`` escaped so that it cannot open a column."""
    return one_line(text).replace("|", r"\|")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  # OT1, LaTeX's default font encoding, prints these three as other glyphs
                  "|": r"\textbar{}", "<": r"\textless{}", ">": r"\textgreater{}",
                  MARK: r"\dag{}", "±": r"$\pm$", "×": r"$\times$", "∗": "*", "✓": r"$\surd$", "τ": r"$\tau$",
                  "→": r"$\rightarrow$", "≤": r"$\leq$", "≥": r"$\geq$", "–": r"\textendash{}",
                  "—": r"\textemdash{}", "‘": "`", "’": "'", "“": "``", "”": "''"}
# Latin-1 letters that pdflatex's default set-up (utf8 input, OT1 fonts) prints; Ð, Þ, ð, þ need T1.
_LATEX_LETTERS = frozenset(chr(c) for c in range(0xC0, 0x100) if chr(c).isalpha()) - set("ÐÞðþ")


@functools.lru_cache(maxsize=None)
def _latex_char(char: str) -> str:
    if char in _LATEX_SPECIAL:
        return _LATEX_SPECIAL[char]
    if char.isascii() or char in _LATEX_LETTERS:
        return char
    plain = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode()  # "ﬁ" -> "fi", "ő" -> "o"
    if plain:
        return "".join(map(_latex_char, plain))
    logger.warning("LaTeX: %r (U+%04X) has no plain-LaTeX form; written as '?'", char, ord(char))
    return "?"


def latex_text(text: object) -> str:
    """One line of LaTeX text that compiles with the default packages, whatever the name holds."""
    # "--" would print as a dash: "--limit-train" stays two hyphens
    latex = re.sub(r"-(?=-)", "-{}", "".join(map(_latex_char, one_line(text))))
    # After a row's \\ LaTeX reads a leading [ as a spacing argument and a leading * as the starred form.
    return "{}" + latex if latex.startswith(("[", "*")) else latex


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def csv_text(frame: pd.DataFrame) -> str:
    """CSV in which no text cell is a spreadsheet formula: one that starts with =, +, - or @ gets a
    leading apostrophe (OWASP's advice); numbers, negative ones included, stay numbers."""
    def neutral(value: object) -> object:
        if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
            return "'" + value
        return value

    return frame.map(neutral).rename(columns=neutral).to_csv(index=False, lineterminator="\n")


def path_part(name: str) -> str:
    """A name as one file or folder name: letters, digits, ``.``, ``_`` and ``-``, never ``..`` or a
    leading dot; a name that had to change gets a digest of the original so two never collide."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "unnamed"
    return safe if safe == name else f"{safe}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:8]}"


# ------------------------------------------------------------------------------------ the writers

def _markdown_frame(frame: pd.DataFrame, keys: int) -> str:
    # the cells come escaped (bold marks are added after escaping), the headers not yet
    return frame.rename(columns=markdown_text).to_markdown(
        index=False, disable_numparse=True, colalign=["left"] * keys + ["right"] * (frame.shape[1] - keys))


def to_markdown(table: Table) -> str:
    out = render(table)
    main = out.main.map(markdown_text)
    for column in table.columns:
        main[column] = [f"**{t}**" if b else t for t, b in zip(main[column], out.main_bold[column])]
    parts = [f"**{one_line(table.title)}**", "", _markdown_frame(main, len(table.keys))]
    if not out.other.empty:
        parts += ["", f"*{OTHER_BLOCK}*", "", _markdown_frame(out.other.map(markdown_text), len(table.keys))]
    notes = [one_line(note) for note in out.notes]
    if notes:
        parts += [""] + [f"{note}  " for note in notes[:-1]] + notes[-1:]
    return "\n".join(parts) + "\n"


def _latex_frame(frame: pd.DataFrame, bold: pd.DataFrame | None, keys: int) -> str:
    css = pd.DataFrame("", index=frame.index, columns=frame.columns)
    if bold is not None:
        css[bold.columns] = np.where(bold, "textbf: --rwrap;", "")
    styler = frame.style.hide(axis="index").format(latex_text).format_index(latex_text, axis=1)
    return styler.apply(lambda _: css, axis=None).to_latex(hrules=True,
                                                           column_format="l" * keys + "r" * (frame.shape[1] - keys))


def to_latex(table: Table) -> str:
    """booktabs tabulars, bold through the Styler; the other-protocol block and the notes below.

    Needs ``\\usepackage{booktabs}`` and nothing else; every name is escaped (:func:`latex_text`).
    """
    out = render(table)
    parts = [f"% {one_line(table.title)} (needs \\usepackage{{booktabs}})",
             _latex_frame(out.main, out.main_bold, len(table.keys))]
    if not out.other.empty:
        parts += [rf"\par\smallskip{{\footnotesize {latex_text(OTHER_BLOCK)}}}\par\smallskip",
                  _latex_frame(out.other, None, len(table.keys))]
    if out.notes:
        # One paragraph per note: "\\" before a note starting "[2]" reads as "\\[2]", a spacing argument.
        parts += [r"\par\smallskip{\footnotesize"] + [latex_text(note) + r"\par" for note in out.notes] + ["}"]
    return "\n".join(parts) + "\n"


def to_csv(table: Table) -> str:
    """One line per cell: its keys, column, mean, std, n, and the records (or source) behind it."""
    cells = table.cells.sort_values("sort", kind="stable")
    joined = {field: cells[field].map("; ".join) for field in ("deviations", "records", "checkpoints")}
    frame = cells.assign(**joined)[[*table.keys, "column", "mean", "std", "n", "model_id", "protocol_id", "block",
                                    "deviations", "records", "checkpoints", "reference"]]
    return csv_text(frame)


# ------------------------------------------------------------------------------------ public API

def _datasets(facts: pd.DataFrame) -> list[str]:
    # ImageNet-1k first, as in the paper; the others alphabetically.
    return sorted(set(facts["dataset"]), key=lambda d: (d != IMAGENET, d))


def tables_markdown(facts: pd.DataFrame, metric_kind: str = "final", datasets: Sequence[str] | None = None) -> str:
    """The tables of ``datasets`` (default: all) as one Markdown text: what ``tables.md`` holds."""
    legend = ("Cells: metrics_" + metric_kind + "; `mean ± std (n)` over seeds; † a run with deviations from "
              "the protocol (listed under the table); [n] a published number and its source. Bold: Table 1 the "
              "best per backbone and protocol, Tables 2-4 and kNN the best two per column, never in a column of "
              "fewer than three.\n")
    sections = [legend]
    for dataset in _datasets(facts):
        tables = tables_for_dataset(facts, dataset) if datasets is None or dataset in datasets else []
        if tables:
            sections.append(f"## {one_line(dataset_name(dataset))} (`{one_line(dataset)}`)\n")
            sections += [to_markdown(table) for table in tables]
    return "\n".join(sections)


MANIFEST = ".tables-manifest.json"  # what the last write_tables put in the folder, so that it can be replaced


def write_tables(facts: pd.DataFrame, out_dir: str | os.PathLike, metric_kind: str = "final") -> dict[str, Path]:
    """Write ``<dataset>/<table>.{md,tex,csv}``, ``tables.md`` and ``leaderboard.csv`` under ``out_dir``.

    Every text is made before the first file is written. The files an earlier call wrote and this one
    did not (a data set or table no longer there) are removed, as listed in ``out_dir/MANIFEST``;
    nothing else in the folder is touched. Data-set folders are :func:`path_part` names, so no name
    can write outside ``out_dir``.
    """
    out = Path(out_dir)
    texts = {}
    for dataset in _datasets(facts):
        for table in tables_for_dataset(facts, dataset):
            for suffix, write in (("md", to_markdown), ("tex", to_latex), ("csv", to_csv)):
                texts[f"{path_part(dataset)}/{table.name}.{suffix}"] = write(table)
    texts["tables.md"] = tables_markdown(facts, metric_kind)
    texts["leaderboard.csv"] = csv_text(leaderboard(facts))
    previous = _previous_outputs(out)
    written = {name: atomic_write_text(out / name, text) for name, text in texts.items()}
    for name in sorted(previous - set(written)):
        stale = out / name
        stale.unlink(missing_ok=True)
        if stale.parent != out and stale.parent.is_dir() and not any(stale.parent.iterdir()):
            stale.parent.rmdir()
        logger.info("%s: removed, written by an earlier run and not by this one", stale)
    atomic_write_text(out / MANIFEST, json.dumps(sorted(written), indent=1) + "\n")
    return written


def _previous_outputs(out: Path) -> set[str]:
    """The files the manifest of an earlier call names; an entry that is not one of ours is never trusted."""
    path = out / MANIFEST
    if not path.is_file():
        return set()
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        logger.warning("%s: unreadable (%s); files of an earlier run may remain", path, error)
        return set()
    names = names if isinstance(names, list) else []
    return {name for name in names if isinstance(name, str) and _is_output_name(name)}


def _is_output_name(name: str) -> bool:
    parts = name.split("/")
    if len(parts) == 1:
        return name in ("tables.md", "leaderboard.csv")
    folder, file = parts if len(parts) == 2 else ("", "")
    return (folder == path_part(folder) and re.fullmatch(r"[A-Za-z0-9_]+\.(md|tex|csv)", file) is not None)


def build_tables(record_paths: Iterable[str | os.PathLike],
                 reference_paths: Iterable[str | os.PathLike] = DEFAULT_REFERENCES,
                 out_dir: str | os.PathLike = "results/tables", metric_kind: str = "final") -> dict[str, Path]:
    """Collect the facts and write every table; returns the files by path relative to ``out_dir``."""
    return write_tables(collect_facts(record_paths, reference_paths, metric_kind), out_dir, metric_kind)


def table1_markdown(record_paths: Iterable[str | os.PathLike], dataset: str,
                    reference_paths: Iterable[str | os.PathLike] = DEFAULT_REFERENCES, metric_kind: str = "final") -> str:
    """Markdown of Table 1 (all parts) for one dataset, e.g. for the demo to print."""
    tables = table1(collect_facts(record_paths, reference_paths, metric_kind), dataset)
    return "\n".join(map(to_markdown, tables)) if tables else f"(no linear-probe results for {dataset})\n"


def table4_markdown(record_paths: Iterable[str | os.PathLike], dataset: str, metric_kind: str = "final") -> str:
    """Markdown of Table 4 for one dataset from the records alone (e.g. a shipped study)."""
    tables = table4(collect_facts(record_paths, (), metric_kind), dataset)
    return to_markdown(tables[0]) if tables else f"(no ablation results for {dataset})\n"


# ------------------------------------------------------------------------------------------- CLI

def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m evaluate tables",
        description="Tables 1-4 of the SNCLR paper (Markdown, LaTeX, CSV) and leaderboard.csv from result records "
                    "and published reference numbers. Without --out, print the tables as Markdown.")
    parser.add_argument("records", nargs="+", metavar="FOLDER",
                        help="result folders (searched for results.jsonl / *.jsonl records) or record files")
    parser.add_argument("--out", "--out-dir", dest="out", metavar="DIR",
                        help="write <dataset>/<table>.{md,tex,csv}, tables.md and leaderboard.csv here")
    parser.add_argument("--reference", action="append", default=[], metavar="CSV",
                        help="extra reference CSV (columns as results/reference/paper_numbers.csv); repeatable")
    parser.add_argument("--no-default-reference", action="store_true",
                        help="do not read results/reference/{paper_numbers,published_baselines}.csv")
    parser.add_argument("--metric-kind", choices=("final", "best"), default="final",
                        help="final: value at the end of the run, as papers report (default); best: best over epochs")
    parser.add_argument("--print-table1", metavar="DATASET", help="also print Table 1 of DATASET as Markdown")
    return parser.parse_args(argv)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    args = _parse_args(argv)
    references = ([] if args.no_default_reference else list(DEFAULT_REFERENCES)) + list(args.reference)
    facts = collect_facts(args.records, references, args.metric_kind)
    if args.out:
        written = write_tables(facts, args.out, args.metric_kind)
        print(f"wrote {len(written)} files to {args.out} (overview: {written['tables.md']})")
    else:
        # Printed: the datasets the records measured; the published-only tables are written with --out.
        sys.stdout.write(tables_markdown(facts, args.metric_kind, set(facts.loc[facts["source"] == "measured", "dataset"])))
    if args.print_table1:
        print("\n".join(to_markdown(table) for table in table1(facts, args.print_table1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
