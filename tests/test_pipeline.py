"""A batch runs with two scenes in flight: same outputs as one at a time, failures stay alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

from s2dask.errors import JobError, S2DaskError, SceneError
from s2dask.job.pipeline import run_pipelined
from s2dask.job.run import classify
from s2dask.scene.synthetic import make_scene


@pytest.fixture(scope="module")
def three_scenes(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("batch")
    return [make_scene(d / f"scene{i}.tif", size=(130 + 10 * i, 120), seed=10 + i, nodata_border=2)
            for i in range(3)]


def _outputs(folder: Path) -> dict:
    ds = xr.open_zarr(folder / "classes.zarr")
    with rasterio.open(folder / "classes.tif") as src:
        cog = src.read(1)
    rec = json.loads((folder / "job.json").read_text())
    return {"classes": ds["classes"].values, "confidence": ds["confidence"].values, "cog": cog,
            "stats": rec["statistics"]}


def test_batch_of_three_equals_one_at_a_time(three_scenes, tiny_model, cluster_client, tmp_path):
    batch = classify(three_scenes, tiny_model, tmp_path / "batch", chunks=64,
                     client=cluster_client, progress=False, quicklook=False)
    assert [r.status for r in batch] == ["complete"] * 3
    for scene, res in zip(three_scenes, batch):
        [alone] = classify(scene, tiny_model, tmp_path / f"alone-{scene.stem}", chunks=64,
                           client=cluster_client, progress=False, quicklook=False)
        got, want = _outputs(Path(res.out)), _outputs(Path(alone.out))
        for key in ("classes", "confidence", "cog"):
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{scene.name} {key}")
        assert got["stats"] == want["stats"]
        assert res.record["timings_s"]["predict"] > 0
    assert not list((tmp_path / "batch").glob(".*.partial"))


def test_next_scene_computes_while_the_previous_is_finished(three_scenes, tiny_model,
                                                             cluster_client, tmp_path):
    from distributed import get_task_stream

    with get_task_stream(client=cluster_client) as ts:
        classify(three_scenes[:2], tiny_model, tmp_path / "out", chunks=64,
                 client=cluster_client, progress=False, quicklook=False)

    def span(kind: str, scene: str) -> list[tuple[float, float]]:
        return [(s["startstops"][0]["start"], s["startstops"][-1]["stop"]) for s in ts.data
                if kind in str(s["key"]) and scene in str(s["key"])]
    cog_first = sorted(span("write_rasters", ""))[0]
    second = span("s2dask-predict", three_scenes[1].stem)
    assert second, [s["key"] for s in ts.data]
    # a chunk of the second scene ran before the first scene's COG task was over
    assert min(start for start, _ in second) < cog_first[1]


def test_failing_scene_in_the_middle_fails_alone(three_scenes, tiny_model, cluster_client,
                                                 tmp_path):
    bad = make_scene(tmp_path / "broken.tif", size=(130, 120), seed=99)
    size = os.path.getsize(bad)
    with open(bad, "r+b") as f:  # header intact (opens), tile data garbage (fails in a task)
        f.seek(size // 2)
        f.write(b"\xff" * (size // 3))
    scenes = [three_scenes[0], bad, three_scenes[2]]
    out = tmp_path / "out"
    results = classify(scenes, tiny_model, out, chunks=64, client=cluster_client,
                       progress=False, quicklook=False)
    assert [r.status for r in results] == ["complete", "failed", "complete"]
    assert "broken.tif" in results[1].error and "--resume" in results[1].error
    assert not (out / "broken").exists() and (out / ".broken.partial").is_dir()
    for scene, res in zip((three_scenes[0], three_scenes[2]), (results[0], results[2])):
        [alone] = classify(scene, tiny_model, tmp_path / f"alone-{scene.stem}", chunks=64,
                           client=cluster_client, progress=False, quicklook=False)
        np.testing.assert_array_equal(_outputs(Path(res.out))["cog"], _outputs(Path(alone.out))["cog"])
    batch = json.loads((out / "batch.json").read_text())
    assert [s["status"] for s in batch["scenes"]] == ["complete", "failed", "complete"]
    # resume after the file is fixed: only the broken scene is left to do
    make_scene(bad, size=(130, 120), seed=99, overwrite=True)
    [again] = classify(bad, tiny_model, out, chunks=64, client=cluster_client, progress=False,
                       quicklook=False, resume=True)
    assert again.status == "complete" and (out / "broken" / "classes.tif").is_file()


def test_driver_keeps_two_in_flight_and_cancels_on_interrupt():
    log: list[str] = []
    in_flight: set[int] = set()

    def submit(i: int, prev):
        if i == 2:
            raise SceneError("cannot lay out 2")
        assert len(in_flight) < 2 and prev == (max(in_flight) if in_flight else None)
        in_flight.add(i)
        log.append(f"submit {i}")
        return i

    def finish(i: int) -> None:
        in_flight.discard(i)
        log.append(f"finish {i}")
        if i == 3:
            raise JobError("chunk of 3 failed")

    failed = lambda i, exc: log.append(f"failed {i}")  # noqa: E731
    run_pipelined(range(5), submit=submit, finish=finish, cancel=lambda i: log.append(f"cancel {i}"),
                  failed=failed)
    assert log == ["submit 0", "submit 1", "finish 0", "failed 2", "submit 3", "finish 1",
                   "submit 4", "finish 3", "failed 3", "finish 4"]

    log.clear(), in_flight.clear()

    def stop(i, exc):
        raise exc

    with pytest.raises(S2DaskError, match="chunk of 3"):
        run_pipelined([0, 3, 4], submit=submit, finish=finish,
                      cancel=lambda i: log.append(f"cancel {i}"), failed=stop)
    assert log == ["submit 0", "submit 3", "finish 0", "submit 4", "finish 3", "cancel 4"]


def test_driver_prepares_the_next_item_before_finishing_the_previous():
    """A lazy batch: scene k + 2 is opened and checked while k and k + 1 compute, not after k
    is finished (still never more than two submitted)."""
    log: list[str] = []

    def items():
        for i in range(3):
            log.append(f"prepare {i}")
            yield i

    run_pipelined(items(), submit=lambda i, prev: log.append(f"submit {i}") or i,
                  finish=lambda i: log.append(f"finish {i}"), cancel=lambda i: None,
                  failed=lambda i, exc: None)
    assert log == ["prepare 0", "submit 0", "prepare 1", "submit 1", "prepare 2", "finish 0",
                   "submit 2", "finish 1", "finish 2"]
