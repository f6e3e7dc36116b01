"""classify --uncertainty / --smooth on real clusters, and the suggest / design / assess commands.

A small synthetic scene (150 x 130) with nodata holes that cross chunk edges and touch the
scene's edges; a tiny trained bundle. The smoothed map must be the same bit for bit for
chunks of 64 on two worker processes, one chunk larger than the scene on a one-worker cluster,
and a Zarr copy of the scene (whose chunks are gathered by dask instead of read by the task),
and equal to the whole scene smoothed at once in numpy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from conftest import make_bundle, sample_data_dir

from s2dask.cli import main
from s2dask.errors import ParameterError
from s2dask.job.run import JobOptions, classify
from s2dask.maps.smooth import smooth_block
from s2dask.maps.uncertainty import entropy, least, margin
from s2dask.model.bundle import load_model
from s2dask.scene import open_scene

SHAPE = (150, 130)
#: nodata holes: across the chunk edge at 64 (rows and cols), and on the scene's top and right edges
HOLES = [(slice(58, 70), slice(60, 67)), (slice(0, 3), slice(20, 45)), (slice(100, 140), slice(127, 130))]


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    from s2dask.scene.synthetic import make_samples, make_scene

    d = tmp_path_factory.mktemp("maps")
    tif = make_scene(d / "scene.tif", size=SHAPE, seed=5, nodata_border=0, cog=False)
    with rasterio.open(tif, "r+") as dst:
        data = dst.read()
        for rows, cols in HOLES:
            data[:, rows, cols] = 0
        data[3, 30, 100] = 0  # a single-band nodata pixel
        dst.write(data)
    make_samples(d / "points.csv", scene_size=SHAPE, n_points=800, seed=5)
    make_bundle(d / "bundle", samples_csv=d / "points.csv", epochs=2)
    return d


@pytest.fixture(scope="module")
def one_worker():
    from distributed import Client, LocalCluster

    # a worker process, as users run them: the model never runs in a thread of the test
    # process (the one CI run that hung, hung in this module's first test with an in-process
    # worker; no test here needs one)
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


def _reference(scene_dir: Path, size: int):
    """The whole scene predicted and smoothed at once (no chunks): classes and probabilities."""
    bundle = load_model(scene_dir / "bundle")
    scene = open_scene(scene_dir / "scene.tif", bands=bundle.bands).values
    rows = scene.reshape(scene.shape[0], -1).T
    pred = bundle.predictor()  # the job's default engine, precision and batch size
    valid = pred.valid_mask(rows)
    prob = np.zeros((rows.shape[0], pred.n_classes), dtype="float32")
    prob[valid] = pred.forward(rows[valid])
    prob = prob.T.reshape(pred.n_classes, *SHAPE)
    h = size // 2
    padded = np.pad(prob, ((0, 0), (h, h), (h, h)))
    ok = np.pad(valid.reshape(SHAPE), h, constant_values=False)
    return smooth_block(padded, ok, size=size, values=pred.class_values)


def _zarr_copy(scene_dir: Path) -> Path:
    store = scene_dir / "scene.zarr"
    if not store.exists():
        scene = open_scene(scene_dir / "scene.tif")
        ds = scene.to_dataset(dim="band").drop_vars("spatial_ref", errors="ignore")
        ds = ds.rio.write_crs(scene.rio.crs).rio.write_transform(scene.rio.transform())
        ds.attrs["nodata"] = 0
        ds.chunk({"y": 40, "x": 40}).to_zarr(store, zarr_format=3, consolidated=False)
    return store


def _job(scene, scene_dir, out, client, **kw):
    [res] = classify(scene, scene_dir / "bundle", out, client=client, progress=False, **kw)
    assert res.status == "complete", res.error
    return Path(res.out), xr.open_zarr(Path(res.out) / "classes.zarr")


def test_smoothed_map_is_the_same_for_any_chunking_and_worker_count(scene_dir, cluster_client, one_worker,
                                                                    tmp_path):
    opts = dict(smooth=5, uncertainty="entropy", probabilities=True)
    out64, a = _job(scene_dir / "scene.tif", scene_dir, tmp_path / "c64", cluster_client, chunks=64, **opts)
    _, b = _job(scene_dir / "scene.tif", scene_dir, tmp_path / "big", one_worker, chunks=4096, **opts)
    _, z = _job(_zarr_copy(scene_dir), scene_dir, tmp_path / "zarr", cluster_client, chunks=(50, 70), **opts)
    ref = _reference(scene_dir, 5)
    classes = a["classes"].values
    np.testing.assert_array_equal(classes, ref.classes)
    for name in ("classes", "confidence", "probabilities", "uncertainty_entropy"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
        np.testing.assert_array_equal(a[name].values, z[name].values, err_msg=name)
    np.testing.assert_array_equal(a["confidence"].values, ref.confidence)
    for rows, cols in HOLES:  # nodata stays nodata: smoothing never fills a hole
        assert (classes[rows, cols] == 255).all()
    assert classes[30, 100] == 255 and (a["uncertainty_entropy"].values[classes == 255] == 255).all()
    assert (classes != 255).sum() == ref.valid.sum()
    # smoothing changes the map (it would be a weak test otherwise) but keeps most of it
    plain = load_model(scene_dir / "bundle").predict(
        open_scene(scene_dir / "scene.tif").values.reshape(10, -1).T).reshape(SHAPE)
    changed = (plain != classes).mean()
    assert 0.001 < changed < 0.5, changed
    # uncertainty comes from the smoothed probabilities the job wrote
    p = a["probabilities"].values / 100.0
    ok = classes != 255
    diff = np.abs(entropy(p, ok).astype(int) - a["uncertainty_entropy"].values)[ok]
    assert diff.max() <= 2
    record = json.loads((out64 / "job.json").read_text())
    assert record["parameters"]["smooth"] == 5 and record["parameters"]["uncertainty"] == ["entropy"]
    assert "5 x 5" in record["output"]["smoothing"]
    counts = {c["value"]: c["pixels"] for c in record["statistics"]["classes"]}
    assert counts == {v: int((classes == v).sum()) for v in counts}


def test_uncertainty_layers_equal_numpy_from_the_probabilities(scene_dir, cluster_client, tmp_path):
    out, ds = _job(scene_dir / "scene.tif", scene_dir, tmp_path / "u", cluster_client, chunks=64,
                   probabilities=True, uncertainty="least,entropy,margin")
    _, plain = _job(scene_dir / "scene.tif", scene_dir, tmp_path / "plain", cluster_client, chunks=64,
                    probabilities=True)
    for name in ("classes", "confidence", "probabilities"):  # the same forward pass, the same map
        np.testing.assert_array_equal(ds[name].values, plain[name].values, err_msg=name)
    classes = ds["classes"].values
    ok = classes != 255
    p = ds["probabilities"].values / 100.0
    # the layers come from float probabilities, the check from their uint8 percent: 1 % per class
    # of rounding moves entropy by < 2 points here, margin and least by <= 1 (+1 for their own rounding)
    for kind, fn in (("entropy", entropy), ("margin", margin), ("least", least)):
        layer = ds[f"uncertainty_{kind}"]
        assert layer.dtype == np.uint8
        assert layer.attrs["units"] == "percent" and layer.attrs["nodata"] == 255
        values = layer.values
        assert (values[~ok] == 255).all() and (values[ok] <= 100).all()
        diff = np.abs(fn(p, ok).astype(int) - values)[ok]
        assert diff.max() <= 2, (kind, diff.max())
        with rasterio.open(out / f"uncertainty-{kind}.tif") as cog:
            assert cog.nodata == 255 and cog.dtypes == ("uint8",) and cog.colorinterp
            np.testing.assert_array_equal(cog.read(1), values)
            assert cog.tags(1)["MEASURE"] == kind
    np.testing.assert_array_equal(ds["uncertainty_least"].values[ok], 100 - ds["confidence"].values[ok])
    record = json.loads((out / "job.json").read_text())
    assert record["parameters"]["uncertainty"] == ["entropy", "margin", "least"]
    assert record["output"]["uncertainty"]["layers"]["margin"]["cog"] == "uncertainty-margin.tif"
    assert record["output"]["cog_validation"]["valid"]


def test_layer_cog_has_overviews(tmp_path):
    import dask.array as da
    import rioxarray  # noqa: F401

    from s2dask.maps.writers import layout_zarr, validate_cog, write_cog, write_layer

    ny, nx = 1100, 1050
    scene = xr.DataArray(da.zeros((1, ny, nx), dtype="uint16", chunks=(1, 512, 512)), dims=("band", "y", "x"),
                         coords={"band": ["B02"], "y": 4.8e6 - 5 - 10 * np.arange(ny), "x": 6e5 + 5 + 10 * np.arange(nx)})
    scene = scene.rio.write_crs("EPSG:32617")
    store = tmp_path / "classes.zarr"
    layout_zarr(store, scene=scene, chunks=(512, 512), classes=[{"value": 1, "name": "a"}], probabilities=False,
                attrs={}, layers={"uncertainty_entropy": {"nodata": 255, "long_name": "entropy"}})
    values = (np.arange(ny * nx) % 101).astype("uint8").reshape(ny, nx)
    values[:10] = 255
    write_layer(store, "uncertainty_entropy", values, y=slice(0, ny), x=slice(0, nx))
    cog = write_cog(store, tmp_path / "u.tif", classes=[], crs=scene.rio.crs, transform=scene.rio.transform(),
                    layer="uncertainty_entropy", overview_resampling="average")
    with rasterio.open(cog) as src:
        assert src.overviews(1)[:1] == [2] and src.nodata == 255 and src.descriptions == ("entropy",)
        np.testing.assert_array_equal(src.read(1), values)
    assert validate_cog(cog)[0]


@pytest.mark.parametrize("args, words", [
    (["--smooth", "4"], "odd"), (["--smooth", "0"], "odd"), (["--smooth", "-3"], "odd"),
    (["--uncertainty", "entropy,chaos"], "unknown uncertainty measure"),
])
def test_bad_map_options_one_line_exit_2(scene_dir, tmp_path, capsys, args, words):
    out = tmp_path / "out"
    code = main(["classify", str(scene_dir / "scene.tif"), "--model", str(scene_dir / "bundle"),
                 "--out", str(out), "--quiet", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err
    assert not out.exists()
    with pytest.raises(ParameterError):
        JobOptions(smooth=2)


def test_suggest_design_assess_commands_on_a_job(scene_dir, cluster_client, tmp_path, capsys):
    import geopandas as gpd

    out, ds = _job(scene_dir / "scene.tif", scene_dir, tmp_path / "j", cluster_client, chunks=64, smooth=3,
                   uncertainty="entropy")
    cand = tmp_path / "candidates.gpkg"
    assert main(["suggest", str(out), "--n", "12", "--min-distance", "50", "--out", str(cand)]) == 0
    pts = gpd.read_file(cand)
    assert len(pts) == 12 and pts["uncertainty"].is_monotonic_decreasing
    xy = np.c_[pts.geometry.x, pts.geometry.y]
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)) + np.eye(len(xy)) * 1e9
    assert d.min() >= 50
    ref = tmp_path / "reference.gpkg"
    assert main(["design", str(out), "--n", "60", "--min-per-class", "8", "--out", str(ref)]) == 0
    frame = gpd.read_file(ref)
    frame["reference"] = frame["map_value"].astype(str)  # a perfect interpreter
    frame.loc[frame.index[0], "reference"] = str(next(v for v in frame["map_value"] if v != frame["map_value"].iloc[0]))
    frame.to_file(ref, driver="GPKG", layer="reference")
    capsys.readouterr()
    assert main(["assess", str(out), str(ref), "--label", "reference", "--out", str(tmp_path / "a.json")]) == 0
    assert "overall" in capsys.readouterr().out.lower()
    report = json.loads((tmp_path / "a.json").read_text())
    assert (tmp_path / "a.png").stat().st_size > 0
    assert report["n_points"] == len(frame) and 0.8 < report["overall_accuracy"] < 1.0
    # bad input: a label column that is not there -> one line, exit 2, nothing written
    assert main(["assess", str(out), str(ref), "--label", "nope", "--out", str(tmp_path / "b.json")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "b.json").exists()


def _bench():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "maps_buffalo.py"
    spec = importlib.util.spec_from_file_location("maps_buffalo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_buffalo_smoothing_accuracy_and_design_assess_end_to_end(cluster_client, tmp_path, capsys):
    """A bundle from `s2dask train --split pixel` (10 epochs, small), maps plain / --smooth 3 / 5 scored on the
    labelled pixels, then design -> labels from the labelled points -> assess (README: the same with
    the defaults, benchmarks/maps_buffalo.py)."""
    data = sample_data_dir()
    if data is None:
        pytest.skip("S2DASK_SAMPLE_DATA is not set (or has no buffalo/): the Buffalo test needs the sample data")
    bench = _bench()
    scene, bundle = tmp_path / "buffalo.tif", tmp_path / "bundle"
    assert main(["grid-to-raster", str(data / "grid_data.csv"), str(scene), "--crs", "EPSG:32617"]) == 0
    assert main(["train", str(data / "point_data.csv"), "--out", str(bundle), "--split", "pixel",
                 "--epochs", "10", "--units", "64,64", "--dropout", "0,0", "--batch-size", "128", "--quiet"]) == 0
    acc = {}
    for size in (None, 3, 5):
        [res] = classify(scene, bundle, tmp_path / f"s{size}", chunks=64, client=cluster_client, smooth=size,
                         uncertainty="entropy" if size is None else (), progress=False)
        assert res.status == "complete", res.error
        if size is None:
            pixels = bench.labelled_pixels(data / "point_data.csv", Path(res.out))
        acc[size or 1] = bench.pixel_accuracy(Path(res.out), pixels)
    print("\nwindow  accuracy on the labelled pixels: " + ", ".join(f"{k}: {v:.3f}" for k, v in acc.items()))
    assert len(pixels[0]) > 1500 and all(0.5 < a <= 1 for a in acc.values())
    plain = tmp_path / "sNone" / "buffalo"
    assert main(["design", str(plain), "--n", "3000", "--min-per-class", "300", "--out", str(tmp_path / "d.gpkg")]) == 0
    labelled, drawn = bench.label_design(tmp_path / "d.gpkg", pixels, tmp_path / "labelled.gpkg", plain)
    assert 100 < labelled < drawn
    capsys.readouterr()
    assert main(["assess", str(plain), str(tmp_path / "labelled.gpkg"), "--label", "reference",
                 "--out", str(tmp_path / "assessment.json")]) == 0
    assert "without a label" in capsys.readouterr().out
    report = json.loads((tmp_path / "assessment.json").read_text())
    assert 0.5 < report["overall_accuracy"] <= 1 and report["total_mapped_ha"] == pytest.approx(357.0)
    assert sum(c["estimated_ha"] for c in report["classes"]) == pytest.approx(357.0)


def test_smoothing_with_a_mask_file_is_seamless_and_skips_masked_pixels(scene_dir, cluster_client, one_worker,
                                                                        tmp_path):
    with rasterio.open(scene_dir / "scene.tif") as src:
        profile = dict(src.profile, count=1, dtype="uint8", nodata=None)
    mask = np.zeros(SHAPE, dtype="uint8")
    mask[90:110, 40:90] = 1  # across the chunk edge at 64
    with rasterio.open(tmp_path / "mask.tif", "w", **profile) as dst:
        dst.write(mask, 1)
    opts = dict(smooth=3, uncertainty="least", mask=str(tmp_path / "mask.tif"))
    _, a = _job(scene_dir / "scene.tif", scene_dir, tmp_path / "a", cluster_client, chunks=64, **opts)
    _, b = _job(scene_dir / "scene.tif", scene_dir, tmp_path / "b", one_worker, chunks=4096, **opts)
    for name in ("classes", "confidence", "uncertainty_least", "mask"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    classes = a["classes"].values
    assert (classes[90:110, 40:90] == 255).all() and (a["mask"].values[90:110, 40:90] != 0).all()
    # the masked block is not smoothed into: its neighbours equal a scene where it is nodata
    with rasterio.open(scene_dir / "scene.tif") as src:
        data, prof, names = src.read(), src.profile, src.descriptions
    data[:, 90:110, 40:90] = 0
    with rasterio.open(tmp_path / "holed.tif", "w", **prof) as dst:
        dst.write(data)
        for i, name in enumerate(names, 1):  # band order is never guessed
            dst.set_band_description(i, name)
    _, c = _job(tmp_path / "holed.tif", scene_dir, tmp_path / "c", one_worker, chunks=4096, smooth=3,
                uncertainty="least")
    np.testing.assert_array_equal(classes, c["classes"].values)
    np.testing.assert_array_equal(a["uncertainty_least"].values, c["uncertainty_least"].values)
