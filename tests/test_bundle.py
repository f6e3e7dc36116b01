"""s2dask bundle: models made elsewhere (Keras 2 HDF5 and SavedModel written with tf-keras, a
Keras 3 .keras file, a STAC MLM item) turned into bundles that classify and load_model take.

The models are real Keras models; R's workflow (inputs z-scored with scale() outside the
model, a logits output) is what the HDF5 and SavedModel cases reproduce.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from s2dask.cli import main
from s2dask.errors import ModelError, OutputExistsError, ParameterError
from s2dask.job.run import classify
from s2dask.model.bundle import load_model
from s2dask.model.foreign import bundle
from s2dask.scene import open_scene

BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
MEAN = [900.0 + 100 * i for i in range(10)]
STD = [400.0 + 10 * i for i in range(10)]
CLASSES = "value,name,colour\n1,road,#808080\n2,building,#e31a1c\n3,tree,#33a02c\n4,grass,#b2df8a\n5,water,#1f78b4\n"


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "s2dask.cli", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
                          timeout=240)


@pytest.fixture(scope="module")
def made_elsewhere(tmp_path_factory):
    """A Keras 2 MLP with a logits output (as R keras builds one), saved as HDF5 and as a
    SavedModel with tf-keras, plus the class table; and 2000 raw DN rows."""
    tf_keras = pytest.importorskip("tf_keras", reason="tf-keras (Keras 2) is in the test extra")
    d = tmp_path_factory.mktemp("elsewhere")
    tf_keras.utils.set_random_seed(1)
    model = tf_keras.Sequential([tf_keras.layers.Input((10,)), tf_keras.layers.Dense(32, activation="relu"),
                                 tf_keras.layers.Dense(16, activation="relu"), tf_keras.layers.Dense(5)])
    model.save(d / "model.h5")
    model.save(d / "savedmodel", save_format="tf")
    (d / "classes.csv").write_text(CLASSES)
    x = np.random.default_rng(0).uniform(1, 6000, size=(2000, 10)).astype("float32")
    z = (x - np.array(MEAN, "float32")) / np.array(STD, "float32")
    expected = _softmax(model.predict(z, batch_size=2000, verbose=0).astype("float64"))
    return d, x, expected


@pytest.mark.parametrize("source", ["model.h5", "savedmodel"])
def test_keras2_model_with_r_scaling_and_logits_predicts_raw_dns(made_elsewhere, tmp_path, source):
    d, x, expected = made_elsewhere
    b = bundle(d / source, tmp_path / "b", bands=",".join(BANDS), classes=d / "classes.csv",
               mean=MEAN, std=STD, outputs="logits")
    assert sorted(p.name for p in b.path.iterdir()) == ["mlm.json", "model.bin", "model.json", "model.keras",
                                                        "model.xml"]  # the IR too, as train stores it
    assert b.has_ir
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left"
    got = b.predict_proba(x, engine="keras", precision="fp32")
    np.testing.assert_allclose(got, expected, atol=2e-5)
    card = b.card
    assert card["kind"] == "pixel" and card["outputs"] == "logits"
    assert card["source_format"] == ("h5" if source == "model.h5" else "savedmodel")
    assert card["scaling"]["mean"] == MEAN and card["scaling"]["std"] == STD
    assert len(card["source_sha256"]) == 64
    # the same classes through OpenVINO in float32
    ov = b.predict(x, engine="openvino", precision="fp32")
    np.testing.assert_array_equal(ov, b.predict(x, engine="keras", precision="fp32"))
    np.testing.assert_array_equal(ov, np.array([1, 2, 3, 4, 5], "uint8")[expected.argmax(axis=1)])


def test_keras3_reflectance_model_gets_its_scale_and_offset(tmp_path):
    import keras

    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.save(tmp_path / "refl.keras")
    (tmp_path / "c.csv").write_text("0,water\n7,land\n9,cloud\n")
    b = bundle(tmp_path / "refl.keras", tmp_path / "b", bands="B2,B3,B4,B8", classes=tmp_path / "c.csv",
               scale=1e-4, offset=-0.1)
    assert b.bands == ["B02", "B03", "B04", "B08"] and list(b.class_values) == [0, 7, 9]
    x = np.random.default_rng(1).uniform(1, 10000, size=(500, 4)).astype("float32")
    want = model.predict(x * 1e-4 - 0.1, verbose=0)
    np.testing.assert_allclose(b.predict_proba(x, engine="keras", precision="fp32"), want, atol=1e-6)
    # nodata rows (0 in any band) still get no class, as for trained bundles
    x[:3, 1] = 0
    assert (b.predict(x, engine="keras", precision="fp32")[:3] == 255).all()


def test_classify_with_a_bundled_keras2_model_equals_in_process_prediction(made_elsewhere, synth_dir,
                                                                          cluster_client, tmp_path):
    d, _, _ = made_elsewhere
    model_dir = tmp_path / "model"
    proc = _cli("bundle", d / "model.h5", "--out", model_dir, "--bands", ",".join(BANDS),
                "--classes", d / "classes.csv", "--mean", ",".join(map(str, MEAN)),
                "--std", ",".join(map(str, STD)), "--outputs", "logits")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {model_dir}" in proc.stdout and "z-score per band" in proc.stdout
    b = load_model(model_dir)
    for engine in ("openvino", "keras"):
        [res] = classify(synth_dir / "scene.tif", model_dir, tmp_path / engine, chunks=(96, 128),
                         client=cluster_client, engine=engine, precision="fp32", progress=False)
        scene = open_scene(synth_dir / "scene.tif", bands=b.bands).values
        expected = b.predict(scene.reshape(10, -1).T, engine=engine, precision="fp32").reshape(scene.shape[1:])
        with rasterio.open(Path(res.out) / "classes.tif") as src:
            np.testing.assert_array_equal(src.read(1), expected)
        record = json.loads((Path(res.out) / "job.json").read_text())
        assert record["model"]["contract"]["card"]["source_format"] == "h5"


def test_mlm_item_reads_back_into_the_same_bundle(made_elsewhere, tmp_path):
    d, x, expected = made_elsewhere
    item = {
        "type": "Feature", "stac_version": "1.1.0", "id": "r-model", "geometry": None,
        "properties": {
            "datetime": "2026-01-01T00:00:00Z",
            "mlm:input": [{"name": "s2", "bands": [{"name": b} for b in BANDS],
                           "input": {"shape": [-1, 10], "dim_order": ["batch", "bands"], "data_type": "float32"},
                           "value_scaling": [{"type": "z-score", "mean": MEAN, "stddev": STD}]}],
            "mlm:output": [{"name": "classes", "tasks": ["classification"],
                            "classification:classes": [{"value": v, "name": n, "color_hint": "808080"}
                                                       for v, n in enumerate("abcde", start=1)]}],
        },
        "assets": {"weights": {"href": "model.h5", "roles": ["mlm:model"]}},
    }
    (d / "item.json").write_text(json.dumps(item))
    proc = _cli("bundle", "--mlm", d / "item.json", "--out", tmp_path / "b", "--outputs", "logits")
    assert proc.returncode == 0, proc.stderr
    b = load_model(tmp_path / "b")
    np.testing.assert_allclose(b.predict_proba(x, engine="keras", precision="fp32"), expected, atol=2e-5)
    mlm = json.loads((tmp_path / "b" / "mlm.json").read_text())
    assert mlm["properties"]["mlm:input"][0]["bands"] == BANDS
    assert [c["name"] for c in mlm["properties"]["mlm:output"][0]["classification:classes"]] == list("abcde")
    assert mlm["assets"]["model"]["href"] == "model.keras"
    pystac = pytest.importorskip("pystac")
    assert pystac.Item.from_dict(mlm).id.startswith("s2dask-model-")


def test_mlm_clip_and_min_max_are_folded_in_order(tmp_path):
    import keras

    from s2dask.model.card import read_mlm

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    model.save(tmp_path / "m.keras")
    steps = [{"type": "clip", "minimum": 0, "maximum": 10000},
             {"type": "min-max", "minimum": 0, "maximum": 10000},
             {"type": "clip-max", "maximum": 0.5}]  # after min-max: raw 5000
    item = {"type": "Feature", "stac_version": "1.1.0", "id": "m", "geometry": None,
            "properties": {"datetime": "2026-01-01T00:00:00Z",
                           "mlm:input": [{"name": "x", "bands": ["B04", "B08"], "value_scaling": steps}],
                           "mlm:output": [{"name": "y", "classification:classes": [
                               {"value": 0, "name": "no"}, {"value": 1, "name": "yes"}]}]},
            "assets": {"model": {"href": "m.keras", "roles": ["mlm:model"]}}}
    (tmp_path / "item.json").write_text(json.dumps(item))
    kwargs = read_mlm(tmp_path / "item.json")
    assert kwargs["clip"] == (0.0, 5000.0) and kwargs["scale"] == pytest.approx(1e-4)
    b = bundle(out=tmp_path / "b", **kwargs)
    x = np.array([[-50, 7000], [300, 12000], [9000, 20]], "float32")
    want = model.predict(np.minimum(np.clip(x, 0, 10000) / 10000, 0.5), verbose=0)
    np.testing.assert_allclose(b.predict_proba(x, engine="keras", precision="fp32"), want, atol=1e-6)
    np.testing.assert_allclose(b.predict_proba(x, engine="openvino", precision="fp32"), want, atol=1e-5)
    assert b.card["scaling"]["clip"] == [0.0, 5000.0]
    item["properties"]["mlm:input"][0]["value_scaling"] = [{"type": "processing", "expression": "x"}]
    (tmp_path / "item.json").write_text(json.dumps(item))
    with pytest.raises(ModelError, match="value_scaling 'processing' cannot be folded into the bundle"):
        read_mlm(tmp_path / "item.json")


def test_trained_bundles_carry_an_mlm_item_and_inspect_prints_the_card(tiny_model):
    mlm = json.loads((tiny_model / "mlm.json").read_text())
    assert mlm["properties"]["s2dask:kind"] == "pixel"
    assert len(mlm["properties"]["mlm:output"][0]["classification:classes"]) == 5
    proc = _cli("inspect", tiny_model)
    assert proc.returncode == 0, proc.stderr
    assert "kind                 pixel" in proc.stdout and "s2dask train" in proc.stdout


def _lambda_h5(path: Path) -> None:
    import tf_keras

    m = tf_keras.Sequential([tf_keras.layers.Input((10,)), tf_keras.layers.Lambda(lambda t: t * 2, name="double"),
                             tf_keras.layers.Dense(5, activation="softmax")])
    m.save(path)


def _even_patch_keras(path: Path) -> None:
    import keras

    m = keras.Sequential([keras.Input((4, 4, 10)), keras.layers.Flatten(),
                          keras.layers.Dense(5, activation="softmax")])
    m.save(path)


def _sequence_keras(path: Path) -> None:
    import keras

    m = keras.Sequential([keras.Input((3, 10)), keras.layers.Flatten(), keras.layers.Dense(5, activation="softmax")])
    m.save(path)


def _valid_conv_keras(path: Path) -> None:
    import keras

    m = keras.Sequential([keras.Input((None, None, 10)), keras.layers.ZeroPadding2D(1),
                          keras.layers.Conv2D(5, 3, padding="valid", activation="softmax")])
    m.save(path)


@pytest.mark.parametrize("case, args, message", [
    ("not a model", ["{d}/classes.csv", "--bands", ",".join(BANDS)],
     "is not a model file (neither a .keras archive nor HDF5)"),
    ("missing", ["{d}/nope.h5", "--bands", ",".join(BANDS)], "model file {d}/nope.h5 does not exist"),
    ("width", ["{d}/model.h5", "--bands", "B02,B03,B04", "--outputs", "logits"],
     "takes 10 input values per pixel but --bands names 3 (B02,B03,B04)"),
    ("units", ["{d}/model.h5", "--bands", ",".join(BANDS), "--outputs", "logits", "--classes", "{d}/three.csv"],
     "has 5 output units but the class table has 3 rows"),
    ("mean count", ["{d}/model.h5", "--bands", ",".join(BANDS), "--mean", "1,2", "--std", "1,2"],
     "--mean has 2 values but --bands names 10 bands"),
    ("mean alone", ["{d}/model.h5", "--bands", ",".join(BANDS), "--mean", ",".join(map(str, MEAN))],
     "give --mean and --std together"),
    ("logits as probabilities", ["{d}/model.h5", "--bands", ",".join(BANDS)],
     "outputs are not probabilities (rows do not sum to 1): if its last layer has no softmax, pass --outputs logits"),
    ("unsafe", ["{d}/lambda.h5", "--bands", ",".join(BANDS)],
     "needs unsafe deserialisation for layer Lambda 'double'"),
    ("even patch", ["{d}/even.keras", "--bands", ",".join(BANDS)],
     "takes 4 x 4 px windows: a patch classifier needs an odd window edge"),
    ("rank", ["{d}/sequence.keras", "--bands", ",".join(BANDS)],
     "takes inputs of shape (3, 10) and gives (5,): s2dask maps pixel (N, bands), patch"),
    ("receptive field", ["{d}/valid.keras", "--bands", ",".join(BANDS)],
     "the receptive field cannot be derived past layer ZeroPadding2D"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(made_elsewhere, tmp_path, capsys, case, args,
                                                          message):
    d, _, _ = made_elsewhere
    (d / "three.csv").write_text("1,a\n2,b\n3,c\n")
    if not (d / "lambda.h5").exists():
        _lambda_h5(d / "lambda.h5")
        _even_patch_keras(d / "even.keras")
        _sequence_keras(d / "sequence.keras")
        _valid_conv_keras(d / "valid.keras")
    out = tmp_path / "b"
    argv = [a.format(d=d) for a in args]
    if "--classes" not in argv:
        argv += ["--classes", str(d / "classes.csv")]
    code = main(["bundle", *argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("s2dask bundle: error: "), err
    assert message.format(d=d) in lines[0]
    if case == "unsafe":
        assert "--unsafe" in lines[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_existing_bundle_is_replaced_only_with_overwrite(made_elsewhere, tmp_path):
    d, _, _ = made_elsewhere
    kw = dict(bands=BANDS, classes=d / "classes.csv", mean=MEAN, std=STD, outputs="logits")
    first = bundle(d / "model.h5", tmp_path / "b", **kw)
    with pytest.raises(OutputExistsError, match="exists: choose another --out or pass --overwrite"):
        bundle(d / "model.h5", tmp_path / "b", **kw)
    again = bundle(d / "model.h5", tmp_path / "b", overwrite=True, **kw)
    assert again.path == first.path and (tmp_path / "b" / "model.keras").is_file()
    with pytest.raises(ParameterError, match="--outputs must be one of probabilities, logits"):
        bundle(d / "model.h5", tmp_path / "c", **{**kw, "outputs": "scores"})
    with pytest.raises(ModelError, match="is an s2dask bundle already"):
        bundle(tmp_path / "b", tmp_path / "c", **kw)
