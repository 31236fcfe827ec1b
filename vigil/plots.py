"""Figures: ROC and precision-recall curves and feature importance (logged with every
model); margins of one model over others across simulated worlds (`vigil evaluate --worlds`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

# Figures are built without pyplot: nothing is kept open between trainings, and a
# notebook's plotting backend is never changed by importing this module.


def curves(labels: np.ndarray, scores: np.ndarray, title: str) -> Figure:
    fig = Figure(figsize=(10, 4))
    roc_ax, pr_ax = fig.subplots(1, 2)
    fpr, tpr, _ = roc_curve(labels, scores)
    roc_ax.plot(fpr, tpr)
    roc_ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC — {title}")
    precision, recall, _ = precision_recall_curve(labels, scores)
    pr_ax.plot(recall, precision)
    pr_ax.axhline(float(np.mean(labels)), linestyle=":", color="grey")
    pr_ax.set(xlabel="recall", ylabel="precision", title=f"precision-recall — {title}")
    fig.tight_layout()
    return fig


def importance(values: dict[str, float], title: str) -> Figure:
    names = sorted(values, key=values.__getitem__)
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    ax.barh(names, [values[n] for n in names])
    ax.set(title=title)
    fig.tight_layout()
    return fig


def margins(diff: pd.DataFrame, reference: str, metrics: tuple[str, ...]) -> Figure:
    """One panel per metric: each window's margin of `reference` over each other model
    (a dot per world and window), with the mean marked; right of zero is a win."""
    others = list(dict.fromkeys(diff["against"]))
    fig = Figure(figsize=(4 * len(metrics), 1.2 + 0.6 * len(others)))
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        for row, other in enumerate(others):
            values = diff.loc[diff["against"] == other, metric].to_numpy()
            jitter = np.linspace(-0.15, 0.15, values.size) if values.size > 1 else np.zeros(1)
            ax.scatter(values, row + jitter, s=12, alpha=0.6)
            ax.plot([values.mean()] * 2, [row - 0.3, row + 0.3], color="black")
        ax.axvline(0, color="grey", linestyle=":")
        ax.set(title=f"{metric}: {reference} minus", yticks=range(len(others)), yticklabels=others)
    fig.tight_layout()
    return fig
