"""s2dask.predict on what xarray users hold (rioxarray, odc-stac, numpy, Dataset) equals classify's map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

import s2dask
from s2dask.errors import BandError, ParameterError, S2DaskError, SceneError
from s2dask.job.run import classify
from s2dask.job.worker import build_counts, forward_counts
from s2dask.model.bundle import load_model

rioxarray = pytest.importorskip("rioxarray")

#: Earth Search v1 asset keys of the tiny model's bands (B02 ... B12), in its order
EARTH_SEARCH = ["blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "swir16",
                "swir22"]
UNCERTAINTY = ("entropy", "margin")


@pytest.fixture(scope="module")
def classified(synth_dir, tiny_model, cluster_client, tmp_path_factory) -> Path:
    """classify's output of the synthetic scene (probabilities and two uncertainty layers)."""
    [res] = classify(synth_dir / "scene.tif", tiny_model, tmp_path_factory.mktemp("classify") / "out",
                     chunks=128, client=cluster_client, probabilities=True, uncertainty=UNCERTAINTY,
                     quicklook=False, progress=False)
    assert res.status == "complete"
    return Path(res.out)


@pytest.fixture(scope="module")
def expected(classified) -> np.ndarray:
    with rasterio.open(classified / "classes.tif") as src:
        return src.read(1)


def _opened(path, chunks=128):
    return rioxarray.open_rasterio(path, chunks={"x": chunks, "y": chunks})


def _forwards(client, sha: str) -> int:
    return sum(c.get(sha, 0) for c in client.run(forward_counts).values())


def test_rioxarray_input_is_lazy_and_equals_classify(synth_dir, tiny_model, cluster_client, classified,
                                                    expected, tmp_path):
    scene = _opened(synth_dir / "scene.tif")
    assert scene.attrs["long_name"][0] == "B02"  # band names from the descriptions only
    sha = load_model(tiny_model).sha256
    with cluster_client.as_current():
        before = _forwards(cluster_client, sha)
        ds = s2dask.predict(scene, tiny_model, probabilities=True, uncertainty=UNCERTAINTY)
        assert _forwards(cluster_client, sha) == before  # nothing ran: explicit meta, no dummy call
        assert ds.classes.chunks is not None and ds.classes.dtype == np.uint8
        ds = ds.compute()
        assert _forwards(cluster_client, sha) > before
        assert all(c.get(sha) == 1 for c in cluster_client.run(build_counts).values())  # once per worker

    np.testing.assert_array_equal(ds.classes.values, expected)
    zarr = xr.open_zarr(classified / "classes.zarr")
    for name in ("confidence", "probabilities", "uncertainty_entropy", "uncertainty_margin"):
        np.testing.assert_array_equal(ds[name].values, zarr[name].values, err_msg=name)
    assert ds.probabilities.dims == ("class", "y", "x")
    bundle = load_model(tiny_model)
    assert list(ds["class"].values) == [c.value for c in bundle.classes]
    assert list(ds.classes.attrs["flag_values"]) == [c.value for c in bundle.classes]
    assert ds.classes.attrs["flag_meanings"].split() == [c.name.replace(" ", "_") for c in bundle.classes]
    assert ds.attrs["class_colours"] == [c.colour for c in bundle.classes]

    # georeferencing kept: coordinates, CRS, and a COG written by rioxarray
    np.testing.assert_array_equal(ds.x.values, scene.x.values)
    np.testing.assert_array_equal(ds.y.values, scene.y.values)
    assert ds.rio.crs == scene.rio.crs
    ds.classes.rio.to_raster(tmp_path / "classes.tif", driver="COG")
    with rasterio.open(tmp_path / "classes.tif") as out, rasterio.open(classified / "classes.tif") as ref:
        assert (out.crs, out.transform, out.nodata) == (ref.crs, ref.transform, 255)
        np.testing.assert_array_equal(out.read(1), expected)


def _write_item(folder: Path, scene_path: Path, when: str, tag: str) -> dict:
    """A STAC item with Earth Search v1 asset keys pointing at single-band COGs in ``folder``."""
    with rasterio.open(scene_path) as src:
        data, profile = src.read(), src.profile
    assets = {}
    for k, key in enumerate(EARTH_SEARCH):
        href = folder / f"{tag}_{key}.tif"
        with rasterio.open(href, "w", driver="COG", width=profile["width"], height=profile["height"],
                           count=1, dtype="uint16", crs=profile["crs"], transform=profile["transform"],
                           nodata=0, BLOCKSIZE=128) as dst:
            dst.write(data[k], 1)
        assets[key] = {"href": str(href), "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                       "roles": ["data"], "proj:shape": [profile["height"], profile["width"]],
                       "proj:transform": list(profile["transform"])[:6],
                       "raster:bands": [{"nodata": 0, "data_type": "uint16"}]}
    t = profile["transform"]
    x0, y1 = t.c, t.f
    x1, y0 = x0 + t.a * profile["width"], y1 + t.e * profile["height"]
    return {"type": "Feature", "stac_version": "1.0.0", "id": f"S2B_17TNH_{tag}_0_L2A",
            "stac_extensions": ["https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                                "https://stac-extensions.github.io/raster/v1.1.0/schema.json"],
            "bbox": [x0, y0, x1, y1], "geometry": {"type": "Polygon", "coordinates": [[
                [x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
            "properties": {"datetime": when, "proj:epsg": profile["crs"].to_epsg()},
            "links": [], "assets": assets}


def test_odc_stac_load_with_a_time_dimension_equals_classify(synth_dir, tiny_model, cluster_client,
                                                             expected, tmp_path):
    pystac = pytest.importorskip("pystac")
    odc_stac = pytest.importorskip("odc.stac")
    items = []
    for when, tag in (("2023-08-01T16:00:00Z", "a"), ("2023-08-11T16:00:00Z", "b")):
        path = tmp_path / f"item-{tag}.json"
        path.write_text(json.dumps(_write_item(tmp_path, synth_dir / "scene.tif", when, tag)))
        items.append(pystac.Item.from_file(str(path)))
    with rasterio.open(synth_dir / "scene.tif") as src:
        crs, res = src.crs.to_string(), src.res[0]
    data = odc_stac.load(items, bands=EARTH_SEARCH, crs=crs, resolution=res, chunks={"x": 128, "y": 128})
    assert data.sizes["time"] == 2 and data.blue.dims == ("time", "y", "x")
    with cluster_client.as_current():
        ds = s2dask.predict(data, tiny_model)
        assert ds.classes.dims == ("time", "y", "x") and ds.classes.chunks is not None
        classes = ds.classes.values
    np.testing.assert_array_equal(ds.time.values, data.time.values)
    assert ds.rio.crs == data.rio.crs
    np.testing.assert_array_equal(classes[0], expected)  # one map per step
    np.testing.assert_array_equal(classes[1], expected)


def test_numpy_backed_y_x_band_input_without_a_client_equals_classify(synth_dir, tiny_model, expected):
    scene = rioxarray.open_rasterio(synth_dir / "scene.tif").load()  # numpy-backed
    names = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
    data = scene.assign_coords(band=names).transpose("y", "x", "band")
    ds = s2dask.predict(data, tiny_model)  # the threaded scheduler, in this process
    assert isinstance(ds.classes.data, np.ndarray)  # computed at once
    np.testing.assert_array_equal(ds.classes.values, expected)
    assert ds.rio.crs == scene.rio.crs


def test_stackstac_shaped_input_equals_classify(synth_dir, tiny_model, cluster_client, expected):
    """What stackstac.stack gives: (time, band, y, x), asset keys as band labels with per-band
    coordinates, the CRS in attrs only, float64 with NaN fill."""
    scene = _opened(synth_dir / "scene.tif").astype("float64")
    data = (scene.drop_vars("spatial_ref").assign_coords(band=EARTH_SEARCH)
            .assign_coords(common_name=("band", EARTH_SEARCH)).expand_dims(time=[np.datetime64("2023-08-01")])
            .chunk({"time": 1, "band": -1}))
    data = data.where(data != 0)  # stackstac's fill value
    data.attrs = {"crs": "epsg:32617", "spec": "..."}
    with cluster_client.as_current():
        ds = s2dask.predict(data, tiny_model).compute()
    assert ds.classes.dims == ("time", "y", "x") and set(ds.coords) == {"time", "y", "x", "spatial_ref"}
    np.testing.assert_array_equal(ds.classes.values[0], expected)
    assert ds.rio.crs.to_epsg() == 32617


def test_dataset_input_equals_classify(synth_dir, tiny_model, cluster_client, expected, tmp_path):
    scene = _opened(synth_dir / "scene.tif", chunks=100)
    names = scene.attrs["long_name"]
    ds_in = xr.Dataset({name: scene.isel(band=i, drop=True) for i, name in enumerate(names)})
    ds_in = ds_in[list(reversed(names))]  # order does not matter: bands are picked by name
    ds_in["scl"] = ds_in["B02"]  # a variable that is no band is left alone
    with cluster_client.as_current():
        ds = s2dask.predict(ds_in, tiny_model).compute()
    np.testing.assert_array_equal(ds.classes.values, expected)
    assert ds.rio.crs == scene.rio.crs
    ds.to_zarr(tmp_path / "map.zarr")  # the attributes travel as they are
    back = xr.open_zarr(tmp_path / "map.zarr", decode_coords="all")  # spatial_ref from grid_mapping
    np.testing.assert_array_equal(back.classes.values, expected)
    assert back.rio.crs == scene.rio.crs and list(back.classes.attrs["flag_values"]) == list(
        ds.classes.attrs["flag_values"])


# ------------------------------------------------------------------------------ refusals


@pytest.fixture(scope="module")
def named(synth_dir):
    return _opened(synth_dir / "scene.tif")


def _refused(kind, data, model, **kw) -> str:
    with pytest.raises(kind) as exc:
        s2dask.predict(data, model, **kw)
    assert isinstance(exc.value, S2DaskError)
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_a_missing_model_band_is_named_with_the_bands_found(named, tiny_model):
    data = named.assign_coords(band=list(named.attrs["long_name"])).drop_sel(band="B03")
    text = _refused(BandError, data, tiny_model)
    assert "needs band(s) B03" in text and "B02, B04" in text


def test_data_without_crs_is_refused(named, tiny_model):
    text = _refused(SceneError, named.drop_vars("spatial_ref"), tiny_model)
    assert "no CRS" in text and "rio.write_crs" in text


def test_a_band_dimension_that_cannot_be_found_is_refused(named, tiny_model):
    text = _refused(BandError, named.rename(band="channel"), tiny_model)
    assert "band dimension" in text and "channel" in text and "rename" in text


def test_unnamed_bands_are_refused(named, tiny_model):
    data = named.copy()
    data.attrs.pop("long_name")
    assert "not named" in _refused(BandError, data, tiny_model)


def test_chunks_along_bands_are_refused_with_the_rechunk(synth_dir, tiny_model):
    data = rioxarray.open_rasterio(synth_dir / "scene.tif", chunks={"band": 1, "x": 128, "y": 128})
    text = _refused(SceneError, data, tiny_model)
    assert "chunked along its bands" in text and "data.chunk({'band': -1})" in text


def test_other_inputs_and_options_are_refused(named, tiny_model):
    assert "DataArray or Dataset" in _refused(SceneError, np.zeros((10, 4, 4)), tiny_model)
    assert "x/y" in _refused(SceneError, named.rename(x="col", y="row"), tiny_model)
    _refused(ParameterError, named, tiny_model, uncertainty=("nonsense",))
    _refused(ParameterError, named, tiny_model, engine="tensorrt")
    _refused(ParameterError, named, tiny_model, batch_size=0)
