"""Engines in the product: classify == load_model(...).predict per engine and precision, the
IR in the bundle (no TensorFlow on OpenVINO workers), job.json's engine records, start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import TUTORIAL_BANDS, sample_data_dir

from s2dask.errors import ModelError, ParameterError
from s2dask.job.run import classify
from s2dask.model import engines as E
from s2dask.model.bundle import build_model, load_model, save_bundle
from s2dask.scene import open_scene

CLASSES = [{"value": v, "name": f"c{v}"} for v in (1, 2, 3, 4, 5)]
HAS_BF16 = E.cpu_has_bf16()[0]


def _bundle(path: Path, *, ir: bool, units=(32, 32), mean=2000.0, variance=1.0e6) -> Path:
    """A bundle of seeded weights (no training: deterministic and fast), with or without its IR."""
    model = build_model(10, len(CLASSES), mean=np.full(10, mean), variance=np.full(10, variance),
                        units=units, dropout=(0.0,) * len(units), seed=7)
    path.mkdir(parents=True)
    save_bundle(model, path, bands=TUTORIAL_BANDS, classes=CLASSES)
    if ir:
        E.export_ir(path, keras_model=model)
    return path


@pytest.fixture(scope="module")
def ir_bundle(tmp_path_factory) -> Path:
    return _bundle(tmp_path_factory.mktemp("ir") / "bundle", ir=True)


def _pixels(scene_path: Path, bands) -> tuple[np.ndarray, tuple[int, int]]:
    arr = open_scene(scene_path, bands=bands).values  # small test scenes only
    return arr.reshape(arr.shape[0], -1).T, arr.shape[1:]


def _classes(res) -> np.ndarray:
    return xr.open_zarr(Path(res.out) / "classes.zarr")["classes"].values


def test_default_job_equals_default_prediction(synth_dir, ir_bundle, cluster_client, tmp_path):
    scene = synth_dir / "scene.tif"
    [res] = classify(scene, ir_bundle, tmp_path / "out", chunks=100, client=cluster_client,
                     cog=False, progress=False)
    bundle = load_model(ir_bundle, check_keras=False)
    rows, shape = _pixels(scene, bundle.bands)
    np.testing.assert_array_equal(_classes(res), bundle.predict(rows).reshape(shape))
    # what ran, per worker: auto resolved on each worker as it is in this process
    want = E.resolve()
    record = json.loads((Path(res.out) / "job.json").read_text())
    assert record["engine"]["asked"] == {"engine": "auto", "precision": "auto", "batch_size": None,
                                         "tf_threads": None}
    workers = record["engine"]["workers"]
    assert len(workers) == 2
    for rec in workers.values():
        assert (rec["engine"], rec["precision"], rec["device"]) == (want.engine, want.precision, "cpu")
        assert rec["batch_size"] == 2048 and rec["model_source"] == "ir" and rec["threads"] >= 1
    assert record["parameters"]["batch_size"] == 2048


@pytest.mark.parametrize("engine, precision", [
    ("keras", "fp32"), ("openvino", "fp32"),
    pytest.param("openvino", "bf16", marks=pytest.mark.skipif(not HAS_BF16, reason="no bf16 matrix units")),
])
def test_classify_equals_predict_per_engine(synth_dir, ir_bundle, cluster_client, tmp_path, engine,
                                            precision):
    scene = synth_dir / "scene.tif"
    [res] = classify(scene, ir_bundle, tmp_path / "out", chunks=(128, 96), client=cluster_client,
                     cog=False, progress=False, engine=engine, precision=precision)
    bundle = load_model(ir_bundle, check_keras=False)
    rows, shape = _pixels(scene, bundle.bands)
    expected = bundle.predict(rows, engine=engine, precision=precision).reshape(shape)
    np.testing.assert_array_equal(_classes(res), expected)
    workers = res.record["engine"]["workers"].values()
    assert {(r["engine"], r["precision"]) for r in workers} == {(engine, precision)}
    assert {r["batch_size"] for r in workers} == {8192 if engine == "keras" else 2048}


def test_openvino_workers_import_no_tensorflow(synth_dir, ir_bundle, tmp_path):
    """A fresh worker that runs a job with a stored IR never imports TensorFlow or Keras."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit="2GiB") as cluster, Client(cluster, set_as_default=False) as client:
        [res] = classify(synth_dir / "scene.tif", ir_bundle, tmp_path / "out", client=client,
                         engine="openvino", cog=False, progress=False)
        loaded = client.run(lambda: sorted(m for m in ("tensorflow", "keras", "jax", "torch")
                                           if m in sys.modules))
    assert list(loaded.values()) == [[]]
    [rec] = res.record["engine"]["workers"].values()
    assert rec["model_source"] == "ir" and rec["engine"] == "openvino"


def test_bundle_without_ir_is_converted_once(synth_dir, cluster_client, tmp_path):
    from s2dask.job.worker import build_counts

    plain = _bundle(tmp_path / "plain", ir=False)
    for i in range(2):
        [res] = classify(synth_dir / "scene.tif", plain, tmp_path / f"out{i}", chunks=100,
                         client=cluster_client, engine="openvino", precision="fp32", cog=False,
                         progress=False)
        assert {r["model_source"] for r in res.record["engine"]["workers"].values()} == {"converted"}
    sha = load_model(plain, check_keras=False).sha256
    assert all(c.get(sha) == 1 for c in cluster_client.run(build_counts).values())


def test_ir_is_checked_on_load(ir_bundle, tmp_path):
    import shutil

    d = Path(shutil.copytree(ir_bundle, tmp_path / "b"))
    assert load_model(d, check_keras=False).has_ir
    weights = bytearray((d / "model.bin").read_bytes())
    weights[64] ^= 0xFF
    (d / "model.bin").write_bytes(bytes(weights))
    with pytest.raises(ModelError) as exc:
        load_model(d, check_keras=False)
    text = str(exc.value)
    assert "\n" not in text and "does not match the sha256" in text and "export_ir" in text


def test_bad_engine_options_are_refused_before_anything_runs(synth_dir, ir_bundle, tmp_path):
    with pytest.raises(ParameterError) as exc:
        classify(synth_dir / "scene.tif", ir_bundle, tmp_path / "out", engine="tensorrt")
    assert "auto, keras, openvino" in str(exc.value)
    with pytest.raises(ParameterError) as exc:
        classify(synth_dir / "scene.tif", ir_bundle, tmp_path / "out", engine="keras", precision="bf16")
    assert "--engine openvino" in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_cli_prints_the_engine_and_records_startup(synth_dir, ir_bundle, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "s2dask.cli", "classify", str(synth_dir / "scene.tif"),
                           "--model", str(ir_bundle), "--out", str(out), "--workers", "1",
                           "--engine", "openvino", "--precision", "fp32", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "engine: openvino fp32 on cpu, batch 2048" in proc.stdout and "IR (1 worker)" in proc.stdout
    startup = json.loads((out / "scene" / "job.json").read_text())["timings_s"]["startup"]
    assert startup["since"] == "process start"
    assert 0 < startup["cluster_up"] <= startup["model_delivered"] <= startup["first_chunk"]
    assert startup["scenes_checked"] <= startup["first_chunk"]


@pytest.mark.skipif(sample_data_dir() is None, reason="Buffalo sample data not found: set S2DASK_SAMPLE_DATA")
def test_fp32_engines_agree_on_buffalo(tmp_path):
    """Keras and OpenVINO in float32 give the same class map on the real Buffalo scene."""
    import pandas as pd

    from s2dask.scene.grid import grid_to_raster

    grid = sample_data_dir() / "grid_data.csv"
    scene = grid_to_raster(grid, tmp_path / "buffalo.tif", crs="EPSG:32617")
    table = pd.read_csv(grid)[TUTORIAL_BANDS].to_numpy("float64")
    bundle_dir = _bundle(tmp_path / "bundle", ir=True, units=(200, 200, 200, 200),
                         mean=table.mean(), variance=table.var())
    bundle = load_model(bundle_dir)
    rows, _ = _pixels(scene, bundle.bands)
    keras = bundle.predict(rows, engine="keras")
    ov = bundle.predict(rows, engine="openvino", precision="fp32")
    assert (keras != 255).sum() >= 35_000
    np.testing.assert_array_equal(ov, keras)


def test_classify_without_client_starts_its_cluster_while_checking(synth_dir, ir_bundle, tmp_path):
    [res] = classify(str(synth_dir / "scene.tif"), ir_bundle, str(tmp_path / "out"), workers=1,
                     threads_per_worker=1, engine="openvino", precision="fp32", cog=False, progress=False)
    assert res.status == "complete"
    startup = res.record["timings_s"]["startup"]
    assert startup["since"] == "call start"  # not the process's: this process is older
    assert 0 < startup["cluster_up"] <= startup["model_delivered"] <= startup["first_chunk"]
    [rec] = res.record["engine"]["workers"].values()
    assert (rec["engine"], rec["precision"], rec["model_source"]) == ("openvino", "fp32", "ir")


_FORK_CHECK = """
from s2dask.job.cluster import close_cluster
from s2dask.job.startup import ClusterStart

def info():
    import os, sys, threadpoolctl
    blas = sorted({p["num_threads"] for p in threadpoolctl.threadpool_info()})
    parent = f"/proc/{os.getppid()}/task"  # the fork server (forkserver) or the nanny's process
    threads = sorted(open(f"{parent}/{t}/comm").read().strip() for t in os.listdir(parent))
    return ["s2dask.job.worker" in sys.modules, "openvino" in sys.modules, os.environ.get("OMP_NUM_THREADS"),
            ",".join(map(str, blas)), ",".join(threads)]

if __name__ == "__main__":  # the CLI's way: the cluster starts in a thread, distributed not imported yet
    import sys
    with ClusterStart(None, workers=1, threads_per_worker=1, dashboard=False) as start:
        # returned once the thread imported what it needs: the caller's imports never race it
        assert "distributed" in sys.modules and "distributed.http.scheduler.info" in sys.modules
        client, cluster = start.result()
        try:
            import dask
            [got] = client.run(info).values()
            print(dask.config.get("distributed.worker.multiprocessing-method"), *got)
        finally:
            close_cluster(client, cluster)
"""


@pytest.mark.parametrize("method", [None, "spawn"])
def test_embedded_workers_fork_from_a_preloaded_server(tmp_path, method):
    """An embedded cluster's workers are forked from a server that imported the worker side
    (and OpenVINO) once and runs one thread, with the nanny's environment: BLAS pools of one
    thread; a start method the user chose is kept. ClusterStart returns once its thread has
    imported what the start needs (the caller's imports raced it: ``KeyError: 'dask'``, one
    start in four)."""
    script = tmp_path / "check.py"
    script.write_text(_FORK_CHECK)
    env = {k: v for k, v in os.environ.items()  # as a fresh shell has them (an earlier test's
           if k not in ("OMP_NUM_THREADS", "JE_ARROW_MALLOC_CONF",  # start_fork_server set them)
                        "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD")}
    if method:
        env["DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD"] = method
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    *line, parent_threads = proc.stdout.strip().splitlines()[-1].split()
    if method is None:
        assert line == ["forkserver", "True", "True", "1", "1"]
        # and the server forked it with no other thread running: not Arrow's jemalloc
        # background thread either (pandas imports pyarrow), which fork() would leave in
        # an unknown state in the child
        assert parent_threads == "python", parent_threads
    else:  # spawned: a fresh interpreter that imported neither (yet)
        assert line == ["spawn", "False", "False", "1", "1"]


def test_only_the_fork_server_leaves_without_teardown():
    """s2dask.job.preload makes the fork server of the process named in its environment leave
    with os._exit(0) at exit (no teardown while it still holds the client's stdout); any
    other process importing it keeps its own exit code."""
    from s2dask.job.cluster import FORK_SERVER_PARENT_ENV

    code = "import sys, s2dask.job.preload; print('imported', flush=True); sys.exit(5)"
    for parent, want in ((str(os.getpid()), 0), (str(os.getpid() + 10**6), 5), (None, 5)):
        env = {k: v for k, v in os.environ.items() if k != FORK_SERVER_PARENT_ENV}
        if parent is not None:
            env[FORK_SERVER_PARENT_ENV] = parent  # this test process "started" the server
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120, env=env)
        assert (proc.returncode, proc.stdout) == (want, "imported\n"), proc.stderr[-2000:]


def test_the_program_exits_with_the_commands_code(tmp_path):
    """``python -m s2dask.cli`` (cli.run) exits with main()'s code: 0, and 2 on bad input."""
    ok = subprocess.run([sys.executable, "-m", "s2dask.cli", "--version"], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("s2dask ")
    bad = subprocess.run([sys.executable, "-m", "s2dask.cli", "inspect", str(tmp_path / "nowhere.tif")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.startswith("s2dask inspect: error:") and "nowhere.tif" in bad.stderr
