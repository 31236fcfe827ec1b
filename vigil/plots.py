"""Figures logged with every model: ROC and precision-recall curves, feature importance."""

from __future__ import annotations

import numpy as np
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
