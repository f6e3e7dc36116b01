"""A chunk task that never finishes: retried on another worker, then the job stops in one line.

Real scheduler and worker processes (cluster/local), a real CLI; the hang comes from a worker
preload (tests/_hang.py) that makes one window's scene read sleep for ever, on the first
worker that reads it or on every worker. Nothing of the job or its watch is replaced.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from _cluster import local_recipe, recipe_env, run_or_dump

from s2dask.errors import ParameterError
from s2dask.job.options import JobOptions
from s2dask.job.run import classify
from s2dask.job.taskwatch import TASK_TIMEOUT_FACTOR, TASK_TIMEOUT_MIN, TaskWatch

CLI = [sys.executable, "-m", "s2dask.cli"]
TESTS = Path(__file__).resolve().parent
HUNG = "chunk y=128:256 x=0:128"  # the window _hang.py holds: S2DASK_TEST_HANG=128,0


def classes_of(out: Path) -> tuple[np.ndarray, np.ndarray]:
    ds = xr.open_zarr(out / "classes.zarr")
    return ds["classes"].values, ds["confidence"].values


@pytest.fixture(scope="module")
def reference(synth_dir, tiny_model, cluster_client, tmp_path_factory):
    [res] = classify(synth_dir / "scene.tif", tiny_model, tmp_path_factory.mktemp("ref"), chunks=128,
                     client=cluster_client, progress=False)
    return classes_of(Path(res.out))


def _hang_env(tmp_path: Path, *, once: bool) -> dict[str, str]:
    env = {"DASK_DISTRIBUTED__WORKER__PRELOAD": '["_hang"]', "PYTHONPATH": str(TESTS),
           "S2DASK_TEST_HANG": "128,0", "S2DASK_TEST_HANG_LOG": str(tmp_path / "hangs")}
    if once:
        env["S2DASK_TEST_HANG_ONCE"] = str(tmp_path / "claimed")
    return env


def _classify(info, scene: Path, model: Path, out: Path, *extra: str):
    return run_or_dump([*CLI, "classify", str(scene), "--model", str(model), "--out", str(out),
                        "--chunks", "128", "--scheduler-file", str(info.scheduler_file), "-q", *extra],
                       recipe_env(), timeout=240, run_dir=info.run_dir)


def test_the_bound_and_its_checks():
    watch = TaskWatch(None, {}, resume="s2dask classify ... --resume")
    assert watch.bound() == TASK_TIMEOUT_FACTOR * TASK_TIMEOUT_MIN  # nothing finished yet
    watch.durations = [0.5, 2.0, 1.0]
    assert watch.bound() == TASK_TIMEOUT_MIN  # 10 x 1 s median, at least a minute
    watch.durations = [30.0, 9.0, 8.0]
    assert watch.bound() == 10 * 9.0
    assert TaskWatch(None, {}, timeout=5, resume="").bound() == 5
    for bad in (0, -1, "60", True):
        with pytest.raises(ParameterError, match="task timeout must be a positive number"):
            JobOptions(task_timeout=bad)
    with pytest.raises(ParameterError, match="task retries"):
        JobOptions(task_retries=-1)


def test_a_stuck_chunk_is_retried_on_another_worker_and_the_map_is_the_same(
        synth_dir, tiny_model, reference, tmp_path):
    out = tmp_path / "out"
    with local_recipe(tmp_path, n_workers=2, env=_hang_env(tmp_path, once=True)) as info:
        res = _classify(info, synth_dir / "scene.tif", tiny_model, out, "--task-timeout", "3")
    assert res.returncode == 0, res.stderr
    assert len((tmp_path / "hangs").read_text().split()) == 1  # it did hang, once
    retries = [line for line in res.stderr.splitlines() if "retrying it on another worker" in line]
    assert len(retries) == 1 and retries[0].startswith(f"{HUNG} of {synth_dir / 'scene.tif'} ran for ")
    for got, want in zip(classes_of(out / "scene"), reference):
        np.testing.assert_array_equal(got, want)


def test_a_chunk_stuck_everywhere_stops_the_job_in_one_line_then_resume_finishes_it(
        synth_dir, tiny_model, reference, cluster_client, tmp_path):
    out, scene = tmp_path / "out", synth_dir / "scene.tif"
    with local_recipe(tmp_path, n_workers=2, env=_hang_env(tmp_path, once=False)) as info:
        res = _classify(info, scene, tiny_model, out, "--task-timeout", "3")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 3, res.stderr  # two retries said, then the job's one line
    assert all("retrying it on another worker" in line for line in lines[:2])
    assert len((tmp_path / "hangs").read_text().split()) == 3  # three worker processes held it
    line = lines[-1]
    assert line.startswith(f"s2dask classify: error: {HUNG} of {scene} did not finish: it ran for "), line
    assert "(--task-timeout 3 s), after 2 retries on other workers" in line
    assert f"the finished chunks are kept in {out / '.scene.partial'}" in line
    argv = shlex.split(line.split("finish the job with: ", 1)[1])
    assert argv[:2] == ["s2dask", "classify"] and argv[-1] == "--resume"
    markers = sorted(p.stem for p in (out / ".scene.partial" / "chunks").glob("*.json"))
    assert markers == ["0_0", "0_1", "0_2", "1_1", "1_2", "2_0", "2_1", "2_2"]  # all but 1_0
    assert not (out / "scene").exists()

    # without the hang, --resume computes the one chunk left: the same map
    [done] = classify(scene, tiny_model, out, chunks=128, client=cluster_client, progress=False, resume=True)
    assert json.loads((out / "scene" / "job.json").read_text())["parameters"]["resumed_chunks"] == 8
    for got, want in zip(classes_of(Path(done.out)), reference):
        np.testing.assert_array_equal(got, want)
