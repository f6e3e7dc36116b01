"""Classification metrics, the report table and the plots of training and evaluation.

:func:`classification_metrics` (overall accuracy, kappa, confusion matrix, per-class user's
and producer's accuracy) is what training, evaluation and the demo report;
:func:`format_report` prints it; :func:`plot_history` and :func:`plot_confusion` draw the
bundle's figures with matplotlib's object API (no pyplot, no backend switch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..model.contract import OUTPUT_NODATA, ClassInfo, class_infos

__all__ = ["classification_metrics", "format_report", "plot_history", "plot_confusion"]


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                           classes: Sequence[ClassInfo | Mapping[str, Any]]) -> dict:
    """Overall accuracy, kappa, confusion matrix and per-class accuracies.

    The confusion matrix has rows = true class and columns = predicted class, both in the
    order of ``classes`` (``labels`` lists their values). Precision is the user's accuracy,
    recall the producer's accuracy. Rows predicted as nodata (255: a band equal to the
    input nodata value) count as errors in the overall accuracy and are reported as
    ``unpredicted``; they appear in no column of the matrix.

    Parameters
    ----------
    y_true, y_pred
        True and predicted class values.
    classes
        The model's classes (:class:`~s2dask.model.contract.ClassInfo` or dicts), in output order.
    """
    from sklearn.metrics import (
        cohen_kappa_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    y_true = np.asarray(y_true).astype("int64")
    y_pred = np.asarray(y_pred).astype("int64")
    classes = class_infos(classes)
    labels = [int(c.value) for c in classes]
    extra = sorted(set(np.unique(y_true).tolist()) - set(labels))
    names = {int(c.value): str(c.name) for c in classes}
    labels_all = labels + extra
    cm = confusion_matrix(y_true, y_pred, labels=labels_all)
    prec, rec, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels_all, zero_division=0)
    n = len(y_true)
    oa = float((y_true == y_pred).mean()) if n else float("nan")
    kappa = float(cohen_kappa_score(y_true, y_pred, labels=labels_all)) if n else float("nan")
    if not np.isfinite(kappa):
        kappa = 0.0
    per_class = [
        {"value": v, "name": names.get(v, f"{v} (unknown to the model)"),
         "precision": round(float(p), 6), "recall": round(float(r), 6), "f1": round(float(f), 6),
         "support": int(s)}
        for v, p, r, f, s in zip(labels_all, prec, rec, f1, support)
    ]
    present = [c for c in per_class if c["support"] > 0]
    return {
        "n": n,
        "overall_accuracy": round(oa, 6),
        "kappa": round(kappa, 6),
        "macro_f1": round(float(np.mean([c["f1"] for c in present])) if present else 0.0, 6),
        "labels": labels_all,
        "confusion_matrix": cm.astype(int).tolist(),
        "confusion_matrix_axes": "rows = true class, columns = predicted class, in 'labels' order",
        "per_class": per_class,
        "unpredicted": int((y_pred == OUTPUT_NODATA).sum()),
    }


def format_report(metrics: dict, *, title: str = "test") -> str:
    """The metrics as a plain-text table (per class, OA, kappa, confusion matrix, split).

    Parameters
    ----------
    metrics
        From :func:`classification_metrics` (with ``split`` when there is one).
    title
        The first line's label.
    """
    lines = [f"{title}: {metrics['n']} samples"]
    w = max([len(c["name"]) for c in metrics["per_class"]] + [5])
    lines.append(f"  {'value':>5}  {'class':<{w}}  {'user acc':>8}  {'prod acc':>8}  {'f1':>6}  {'support':>7}")
    for c in metrics["per_class"]:
        lines.append(f"  {c['value']:>5}  {c['name']:<{w}}  {c['precision']:>8.4f}  "
                     f"{c['recall']:>8.4f}  {c['f1']:>6.4f}  {c['support']:>7}")
    lines.append(f"  overall accuracy {metrics['overall_accuracy']:.4f}   kappa {metrics['kappa']:.4f}"
                 f"   macro F1 {metrics['macro_f1']:.4f}")
    if metrics.get("unpredicted"):
        lines.append(f"  {metrics['unpredicted']} rows had a nodata band value and got no prediction")
    labels = metrics["labels"]
    cw = max(6, *(len(str(v)) + 1 for v in labels))
    lines.append("  confusion matrix (rows = true, columns = predicted):")
    lines.append("  " + " " * 8 + "".join(f"{v:>{cw}}" for v in labels))
    for v, row in zip(labels, metrics["confusion_matrix"]):
        lines.append(f"  {v:>8}" + "".join(f"{x:>{cw}}" for x in row))
    bf16 = (metrics.get("precision") or {}).get("bf16") or {}
    if bf16.get("checked"):
        line = (f"  bf16 (the default engine on CPUs with bf16 matrix units): test OA "
                f"{bf16['test_oa']:.4f} ({bf16['test_oa_minus_fp32']:+.4f} vs float32), "
                f"{bf16['agreement_with_fp32']:.2%} of test rows as in float32")
        if not bf16["within_bar"]:
            line += (f"; beyond the {bf16['bar']:g} bar: jobs run this model in float32 unless "
                     "given --precision bf16")
        lines.append(line)
    split = metrics.get("split")
    if split and split.get("explanation"):
        lines.append(f"  split: {split['explanation']}")
    return "\n".join(lines)


def plot_history(history: dict, path: Path, *, title: str = "training",
                 best_epoch: int | None = None) -> None:
    """Loss and accuracy per epoch (train and validation) as a PNG.

    Parameters
    ----------
    history
        Keras' ``History.history``.
    path
        The PNG to write.
    title
        The figure's title.
    best_epoch
        The epoch (1-based) whose weights were kept (early stopping restores the best
        validation loss); marked on both panels.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.4))
    for ax, key in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        ep = np.arange(1, len(history.get(key, [])) + 1)
        ax.plot(ep, history.get(key, []), label="train")
        if f"val_{key}" in history:
            ax.plot(ep, history[f"val_{key}"], label="validation")
        if best_epoch and f"val_{key}" in history and 0 < best_epoch <= len(history[f"val_{key}"]):
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
            ax.plot([best_epoch], [history[f"val_{key}"][best_epoch - 1]], "o", color="black",
                    label=f"kept: epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_confusion(metrics: dict, path: Path, *, title: str) -> None:
    """The confusion matrix (counts, shaded by share of the true class) as a PNG.

    Parameters
    ----------
    metrics
        From :func:`classification_metrics`.
    path
        The PNG to write.
    title
        The figure's title (OA and kappa are appended).
    """
    from matplotlib.figure import Figure

    cm = np.asarray(metrics["confusion_matrix"], dtype=float)
    names = [f"{c['value']} {c['name']}" for c in metrics["per_class"]]
    fig = Figure(figsize=(1.2 * len(names) + 3, 1.0 * len(names) + 2.5))
    ax = fig.subplots()
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}: OA {metrics['overall_accuracy']:.3f}, kappa {metrics['kappa']:.3f}")
    fig.colorbar(im, ax=ax, label="share of true class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
