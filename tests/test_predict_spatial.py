"""s2dask.predict with spatial models (a dense FCN, a 5 x 5 patch classifier, a strided FCN): each
block read with the model's halo, so the map equals the model on the whole scene
(ModelBundle.predict_image) and classify's map, pixel for pixel, whatever the chunking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

import s2dask
from s2dask.errors import ParameterError
from s2dask.job.predict_xr import _halo_blocks
from s2dask.job.run import classify
from s2dask.model.bundle import load_model
from s2dask.model.foreign import bundle

rioxarray = pytest.importorskip("rioxarray")

BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
CLASSES = "value,name,colour\n1,road,#808080\n2,building,#e31a1c\n3,tree,#33a02c\n4,grass,#b2df8a\n5,water,#1f78b4\n"
UNCERTAINTY = ("entropy",)
#: the dense model runs as a job's default would (OpenVINO on CPUs); the others on Keras, whose
#: start-up is quicker (each engine's chunk invariance is the same tiling, model.spatial's)
ENGINE = {"dense": "auto", "patch": "keras", "strided": "keras"}


def _models(keras) -> dict:
    """Small Keras models with random weights (seeded): dense, patch, and a dense one of stride 2."""
    layers = keras.layers
    keras.utils.set_random_seed(7)
    return {
        "dense": keras.Sequential([keras.Input((None, None, 10)), layers.Rescaling(1e-3),
                                   layers.Conv2D(8, 3, padding="same", activation="relu"),
                                   layers.Conv2D(5, 3, padding="same", activation="softmax")]),
        "patch": keras.Sequential([keras.Input((5, 5, 10)), layers.Rescaling(1e-3),
                                   layers.Conv2D(8, 3, activation="relu"), layers.Flatten(),
                                   layers.Dense(5, activation="softmax")]),
        "strided": keras.Sequential([keras.Input((None, None, 10)), layers.Rescaling(1e-3),
                                     layers.Conv2D(8, 3, padding="same", activation="relu"),
                                     layers.MaxPooling2D(2), layers.Conv2D(8, 3, padding="same", activation="relu"),
                                     layers.UpSampling2D(2), layers.Conv2D(5, 1, activation="softmax")]),
    }


@pytest.fixture(scope="module")
def spatial(tmp_path_factory) -> dict[str, Path]:
    """``{kind: bundle directory}`` made by s2dask.model.foreign.bundle from .keras files."""
    keras = pytest.importorskip("keras")
    d = tmp_path_factory.mktemp("spatial")
    (d / "classes.csv").write_text(CLASSES)
    out = {}
    for kind, model in _models(keras).items():
        model.save(d / f"{kind}.keras")
        out[kind] = bundle(d / f"{kind}.keras", d / kind, bands=",".join(BANDS), classes=d / "classes.csv").path
    return out


@pytest.fixture(scope="module")
def image(synth_dir) -> np.ndarray:
    with rasterio.open(synth_dir / "scene.tif") as src:
        return src.read()


@pytest.fixture(scope="module")
def classified(spatial, synth_dir, cluster_client, tmp_path_factory) -> dict[str, Path]:
    """classify's output (probabilities, entropy) of the synthetic scene, per spatial model."""
    out = {}
    for kind in ("dense", "patch"):
        [res] = classify(synth_dir / "scene.tif", spatial[kind], tmp_path_factory.mktemp(kind) / "out",
                         chunks=128, client=cluster_client, probabilities=True, uncertainty=UNCERTAINTY,
                         engine=ENGINE[kind], quicklook=False, progress=False)
        assert res.status == "complete"
        out[kind] = Path(res.out)
    return out


def _opened(path, chunks):
    return rioxarray.open_rasterio(path, chunks={"y": chunks[0], "x": chunks[1]})


@pytest.mark.parametrize("kind", ["dense", "patch"])
def test_spatial_model_equals_the_whole_scene_and_classify_for_any_chunking(
        kind, spatial, image, classified, synth_dir, cluster_client):
    b = load_model(spatial[kind])
    assert b.card["kind"] == kind and b.card["halo"] == 2
    engine = ENGINE[kind]
    whole = b.predict_image(image, engine=engine)
    assert len(np.unique(whole[whole != 255])) >= 3  # a map worth comparing
    with rasterio.open(classified[kind] / "classes.tif") as src:
        np.testing.assert_array_equal(src.read(1), whole)

    # dask-backed, on the distributed workers: every layer equals classify's
    scene = _opened(synth_dir / "scene.tif", (64, 64))
    with cluster_client.as_current():
        ds = s2dask.predict(scene, spatial[kind], probabilities=True, uncertainty=UNCERTAINTY, engine=engine)
        assert ds.classes.chunks == ((64,) * 4 + (44,), (64,) * 4 + (4,))  # the input's own grid
        ds = ds.compute()
    np.testing.assert_array_equal(ds.classes.values, whole)
    zarr = xr.open_zarr(classified[kind] / "classes.zarr")
    for name in ("confidence", "probabilities", "uncertainty_entropy"):
        np.testing.assert_array_equal(ds[name].values, zarr[name].values, err_msg=name)
    np.testing.assert_array_equal(ds.x.values, scene.x.values)
    assert ds.rio.crs == scene.rio.crs

    # other chunkings on the threaded scheduler: 100 x 77, and irregular chunks made regular
    ds = s2dask.predict(_opened(synth_dir / "scene.tif", (100, 77)), spatial[kind], engine=engine)
    assert ds.classes.chunks == ((100,) * 3, (77,) * 3 + (29,))
    np.testing.assert_array_equal(ds.classes.values, whole)
    uneven = _opened(synth_dir / "scene.tif", (300, 260)).chunk({"y": (90, 150, 60), "x": (30, 200, 30)})
    ds = s2dask.predict(uneven, spatial[kind], engine=engine)
    assert ds.classes.chunks == ((150, 150), (200, 60))
    np.testing.assert_array_equal(ds.classes.values, whole)

    # numpy-backed: computed at once
    ds = s2dask.predict(rioxarray.open_rasterio(synth_dir / "scene.tif").load(), spatial[kind], engine=engine)
    assert isinstance(ds.classes.data, np.ndarray)
    np.testing.assert_array_equal(ds.classes.values, whole)


def test_extra_dimensions_keep_working_with_a_spatial_model(spatial, image, synth_dir):
    """(time, band, y, x), two different steps in one block: each step is its own whole scene."""
    b = load_model(spatial["dense"])
    scene = _opened(synth_dir / "scene.tif", (64, 64))
    data = xr.concat([scene, scene.copy(data=scene.data[..., ::-1])], dim="time")
    data = data.assign_coords(time=np.array(["2023-08-01", "2023-08-11"], dtype="datetime64[ns]"))
    data = data.transpose("time", "band", "y", "x").chunk({"time": -1})
    ds = s2dask.predict(data, spatial["dense"])
    assert ds.classes.dims == ("time", "y", "x") and ds.classes.chunks[0] == (2,)
    classes = ds.classes.values
    np.testing.assert_array_equal(classes[0], b.predict_image(image))
    np.testing.assert_array_equal(classes[1], b.predict_image(image[..., ::-1]))
    np.testing.assert_array_equal(ds.time.values, data.time.values)


def test_halo_blocks_keep_extra_dimension_chunks_and_hold_one_chunk_and_its_halo():
    import dask.array as da

    values = np.arange(2 * 3 * 10 * 9, dtype="float32").reshape(2, 3, 10, 9)
    blocks = _halo_blocks(da.from_array(values, chunks=(1, 3, 4, 4)), chunks=(4, 4), halo=2)
    assert blocks.chunks == ((1, 1), (3,), (8, 8, 6), (8, 8, 5))
    padded = np.pad(values, ((0, 0), (0, 0), (2, 2), (2, 2)))
    np.testing.assert_array_equal(blocks.blocks[1, 0, 1, 1].compute(), padded[1:2, :, 4:12, 4:12])
    np.testing.assert_array_equal(blocks.blocks[0, 0, 2, 2].compute(), padded[0:1, :, 8:14, 8:13])


def test_a_strided_model_needs_chunks_that_are_multiples_of_its_stride(spatial, image, synth_dir):
    b = load_model(spatial["strided"])
    assert b.card["stride"] == 2
    with pytest.raises(ParameterError) as exc:
        s2dask.predict(_opened(synth_dir / "scene.tif", (100, 77)), spatial["strided"])
    text = str(exc.value)
    assert "\n" not in text
    assert "chunks 100 x 77 are not multiples of the model's stride 2" in text
    assert "data.chunk({'y': 100, 'x': 78})" in text
    ds = s2dask.predict(_opened(synth_dir / "scene.tif", (64, 96)), spatial["strided"], engine="keras")
    np.testing.assert_array_equal(ds.classes.values, b.predict_image(image, engine="keras"))
