"""Tables 1-4 of the SNCLR paper (Ge et al., ICLR 2023) from result records and published numbers.

Every cell is a fact of :mod:`evaluate.report.facts`: a measured mean over seeds with its records, or a
published number with its source. Layout follows the paper:

- Table 1: linear-probe top-1 by pre-training epochs, (a) ResNet, (b) ViT; on ImageNet-1k the paper's
  epochs (ResNet 100/200/400/800, ViT 100/200/300) are always columns. Bold: the best per model size.
- Table 2: fine-tuning with 1% and 10% of the labels, top-1 and top-5. Bold: the best two per column.
- Table 3: COCO detection and instance segmentation AP. Bold: the best two per column.
- Table 4: the ablation (neighbours none/binary/soft, K, loss form, tau_w) under each protocol.

Usage::

    python -m evaluate tables results/studies/fmnist_table4            # print the tables (Markdown)
    python -m evaluate tables runs/ --out results/tables               # write md/tex/csv + leaderboard.csv
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from evaluate.errors import RecordError
from evaluate.report.facts import DEFAULT_REFERENCES, ReferenceFileError, collect_facts
from evaluate.report.leaderboard import leaderboard
from pretrain.fileio import atomic_write_text

logger = logging.getLogger(__name__)

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
KNOBS = (("neighbors", "Neighbours"), ("k", "K"), ("loss_form", "Loss form"), ("positiveness_temperature", "tau_w"))
NEIGHBOR_ORDER = {"none": 0, "binary": 1, "soft": 2}
MARK = "†"
OTHER_BLOCK = "Published under another protocol (not comparable with the rows above):"


@dataclasses.dataclass
class Table:
    name: str             # file stem, e.g. "table1a"
    title: str
    keys: list[str]       # row-key headers, e.g. ["Method", "Backbone", "Source"]
    columns: list[str]    # value headers in order
    cells: pd.DataFrame   # facts placed: key columns, "column" and "sort" (the row order)
    best: int             # how many values of a column (per group) are set in bold
    group_by: str = ""    # the key whose rows are bolded apart (Table 1: each model size)


# ---------------------------------------------------------------------------------------- labels

def _knobs(variant: str) -> dict:
    return json.loads(variant) if variant else {}


def method_label(method: str, variant: str, skip: Sequence[str] = ()) -> str:
    """"SNCLR (soft, K=10, paper loss, tau_w=0.1)": the method and the variant it was pre-trained with."""
    knobs = _knobs(variant)
    words = {"neighbors": lambda v: "no neighbours" if v == "none" else str(v), "k": lambda v: f"K={v}",
             "loss_form": lambda v: f"{v} loss", "positiveness_temperature": lambda v: f"tau_w={v}"}
    order = [key for key, _ in KNOBS] + sorted(set(knobs) - {key for key, _ in KNOBS})
    parts = [words.get(key, lambda v, key=key: f"{key}={v}")(knobs[key]) for key in order
             if key in knobs and key not in skip]
    return f"{method} ({', '.join(parts)})" if parts else method


def _epochs_number(epochs: str) -> float:
    return float(epochs.split("/")[0]) if epochs else float("inf")


def _source(source: str, protocol: str) -> str:
    # Table 1 shows linear and fast-linear rows side by side; the fast probe is a labelled deviation.
    return "published" if source == "published" else "measured" if protocol == "linear" else f"measured ({protocol})"


def _family(backbone: str) -> str:
    return "vit" if backbone.startswith("vit") else "resnet" if backbone.startswith("resnet") else "other"


def dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


# ---------------------------------------------------------------------------------------- tables

def _common(cells: pd.DataFrame) -> pd.DataFrame:
    return cells.assign(Method=[method_label(m, v) for m, v in zip(cells["method"], cells["variant"])],
                        Backbone=cells["backbone"], Epochs=cells["epochs"], Source=cells["source"])


def table1(facts: pd.DataFrame, dataset: str) -> list[Table]:
    """Table 1: linear top-1 by pre-training epochs; bold is the best per model size (backbone)."""
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
        cells = cells.assign(column=cells["epochs"].map(header), Source=list(map(_source, cells["source"], cells["protocol"])),
                             sort=[(b, s != "published", m, s) for b, s, m in
                                   zip(cells["backbone"], cells["source"], cells["Method"])])
        tables.append(Table(f"table1{part}", f"Table 1{part}: linear probe top-1 (%) on {dataset_name(dataset)}, "
                            f"{label} backbones, by pre-training epochs", ["Method", "Backbone", "Source"],
                            [header[e] for e in epochs], cells, best=1, group_by="Backbone"))
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
    cells = cells.assign(sort=[(s != "published", m, b, _epochs_number(e), e) for s, m, b, e in
                                          zip(cells["source"], cells["Method"], cells["backbone"], cells["epochs"])])
    return [Table(name, title, ["Method", "Backbone", "Epochs", "Source"], [c for _, _, c in columns], cells, best=2)]


def table2(facts: pd.DataFrame, dataset: str) -> list[Table]:
    """Table 2: semi-supervised fine-tuning with 1% and 10% of the labels."""
    return _metric_table(facts, dataset, "table2", f"Table 2: semi-supervised fine-tuning accuracy (%) on "
                         f"{dataset_name(dataset)}", SEMISUP_COLUMNS)


def table3(facts: pd.DataFrame, dataset: str) -> list[Table]:
    """Table 3: detection and instance segmentation AP (Mask R-CNN R50-FPN, 1x schedule)."""
    return _metric_table(facts, dataset, "table3", f"Table 3: object detection and instance segmentation on "
                         f"{dataset_name(dataset)}", DETECTION_COLUMNS)


def table4(facts: pd.DataFrame, dataset: str) -> list[Table]:
    """Table 4: pre-training variants x protocols; untrained baselines (no pre-training epochs) close it."""
    baseline = (facts["source"] == "measured") & facts["epochs"].isin(["", "0"])
    cells = _by_metric(facts[facts["ablation"] | baseline], dataset, ABLATION_COLUMNS)
    if cells.empty:
        return []
    present = set(cells["column"])
    columns = [c for p, m, c in ABLATION_COLUMNS if c in present or (p, m) == ("linear", "top1")]
    knobs = cells["variant"].map(_knobs)
    for key, header in KNOBS:
        cells[header] = knobs.map(lambda k, key=key: str(k.get(key, "")))
    cells["Method"] = [m if s == "published" else method_label(m, v, skip=[k for k, _ in KNOBS])
                       for m, v, s in zip(cells["method"], cells["variant"], cells["source"])]

    def order(row: pd.Series) -> tuple:
        knob = _knobs(row["variant"])
        return (row["source"] != "published", not knob, NEIGHBOR_ORDER.get(knob.get("neighbors"), 3),
                float(knob.get("k", -1)), str(knob.get("loss_form", "")), float(knob.get("positiveness_temperature", -1)),
                row["Method"], row["backbone"], _epochs_number(row["epochs"]), row["epochs"])

    cells = cells.assign(sort=cells.apply(order, axis=1))
    return [Table("table4", f"Table 4: ablation of the neighbour positiveness on {dataset_name(dataset)}",
                  ["Method", "Backbone", "Epochs", *[h for _, h in KNOBS], "Source"], columns, cells, best=2)]


def tables_for_dataset(facts: pd.DataFrame, dataset: str) -> list[Table]:
    return table1(facts, dataset) + table2(facts, dataset) + table3(facts, dataset) + table4(facts, dataset)


# ------------------------------------------------------------------------------------- rendering

@dataclasses.dataclass
class Rendered:
    """A table laid out: cell texts, which cells are bold, and the notes that go under it."""
    main: pd.DataFrame
    main_bold: pd.DataFrame
    other: pd.DataFrame   # the published rows of another protocol (may be empty)
    notes: list[str]


def _bold(means: pd.DataFrame, groups: pd.Series, best: int) -> pd.DataFrame:
    """The ``best`` highest values of each column (per group); ties at the threshold all count.

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
    index = ["block", "sort", *table.keys, "reference"]
    cells = table.cells.assign(reference=table.cells["reference"].fillna(""), block=table.cells["block"].fillna(""))
    grid = cells.pivot_table(index=index, columns="column", aggfunc="first", sort=True,
                             values=["mean", "std", "n", "deviations"])
    if cells.duplicated([*index, "column"]).any():
        logger.warning("%s: two facts for one cell; the first is shown", table.name)
    means = grid["mean"].reindex(columns=table.columns)
    notes, sources, marks = [], {}, {}
    for text in grid.index.get_level_values("reference"):
        if text:  # published sources are numbered in row order
            sources.setdefault(text, len(sources) + 1)
    texts = pd.DataFrame("", index=means.index, columns=table.columns)
    for column in table.columns:
        digits = _decimals(means[column])
        for row in means.index[means[column].notna()]:
            text = f"{means.at[row, column]:.{digits}f}"
            count = grid.at[row, ("n", column)]
            if count > 1:
                text += f" ± {grid.at[row, ('std', column)]:.{digits}f} ({int(count)})"
            deviations = grid.at[row, ("deviations", column)]
            if deviations:
                text += f" {MARK}{marks.setdefault(deviations, len(marks) + 1)}"
            texts.at[row, column] = text
    keys = grid.index.to_frame(index=False)
    keys["Source"] = [f"published [{sources[r]}]" + (f", {b}" if b else "") if r else s
                      for s, r, b in zip(keys["Source"], keys["reference"], keys["block"])]
    frame = pd.concat([keys[table.keys], texts.reset_index(drop=True)], axis=1)
    other = (keys["block"] != "").to_numpy()
    groups = keys[table.group_by] if table.group_by else pd.Series("", index=keys.index)
    bold = _bold(means[~other].reset_index(drop=True), groups[~other].reset_index(drop=True), table.best)
    notes += [f"[{number}] {text}" for text, number in sources.items()]
    notes += [f"{MARK}{number} {'; '.join(deviations)}" for deviations, number in marks.items()]
    return Rendered(frame[~other].reset_index(drop=True), bold, frame[other].reset_index(drop=True), notes)


def _markdown_frame(frame: pd.DataFrame, keys: int) -> str:
    return frame.to_markdown(index=False, disable_numparse=True,
                             colalign=["left"] * keys + ["right"] * (frame.shape[1] - keys))


def to_markdown(table: Table) -> str:
    out = render(table)
    main = out.main.copy()
    for column in table.columns:
        main[column] = [f"**{t}**" if b else t for t, b in zip(main[column], out.main_bold[column])]
    parts = [f"**{table.title}**", "", _markdown_frame(main, len(table.keys))]
    if not out.other.empty:
        parts += ["", f"*{OTHER_BLOCK}*", "", _markdown_frame(out.other, len(table.keys))]
    if out.notes:
        parts += [""] + [f"{note}  " for note in out.notes[:-1]] + out.notes[-1:]
    return "\n".join(parts) + "\n"


_LATEX_SPECIAL = str.maketrans({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                                "^": r"\textasciicircum{}"})


def _latex_frame(frame: pd.DataFrame, bold: pd.DataFrame | None, keys: int) -> str:
    css = pd.DataFrame("", index=frame.index, columns=frame.columns)
    if bold is not None:
        css[bold.columns] = np.where(bold, "textbf: --rwrap;", "")
    styler = frame.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    return styler.apply(lambda _: css, axis=None).to_latex(hrules=True,
                                                           column_format="l" * keys + "r" * (frame.shape[1] - keys))


def to_latex(table: Table) -> str:
    """booktabs tabulars, bold through the Styler; the other-protocol block and the notes below."""
    out = render(table)
    parts = [f"% {table.title}", _latex_frame(out.main, out.main_bold, len(table.keys))]
    if not out.other.empty:
        parts += [rf"\par\smallskip{{\footnotesize {OTHER_BLOCK.translate(_LATEX_SPECIAL)}}}\par\smallskip",
                  _latex_frame(out.other, None, len(table.keys))]
    if out.notes:
        parts += [r"\par\smallskip{\footnotesize", " \\\\\n".join(n.translate(_LATEX_SPECIAL) for n in out.notes) + "}"]
    return "\n".join(parts).replace(MARK, r"\dag{}").replace("±", r"$\pm$") + "\n"


def to_csv(table: Table) -> str:
    """One line per cell: its keys, column, mean, std, n, and the records (or source) behind it."""
    cells = table.cells.sort_values("sort", kind="stable")
    joined = {field: cells[field].map("; ".join) for field in ("deviations", "records", "checkpoints")}
    frame = cells.assign(**joined)[[*table.keys, "column", "mean", "std", "n", "protocol_id", "block",
                                    "deviations", "records", "checkpoints", "reference"]]
    return frame.to_csv(index=False, lineterminator="\n")


# ------------------------------------------------------------------------------------ public API

def _datasets(facts: pd.DataFrame) -> list[str]:
    # ImageNet-1k first, as in the paper; the others alphabetically.
    return sorted(set(facts["dataset"]), key=lambda d: (d != IMAGENET, d))


def tables_markdown(facts: pd.DataFrame, metric_kind: str = "final", datasets: Sequence[str] | None = None) -> str:
    """The tables of ``datasets`` (default: all) as one Markdown text: what ``tables.md`` holds."""
    legend = ("Cells: metrics_" + metric_kind + "; `mean ± std (n)` over seeds; † a run with deviations from "
              "the protocol (listed under the table); [n] a published number and its source. Bold: Table 1 the "
              "best per backbone, Tables 2-4 the best two per column, never in a column of fewer than three.\n")
    sections = [legend]
    for dataset in _datasets(facts):
        tables = tables_for_dataset(facts, dataset) if datasets is None or dataset in datasets else []
        if tables:
            sections.append(f"## {dataset_name(dataset)} (`{dataset}`)\n")
            sections += [to_markdown(table) for table in tables]
    return "\n".join(sections)


def write_tables(facts: pd.DataFrame, out_dir: str | os.PathLike, metric_kind: str = "final") -> dict[str, Path]:
    """Write ``<dataset>/<table>.{md,tex,csv}``, ``tables.md`` and ``leaderboard.csv`` under ``out_dir``."""
    out = Path(out_dir)
    written = {}
    for dataset in _datasets(facts):
        for table in tables_for_dataset(facts, dataset):
            for suffix, write in (("md", to_markdown), ("tex", to_latex), ("csv", to_csv)):
                name = f"{dataset}/{table.name}.{suffix}"
                written[name] = atomic_write_text(out / name, write(table))
    written["tables.md"] = atomic_write_text(out / "tables.md", tables_markdown(facts, metric_kind))
    written["leaderboard.csv"] = atomic_write_text(out / "leaderboard.csv",
                                                   leaderboard(facts).to_csv(index=False, lineterminator="\n"))
    return written


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
    parser = argparse.ArgumentParser(
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


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    references = ([] if args.no_default_reference else list(DEFAULT_REFERENCES)) + list(args.reference)
    try:
        facts = collect_facts(args.records, references, args.metric_kind)
    except (RecordError, ReferenceFileError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
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
