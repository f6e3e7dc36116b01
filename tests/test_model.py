"""The model bundle: archive checks without a backend, contract consistency, prediction identity."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import resigned_copy

from s2dask.errors import ModelError
from s2dask.model.bundle import inspect_archive, load_model


def test_archive_sizes_read_without_keras(tiny_model):
    assert inspect_archive(tiny_model / "model.keras") == {"n_inputs": 10, "n_outputs": 5}


def test_client_validation_imports_no_backend(tiny_model):
    code = ("import sys; from s2dask.model.bundle import load_model; b = load_model(sys.argv[1], check_keras=False); "
            "print(len(b.bands), 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_model)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["10", "False", "False"]


def _rewrite_config(src, dst, change):
    def edit(members):
        config = json.loads(members["config.json"])
        change(config)
        members["config.json"] = json.dumps(config).encode()

    return resigned_copy(src, dst, edit)


def test_layer_from_a_foreign_module_is_refused_as_unsafe(tiny_model, tmp_path):
    def foreign(config):
        config["config"]["layers"][2]["module"] = "evil.layers"

    bundle = _rewrite_config(tiny_model, tmp_path / "foreign", foreign)
    with pytest.raises(ModelError, match="unsafe deserialisation"):
        load_model(bundle, check_keras=False)


def test_contract_that_disagrees_with_the_archive_is_refused(tiny_model, tmp_path):
    bundle = tmp_path / "nine"
    shutil.copytree(tiny_model, bundle)
    contract = json.loads((bundle / "model.json").read_text())
    contract["bands"] = contract["bands"][:9]
    (bundle / "model.json").write_text(json.dumps(contract))
    with pytest.raises(ModelError, match="has 10 inputs but its contract names 9 bands"):
        load_model(bundle, check_keras=False)


def test_prediction_does_not_depend_on_batching_or_order(tiny_model, synth_dir):
    import pandas as pd

    bundle = load_model(tiny_model)
    df = pd.read_csv(synth_dir / "points.csv")
    x = df[["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]].to_numpy("float32")
    x = np.concatenate([x] * 12)  # > one batch of 16384 rows
    ref = bundle.predict_proba(x)
    order = np.random.default_rng(1).permutation(len(x))
    np.testing.assert_array_equal(bundle.predict_proba(x[order]), ref[order])
    np.testing.assert_array_equal(bundle.predict_proba(x[:1000]), ref[:1000])
    np.testing.assert_array_equal(bundle.predict(x), bundle.class_values[ref.argmax(1)])
    assert bundle.predict(np.zeros((3, 10)))[0] == 255  # nodata row: no class
