"""Figures are real PNGs of the expected size with something drawn, and bad input fails clearly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluate.report import figures


def write_jsonl(path: Path, entries: list[dict]) -> Path:
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return path


def read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32)


def test_pretrain_curves_plot_present_keys(tmp_path):
    log = write_jsonl(tmp_path / "metrics.jsonl", [
        {"step": s, "epoch": s // 10, "loss": 4.0 - 0.01 * s, "lr": 1e-3 * min(1, s / 20), "momentum": 0.99,
         "positiveness_mean": 0.1 + 0.002 * s, "neighbor_agreement": 0.5, "note": "text is skipped"}
        for s in range(100)])
    out = figures.plot_pretrain_curves(log, tmp_path / "figs" / "pretrain.png")
    pixels = read_png(out)
    # 5 numeric keys -> 3 columns x 2 rows of 4x3 inches at 100 dpi.
    assert pixels.shape == (600, 1200, 3)
    assert pixels.std() > 10  # not a blank canvas
    assert not list(out.parent.glob("*.tmp"))


def test_pretrain_curves_without_step_use_line_number(tmp_path):
    log = write_jsonl(tmp_path / "metrics.jsonl", [{"loss": 1.0}, {"loss": 0.5}, {"loss": float("nan")}])
    pixels = read_png(figures.plot_pretrain_curves(log, tmp_path / "loss.png"))
    assert pixels.shape == (300, 400, 3)


def test_eval_curves(tmp_path):
    log = write_jsonl(tmp_path / "linear.jsonl", [
        {"epoch": e, "train_loss": 2.0 / (e + 1), "val_top1": 50 + e, "val_top5": 80 + e / 2} for e in range(10)])
    out = figures.plot_eval_curves(log, tmp_path / "linear.png")
    pixels = read_png(out)
    assert pixels.shape == (350, 900, 3) and pixels.std() > 10
    assert out.stat().st_size > 10_000


def test_curves_reject_bad_logs(tmp_path):
    with pytest.raises(figures.FigureInputError, match="log file not found"):
        figures.plot_pretrain_curves(tmp_path / "missing.jsonl", tmp_path / "x.png")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "loss": 2}\n{"step": 2, "loss"\n')
    with pytest.raises(figures.FigureInputError, match=rf"{bad}:2: not valid JSON"):
        figures.plot_pretrain_curves(bad, tmp_path / "x.png")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(figures.FigureInputError, match="log is empty"):
        figures.plot_eval_curves(tmp_path / "empty.jsonl", tmp_path / "x.png")
    steps_only = write_jsonl(tmp_path / "steps.jsonl", [{"step": 1, "epoch": 0}])
    with pytest.raises(figures.FigureInputError, match="no numeric keys"):
        figures.plot_pretrain_curves(steps_only, tmp_path / "x.png")
    no_epoch = write_jsonl(tmp_path / "no_epoch.jsonl", [{"val_top1": 50.0}])
    with pytest.raises(figures.FigureInputError, match="no numeric 'epoch'"):
        figures.plot_eval_curves(no_epoch, tmp_path / "x.png")
    wrong_keys = write_jsonl(tmp_path / "wrong.jsonl", [{"epoch": 1, "acc": 50.0}])
    with pytest.raises(figures.FigureInputError, match="none of the keys"):
        figures.plot_eval_curves(wrong_keys, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_neighbor_grid_batched_torch_float(tmp_path):
    generator = torch.Generator().manual_seed(0)
    queries = torch.rand(2, 3, 16, 16, generator=generator)
    neighbors = torch.rand(2, 4, 3, 16, 16, generator=generator)
    scores = torch.tensor([[0.9, 0.7, 0.4, 0.1], [0.8, 0.6, 0.3, 0.2]])
    labels = [["cat", "cat", "cat", "dog", "car"], ["dog", "dog", "wolf", "cat", "dog"]]
    out = figures.plot_neighbor_grid(queries, neighbors, scores, tmp_path / "grid.png", labels=labels)
    pixels = read_png(out)
    # 1 query + 4 neighbours at 1.6 in wide, 2 rows at 1.9 in high, 100 dpi.
    assert pixels.shape == (380, 800, 3)
    assert pixels.std() > 10


def test_neighbor_grid_single_query_uint8_gray(tmp_path):
    query = np.full((1, 8, 8), 255, dtype=np.uint8)
    neighbors = np.zeros((3, 1, 8, 8), dtype=np.uint8)
    out = figures.plot_neighbor_grid(query, neighbors, np.array([0.5, 0.25, 0.0]), tmp_path / "one.png",
                                     labels=["q", "a", "b", "c"])
    pixels = read_png(out)
    assert pixels.shape == (190, 640, 3)
    # The white query and the black neighbours are both drawn.
    assert (pixels.min(axis=2) > 250).any() and (pixels.max(axis=2) < 5).any()


@pytest.mark.parametrize(("query", "neighbors", "scores", "labels", "message"), [
    (np.zeros((2, 3, 8, 8)), np.zeros((2, 4, 3, 8, 8)), np.zeros((2, 3)), None, r"positiveness must have shape \(2, 4\)"),
    (np.zeros((2, 3, 8, 8)), np.zeros((3, 4, 3, 8, 8)), np.zeros((3, 4)), None, "one non-empty row of neighbours"),
    (np.zeros((8, 8, 3)), np.zeros((4, 8, 8, 3)), np.zeros(4), None, r"channels-first images \(C,H,W\)"),
    (np.full((3, 8, 8), 2.0), np.zeros((4, 3, 8, 8)), np.zeros(4), None, r"must lie in \[0, 1\]"),
    (np.zeros((3, 8, 8)), np.zeros((4, 3, 8, 8), dtype=np.int64), np.zeros(4), None, "neither uint8 nor floating"),
    (np.zeros((3, 8, 8)), np.zeros((4, 3, 8, 8)), np.array([0.1, np.nan, 0.2, 0.3]), None, "finite numbers"),
    (np.zeros((3, 8, 8)), np.zeros((4, 3, 8, 8)), np.zeros(4), ["q", "a"], "labels must give 1 sequence"),
    (np.zeros((8, 8)), np.zeros((4, 3, 8, 8)), np.zeros(4), None, r"query_images must be \(Q,C,H,W\)"),
])
def test_neighbor_grid_rejects_bad_input(tmp_path, query, neighbors, scores, labels, message):
    with pytest.raises(figures.FigureInputError, match=message):
        figures.plot_neighbor_grid(query, neighbors, scores, tmp_path / "bad.png", labels=labels)
    assert not (tmp_path / "bad.png").exists()
