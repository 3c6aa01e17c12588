"""Read a shipped Table 4 study (records + pre-training logs) and write what its README quotes.

    python scripts/study_report.py results/studies/fmnist_table4

Writes into the study folder:
- ``curves.png``: neighbour label agreement and positiveness entropy per epoch, one line per variant
  (mean over seeds); the Eq. 1 variant searches no neighbours and binary uses no Eq. 4 weights, so
  they have no line in the panels that would show them;
- ``summary.json``: per variant and protocol the mean, std and n of top-1; pairwise differences with
  whether they exceed twice the larger std; Spearman rank correlations between the fast and the
  standard linear probe over the study's checkpoints, with and without the random-init backbone; and
  the last-epoch positiveness monitors.
"""
from __future__ import annotations

import argparse
import json
import sys
from itertools import combinations
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PROTOCOLS = {"linear_fast": "fast linear", "knn": "kNN k=20", "linear": "linear (short)",
             "semisup_1pct": "1% fine-tune", "semisup_10pct": "10% fine-tune"}


def unit_name(path: Path) -> tuple[str, int]:
    """``soft_tau0.05_s1.jsonl`` -> ("soft_tau0.05", 1)."""
    stem = path.name.split(".jsonl")[0].split(".config")[0]
    variant, _, seed = stem.rpartition("_s")
    return variant, int(seed)


def read_results(study: Path) -> pd.DataFrame:
    rows = []
    for path in sorted((study / "records").glob("*.jsonl")):
        variant, seed = unit_name(path)
        for line in path.read_text().splitlines():
            record = json.loads(line)
            value = record["metrics_final"]["knn_top1_k20" if record["protocol"] == "knn" else "top1"]
            rows.append({"variant": variant, "seed": seed, "protocol": record["protocol"], "top1": value})
    return pd.DataFrame(rows)


def read_logs(study: Path) -> pd.DataFrame:
    frames = []
    for path in sorted((study / "pretrain_logs").glob("*.jsonl")):
        variant, seed = unit_name(path)
        log = pd.read_json(path, lines=True)
        # Eq. 1 steps (warm-up, and every step of --neighbors none) search no neighbours: nothing to plot.
        log = log[(log["neighbors_on"] > 0) & (log["neighbor_rows"] > 0)]
        if log.empty:
            continue
        log = log.assign(epoch=log["epoch"].apply(lambda e: int(e - 1e-9) + 1))
        per_epoch = log.groupby("epoch")[["neighbor_agreement", "positiveness_entropy", "positiveness_max"]].mean()
        frames.append(per_epoch.reset_index().assign(variant=variant, seed=seed))
    return pd.concat(frames) if frames else pd.DataFrame()


def plot_curves(logs: pd.DataFrame, out: Path) -> None:
    figure = Figure(figsize=(10, 4))
    FigureCanvasAgg(figure)
    colours = {variant: f"C{index}" for index, variant in enumerate(sorted(logs["variant"].unique()))}
    panels = (("neighbor_agreement", "neighbour label agreement (top-K)"),
              ("positiveness_entropy", "positiveness entropy (nats; log K = uniform)"))
    for index, (column, title) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, 2, index)
        for variant, frame in logs.groupby("variant"):
            if column == "positiveness_entropy" and variant.startswith("binary"):
                continue   # binary weights are all 1; the monitor's Eq. 4 weights play no part there
            curve = frame.groupby("epoch")[column].mean()
            axes.plot(curve.index, curve.values, marker="o", label=variant, color=colours[variant])
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def summarise(results: pd.DataFrame, logs: pd.DataFrame) -> dict:
    stats = results.groupby(["variant", "protocol"])["top1"].agg(["mean", "std", "count"]).reset_index()
    cells = stats.round(3).astype(object).where(stats.notna(), None)   # std of one seed: null, not NaN
    summary: dict = {"cells": cells.to_dict(orient="records"), "differences": []}
    for protocol in PROTOCOLS:
        cells = stats[stats["protocol"] == protocol].set_index("variant")
        for a, b in combinations(sorted(cells.index), 2):
            diff = cells.loc[a, "mean"] - cells.loc[b, "mean"]
            # The larger std of the two; a one-seed side (std unknown) borrows the other side's.
            stds = [std for std in (cells.loc[a, "std"], cells.loc[b, "std"]) if pd.notna(std)]
            noise = 2 * max(stds) if stds else float("nan")
            known = bool(stds)    # one seed on both sides: no noise estimate, no verdict
            summary["differences"].append({"protocol": protocol, "a": a, "b": b, "a_minus_b": round(diff, 3),
                                           "two_std": round(noise, 3) if known else None,
                                           "exceeds_2std": bool(abs(diff) > noise) if known else None})
    wide = results.pivot_table(index=["variant", "seed"], columns="protocol", values="top1")
    if {"linear_fast", "linear"} <= set(wide.columns):
        pairs = wide[["linear_fast", "linear"]].dropna()
        trained = pairs[~pairs.index.get_level_values("variant").isin(["random", "raw-pixels"])]
        summary["spearman_fast_vs_linear"] = {
            "pretrained_checkpoints": {"rho": round(trained.corr(method="spearman").iloc[0, 1], 3), "n": len(trained)},
            "with_random_init": {"rho": round(pairs.corr(method="spearman").iloc[0, 1], 3), "n": len(pairs)}}
    if not logs.empty:
        last = logs[logs["epoch"] == logs["epoch"].max()]
        summary["last_epoch_monitors"] = last.groupby("variant")[
            ["neighbor_agreement", "positiveness_entropy", "positiveness_max"]].mean().round(4).to_dict(orient="index")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path)
    args = parser.parse_args(argv)
    results, logs = read_results(args.study), read_logs(args.study)
    if results.empty:
        raise SystemExit(f"error: no records under {args.study / 'records'}")
    if not logs.empty:
        plot_curves(logs, args.study / "curves.png")
    summary = summarise(results, logs)
    (args.study / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    print(json.dumps(summary, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
