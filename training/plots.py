"""Report files for a scored split: confusion-matrix and reliability-diagram PNGs, per-class CSV."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from training.metrics import reliability_bins  # noqa: E402


def confusion_figure(scores: dict[str, Any], title: str) -> Figure:
    """A row-normalized confusion-matrix heat map with the cell counts written in each cell."""
    confusion = scores["confusion"]
    matrix = np.asarray(confusion["matrix"], dtype=np.float64).reshape(len(confusion["true"]), -1)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    n_rows, n_columns = matrix.shape
    figure, axes = plt.subplots(figsize=(2.0 + 0.6 * n_columns, 1.6 + 0.45 * n_rows))
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(n_columns), confusion["predicted"], rotation=45, ha="right")
    axes.set_yticks(range(n_rows), confusion["true"])
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for i in range(n_rows):
        for j in range(n_columns):
            if matrix[i, j]:
                colour = "white" if shares[i, j] > 0.5 else "black"
                axes.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=8, color=colour)
    axes.set_title(f"{title}\naccuracy {scores['accuracy']:.3f}, macro-F1 {scores['macro_f1']:.3f}")
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of true row")
    figure.tight_layout()
    return figure


def reliability_figure(confidence: np.ndarray, correct: np.ndarray, title: str, ece: float) -> Figure:
    """A reliability diagram: accuracy against mean confidence per bin, with the diagonal."""
    bins = reliability_bins(confidence, correct)
    edges = np.asarray(bins["edges"])
    accuracy = np.nan_to_num(np.asarray(bins["accuracy"], dtype=np.float64))
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    axes.bar(edges[:-1], accuracy, width=np.diff(edges), align="edge", edgecolor="black", alpha=0.7,
             label="accuracy")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence")
    axes.set_ylabel("accuracy")
    axes.set_title(f"{title}\nECE {ece:.3f}")
    axes.legend(loc="upper left")
    figure.tight_layout()
    return figure


def write_per_class_csv(scores: dict[str, Any], path: Path) -> None:
    """One row per model class: precision, recall, F1, support."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cell_type", "precision", "recall", "f1", "support"])
        for name, row in scores["per_class"].items():
            writer.writerow([name, f"{row['precision']:.6f}", f"{row['recall']:.6f}", f"{row['f1']:.6f}",
                             row["support"]])


def write_split_reports(
    directory: Path,
    name: str,
    scores: dict[str, Any],
    confidence: np.ndarray | None = None,
    correct: np.ndarray | None = None,
) -> list[Path]:
    """Write ``{name}_confusion.png``, ``{name}_per_class.csv`` and, given confidences of the scored
    cells, ``{name}_reliability.png`` into ``directory``; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    figure = confusion_figure(scores, name)
    path = directory / f"{name}_confusion.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    written.append(path)
    path = directory / f"{name}_per_class.csv"
    write_per_class_csv(scores, path)
    written.append(path)
    if confidence is not None and correct is not None and len(confidence):
        figure = reliability_figure(confidence, correct, name, scores.get("ece", float("nan")))
        path = directory / f"{name}_reliability.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written
