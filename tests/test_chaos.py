"""Chaos on real processes: the scheduler SIGKILLed mid-job or frozen while the COG is
written, storage answering 503, small worker memory, workers joining and leaving mid-batch.
Every promise holds: identical outputs, nothing half-written at final paths, one clear line.

Sizes are small so the file stays well under a minute and a half; the 4096^2 scene under
1.5 GiB workers is in ``benchmarks/memory.py --limit-check`` (see the README).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from _cluster import local_recipe, recipe_env, wait_dead, wait_while_running

from s2dask.job.run import classify

CLI = [sys.executable, "-m", "s2dask.cli"]


def outputs_of(path) -> tuple[np.ndarray, np.ndarray]:
    ds = xr.open_zarr(path if str(path).endswith(".zarr") else f"{path}/classes.zarr",
                      storage_options=_options(str(path)))
    return ds["classes"].values, ds["confidence"].values


def _options(url: str):
    from s2dask.io.storage import storage_options_for

    return storage_options_for(url) if url.startswith("s3://") else None


def assert_same(got, want) -> None:
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.fixture(scope="module")
def reference(synth_dir, tiny_model, cluster_client, tmp_path_factory):
    """The undisturbed class map and confidence of the synthetic scene."""
    out = tmp_path_factory.mktemp("chaos-reference")
    [res] = classify(synth_dir / "scene.tif", tiny_model, out, chunks=64, client=cluster_client,
                     progress=False)
    return outputs_of(res.out)


# ----------------------------------------------------------------------------- scheduler loss


def _scheduler_gone(proc, info, sig: int, partial: Path) -> tuple[str, float]:
    """Send the recipe's scheduler ``sig`` while the CLI ``proc`` runs; the CLI's one line
    (checked: exit 2, the watch's words, the partial output kept) and the seconds it took."""
    try:
        os.kill(info.pids["scheduler"], sig)
        t_sig = time.monotonic()
        _, err = proc.communicate(timeout=60)
        stopped = time.monotonic() - t_sig
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"s2dask classify: error: the Dask scheduler {info.address} is gone")
    assert f"finished chunks are kept in {partial}" in lines[0] and lines[0].endswith("--resume")
    return lines[0], stopped


def test_scheduler_sigkill_then_resume_on_a_fresh_scheduler(synth_dir, tiny_model, reference,
                                                            tmp_path):
    out = tmp_path / "out"
    scene = synth_dir / "scene.tif"
    with local_recipe(tmp_path / "first", n_workers=1, timeout=60) as info:
        proc = subprocess.Popen(
            [*CLI, "classify", str(scene), "--model", str(tiny_model), "--out", str(out),
             "--chunks", "32", "--scheduler", info.address, "--scheduler-timeout", "4", "-q"],
            env=recipe_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        chunks = out / ".scene.partial" / "chunks"
        wait_while_running(proc, lambda: len(list(chunks.glob("*.json"))) >= 3, "3 chunk markers")
        line, stopped = _scheduler_gone(proc, info, signal.SIGKILL, out / ".scene.partial")
        assert wait_dead([info.pids["scheduler"]]) == []
    assert stopped < 4 + 12, stopped  # the timeout, a probe, a poll and closing the client
    assert not (out / "scene").exists()  # nothing at the final path
    command = line.split("finish the job with: ", 1)[1]
    argv = shlex.split(command)
    assert argv[:2] == ["s2dask", "classify"] and argv[-1] == "--resume"
    done_before = len(list(chunks.glob("*.json")))

    with local_recipe(tmp_path / "second", n_workers=1, timeout=60) as fresh:
        argv[argv.index("--scheduler") + 1] = fresh.address
        res = subprocess.run([*CLI, *argv[1:]], env=recipe_env(), capture_output=True, text=True,
                             timeout=180)
    assert res.returncode == 0, res.stderr
    record = json.loads((out / "scene" / "job.json").read_text())
    assert record["parameters"]["resumed_chunks"] == done_before > 0
    assert_same(outputs_of(out / "scene"), reference)


def test_scheduler_frozen_while_the_cog_is_written_ends_in_one_line(tiny_model, tmp_path):
    # the COG's report is waited for under the watch too: a scheduler frozen (SIGSTOP: no TCP
    # reset) while a worker writes the COG gives the watch's one line within the bound, and
    # every chunk stays in the partial output (a plain future.result() waited for ever)
    from s2dask.scene.synthetic import make_scene

    scene = make_scene(tmp_path / "big.tif", size=1536, seed=7, cog=False)
    out, partial = tmp_path / "out", tmp_path / "out" / ".big.partial"
    with local_recipe(tmp_path / "cluster", n_workers=1, timeout=60) as info:
        proc = subprocess.Popen(
            [*CLI, "classify", str(scene), "--model", str(tiny_model), "--out", str(out), "--chunks", "512",
             "--uncertainty", "entropy,margin,least", "--scheduler", info.address,
             "--scheduler-timeout", "3", "-q"],
            env=recipe_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # the worker's COG folder: the chunks are done, the COG is on its way
            wait_while_running(proc, lambda: any(partial.glob("s2dask-cog-*")), "the COG folder",
                               timeout=180, every=0.01)
            _, stopped = _scheduler_gone(proc, info, signal.SIGSTOP, partial)
        finally:
            os.kill(info.pids["scheduler"], signal.SIGKILL)
    assert 3 <= stopped < 3 + 12, stopped
    assert len(list((partial / "chunks").glob("*.json"))) == 9  # all of them: it was the COG's wait
    assert not (out / "big").exists()


# ----------------------------------------------------------------------------- flaky storage


@pytest.fixture
def s3_via_proxy(cluster_client, moto_url, monkeypatch, tmp_path):
    """moto's S3 behind the fault proxy; this process and the cluster's workers point at it."""
    boto3 = pytest.importorskip("boto3")
    from _faulty_proxy import FaultyProxy
    from _s3 import fresh_bucket, isolate_aws

    proxy = FaultyProxy(moto_url).start()
    env = {**isolate_aws(monkeypatch, tmp_path, endpoint=proxy.url, key="chaos-key", secret="chaos-secret"),
           "S2DASK_RETRY_DELAY": "0.05"}
    monkeypatch.setenv("S2DASK_RETRY_DELAY", env["S2DASK_RETRY_DELAY"])

    def set_env(values, drop):  # on the workers (they are already running)
        import os as _os

        for k in drop:
            _os.environ.pop(k, None)
        _os.environ.update(values)

    saved = cluster_client.run(lambda: {k: v for k, v in os.environ.items()
                                        if k.startswith("AWS_") or k.startswith("S2DASK_RETRY")})
    cluster_client.run(set_env, env, [k for k in next(iter(saved.values())) if k not in env])
    s3 = boto3.client("s3", endpoint_url=moto_url)
    try:
        with fresh_bucket(s3, "chaos"):
            yield proxy, s3
    finally:
        for addr, old in saved.items():
            cluster_client.run(set_env, old, list(env), workers=[addr])
        proxy.stop()


def test_storage_503s_are_retried_recorded_and_change_nothing(synth_dir, tiny_model, reference,
                                                              cluster_client, s3_via_proxy):
    from _faulty_proxy import Fault

    proxy, s3 = s3_via_proxy
    s3.upload_file(str(synth_dir / "scene.tif"), "chaos", "in/scene.tif")
    import rasterio

    from s2dask.io.storage import gdal_env_for

    url = "s3://chaos/in/scene.tif"  # GDAL caches the file in this process here: the job's own
    with rasterio.Env(**gdal_env_for(url)), rasterio.open(url) as src:  # open and sample read
        src.read()                    # then read nothing from S3, so the GET faults hit workers
    proxy.set_faults([
        Fault(methods={"PUT"}, path=r"\.partial/classes\.zarr/(classes|confidence)/c/", first=3),
        Fault(methods={"PUT"}, path=r"\.partial/chunks/\d+_\d+\.json", first=2),
        Fault(methods={"GET"}, path=r"/in/scene\.tif", first=2),
    ])
    [res] = classify("s3://chaos/in/scene.tif", tiny_model, "s3://chaos/out", chunks=64,
                     client=cluster_client, progress=False)
    assert [f.failed for f in proxy.faults] == [3, 2, 2]
    retries = res.record["retries"]
    # every failed request retried once and counted once: writes by the one retry layer
    # around them, reads by GDAL's own retries
    assert retries["total"] == proxy.failed == 7, (retries, proxy.log)
    assert "503 SlowDown" in retries["reasons"]
    assert any(r.startswith("GDAL HTTP 503") for r in retries["reasons"])
    # (the chunk markers that recorded them per chunk leave with the partial output)
    job = json.loads(s3.get_object(Bucket="chaos", Key="out/scene/job.json")["Body"].read())
    assert job["retries"] == retries
    proxy.set_faults([])
    assert_same(outputs_of("s3://chaos/out/scene"), reference)


def test_a_chunk_that_keeps_failing_stops_the_job_with_one_line(synth_dir, tiny_model,
                                                                cluster_client, s3_via_proxy,
                                                                monkeypatch):
    from _faulty_proxy import Fault

    from s2dask.errors import StorageError

    proxy, s3 = s3_via_proxy
    s3.upload_file(str(synth_dir / "scene.tif"), "chaos", "in/scene.tif")
    proxy.set_faults([Fault(methods={"PUT"}, path=r"classes\.zarr/classes/c/1/0$", first=1000)])
    with pytest.raises(StorageError) as err:
        classify("s3://chaos/in/scene.tif", tiny_model, "s3://chaos/bad", chunks=64,
                 client=cluster_client, progress=False, retries=2)
    msg = str(err.value)
    assert msg.startswith("scene s3://chaos/in/scene.tif: could not write chunk y=64:128 x=0:64 of "
                          "s3://chaos/bad/.scene.partial/classes.zarr: 3 attempts failed"), msg
    assert "503 SlowDown" in msg and "finished chunks are kept in s3://chaos/bad/.scene.partial" in msg
    assert "\n" not in msg and "chaos-secret" not in msg
    assert proxy.faults[0].failed == 3  # bounded: retries + 1 requests
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="chaos", Prefix="bad/").get("Contents", [])]
    assert not any(k.startswith("bad/scene/") for k in keys)  # nothing at the final path
    assert any(k.startswith("bad/.scene.partial/chunks/") for k in keys)  # finished chunks kept
    # a missing input is permanent: its own line at once, before anything runs
    with pytest.raises(Exception, match="does not exist|no object"):
        classify("s3://chaos/in/missing.tif", tiny_model, "s3://chaos/bad2", client=cluster_client,
                 progress=False)


# ----------------------------------------------------------------------------- memory


def test_small_workers_get_chunks_that_fit_and_too_large_chunks_are_refused(synth_dir, tiny_model,
                                                                            reference, tmp_path):
    from distributed import Client, LocalCluster

    from s2dask.errors import ParameterError

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit="1.5GiB") as cluster, Client(cluster) as client:
        with pytest.raises(ParameterError) as err:  # before the model reaches the workers
            classify(synth_dir / "scene.tif", tiny_model, tmp_path / "big", chunks=2048,
                     client=client, progress=False)
        assert str(err.value).endswith("the largest that fits is --chunks 1024 (or give the "
                                       "workers more memory)")
        assert not (tmp_path / "big").exists()
        [res] = classify(synth_dir / "scene.tif", tiny_model, tmp_path / "ok", client=client,
                         progress=False)
        assert res.status == "complete"
    assert_same(outputs_of(res.out), reference)


def test_cli_refuses_a_memory_limit_and_chunks_that_cannot_fit(synth_dir, tiny_model, tmp_path):
    proc = subprocess.run([*CLI, "classify", str(synth_dir / "scene.tif"), "--model",
                           str(tiny_model), "--out", str(tmp_path / "o"), "--workers", "1",
                           "--threads-per-worker", "1", "--memory-limit", "1.5GiB", "--chunks", "4096", "-q"],
                          env=recipe_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "the largest that fits is --chunks 1024" in lines[0], proc.stderr
    neg = subprocess.run([*CLI, "classify", str(synth_dir / "scene.tif"), "--model",
                          str(tiny_model), "--out", str(tmp_path / "o"), "--retries", "-1"],
                         env=recipe_env(), capture_output=True, text=True, timeout=60)
    assert neg.returncode == 2 and "retries must be an integer >= 0" in neg.stderr
    assert len(neg.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- churn


def test_workers_joining_and_leaving_mid_batch_change_nothing(synth_dir, tiny_model, reference,
                                                              tmp_path):
    from distributed import Client, LocalCluster

    scenes = []
    for i in range(2):
        scenes.append(tmp_path / f"scene{i}.tif")
        scenes[-1].write_bytes((synth_dir / "scene.tif").read_bytes())
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit="3GiB") as cluster, Client(cluster) as client:
        first = set(client.scheduler_info()["workers"])
        result: dict = {}

        def job():
            try:
                result["res"] = classify(scenes, tiny_model, tmp_path / "out", chunks=64,
                                         client=client, progress=False)
            except BaseException as exc:  # surfaced below
                result["error"] = exc

        thread = threading.Thread(target=job)
        thread.start()
        cluster.scale(2)  # a worker joins: the model plugin reaches it
        client.wait_for_workers(2, timeout=60)
        client.retire_workers(list(first), close_workers=True)  # the first one leaves
        thread.join(timeout=180)
        joined = set(client.scheduler_info()["workers"]) - first
        assert joined and not thread.is_alive(), result
    assert "error" not in result, result.get("error")
    assert [r.status for r in result["res"]] == ["complete"] * 2
    for r in result["res"]:
        assert_same(outputs_of(r.out), reference)
