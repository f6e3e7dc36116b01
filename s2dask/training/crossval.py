"""Cross-validation: K models on K disjoint test folds, and the spread of their figures.

One train/validation/test split is not an estimate: on the Buffalo table a 250 m block split
gives a test accuracy of 0.64 with one seed and 0.92 with another. :func:`cross_validate`
trains one model per fold of :func:`~s2dask.training.splits.fold_indices` (every row is tested
exactly once, grouped by pixel, block or labelled feature like the split), scores each on
its test fold and reports mean, standard deviation and range of overall accuracy, kappa,
macro F1 and per-class F1 across folds. How a fold's model is trained and scored is the
caller's (``s2dask train`` passes its own training and the bundle's prediction path).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .splits import Folds, LabelledRows, Split

__all__ = ["cross_validate", "format_cv_report", "summarise_folds"]

#: what the per-class figures average over, said in metrics.json and the report
PER_CLASS_NOTE = ("per-class F1 is averaged over the folds whose test part holds the class "
                  "(support > 0); 'folds' says how many")
SD_NOTE = "sd is the sample standard deviation across folds (ddof=1)"


def _spread(values: list[float]) -> dict:
    a = np.asarray(values, dtype="float64")
    if not len(a):
        return {"mean": None, "sd": None, "min": None, "max": None, "folds": 0}
    sd = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    return {"mean": round(float(a.mean()), 6), "sd": round(sd, 6), "min": round(float(a.min()), 6),
            "max": round(float(a.max()), 6), "folds": int(len(a))}


def cross_validate(
    data: LabelledRows,
    folds: Folds,
    fit_score: Callable[[Split, int], dict],
    *,
    val_fraction: float,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train and score one model per fold and summarise the figures.

    Fold ``i`` tests on ``folds.test[i]``; the rows outside it are split into train and
    validation (early stopping) with the folds' own grouping (``folds.train_val`` with seed
    ``seed + i``).

    Parameters
    ----------
    data
        The table the folds index (:class:`~s2dask.training.samples.Samples`).
    folds
        From :func:`~s2dask.training.splits.fold_indices`.
    fit_score
        ``fit_score(split, seed)`` trains on ``split.train`` (early stopping on
        ``split.val``) and returns :func:`~s2dask.training.metrics.classification_metrics` of
        ``split.test`` (extra keys ``epochs_run``, ``best_epoch`` are kept).
    val_fraction
        Share of the non-test rows that goes to validation.
    seed
        Base seed; fold ``i`` uses ``seed + i`` for its validation split and training.
    log
        Called with one line per finished fold.

    Returns
    -------
    dict
        :func:`summarise_folds` of the folds' metrics.
    """
    per_fold = []
    for i in range(len(folds)):
        tr, va = folds.train_val(i, val_fraction=val_fraction, seed=seed + i)
        info = {"method": folds.info["method"], "fold": i, "k": len(folds),
                "explanation": f"fold {i + 1} of {len(folds)} ({folds.info['method']} folds)"}
        m = fit_score(Split(tr, va, folds.test[i], info), seed + i)
        row = {"fold": i, "train_rows": int(len(tr)), "val_rows": int(len(va)),
               "test_rows": int(len(folds.test[i])), **_fold_figures(m)}
        per_fold.append(row)
        if log is not None:
            log(f"fold {i + 1}/{len(folds)}: train {row['train_rows']}, val {row['val_rows']}, test "
                f"{row['test_rows']} rows: OA {row['overall_accuracy']:.4f}, kappa {row['kappa']:.4f}"
                + (f", best epoch {row['best_epoch']} of {row['epochs_run']}" if "epochs_run" in row else ""))
    return summarise_folds(per_fold, folds.info, data.classes, val_fraction=val_fraction)


def _fold_figures(metrics: dict) -> dict:
    out = {k: metrics[k] for k in ("overall_accuracy", "kappa", "macro_f1")}
    out["per_class"] = {str(c["value"]): {"f1": c["f1"], "support": c["support"]}
                        for c in metrics["per_class"]}
    out.update({k: metrics[k] for k in ("epochs_run", "best_epoch") if k in metrics})
    return out


def summarise_folds(per_fold: list[dict], info: dict, classes: list[dict], *,
                    val_fraction: float) -> dict:
    """Mean, sd, min and max across folds of OA, kappa, macro F1 and per-class F1.

    Parameters
    ----------
    per_fold
        One dict per fold: ``overall_accuracy``, ``kappa``, ``macro_f1`` and ``per_class``
        (``{value: {"f1", "support"}}``).
    info
        ``Folds.info`` (method, k, seed, groups, per-fold class counts, warnings).
    classes
        The table's classes (``{"value", "name"}``), in output order.
    val_fraction
        Share of the non-test rows used for validation (recorded).

    Returns
    -------
    dict
        JSON-ready: ``info``'s keys, ``per_fold``, the spreads and the notes.
    """
    per_class = {}
    for c in classes:
        v = str(c["value"])
        f1 = [f["per_class"][v]["f1"] for f in per_fold if f["per_class"].get(v, {}).get("support")]
        per_class[v] = {"name": c["name"], **_spread(f1)}
    return {
        **info,
        "val_fraction": round(float(val_fraction), 6),
        "overall_accuracy": _spread([f["overall_accuracy"] for f in per_fold]),
        "kappa": _spread([f["kappa"] for f in per_fold]),
        "macro_f1": _spread([f["macro_f1"] for f in per_fold]),
        "per_class_f1": per_class,
        "per_fold": per_fold,
        "notes": [SD_NOTE, PER_CLASS_NOTE,
                  "each fold's model is trained on the rows outside its test fold (validation "
                  f"{val_fraction:.0%} of them, grouped like the folds, for early stopping)"],
    }


def format_cv_report(cv: dict, *, final: str | None = None) -> str:
    """The cross-validation summary as text: spreads, per-class F1, warnings.

    Parameters
    ----------
    cv
        From :func:`cross_validate` / :func:`summarise_folds`.
    final
        A line saying what the final model was fitted on (appended when given).
    """
    def fmt(s: dict) -> str:
        if s["mean"] is None:
            return "n/a (no fold)"
        return f"{s['mean']:.4f} +- {s['sd']:.4f}  [{s['min']:.4f}, {s['max']:.4f}]"

    unit = "rows" if cv["method"] == "random" else "groups"
    lines = [f"cross-validation: {cv['k']} {cv['method']} folds ({cv['groups']} {unit}), "
             "mean +- sd [min, max] across folds"]
    for key, name in (("overall_accuracy", "overall accuracy"), ("kappa", "kappa"), ("macro_f1", "macro F1")):
        lines.append(f"  {name:<17} {fmt(cv[key])}")
    w = max([len(str(c["name"])) for c in cv["per_class_f1"].values()] + [5])
    lines.append(f"  per-class F1 ({PER_CLASS_NOTE}):")
    for v, c in cv["per_class_f1"].items():
        lines.append(f"  {v:>5}  {c['name']:<{w}}  {fmt(c)}  folds {c['folds']}/{cv['k']}")
    lines.append(f"  ({SD_NOTE})")
    lines.extend(f"  warning: {w_}" for w_ in cv.get("warnings", []))
    if final:
        lines.append(f"  {final}")
    return "\n".join(lines)
