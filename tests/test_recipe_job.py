"""A job through the real cluster/local recipe equals the same job on the embedded default."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import rasterio
import xarray as xr
from _cluster import local_recipe, pid_alive, recipe_env, run_or_dump


def _classify(*args) -> subprocess.CompletedProcess:
    # a hang fails with the CLI's thread stacks (one fresh-clone run hung the embedded one 300 s)
    return run_or_dump([sys.executable, "-m", "s2dask.cli", "classify", *map(str, args)],
                       recipe_env(), timeout=240)


def test_recipe_cluster_output_identical_to_embedded_default(synth_dir, tiny_model, tmp_path):
    scene = synth_dir / "scene.tif"
    embedded = _classify(scene, "--model", tiny_model, "--out", tmp_path / "embedded", "--quiet")
    assert embedded.returncode == 0, embedded.stderr[-2000:]
    with local_recipe(tmp_path, n_workers=2) as info:
        pids = list(info.pids.values())
        recipe = _classify(scene, "--model", tiny_model, "--out", tmp_path / "recipe", "--quiet",
                           "--chunks", 96, "--scheduler-file", info.scheduler_file)
        assert recipe.returncode == 0, recipe.stderr[-2000:]
    assert pids and not any(pid_alive(p) for p in pids), "recipe processes left running"
    a, b = tmp_path / "embedded" / "scene", tmp_path / "recipe" / "scene"
    record = json.loads((b / "job.json").read_text())
    assert record["cluster"]["workers"] == 2
    assert record["cluster"]["scheduler"] == info.address
    for var in ("classes", "confidence"):
        np.testing.assert_array_equal(xr.open_zarr(a / "classes.zarr")[var].values,
                                      xr.open_zarr(b / "classes.zarr")[var].values)
    with rasterio.open(a / "classes.tif") as ca, rasterio.open(b / "classes.tif") as cb:
        np.testing.assert_array_equal(ca.read(1), cb.read(1))
        assert ca.transform == cb.transform and ca.crs == cb.crs
    assert json.loads((a / "job.json").read_text())["statistics"] == record["statistics"]
