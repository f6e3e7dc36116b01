"""Whole-scene classification jobs on a real LocalCluster: outputs, georeferencing, identity."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from _cluster import run_or_dump
from conftest import make_bundle, sample_data_dir

from s2dask.job.run import classify
from s2dask.job.worker import build_counts
from s2dask.model.bundle import load_model
from s2dask.scene import open_scene


def _scene_pixels(path, bands) -> np.ndarray:
    scene = open_scene(path, bands=bands)
    arr = scene.values  # small test scenes only
    return arr.reshape(arr.shape[0], -1).T, arr.shape[1:]


def test_classify_outputs_are_georeferenced_and_match_single_process(synth_dir, tiny_model, cluster_client, tmp_path):
    scene_path = synth_dir / "scene.tif"
    [res] = classify(scene_path, tiny_model, tmp_path / "out", chunks=100, client=cluster_client,
                     probabilities=True, progress=False)
    assert res.status == "complete"
    out = Path(res.out)
    assert out == tmp_path / "out" / "scene"
    assert {"classes.tif", "classes.zarr", "job.json", "quicklook.png"} <= {p.name for p in out.iterdir()}
    for name in ("classes.zarr", "classes.tif", "job.json", "quicklook.png"):
        assert (out / name).exists(), name
    assert not list((tmp_path / "out").glob(".*partial")), "temporary output left behind"
    from matplotlib.image import imread

    ink = (imread(out / "quicklook.png")[..., :3] < 0.95).any(axis=(1, 2))  # rows with anything drawn
    rows_drawn = np.flatnonzero(ink)
    assert rows_drawn[0] <= 0.05 * len(ink) and rows_drawn[-1] >= 0.95 * len(ink)  # no empty bands

    bundle = load_model(tiny_model)
    rows, shape = _scene_pixels(scene_path, bundle.bands)
    expected = bundle.predict(rows).reshape(shape)

    ds = xr.open_zarr(out / "classes.zarr")
    classes = ds["classes"].values
    assert ds["classes"].dtype == np.uint8 and ds["confidence"].dtype == np.uint8
    np.testing.assert_array_equal(classes, expected)
    # nodata frame of 4 px: no class, no confidence
    assert (classes[:4] == 255).all() and (classes[:, -4:] == 255).all()
    assert (ds["confidence"].values[classes == 255] == 0).all()
    assert (ds["confidence"].values[classes != 255] >= 100 // len(bundle.classes)).all()
    probs = ds["probabilities"].values
    assert probs.shape == (len(bundle.classes), *shape)
    sums = probs.sum(axis=0)[classes != 255].astype(int)
    assert (abs(sums - 100) <= len(bundle.classes)).all()

    with rasterio.open(scene_path) as src:
        crs, transform = src.crs, src.transform
    assert ds.rio.crs == crs
    assert ds.rio.transform() == transform
    np.testing.assert_allclose(ds["x"].values[:2], [transform.c + 5, transform.c + 15])
    assert [c["value"] for c in json.loads(ds.attrs["classes"])] == [1, 2, 3, 4, 5]
    assert ds.attrs["class_names"][2] == "Tree/bushes"

    with rasterio.open(out / "classes.tif") as cog:
        assert cog.crs == crs and cog.transform == transform
        assert cog.nodata == 255 and cog.dtypes == ("uint8",)
        assert cog.block_shapes == [(512, 512)]
        assert cog.profile["compress"].upper() == "LZW"
        np.testing.assert_array_equal(cog.read(1), expected)
        cmap = cog.colormap(1)
        assert cmap[3][:3] == (0x1B, 0x78, 0x37)
        assert json.loads(cog.tags()["CLASS_NAMES"])["5"] == "Water"
    from s2dask.maps.writers import validate_cog

    valid, errors, _ = validate_cog(out / "classes.tif")
    assert valid, errors

    record = json.loads((out / "job.json").read_text())
    assert record["status"] == "complete"
    assert record["model"]["sha256"] == bundle.sha256
    st = record["statistics"]
    assert st["pixels"] == shape[0] * shape[1]
    assert st["nodata_pixels"] == int((expected == 255).sum())
    for c in st["classes"]:
        assert c["pixels"] == int((expected == c["value"]).sum())
        assert c["hectares"] == pytest.approx(c["pixels"] * 100 / 1e4)
    assert record["cluster"]["workers"] == 2
    assert set(record["timings_s"]) >= {"open", "predict", "write", "total"}
    assert record["throughput_mpx_s"]["end_to_end"] > 0
    assert record["output"]["cog_validation"]["valid"] is True
    # where the tasks' time went, from every chunk's marker: each read (fused into its task),
    # model and write timed; together no more than the cluster's threads over the predict phase
    n_chunks = -(-shape[0] // 100) * -(-shape[1] // 100)
    spent = record["task_seconds"]
    assert spent["chunks"] == spent["read_chunks"] == n_chunks > 1 and spent["kept_chunks"] == 0
    assert all(spent[k] > 0 for k in ("read", "model", "write")), spent
    threads = record["cluster"]["threads"]
    assert spent["read"] + spent["model"] + spent["write"] <= threads * record["timings_s"]["predict"] + 0.1


def test_identical_whatever_the_chunking(synth_dir, tiny_model, cluster_client, tmp_path):
    maps = []
    for chunks in (64, 100, 2048):
        [res] = classify(synth_dir / "scene.tif", tiny_model, tmp_path / f"c{chunks}", chunks=chunks,
                         client=cluster_client, cog=False, progress=False)
        ds = xr.open_zarr(Path(res.out) / "classes.zarr")
        maps.append((ds["classes"].values, ds["confidence"].values))
        assert ds["classes"].encoding["chunks"] == (min(chunks, 300), min(chunks, 260))
    for classes, conf in maps[1:]:
        np.testing.assert_array_equal(classes, maps[0][0])
        np.testing.assert_array_equal(conf, maps[0][1])


def test_model_built_once_per_worker_not_per_task(synth_dir, tiny_model, cluster_client, tmp_path):
    sha = load_model(tiny_model).sha256
    [res] = classify(synth_dir / "scene.tif", tiny_model, tmp_path / "out", chunks=32,
                     client=cluster_client, cog=False, progress=False)
    n_chunks = len(list(range(0, 300, 32))) * len(list(range(0, 260, 32)))
    assert n_chunks == 90
    counts = cluster_client.run(build_counts)
    assert len(counts) == 2
    for worker, per_model in counts.items():
        assert per_model.get(sha) == 1, (worker, per_model)
    # a second job on the same cluster reuses the workers' models
    classify(synth_dir / "scene.tif", tiny_model, tmp_path / "again", chunks=50,
             client=cluster_client, cog=False, progress=False)
    assert all(c.get(sha) == 1 for c in cluster_client.run(build_counts).values())


def test_task_graph_carries_a_reference_not_the_model(synth_dir, tiny_model):
    import pickle

    from s2dask.job.worker import ModelRef

    bundle = load_model(tiny_model)
    ref = ModelRef(bundle.sha256, str(tiny_model), 16384)
    assert len(pickle.dumps(ref)) < 512
    assert bundle.model_file.stat().st_size > 20_000


def test_existing_output_refused_then_overwritten(synth_dir, tiny_model, cluster_client, tmp_path):
    out = tmp_path / "out"
    classify(synth_dir / "scene.tif", tiny_model, out, chunks=128, client=cluster_client,
             cog=False, progress=False)
    marker = out / "scene" / "keep.txt"
    marker.write_text("old")
    from s2dask.errors import OutputExistsError

    with pytest.raises(OutputExistsError, match="already exists: pass --overwrite"):
        classify(synth_dir / "scene.tif", tiny_model, out, chunks=128, client=cluster_client,
                 cog=False, progress=False)
    assert marker.read_text() == "old"
    classify(synth_dir / "scene.tif", tiny_model, out, chunks=128, client=cluster_client,
             cog=False, progress=False, overwrite=True)
    assert not marker.exists() and (out / "scene" / "job.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["catalog.json", "scene"]  # and its STAC catalogue


def test_scene_missing_a_model_band_is_refused_before_compute(synth_dir, tmp_path, tiny_model):
    # a 3-band scene cannot feed a 10-band model
    src = synth_dir / "scene.tif"
    small = tmp_path / "rgb.tif"
    with rasterio.open(src) as s:
        profile = s.profile | {"count": 3, "driver": "GTiff"}
        with rasterio.open(small, "w", **profile) as d:
            d.write(s.read([1, 2, 3]))
            for i, b in enumerate(("B02", "B03", "B04"), 1):
                d.set_band_description(i, b)
    proc = subprocess.run([sys.executable, "-m", "s2dask.cli", "classify", str(small), "--model",
                           str(tiny_model), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "B05" in lines[0] and str(small) in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_classify_runs_its_own_cluster(synth_dir, tiny_model, tmp_path):
    out = tmp_path / "out"
    # a hang fails with the CLI's thread stacks (one run in a full suite once hung 300 s)
    proc = run_or_dump([sys.executable, "-m", "s2dask.cli", "classify", str(synth_dir / "scene.tif"),
                        "--model", str(tiny_model), "--out", str(out), "--chunks", "128",
                        "--workers", "1", "--threads-per-worker", "1", "--quiet"], dict(os.environ),
                       timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "Mpx/s" in proc.stdout and str(out / "scene") in proc.stdout
    assert re.search(r"tasks: read \d+%, model \d+%, write \d+% of [\d.]+ s in \d+ chunks", proc.stdout), proc.stdout
    record = json.loads((out / "scene" / "job.json").read_text())
    assert record["cluster"]["workers"] == 1 and record["cluster"]["threads"] == 1
    with rasterio.open(out / "scene" / "classes.tif") as cog:
        assert cog.overviews(1) == [] or all(f > 1 for f in cog.overviews(1))
        assert cog.crs.to_epsg() == 32617


def test_buffalo_scene_class_map_equals_one_process_prediction(cluster_client, tmp_path):
    data = sample_data_dir()
    if data is None:
        pytest.skip("Buffalo sample data not found: set S2DASK_SAMPLE_DATA to the folder holding buffalo/")
    import pandas as pd

    from s2dask.scene import grid_to_raster

    scene = grid_to_raster(data / "grid_data.csv", tmp_path / "buffalo.tif", crs="EPSG:32617")
    bundle_dir = make_bundle(tmp_path / "model", samples_csv=data / "point_data.csv", epochs=2)
    [res] = classify(scene, bundle_dir, tmp_path / "out", chunks=64, client=cluster_client,
                     progress=False)
    ds = xr.open_zarr(Path(res.out) / "classes.zarr")
    assert ds.rio.crs.to_epsg() == 32617
    # the tutorial's grid prediction: every grid row through the model in one process
    grid = pd.read_csv(data / "grid_data.csv")
    bundle = load_model(bundle_dir)
    expected = bundle.predict(grid[["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]].to_numpy())
    got = ds["classes"].sel(x=xr.DataArray(grid["x"].to_numpy()), y=xr.DataArray(grid["y"].to_numpy()),
                            method="nearest", tolerance=1.0).values
    np.testing.assert_array_equal(got, expected)
    with rasterio.open(Path(res.out) / "classes.tif") as cog, rasterio.open(scene) as src:
        assert cog.transform == src.transform and cog.crs == src.crs
        assert (cog.width, cog.height) == (210, 170)


def test_default_chunks_give_every_worker_work(synth_dir, tiny_model, cluster_client, tmp_path):
    from s2dask.job.run import auto_chunks as _auto_chunks

    assert _auto_chunks(10980, 10980) == (2048, 2048)  # 36 tasks on a full tile
    assert _auto_chunks(4096, 4096) == (2048, 2048)
    assert _auto_chunks(2048, 2048) == (1024, 1024)
    assert _auto_chunks(1024, 1024) == (512, 512)
    assert _auto_chunks(100, 90) == (256, 256)  # never below 256
    [res] = classify(synth_dir / "scene.tif", tiny_model, tmp_path / "out", client=cluster_client,
                     cog=False, progress=False)
    assert res.record["parameters"]["chunks"] == [256, 256]
    ds = xr.open_zarr(Path(res.out) / "classes.zarr")
    assert ds["classes"].encoding["chunks"] == (256, 256)
