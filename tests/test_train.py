"""Training, the model bundle it writes, evaluation, and the train/evaluate command line.

Real Keras training on small separable tables with few epochs and a small network.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tables import buffalo_dir, separable_table, write_table

from s2dask import cli
from s2dask.errors import OutputExistsError
from s2dask.model.bundle import load_model, sha256_file
from s2dask.training.samples import read_samples, split_samples
from s2dask.training.train import evaluate, train

FAST = {"epochs": 25, "batch_size": 32, "units": (64, 64), "dropout": (0.1, 0.1),
        "early_stopping": 8, "verbose": 0}
FAST_CLI = ["--epochs", "25", "--batch-size", "32", "--units", "64,64", "--dropout", "0.1,0.1",
            "--patience", "8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    table = write_table(separable_table(40, seed=1), d / "points.csv")
    out = d / "model"
    metrics = train(table, out, seed=7, split="random", **FAST)  # the tutorial's protocol, by name
    return table, out, metrics


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_bundle_files_contract_and_metrics(trained):
    table, out, metrics = trained
    for name in ("model.keras", "model.json", "metrics.json", "training.png", "confusion.png"):
        assert (out / name).is_file(), name
    assert not _leftovers(out.parent)
    contract = json.loads((out / "model.json").read_text())
    assert contract["bands"] == ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    assert [c["value"] for c in contract["classes"]] == [1, 2, 3]
    assert [c["name"] for c in contract["classes"]] == ["Road", "Building", "Tree"]
    assert contract["model_sha256"] == sha256_file(out / "model.keras")
    # the OpenVINO IR beside model.keras, made from it (workers need no TensorFlow)
    ir = contract["openvino_ir"]
    assert ir["model_sha256"] == contract["model_sha256"]
    assert ir["xml_sha256"] == sha256_file(out / "model.xml") and ir["bin_sha256"] == sha256_file(out / "model.bin")
    assert contract["output_nodata"] == 255 and contract["input_nodata"] == 0
    assert contract["training_data"]["sha256"] == sha256_file(table)
    assert contract["split"]["method"] == "random" and contract["split"]["seed"] == 7
    assert contract["training"]["units"] == [64, 64] and 1 <= contract["epochs_run"] <= 25

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    for key in ("overall_accuracy", "kappa", "confusion_matrix", "labels", "per_class", "split"):
        assert key in on_disk
    cm = np.array(on_disk["confusion_matrix"])
    assert cm.shape == (3, 3) and on_disk["labels"] == [1, 2, 3]
    assert cm.sum() == on_disk["n"] == on_disk["split"]["counts"]["test"]
    assert cm.sum() == sum(c["support"] for c in on_disk["per_class"])
    assert cm.sum(axis=1).tolist() == [c["support"] for c in on_disk["per_class"]]
    assert on_disk["overall_accuracy"] >= 0.95 and on_disk["kappa"] >= 0.9
    assert {"precision", "recall", "f1", "support", "value", "name"} <= set(on_disk["per_class"][0])
    assert "also have points in train" in on_disk["split"]["explanation"]


def test_bundle_predicts_class_values(trained):
    table, out, _ = trained
    s = read_samples(table)
    bundle = load_model(out)
    pred = bundle.predict(s.X)
    assert pred.dtype == np.uint8 and set(np.unique(pred)) <= {1, 2, 3}
    assert np.mean(pred == s.y) > 0.95


def test_evaluate_reproduces_test_metrics(trained, tmp_path, capsys):
    table, out, metrics = trained
    s = read_samples(table)
    sp = split_samples(s, method="random", seed=7)
    import pandas as pd

    test_rows = pd.read_csv(table).iloc[sp.test]
    test_csv = write_table(test_rows.rename(columns={"B2": "B02"}), tmp_path / "test.csv")
    again = evaluate(out, test_csv, out=tmp_path / "m.json")
    for key in ("overall_accuracy", "kappa", "confusion_matrix", "per_class", "labels"):
        assert again[key] == metrics[key], key
    assert json.loads((tmp_path / "m.json").read_text())["overall_accuracy"] == metrics["overall_accuracy"]
    printed = capsys.readouterr().out
    assert "overall accuracy" in printed and "confusion matrix" in printed
    # through the command line
    assert cli.main(["evaluate", str(out), str(test_csv), "--out", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["kappa"] == metrics["kappa"]


def test_seeded_training_is_reproducible(trained, tmp_path):
    table, _, metrics = trained
    again = train(table, tmp_path / "again", seed=7, split="random", **FAST)
    assert again["split"]["counts"] == metrics["split"]["counts"]
    assert abs(again["overall_accuracy"] - metrics["overall_accuracy"]) <= 0.03


def _run(capsys, argv):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("change,expect", [
    (lambda df: df.drop(columns=["B12"]), "B12"),
    (lambda df: df.drop(columns=["Class_ID"]), "'Class_ID'"),
    (lambda df: df.astype({"B3": object}).assign(B3=lambda d: d.B3.where(d.index != 5, "abc")), "non-numeric"),
    (lambda df: df.astype({"B8": float}).assign(B8=lambda d: d.B8.where(d.index != 9)), "missing value"),
    (lambda df: df[df.Class_ID == 2], "only 1 class"),
    (lambda df: df.groupby("Class_ID").head(2), "too few samples"),
])
def test_cli_train_refuses_bad_tables(tmp_path, capsys, change, expect):
    table = write_table(change(separable_table(10)), tmp_path / "bad.csv")
    out = tmp_path / "model"
    code, err = _run(capsys, ["train", str(table), "--out", str(out), *FAST_CLI])
    assert code == 2
    assert err.startswith("s2dask train: error:") and len(err.splitlines()) == 1
    assert expect in err and "bad.csv" in err
    assert not out.exists() and not _leftovers(tmp_path)


def test_existing_model_dir_refused_then_overwritten(trained, tmp_path, capsys):
    table, _, _ = trained
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    code, err = _run(capsys, ["train", str(table), "--out", str(out), *FAST_CLI])
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(OutputExistsError):
        train(table, out, epochs=1, verbose=0)
    code = cli.main(["train", str(table), "--out", str(out), "--overwrite", "--epochs", "2",
                     "--units", "16", "--dropout", "0", "--split", "pixel", "--class-weight",
                     "balanced", "--optimizer", "sgd", "--learning-rate", "0.01"])
    printed = capsys.readouterr().out
    assert code == 0
    assert not (out / "keep.txt").exists() and (out / "model.keras").is_file()
    assert "trained 2 epoch(s)" in printed and "overall accuracy" in printed and "pixel-grouped" in printed
    contract = json.loads((out / "model.json").read_text())
    assert contract["training"]["optimizer"] == "sgd" and contract["split"]["method"] == "pixel"
    assert not _leftovers(tmp_path)


def test_failure_during_training_leaves_nothing(trained, tmp_path, monkeypatch):
    import s2dask.training.train as train_mod

    table, _, _ = trained

    def boom(*a, **k):
        raise RuntimeError("disk full while plotting")

    monkeypatch.setattr(train_mod, "plot_confusion", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        train(table, tmp_path / "model", epochs=1, units=(8,), dropout=(0,), verbose=0)
    assert list(tmp_path.iterdir()) == []


def test_evaluate_refuses_tampered_or_incomplete_bundle(trained, tmp_path, capsys):
    table, out, _ = trained
    bad = tmp_path / "tampered"
    shutil.copytree(out, bad)
    data = bytearray((bad / "model.keras").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.keras").write_bytes(bytes(data))
    code, err = _run(capsys, ["evaluate", str(bad), str(table)])
    assert code == 2 and "sha256" in err and len(err.splitlines()) == 1
    (bad / "model.json").unlink()
    code, err = _run(capsys, ["evaluate", str(bad), str(table)])
    assert code == 2 and "model.json" in err


def test_evaluate_refuses_table_without_model_bands(trained, tmp_path, capsys):
    _, out, _ = trained
    table = write_table(separable_table(5).drop(columns=["B8A"]), tmp_path / "t.csv")
    code, err = _run(capsys, ["evaluate", str(out), str(table)])
    assert code == 2 and "B8A" in err


def test_buffalo_block_split_short_run(tmp_path):
    path = buffalo_dir() / "point_data.csv"
    if not path.is_file():
        pytest.skip(f"Buffalo sample data not found at {path} (set S2DASK_SAMPLE_DATA)")
    m = train(path, tmp_path / "buffalo", split="block", epochs=3, batch_size=256, verbose=0)
    assert m["split"]["leakage"]["test_pixels_in_train"] == 0
    assert 0.6 <= m["overall_accuracy"] <= 1.0 and 0.4 <= m["kappa"] <= 1.0
    assert np.array(m["confusion_matrix"]).sum() == m["split"]["counts"]["test"]


def test_metrics_say_what_bf16_does_to_the_test_split(trained):
    """Training scores the test split in bf16 too (the default engine where the CPU has bf16
    matrix units) and reports the change against float32 and the 0.002 bar."""
    from s2dask.model.engines import cpu_has_bf16
    from s2dask.training.metrics import format_report

    table, out, metrics = trained
    bf16 = metrics["precision"]["bf16"]
    assert bf16["checked"] == cpu_has_bf16()[0], bf16
    if not bf16["checked"]:
        assert "bf16" in bf16["why"]
        return
    assert bf16["test_oa_minus_fp32"] == pytest.approx(bf16["test_oa"] - metrics["overall_accuracy"])
    assert bf16["within_bar"] == (abs(bf16["test_oa_minus_fp32"]) <= 0.002)
    assert 0.9 <= bf16["agreement_with_fp32"] <= 1.0
    report = format_report(metrics)
    assert "bf16 (the default engine on CPUs with bf16 matrix units): test OA" in report
    assert ("beyond the 0.002 bar" in report) == (not bf16["within_bar"])
    # the bundle carries it: workers' (and predict's) auto precision follows it
    assert json.loads((out / "model.json").read_text())["precision_check"] == metrics["precision"]
    default = load_model(out).predictor()
    assert default.precision == ("bf16" if bf16["within_bar"] else "fp32")
