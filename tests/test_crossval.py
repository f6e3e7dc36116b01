"""Cross-validation (``s2dask train --folds K``): K fold models, their spread, the final bundle.

Real Keras training on tiny separable tables, 2-3 folds, 2 epochs and a tiny network.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tables import separable_table, write_table

from s2dask import cli
from s2dask.training.crossval import format_cv_report, summarise_folds
from s2dask.training.samples import fold_indices, read_samples

TINY = ["--epochs", "2", "--batch-size", "32", "--units", "16", "--dropout", "0", "--patience", "0"]


def _table(tmp_path: Path) -> Path:
    df = separable_table(24, seed=3)
    # one labelled feature per 2 x 2 pixel square (a group of 16 points)
    df["feature_id"] = (np.floor((df.x - 677770) / 20).astype(int).astype(str) + "_"
                        + np.floor((4764070 - df.y) / 20).astype(int).astype(str))
    return write_table(df, tmp_path / "points.csv")


@pytest.mark.parametrize("split,k", [("block", 3), ("group", 2)])
def test_cli_folds_report_metrics_and_final_bundle(tmp_path, capsys, split, k):
    table = _table(tmp_path)
    out = tmp_path / "model"
    argv = ["train", str(table), "--out", str(out), "--split", split, "--folds", str(k),
            "--block-size", "40", "--seed", "1", *TINY]
    assert cli.main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "points.csv"]  # no fold leftovers
    assert {"model.keras", "model.json", "metrics.json"} <= {p.name for p in out.iterdir()}
    assert not any(p.name.startswith("fold-") for p in out.iterdir())

    metrics = json.loads((out / "metrics.json").read_text())
    cv = metrics["cross_validation"]
    data = read_samples(table)
    folds = fold_indices(data, method=split, k=k, seed=1, block_size=40)
    assert cv["method"] == split and cv["k"] == k and len(cv["per_fold"]) == k
    # every row is tested exactly once, by the folds fold_indices gives for the same seed
    assert [f["test_rows"] for f in cv["per_fold"]] == [len(t) for t in folds.test]
    assert sum(f["test_rows"] for f in cv["per_fold"]) == len(data)
    for f, t in zip(cv["per_fold"], folds.test):
        assert f["train_rows"] + f["val_rows"] + f["test_rows"] == len(data)
        assert f["val_rows"] > 0 and f["epochs_run"] == 2
        assert sum(c["support"] for c in f["per_class"].values()) == len(t)
    oa = np.array([f["overall_accuracy"] for f in cv["per_fold"]])
    assert cv["overall_accuracy"]["mean"] == pytest.approx(oa.mean(), abs=1e-6)
    assert cv["overall_accuracy"]["sd"] == pytest.approx(oa.std(ddof=1), abs=1e-6)
    assert (cv["overall_accuracy"]["min"], cv["overall_accuracy"]["max"]) == (oa.min(), oa.max())
    assert set(cv["per_class_f1"]) == {"1", "2", "3"} and "kappa" in cv and "macro_f1" in cv
    # the final bundle: the usual split's test part, as without --folds
    assert metrics["split"]["method"] == split and metrics["n"] == metrics["split"]["counts"]["test"]
    assert "train/validation part" in cv["final_model"]

    assert f"cross-validation: {k} {split} folds" in printed
    assert "overall accuracy" in printed and "+-" in printed and "support > 0" in printed
    assert "final model: fitted on the train/validation part" in printed
    assert printed.count("fold ") >= k


def test_per_class_f1_averages_only_folds_with_support():
    def fold(oa, f1s):
        return {"overall_accuracy": oa, "kappa": oa - 0.1, "macro_f1": oa,
                "per_class": {v: {"f1": f, "support": 0 if f is None else 5} for v, f in f1s.items()}}

    per_fold = [fold(0.9, {"1": 0.8, "2": 0.6}), fold(0.7, {"1": 0.6, "2": None}),
                fold(0.8, {"1": 0.7, "2": 1.0})]
    per_fold[1]["per_class"]["2"]["f1"] = 0.0  # sklearn's zero_division value for an absent class
    cv = summarise_folds(per_fold, {"method": "group", "k": 3, "groups": 9, "warnings": ["w"]},
                         [{"value": 1, "name": "a"}, {"value": 2, "name": "b"}], val_fraction=0.14)
    assert cv["overall_accuracy"] == {"mean": 0.8, "sd": 0.1, "min": 0.7, "max": 0.9, "folds": 3}
    assert cv["per_class_f1"]["2"]["folds"] == 2 and cv["per_class_f1"]["2"]["mean"] == 0.8
    assert cv["per_class_f1"]["1"]["mean"] == pytest.approx(0.7)
    text = format_cv_report(cv, final="final model: x")
    assert "0.8000 +- 0.1000  [0.7000, 0.9000]" in text and "folds 2/3" in text
    assert "warning: w" in text and text.endswith("final model: x")


@pytest.mark.parametrize("extra,expect", [
    (["--folds", "1"], "at least 2 folds"),
    (["--folds", "400", "--split", "pixel"], "fewer than the 400 folds"),
    (["--folds", "2", "--split", "group", "--group-column", "parcel"], "group column 'parcel'"),
])
def test_cli_folds_refusals_before_training(tmp_path, capsys, extra, expect):
    table = _table(tmp_path)
    out = tmp_path / "model"
    code = cli.main(["train", str(table), "--out", str(out), *TINY, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expect in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["points.csv"]
