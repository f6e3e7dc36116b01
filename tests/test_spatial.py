"""Spatial models (patch classifiers, fully-convolutional nets, a strided U-Net) run over chunks
with a halo: the class map equals the model applied to the whole scene at once (or to each
pixel's own window) for every chunking, ragged edges included, on Keras and OpenVINO workers.

The references are computed here without s2dask's tiling: ``model.predict`` on the whole
scene as one image, or on every pixel's window cut from the mirrored scene.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio

from s2dask.errors import ModelError, ParameterError
from s2dask.io.storage import Location
from s2dask.job.graph import prediction_graph
from s2dask.job.run import classify
from s2dask.job.worker import ModelRef
from s2dask.model.bundle import load_model
from s2dask.model.engines import engine_line
from s2dask.model.foreign import bundle
from s2dask.scene import open_scene

BANDS = "B02,B03,B04,B05,B06,B07,B08,B8A,B11,B12"
CLASSES = "1,road\n2,building\n3,tree\n4,grass\n5,water\n"


def _fcn(keras):
    """Three 'same' convolutions, the second dilated: receptive field 9, halo 4."""
    return keras.Sequential([
        keras.Input((None, None, 10)), keras.layers.Rescaling(1e-4),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(8, 3, padding="same", dilation_rate=2, activation="relu"),
        keras.layers.Conv2D(5, 3, padding="same", activation="softmax")])


def _patch(keras):
    """A 5 x 5 window classifier."""
    return keras.Sequential([
        keras.Input((5, 5, 10)), keras.layers.Rescaling(1e-4),
        keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.Flatten(),
        keras.layers.Dense(5, activation="softmax")])


def _unet(keras, size=64):
    """A two-level U-Net (max pooling, upsampling, a skip connection): stride 2, input of a
    fixed size that the bundle rebuilds for any size."""
    inp = keras.Input((size, size, 10))
    x = keras.layers.Rescaling(1e-4)(inp)
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    b = keras.layers.MaxPooling2D(2)(a)
    b = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(b)
    b = keras.layers.UpSampling2D(2)(b)
    c = keras.layers.Concatenate()([a, b])
    out = keras.layers.Conv2D(5, 3, padding="same", activation="softmax")(c)
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import keras

    d = tmp_path_factory.mktemp("spatial")
    (d / "classes.csv").write_text(CLASSES)
    out = {}
    for name, make in (("fcn", _fcn), ("patch", _patch), ("unet", _unet)):
        keras.utils.set_random_seed(7)
        model = make(keras)
        model.save(d / f"{name}.keras")
        if name == "unet":  # the reference: the same weights in a net of free input size
            twin = _unet(keras, size=None)
            twin.set_weights(model.get_weights())
            model = twin
        out[name] = SimpleNamespace(model=model, bundle=bundle(d / f"{name}.keras", d / name, bands=BANDS,
                                                               classes=d / "classes.csv"))
    return out


@pytest.fixture(scope="module")
def scene_image(synth_dir):
    """The synthetic 300 x 260 scene (4 px nodata frame) as a (band, y, x) float32 array."""
    return open_scene(synth_dir / "scene.tif").values.astype("float32")


def _classes(prob_last: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Class values from ``(y, x, classes)`` probabilities; 255 where any band is nodata."""
    values = np.arange(1, 6, dtype="uint8")[np.argmax(prob_last, axis=-1)]
    return np.where((image == 0).any(axis=0), 255, values).astype("uint8")


def _reference(name: str, model, image: np.ndarray) -> np.ndarray:
    """The model on the whole scene at once (dense) or on each pixel's own window (patch)."""
    hwc = np.moveaxis(image, 0, -1)
    if name == "patch":
        padded = np.pad(hwc, ((2, 2), (2, 2), (0, 0)), mode="reflect")
        windows = np.lib.stride_tricks.sliding_window_view(padded, (5, 5), axis=(0, 1))
        windows = np.moveaxis(windows.reshape(-1, 10, 5, 5), 1, -1)
        prob = model.predict(windows, batch_size=8192, verbose=0).reshape(*hwc.shape[:2], 5)
    else:
        prob = model.predict(hwc[None], verbose=0)[0]
    return _classes(prob, image)


def test_cards_say_kind_halo_and_stride(models):
    fcn, patch, unet = (models[k].bundle.card for k in ("fcn", "patch", "unet"))
    assert (fcn["kind"], fcn["receptive_field"], fcn["halo"], fcn["stride"]) == ("dense", 9, 4, 1)
    assert (patch["kind"], patch["window"], patch["halo"], patch["edge"]) == ("patch", 5, 2, "reflect")
    assert (unet["kind"], unet["stride"]) == ("dense", 2) and unet["halo"] % 2 == 0 and unet["halo"] >= 4
    saved = json.loads((models["unet"].bundle.path / "mlm.json").read_text())["properties"]
    assert saved["s2dask:kind"] == "dense" and saved["s2dask:receptive_field"] == unet["receptive_field"]
    assert saved["mlm:input"][0]["input"]["shape"] == [-1, -1, -1, 10]


@pytest.mark.parametrize("name", ["fcn", "patch", "unet"])
def test_whole_image_prediction_equals_the_model_on_the_whole_scene(models, scene_image, name):
    want = _reference(name, models[name].model, scene_image)
    for engine in ("keras", "openvino"):
        got = models[name].bundle.predict_image(scene_image, engine=engine, precision="fp32")
        np.testing.assert_array_equal(got, want, err_msg=f"{name} {engine}")


@pytest.mark.parametrize("name, engine, chunks", [
    ("fcn", "keras", (100, 78)), ("patch", "openvino", (64, 50)),
    ("unet", "openvino", (64, 64)), ("unet", "keras", (100, 78)),
])
def test_chunked_classify_equals_the_whole_scene(models, synth_dir, scene_image, cluster_client, tmp_path,
                                                 name, engine, chunks):
    want = _reference(name, models[name].model, scene_image)
    [res] = classify(synth_dir / "scene.tif", models[name].bundle.path, tmp_path / "out", chunks=chunks,
                     client=cluster_client, engine=engine, precision="fp32", progress=False)
    with rasterio.open(Path(res.out) / "classes.tif") as src:
        got = src.read(1)
    np.testing.assert_array_equal(got, want)
    record = json.loads((Path(res.out) / "job.json").read_text())
    card = models[name].bundle.card
    assert record["model"]["contract"]["card"]["kind"] == card["kind"]
    workers = list(record["engine"]["workers"].values())
    assert workers and all((w["engine"], w["kind"], w["halo"]) == (engine, card["kind"], card["halo"])
                           for w in workers)
    if engine == "openvino":  # the bundle's stored IR: the workers need no Keras backend
        assert all(w["model_source"] == "ir" for w in workers)
    assert f"{card['kind']} model with a {card['halo']} px halo" in engine_line(record["engine"]["workers"])


def test_smoothing_and_uncertainty_on_top_of_a_spatial_model_do_not_depend_on_chunks(
        models, synth_dir, cluster_client, tmp_path):
    import xarray as xr

    maps = []
    for chunks in ((64, 64), (150, 130)):
        [res] = classify(synth_dir / "scene.tif", models["fcn"].bundle.path, tmp_path / f"o{chunks[0]}",
                         chunks=chunks, client=cluster_client, engine="openvino", precision="fp32",
                         smooth=3, uncertainty="entropy", progress=False)
        ds = xr.open_zarr(Path(res.out) / "classes.zarr")
        maps.append((ds["classes"].values, ds["uncertainty_entropy"].values))
    np.testing.assert_array_equal(maps[0][0], maps[1][0])
    np.testing.assert_array_equal(maps[0][1], maps[1][1])


def test_each_task_reads_its_chunk_and_halo_in_one_window(models, synth_dir, tmp_path):
    b = models["fcn"].bundle
    scene = open_scene(synth_dir / "scene.tif", bands=b.bands, chunks=64)
    options = SimpleNamespace(uncertainty=(), smooth=1, probabilities=False, retries=None)
    tasks = prediction_graph(scene, chunks=(64, 64), ref=ModelRef.of(b), store=Location(str(tmp_path / "z")),
                             markers=Location(str(tmp_path / "m")), options=options, mask=None, name="t")
    graph = {k: v for k, v in dict(tasks[0, 0].__dask_graph__()).items()
             if type(v).__name__ != "Alias"}  # the delayed objects' names for the same tasks
    assert tasks.shape == (5, 5)
    # 25 tasks in all, each the chunk's one halo read fused with its prediction: nothing
    # gathers pieces of neighbouring chunks (no getitem, rechunk or concatenate tasks)
    assert len(graph) == 25, sorted(map(str, graph))
    assert all(str(k[0]).startswith("halo-read-s2dask-predict-t-") for k in graph), sorted(map(str, graph))


def test_a_strided_model_refuses_chunks_off_its_stride(models, synth_dir, tmp_path):
    b = models["unet"].bundle
    scene = open_scene(synth_dir / "scene.tif", bands=b.bands, chunks=64)
    options = SimpleNamespace(uncertainty=(), smooth=1, probabilities=False, retries=None)
    with pytest.raises(ParameterError, match=r"chunks 100 x 77 are not multiples of the model's stride 2: "
                                             r"give --chunks a multiple of 2"):
        prediction_graph(scene, chunks=(100, 77), ref=ModelRef.of(b), store=Location(str(tmp_path / "z")),
                         markers=Location(str(tmp_path / "m")), options=options, mask=None, name="t")


def test_row_predictions_of_a_spatial_model_are_refused_in_one_line(models):
    b = load_model(models["fcn"].bundle.path)
    with pytest.raises(ModelError, match="this is a dense model: it predicts images, not tables of pixels"):
        b.predict(np.ones((4, 10), "float32"), engine="keras")


def test_bf16_agreement_with_fp32_is_high(models, scene_image):
    pytest.importorskip("openvino")
    from s2dask.model.engines import cpu_has_bf16

    if not cpu_has_bf16()[0]:
        pytest.skip("this CPU has no bf16 matrix instructions")
    b = models["fcn"].bundle
    fp32 = b.predict_image(scene_image, engine="openvino", precision="fp32")
    bf16 = b.predict_image(scene_image, engine="openvino", precision="bf16")
    agreement = float((fp32 == bf16).mean())
    print(f"bf16 agreement with fp32 on the FCN: {agreement:.4%}")
    assert agreement > 0.99


def test_bundle_check_records_bf16_agreement_and_auto_precision_follows_it(models, synth_dir, tmp_path):
    from s2dask.model.engines import resolve

    b = bundle(models["fcn"].bundle.path.parent / "fcn.keras", tmp_path / "b", bands=BANDS,
               classes=models["fcn"].bundle.path.parent / "classes.csv", check=synth_dir / "scene.tif")
    check = b.contract.extra["precision_check"]["bf16"]
    if not check["checked"]:
        assert "bf16" in check["why"]
        return
    assert 0.9 < check["agreement"] <= 1.0 and check["pixels"] > 60000
    assert check["within_bar"] == (check["agreement"] >= 0.998)
    choice = resolve("auto", "auto", "cpu", contract=b.contract)
    assert choice.engine == "openvino" and choice.precision == ("bf16" if check["within_bar"] else "fp32")


@pytest.mark.parametrize("name, tile", [("fcn", 48), ("unet", 64)])
def test_small_tiles_give_the_same_map(models, scene_image, name, tile):
    """The tiling inside a block (default 512 px tiles) is seamless too: small tiles, many
    seams, the same classes."""
    want = _reference(name, models[name].model, scene_image)
    pred = models[name].bundle.predictor(engine="openvino", precision="fp32")
    default = pred.tile
    pred.tile = tile
    try:
        prob = pred.predict_image(scene_image)
    finally:
        pred.tile = default
    np.testing.assert_array_equal(_classes(np.moveaxis(prob, 0, -1), scene_image), want)
