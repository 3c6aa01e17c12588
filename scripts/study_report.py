"""Read a shipped Table 4 study (records + pre-training logs) and write what its README quotes.

    python scripts/study_report.py results/studies/fmnist_table4
    python scripts/study_report.py OUT/fmnist_table4_gpu --readme "GPU tier: one NVIDIA H200" --command "..."

Writes into the study folder:
- ``curves.png``: neighbour label agreement and positiveness entropy per epoch, one line per variant
  (mean over seeds); the Eq. 1 variant searches no neighbours and binary uses no Eq. 4 weights, so
  they have no line in the panels that would show them; the supervised bound has no such monitors;
- ``summary.json``: per variant and protocol the mean, std and n of top-1; pairwise differences with
  whether they exceed twice the larger std; Spearman rank correlations between the fast and the
  standard linear probe over the study's checkpoints, with and without the baselines; neighbour
  label agreement per epoch; the last-epoch positiveness monitors; the issue-19 targets;
- with ``--readme TITLE``: ``README.md``, the whole reading generated from the above (a study whose
  README is typed by hand, like the CPU tier's, does not pass ``--readme``).
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from itertools import combinations
from pathlib import Path

import pandas as pd
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PROTOCOLS = {"linear_fast": "fast linear", "knn": "kNN k=20", "linear": "linear (short)",
             "semisup_1pct": "1% fine-tune", "semisup_10pct": "10% fine-tune"}
BASELINES = ("supervised", "random", "raw-pixels")       # not pre-trained by SNCLR
UNTRAINED = ("random", "raw-pixels")
# Issue 19's targets for SNCLR (soft) on the full test set.
TARGETS = {"linear": 90.0, "knn": 89.0}


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
            rows.append({"variant": variant, "seed": seed, "protocol": record["protocol"], "top1": value,
                         "method": record["method"], "backbone": record["backbone"],
                         "settings": record.get("settings")})
    return pd.DataFrame(rows)


def read_logs(study: Path) -> pd.DataFrame:
    frames = []
    for path in sorted((study / "pretrain_logs").glob("*.jsonl")):
        variant, seed = unit_name(path)
        log = pd.read_json(path, lines=True)
        if "neighbor_rows" not in log:   # the supervised bound: no neighbour monitors
            continue
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


def _rho(pairs: pd.DataFrame) -> dict:
    rho = pairs.corr(method="spearman").iloc[0, 1] if len(pairs) > 1 else float("nan")
    return {"rho": None if pd.isna(rho) else round(float(rho), 3), "n": len(pairs)}


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
        variants = pairs.index.get_level_values("variant")
        summary["spearman_fast_vs_linear"] = {
            "pretrained_checkpoints": _rho(pairs[~variants.isin(BASELINES)]),
            "with_baselines": _rho(pairs)}
    if not logs.empty:
        agreement = logs.groupby(["variant", "epoch"])["neighbor_agreement"].mean().round(4)
        summary["neighbor_agreement_by_epoch"] = {
            variant: {int(epoch): float(value) for epoch, value in series.droplevel(0).items()}
            for variant, series in agreement.groupby(level=0)}
        last = logs[logs["epoch"] == logs["epoch"].max()]
        summary["last_epoch_monitors"] = last.groupby("variant")[
            ["neighbor_agreement", "positiveness_entropy", "positiveness_max"]].mean().round(4).to_dict(orient="index")
    summary["targets"] = targets(summary)
    return summary


def _difference(summary: dict, protocol: str, a: str, b: str) -> dict | None:
    for row in summary["differences"]:
        if row["protocol"] == protocol and {row["a"], row["b"]} == {a, b}:
            sign = 1 if row["a"] == a else -1
            return {**row, "a": a, "b": b, "a_minus_b": round(sign * row["a_minus_b"], 3)}
    return None


def targets(summary: dict) -> dict:
    """Issue 19's targets for ``soft``, each True/False, or None when the study lacks what it needs."""
    means = {(c["variant"], c["protocol"]): c["mean"] for c in summary["cells"]}
    protocols = sorted({p for v, p in means if v == "soft"})
    out: dict = {}
    for protocol, threshold in TARGETS.items():
        value = means.get(("soft", protocol))
        out[f"soft_{protocol}_at_least_{threshold:g}"] = None if value is None else bool(value >= threshold)
    for baseline in UNTRAINED:
        rows = [_difference(summary, p, "soft", baseline) for p in protocols]
        verdicts = [row["exceeds_2std"] and row["a_minus_b"] > 0 if row and row["exceeds_2std"] is not None
                    else None for row in rows]
        out[f"soft_above_{baseline}_by_2std_every_protocol"] = (None if not verdicts or None in verdicts
                                                               else all(verdicts))
    for rival in ("none", "binary"):
        out[f"soft_vs_{rival}"] = {p: _difference(summary, p, "soft", rival) for p in protocols
                                   if _difference(summary, p, "soft", rival)}
    out["gap_to_supervised"] = {p: round(means[("supervised", p)] - means[("soft", p)], 3) for p in protocols
                                if ("supervised", p) in means}
    return out


def _cell(frame: pd.DataFrame) -> str:
    mean, std, n = frame["top1"].mean(), frame["top1"].std(), len(frame)
    return f"{mean:.2f} ± {std:.2f} ({n})" if n > 1 else f"{mean:.2f} (1)"


def _verdict(value) -> str:
    return {True: "met", False: "NOT met", None: "not measured"}[value]


def _scale(study: Path, results: pd.DataFrame) -> list[str]:
    configs = sorted((study / "pretrain_logs").glob("*.config.yaml"))
    lines = []
    if configs:
        config = yaml.safe_load(configs[0].read_text())
        images = "all training images" if config.get("train_limit") is None else f"{config['train_limit']:,} images"
        lines.append(f"Pre-training: recipe values of `{configs[0].name}`: {config['backbone']} at "
                     f"{config['image_size']} px, {images}, {config['epochs']} epochs, batch {config['batch_size']}, "
                     f"{config['optimizer']} base lr {config['base_lr']}; every unit's resolved config is in "
                     "`pretrain_logs/`.")
    settings = results["settings"].dropna()
    if not settings.empty:
        first = ast.literal_eval(settings.iloc[0]) if isinstance(settings.iloc[0], str) else settings.iloc[0]
        train = first.get("limit_train") or "all"
        test = first.get("limit_val") or "all"
        lines.append(f"Evaluation: {train} training / {test} test images, at {first.get('image_size')} px.")
    return lines


def write_readme(study: Path, title: str, command: str, results: pd.DataFrame, summary: dict) -> None:
    """README.md of a generated study: the table, the reading and the targets, from ``summary``."""
    protocols = [p for p in PROTOCOLS if p in set(results["protocol"])]
    order = [v for v in ("raw-pixels", "random", "none", "binary", "soft") if v in set(results["variant"])]
    order += sorted(set(results["variant"]) - set(order) - {"supervised"})
    order += ["supervised"] if "supervised" in set(results["variant"]) else []
    table = pd.DataFrame({PROTOCOLS[p]: {v: _cell(results[(results["variant"] == v) & (results["protocol"] == p)])
                                         if ((results["variant"] == v) & (results["protocol"] == p)).any() else "-"
                                         for v in order} for p in protocols})
    table.index.name = "variant"
    target = summary["targets"]
    lines = [f"# Fashion-MNIST Table 4 study: {title}", "",
             "Generated by `scripts/study_report.py` from `records/` and `pretrain_logs/`; do not edit by hand.",
             f"Command: `{command}`.", "", *_scale(study, results), "",
             "## Top-1 (%) on the test set: mean ± std over seeds (n)", "", table.to_markdown(), "",
             "`none` is Eq. 1 (no neighbours), `binary` and `soft` the neighbour weightings of Table 4; "
             "`supervised` is the same backbone, views and epochs trained with labels (the upper bound); "
             "`random` a random-init backbone; `raw-pixels` the flattened normalised image.", "",
             "## Reading", ""]
    for rival in ("none", "binary"):
        rows = target[f"soft_vs_{rival}"]
        if rows:
            parts = [f"{PROTOCOLS[p]} {row['a_minus_b']:+.2f} " + (
                     "(one seed each: no std, no verdict)" if row["two_std"] is None else
                     f"(2 std {row['two_std']:.2f}: {'beyond' if row['exceeds_2std'] else 'within'})")
                     for p, row in rows.items()]
            lines.append(f"- soft minus {rival}: " + "; ".join(parts) + ".")
    for baseline in UNTRAINED:
        lines.append(f"- soft above {baseline} by more than 2 std on every protocol: "
                     f"{_verdict(target[f'soft_above_{baseline}_by_2std_every_protocol'])}.")
    for protocol, threshold in TARGETS.items():
        lines.append(f"- soft >= {threshold:g}% on {PROTOCOLS[protocol]}: "
                     f"{_verdict(target[f'soft_{protocol}_at_least_{threshold:g}'])}.")
    if target["gap_to_supervised"]:
        lines.append("- gap to the supervised bound (supervised minus soft): "
                     + "; ".join(f"{PROTOCOLS[p]} {gap:.2f}" for p, gap in target["gap_to_supervised"].items()) + ".")
    spearman = summary.get("spearman_fast_vs_linear")
    if spearman:
        ours, every = spearman["pretrained_checkpoints"], spearman["with_baselines"]
        lines.append("- Spearman of the fast probe against the standard probe: "
                     + " ".join(f"{'undefined' if part['rho'] is None else part['rho']} over {part['n']} {what}"
                                for part, what in ((ours, "SNCLR checkpoints,"), (every, "with the baselines."))))
    agreement = summary.get("neighbor_agreement_by_epoch", {})
    for variant, curve in agreement.items():
        lines.append(f"- neighbour label agreement of {variant} by epoch (`curves.png`): "
                     + ", ".join(f"{epoch}: {value:.3f}" for epoch, value in curve.items()) + ".")
    walls = study / "wall_times.jsonl"
    if walls.exists():
        lines += ["", "## Units", ""]
        for line in walls.read_text().splitlines():
            entry = json.loads(line)
            lines.append(f"- tier {entry['tier']}, {entry.get('parallel', 1)} at once, {entry['wall_s']} s: "
                         + ", ".join(f"{spec} {(outcome or {}).get('status', '?')}"
                                     for spec, outcome in entry.get("status", {}).items()))
    (study / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path)
    parser.add_argument("--readme", metavar="TITLE", help="also write README.md, titled TITLE (scale and machine)")
    parser.add_argument("--command", default="", help="the command that produced the study, for the README")
    args = parser.parse_args(argv)
    results, logs = read_results(args.study), read_logs(args.study)
    if results.empty:
        raise SystemExit(f"error: no records under {args.study / 'records'}")
    if not logs.empty:
        plot_curves(logs, args.study / "curves.png")
    summary = summarise(results, logs)
    (args.study / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    if args.readme:
        write_readme(args.study, args.readme, args.command, results, summary)
    print(json.dumps(summary, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
