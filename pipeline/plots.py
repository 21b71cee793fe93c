"""PNG plots for a run (matplotlib, Agg): training curves, parity, confusion matrix, forecast, and predicted
against actual for a regression with several values per sample."""
import csv
from pathlib import Path

import numpy as np

from pipeline.atomic import write_with

FIGSIZE = (7.5, 4.5)
DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    plt.close(fig)
    return path


def training_curves(metrics_csv: Path, out: Path) -> Path | None:
    """Loss and metric per epoch from Lightning's metrics.csv (train and validation)."""
    if not metrics_csv.is_file():
        return None
    epochs = _per_epoch(metrics_csv)
    if not epochs:
        return None
    plt = _pyplot()
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(10, 4))
    metric = "acc" if any("val_acc" in e for e in epochs.values()) else "mse"
    for split, style in (("train", "-o"), ("val", "-s")):
        for ax, key in ((loss_ax, f"{split}_loss" + ("_epoch" if split == "train" else "")),
                        (metric_ax, f"{split}_{metric}")):
            xs = [e for e, row in epochs.items() if key in row]
            if xs:
                ax.plot([x + 1 for x in xs], [epochs[x][key] for x in xs], style, label=split, markersize=3)
    loss_ax.set(title="Loss per epoch", xlabel="epoch", ylabel="loss")
    metric_ax.set(title=f"{'Accuracy' if metric == 'acc' else 'MSE (scaled)'} per epoch", xlabel="epoch",
                  ylabel="accuracy" if metric == "acc" else "MSE")
    from matplotlib.ticker import MaxNLocator

    for ax in (loss_ax, metric_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, out)


def _per_epoch(metrics_csv: Path) -> dict[int, dict[str, float]]:
    epochs: dict[int, dict[str, float]] = {}
    with metrics_csv.open() as handle:
        for row in csv.DictReader(handle):
            if not row.get("epoch"):
                continue
            values = {k: float(v) for k, v in row.items() if v not in ("", None) and k not in ("epoch", "step")}
            epochs.setdefault(int(float(row["epoch"])), {}).update(values)
    return epochs


def parity(reference: np.ndarray, outputs: dict[str, np.ndarray], out: Path) -> Path | None:
    """Per runtime: the distribution of |output - PyTorch| on a log scale."""
    if not outputs:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    floor = 1e-12  # exact zeros still show up, in the leftmost bin
    errors = {name: np.maximum(np.abs(out.reshape(reference.shape) - reference).ravel(), floor)
              for name, out in outputs.items()}
    high = max(e.max() for e in errors.values())
    bins = np.logspace(np.log10(floor), np.log10(max(high, floor * 10)) + 0.1, 50)
    for name, err in errors.items():
        ax.hist(err, bins=bins, histtype="step", linewidth=1.6, label=f"{name} (max {err.max():.1e})")
    ax.set_xscale("log")
    ax.set(title="Parity: |runtime output - PyTorch output| per element",
           xlabel="absolute error (exact matches counted at 1e-12)",
           ylabel="number of output elements")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out)


def divergence(curves: dict[str, list[tuple[int, float]]], out: Path) -> Path | None:
    """Per diagnosed runtime: max abs error of each intermediate tensor vs onnxruntime, along the graph."""
    if not any(curves.values()):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    floor = 1e-12
    for name, points in curves.items():
        if points:
            depth, error = zip(*points, strict=True)
            ax.plot(depth, np.maximum(error, floor), marker=".", linewidth=1.2, label=name)
    ax.set_yscale("log")
    ax.set(title="Where parity drifts: error of each intermediate tensor vs ONNX",
           xlabel="node index in the ONNX graph (topological order)", ylabel="max abs error (exact: 1e-12)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, out: Path, names: list[str] | None = None) -> Path:
    plt = _pyplot()
    classes = max(int(max(labels.max(), predicted.max())) + 1, len(names or []))
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (labels.astype(int), predicted.astype(int)), 1)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    image = ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                color="white" if count > matrix.max() / 2 else "black")
    ax.set(title="Confusion matrix (PyTorch, test split)", xlabel="predicted class", ylabel="true class",
           xticks=range(classes), yticks=range(classes))
    if names and classes <= 30:  # more names than that are unreadable on the axes
        shown = [name[:12] for name in names] + [str(i) for i in range(len(names), classes)]
        ax.set_xticklabels(shown, rotation=45, ha="right", fontsize=7)
        ax.set_yticklabels(shown, fontsize=7)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, out)


def forecast(actual: np.ndarray, predicted: np.ndarray, out: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    steps = np.arange(len(actual))
    ax.plot(steps, actual, "-o", markersize=3, label="actual")
    ax.plot(steps, predicted, "-s", markersize=3, label="forecast (PyTorch)")
    ax.set(title="Next-value forecast vs actual (test split, original units)", xlabel="test step",
           ylabel="value")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out)


MAX_REGRESSION_PANELS = 12


def predicted_vs_actual(actual: np.ndarray, predicted: np.ndarray, out: Path, names: list[str] | None = None) -> Path:
    """One panel per target value (the first ``MAX_REGRESSION_PANELS``), titled by ``names`` (a table's target
    columns) when given: PyTorch's prediction against the truth, with the diagonal where they agree."""
    plt = _pyplot()
    actual, predicted = actual.reshape(len(actual), -1), predicted.reshape(len(predicted), -1)
    panels = min(actual.shape[1], MAX_REGRESSION_PANELS)
    columns = min(panels, 4)
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        if index >= panels:
            ax.axis("off")
            continue
        truth, guess = actual[:, index], predicted[:, index]
        low, high = float(min(truth.min(), guess.min())), float(max(truth.max(), guess.max()))
        ax.scatter(truth, guess, s=8, alpha=0.6)
        ax.plot([low, high], [low, high], "k--", linewidth=0.8)
        title = names[index] if names and index < len(names) else f"value {index}"
        ax.set(title=title, xlabel="actual", ylabel="predicted (PyTorch)")
        ax.grid(alpha=0.3)
    fig.suptitle("Predicted vs actual (test split)")
    return _save(fig, out)
