"""PNG figures: pre-training curves, linear-probe curves, and the neighbour grid of SNCLR Fig. 3/4.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so plotting works on headless
machines and leaves no global backend state behind. Files are written atomically.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pretrain.errors import UserError
from pretrain.fileio import atomic_write

# Keys that are the x axis or bookkeeping, not curves.
_X_KEYS = ("step", "epoch")
_EVAL_KEYS = ("train_loss", "val_top1", "val_top5")


class FigureInputError(UserError, ValueError):
    """Input a figure cannot be drawn from; the message names the file (and line) or argument."""


def read_jsonl_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a metrics log of one JSON object per line; a bad line raises naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FigureInputError(f"{path}: log file not found")
    entries = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise FigureInputError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(entry, dict):
                raise FigureInputError(f"{path}:{number}: expected a JSON object, got {type(entry).__name__}")
            entries.append(entry)
    if not entries:
        raise FigureInputError(f"{path}: log is empty")
    return entries


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(entries: list[dict[str, Any]], key: str, x_key: str | None) -> tuple[list[float], list[float]]:
    """(x, y) of the entries that have a finite ``key``; x is the line index without an x key."""
    xs, ys = [], []
    for index, entry in enumerate(entries):
        if _is_number(entry.get(key)) and (x_key is None or _is_number(entry.get(x_key))):
            xs.append(float(entry[x_key]) if x_key else float(index))
            ys.append(float(entry[key]))
    return xs, ys


def _save(figure: Figure, out_png: str | os.PathLike) -> Path:
    FigureCanvasAgg(figure)
    return atomic_write(out_png, lambda stream: figure.savefig(stream, format="png", dpi=100))


def plot_pretrain_curves(jsonl_path: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """One panel per numeric key of a pre-training log (loss, lr, momentum, positiveness_mean, ...).

    The x axis is "step" when the log has it, else "epoch", else the line number; whichever keys are
    present are plotted, so a log from an older or newer trainer still draws.
    """
    entries = read_jsonl_log(jsonl_path)
    x_key = next((key for key in _X_KEYS if any(_is_number(e.get(key)) for e in entries)), None)
    keys = [key for key in dict.fromkeys(k for e in entries for k in e)
            if key not in _X_KEYS and any(_is_number(e.get(key)) for e in entries)]
    if not keys:
        raise FigureInputError(f"{jsonl_path}: no numeric keys to plot besides {list(_X_KEYS)}")
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    figure = Figure(figsize=(4 * columns, 3 * rows), layout="constrained")
    for index, key in enumerate(keys):
        axes = figure.add_subplot(rows, columns, index + 1)
        xs, ys = _series(entries, key, x_key)
        axes.plot(xs, ys, linewidth=1.2)
        axes.set_title(key)
        axes.set_xlabel(x_key or "log line")
        axes.grid(alpha=0.3)
        if key == "lr":
            axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return _save(figure, out_png)


def plot_eval_curves(jsonl_path: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Linear-probe curves by epoch: training loss (left) and validation top-1/top-5 (right)."""
    entries = read_jsonl_log(jsonl_path)
    if not any(_is_number(e.get("epoch")) for e in entries):
        raise FigureInputError(f"{jsonl_path}: no numeric 'epoch' key; expected lines like "
                               '{"epoch": 1, "train_loss": ..., "val_top1": ..., "val_top5": ...}')
    present = [key for key in _EVAL_KEYS if any(_is_number(e.get(key)) for e in entries)]
    if not present:
        raise FigureInputError(f"{jsonl_path}: none of the keys {list(_EVAL_KEYS)} has a number")
    figure = Figure(figsize=(9, 3.5), layout="constrained")
    loss_axes, accuracy_axes = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    for key in present:
        axes = loss_axes if key == "train_loss" else accuracy_axes
        xs, ys = _series(entries, key, "epoch")
        axes.plot(xs, ys, marker="o", markersize=3, label=key)
    loss_axes.set_title("training loss")
    accuracy_axes.set_title("validation accuracy (%)")
    for axes in (loss_axes, accuracy_axes):
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
    if any(key != "train_loss" for key in present):
        accuracy_axes.legend()
    return _save(figure, out_png)


def _to_numpy(images: Any, name: str) -> np.ndarray:
    if hasattr(images, "detach"):  # a torch tensor, without importing torch here
        images = images.detach().cpu().numpy()
    try:
        return np.asarray(images)
    except (TypeError, ValueError) as error:
        raise FigureInputError(f"{name}: cannot be read as an array ({error})") from None


def _as_display(images: np.ndarray, name: str) -> np.ndarray:
    """(..., C, H, W) float in [0, 1] or uint8 -> (..., H, W, C) float in [0, 1] for imshow."""
    if images.shape[-3] not in (1, 3):
        raise FigureInputError(f"{name}: expected channels-first images (C,H,W) with C in (1, 3), "
                               f"got shape {tuple(images.shape)}")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    elif np.issubdtype(images.dtype, np.floating):
        if not np.all(np.isfinite(images)):
            raise FigureInputError(f"{name}: contains NaN or infinite values")
        low, high = float(images.min()), float(images.max())
        if low < -1e-6 or high > 1 + 1e-6:
            raise FigureInputError(f"{name}: float images must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]"
                                   " (undo the normalisation first)")
        images = np.clip(images, 0.0, 1.0)
    else:
        raise FigureInputError(f"{name}: dtype {images.dtype} is neither uint8 nor floating point")
    images = np.moveaxis(images, -3, -1)
    return images[..., 0] if images.shape[-1] == 1 else images


def plot_neighbor_grid(query_images: Any, neighbor_images: Any, positiveness: Any, out_png: str | os.PathLike,
                       labels: Sequence[Any] | None = None) -> Path:
    """Each query image followed by its top-K neighbours from the candidate set, with positiveness.

    This is the picture of SNCLR Fig. 3/4: a row per query, the neighbours sorted as given (the
    caller passes them in top-K order), each titled with its positiveness score. Shapes:
    ``query_images`` (Q,C,H,W) or one (C,H,W); ``neighbor_images`` (Q,K,C,H,W) or (K,C,H,W);
    ``positiveness`` (Q,K) or (K,). Images are float in [0, 1] or uint8, numpy or torch.
    ``labels``, optional, gives per query a sequence of 1+K names (query first), e.g. class names.
    """
    queries = _to_numpy(query_images, "query_images")
    neighbors = _to_numpy(neighbor_images, "neighbor_images")
    scores = _to_numpy(positiveness, "positiveness")
    if queries.ndim == 3:  # a single query
        queries, neighbors, scores = queries[None], neighbors[None], scores[None]
        labels = None if labels is None else [labels]
    if queries.ndim != 4 or neighbors.ndim != 5:
        raise FigureInputError(f"query_images must be (Q,C,H,W) or (C,H,W) and neighbor_images (Q,K,C,H,W) or "
                               f"(K,C,H,W); got {tuple(queries.shape)} and {tuple(neighbors.shape)}")
    n_queries, k = neighbors.shape[:2]
    if queries.shape[0] != n_queries or k == 0:
        raise FigureInputError(f"neighbor_images {tuple(neighbors.shape)} must have one non-empty row of neighbours "
                               f"per query ({queries.shape[0]} queries)")
    if scores.shape != (n_queries, k):
        raise FigureInputError(f"positiveness must have shape {(n_queries, k)} to match neighbor_images, "
                               f"got {tuple(scores.shape)}")
    if not np.issubdtype(scores.dtype, np.number) or not np.all(np.isfinite(scores)):
        raise FigureInputError("positiveness must hold finite numbers")
    if labels is not None and (len(labels) != n_queries or any(len(row) != k + 1 for row in labels)):
        raise FigureInputError(f"labels must give {n_queries} sequence(s) of {k + 1} names (query first, then "
                               "its neighbours)")
    queries = _as_display(queries, "query_images")
    neighbors = _as_display(neighbors, "neighbor_images")
    gray = queries.ndim == 3

    figure = Figure(figsize=(1.6 * (k + 1), 1.9 * n_queries), layout="constrained")
    for q in range(n_queries):
        for j in range(k + 1):
            axes = figure.add_subplot(n_queries, k + 1, q * (k + 1) + j + 1)
            image = queries[q] if j == 0 else neighbors[q, j - 1]
            axes.imshow(image, cmap="gray" if gray else None, vmin=0.0, vmax=1.0)
            axes.set_xticks([])
            axes.set_yticks([])
            name = "" if labels is None else f"{labels[q][j]}\n"
            axes.set_title(f"{name}query" if j == 0 else f"{name}p={float(scores[q, j - 1]):.2f}", fontsize=8)
            if j == 0:
                for spine in axes.spines.values():  # the query is framed so the rows read left to right
                    spine.set_edgecolor("tab:red")
                    spine.set_linewidth(2)
    return _save(figure, out_png)
