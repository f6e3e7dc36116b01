"""Faults, restarts, bad input, and nothing lost: real processes, real kills, real disks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from _cluster import run_or_dump, wait_while_running

from s2dask.errors import ClusterError, ModelError, OutputExistsError, ParameterError, StorageError
from s2dask.job.run import classify

CLI = [sys.executable, "-m", "s2dask.cli"]


def run_cli(*args, timeout=240):
    # a hang fails with the CLI's thread stacks (one fresh-clone run hung a resume here 300 s)
    return run_or_dump([*CLI, *map(str, args)], dict(os.environ), timeout=timeout)


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def reference(synth_dir, tiny_model, cluster_client, tmp_path_factory):
    """An undisturbed run's class map and confidence (chunks 64)."""
    out = tmp_path_factory.mktemp("reference")
    [res] = classify(synth_dir / "scene.tif", tiny_model, out, chunks=64, client=cluster_client,
                     progress=False)
    ds = xr.open_zarr(Path(res.out) / "classes.zarr")
    with rasterio.open(Path(res.out) / "classes.tif") as cog:
        cog_values = cog.read(1)
    return ds["classes"].values, ds["confidence"].values, cog_values


def outputs_of(path: Path):
    ds = xr.open_zarr(path / "classes.zarr")
    with rasterio.open(path / "classes.tif") as cog:
        return ds["classes"].values, ds["confidence"].values, cog.read(1)


def assert_same(got, want):
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


# ----------------------------------------------------------------------------- faults


def test_worker_killed_mid_job_completes_identically(synth_dir, tiny_model, reference, tmp_path):
    from distributed import Client, LocalCluster

    from s2dask.job.worker import build_counts
    from s2dask.model.bundle import load_model

    sha = load_model(tiny_model).sha256
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        out = tmp_path / "out"
        result: dict = {}

        def job():
            try:
                result["res"] = classify(synth_dir / "scene.tif", tiny_model, out, chunks=16,
                                         client=client, progress=False)
            except BaseException as exc:  # surfaced below
                result["error"] = exc

        t = threading.Thread(target=job)
        t.start()
        markers = out / ".scene.partial" / "chunks"
        deadline = time.time() + 120
        while time.time() < deadline and len(list(markers.glob("*.json"))) < 20:
            time.sleep(0.05)
        done_before = len(list(markers.glob("*.json")))
        assert 0 < done_before < 19 * 17, "the job should be mid-way when the worker is killed"
        victim = sorted(client.scheduler_info()["workers"])[0]
        try:
            client.run(os._exit, 1, workers=[victim])  # a hard crash, no cleanup
        except Exception:  # the comm closes under the call: that is the point
            pass
        t.join(300)
        assert not t.is_alive()
        assert "error" not in result, result.get("error")
        [res] = result["res"]
        assert res.status == "complete"
        assert_same(outputs_of(Path(res.out)), reference)
        # the replacement worker got the model from the plugin, without user action
        client.wait_for_workers(2, timeout=60)
        counts = client.run(build_counts)
        assert len(counts) == 2 and all(c.get(sha) == 1 for c in counts.values())


def test_client_killed_then_resumed_computes_only_missing_chunks(tmp_path, tiny_model):
    from s2dask.scene.synthetic import make_scene

    scene = make_scene(tmp_path / "big.tif", size=512, seed=5, nodata_border=3)
    out = tmp_path / "out"
    args = [*CLI, "classify", str(scene), "--model", str(tiny_model), "--out", str(out),
            "--chunks", "32", "--workers", "1", "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    markers = out / ".big.partial" / "chunks"
    try:
        wait_while_running(proc, lambda: len(list(markers.glob("*.json"))) >= 12, "12 chunk markers",
                           timeout=180)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the client and its LocalCluster, at once
        proc.wait(30)
    time.sleep(0.5)
    done = len(list(markers.glob("*.json")))
    assert 12 <= done < 256
    assert not (out / "big").exists()

    refused = run_cli("classify", scene, "--model", tiny_model, "--out", out, "--chunks", 32, "--quiet")
    assert refused.returncode == 2
    line = one_line(refused)
    assert "unfinished output" in line and "--resume" in line and "--overwrite" in line

    resumed = run_cli("classify", scene, "--model", tiny_model, "--out", out, "--chunks", 32,
                      "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((out / "big" / "job.json").read_text())
    kept = record["parameters"]["resumed_chunks"]
    assert kept >= done
    # task time is this run's: the chunks it computed, not the ones it kept
    assert record["task_seconds"]["chunks"] == 256 - kept
    assert record["task_seconds"]["kept_chunks"] == kept
    assert f"in {256 - kept} chunks ({kept} kept from an earlier run)" in resumed.stdout, resumed.stdout
    assert not markers.parent.exists()

    fresh = run_cli("classify", scene, "--model", tiny_model, "--out", tmp_path / "fresh",
                    "--chunks", 32, "--quiet")
    assert fresh.returncode == 0, fresh.stderr
    assert_same(outputs_of(out / "big"), outputs_of(tmp_path / "fresh" / "big"))
    fresh_rec = json.loads((tmp_path / "fresh" / "big" / "job.json").read_text())
    assert record["statistics"] == fresh_rec["statistics"]


def test_resume_with_other_settings_is_refused(tmp_path, tiny_model, synth_dir, cluster_client):
    out = tmp_path / "out"
    partial = out / ".scene.partial"
    # an interrupted job of another model
    classify_args = dict(client=cluster_client, progress=False, cog=False)
    partial.mkdir(parents=True)
    (partial / "params.json").write_text(json.dumps({"model_sha256": "0" * 64, "chunks": [64, 64]}))
    with pytest.raises(OutputExistsError, match="cannot resume .*model_sha256 differs"):
        classify(synth_dir / "scene.tif", tiny_model, out, chunks=64, resume=True, **classify_args)
    assert partial.exists()


def _mount_tmpfs(path: Path, size: str, *, ro: bool = False) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def test_disk_full_gives_one_line_and_no_final_output(synth_dir, tiny_model, tmp_path):
    disk = tmp_path / "small-disk"
    if not _mount_tmpfs(disk, "160k"):
        pytest.skip("cannot mount a small tmpfs here (needs root): the disk-full case is untestable")
    try:
        proc = run_cli("classify", synth_dir / "scene.tif", "--model", tiny_model, "--out", disk / "out",
                       "--chunks", 64, "--probabilities", "--workers", 1, "--quiet")
        assert proc.returncode == 2
        line = one_line(proc)
        assert "No space left on device" in line or "free space" in line, line
        assert not (disk / "out" / "scene").exists()
        # the temporary output is kept for --resume, as documented
        assert (disk / "out" / ".scene.partial").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_read_only_output_gives_one_line(synth_dir, tiny_model, tmp_path):
    disk = tmp_path / "ro-disk"
    if not _mount_tmpfs(disk, "1m", ro=True):
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        proc = run_cli("classify", synth_dir / "scene.tif", "--model", tiny_model, "--out", disk / "out",
                       "--quiet", timeout=120)
        assert proc.returncode == 2
        line = one_line(proc)
        assert str(disk / "out") in line and "Read-only file system" in line
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ----------------------------------------------------------------------------- bad input


def _corrupt_copy(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 3])
    return dst


def _misaligned_folder(src: Path, dst: Path) -> Path:
    dst.mkdir()
    with rasterio.open(src) as s:
        for i, band in enumerate(("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"), 1):
            profile = s.profile | {"count": 1, "driver": "GTiff"}
            if band == "B11":  # shifted by half a pixel
                t = s.transform
                profile["transform"] = rasterio.Affine(t.a, t.b, t.c + 5, t.d, t.e, t.f)
            with rasterio.open(dst / f"{band}.tif", "w", **profile) as d:
                d.write(s.read(i), 1)
    return dst


def _tampered(model: Path, dst: Path) -> Path:
    shutil.copytree(model, dst)
    data = bytearray((dst / "model.keras").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (dst / "model.keras").write_bytes(bytes(data))
    return dst


def _no_contract(model: Path, dst: Path) -> Path:
    shutil.copytree(model, dst)
    (dst / "model.json").unlink()
    return dst


def _too_many_classes(model: Path, dst: Path) -> Path:
    shutil.copytree(model, dst)
    contract = json.loads((dst / "model.json").read_text())
    contract["classes"] = [{"value": i, "name": f"c{i}"} for i in range(255)]
    (dst / "model.json").write_text(json.dumps(contract))
    return dst


def _unsafe(model: Path, dst: Path) -> Path:
    import keras

    from s2dask.model.bundle import save_bundle

    inputs = keras.Input(shape=(10,))
    x = keras.layers.Lambda(lambda t: t * 0.001)(inputs)
    outputs = keras.layers.Dense(5, activation="softmax")(x)
    m = keras.Model(inputs, outputs)
    dst.mkdir()
    save_bundle(m, dst, bands=["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"],
                classes=[{"value": i, "name": f"c{i}"} for i in range(5)])
    return dst


def _corrupt_weights(model: Path, dst: Path) -> Path:
    """Weights that cannot be read, in a bundle re-signed so that its hash matches."""
    from conftest import resigned_copy

    return resigned_copy(model, dst, lambda members: members.update({"model.weights.h5": b"not hdf5" * 64}))


BAD_INPUTS = {
    # found only when the workers build the model: the plugin's failure reaches the client
    "unreadable weights": (lambda s, m, t: (s, _corrupt_weights(m, t / "weights")),
                           ["weights/model.keras", "not a loadable keras model"]),
    # case: (how to make (scene, model) from the good ones, words the line must hold)
    "corrupt raster": (lambda s, m, t: (_corrupt_copy(s, t / "cut.tif"), m), ["cut.tif"]),
    "misaligned bands": (lambda s, m, t: (_misaligned_folder(s, t / "bands"), m), ["B11"]),
    "tampered model": (lambda s, m, t: (s, _tampered(m, t / "tampered")), ["sha256", "tampered"]),
    "missing contract": (lambda s, m, t: (s, _no_contract(m, t / "nocontract")), ["model.json"]),
    "255 classes": (lambda s, m, t: (s, _too_many_classes(m, t / "many")), ["254"]),
    "unsafe model": (lambda s, m, t: (s, _unsafe(m, t / "unsafe")), ["unsafe", "safe mode"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_line_exit_2_nothing_written(case, synth_dir, tiny_model, tmp_path, capsys):
    from s2dask.cli import main

    make, words = BAD_INPUTS[case]
    scene, model = make(synth_dir / "scene.tif", tiny_model, tmp_path)
    out = tmp_path / "out"
    capsys.readouterr()
    # in-process (the subprocess route, native logs included, is tested in test_job.py)
    rc = main(["classify", str(scene), "--model", str(model), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("s2dask classify: error: ")
    for w in words:
        assert w.lower() in line.lower(), (w, line)
    assert not out.exists()


@pytest.mark.parametrize("chunks", ["0", "-5"])
def test_chunk_size_must_be_positive(chunks, synth_dir, tiny_model, tmp_path):
    proc = run_cli("classify", synth_dir / "scene.tif", "--model", tiny_model, "--out", tmp_path / "o",
                   "--chunks", chunks, timeout=60)
    assert proc.returncode == 2
    assert "chunk size must be a positive integer" in one_line(proc)
    assert not (tmp_path / "o").exists()


def test_scheduler_that_does_not_answer_times_out(synth_dir, tiny_model, tmp_path):
    t0 = time.time()
    proc = run_cli("classify", synth_dir / "scene.tif", "--model", tiny_model, "--out", tmp_path / "o",
                   "--scheduler", "tcp://127.0.0.1:9", "--timeout", "3", timeout=60)
    assert proc.returncode == 2
    line = one_line(proc)
    assert "tcp://127.0.0.1:9" in line and "scheduler" in line
    assert time.time() - t0 < 45
    assert not (tmp_path / "o" / "scene").exists()


def test_library_errors_keep_builtin_types():
    assert issubclass(ParameterError, ValueError) and issubclass(StorageError, OSError)
    assert issubclass(ClusterError, ConnectionError) and issubclass(ModelError, ValueError)


# ----------------------------------------------------------------------------- nodata, determinism


def test_all_nodata_scene_gives_valid_all_nodata_output(tmp_path, tiny_model, cluster_client):
    path = tmp_path / "empty.tif"
    profile = dict(driver="GTiff", width=70, height=50, count=10, dtype="uint16", nodata=0,
                   crs="EPSG:32633", transform=rasterio.Affine(10, 0, 500000, 0, -10, 6000000))
    with rasterio.open(path, "w", **profile) as d:
        d.write(np.zeros((10, 50, 70), "uint16"))
        for i, b in enumerate(("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"), 1):
            d.set_band_description(i, b)
    [res] = classify(path, tiny_model, tmp_path / "out", chunks=32, client=cluster_client, progress=False)
    assert res.status == "complete"
    classes, confidence, cog = outputs_of(Path(res.out))
    assert (classes == 255).all() and (confidence == 0).all() and (cog == 255).all()
    assert res.record["statistics"]["nodata_pixels"] == 70 * 50
    from s2dask.maps.writers import validate_cog

    assert validate_cog(Path(res.out) / "classes.tif")[0]


def test_pixel_nodata_in_any_band_never_gets_a_class(tmp_path, tiny_model, cluster_client, synth_dir):
    src = synth_dir / "scene.tif"
    path = tmp_path / "holes.tif"
    with rasterio.open(src) as s:
        data = s.read()
        profile = s.profile | {"driver": "GTiff"}
        names = s.descriptions
    rng = np.random.default_rng(0)
    holes = rng.random(data.shape[1:]) < 0.05
    band = rng.integers(0, 10, size=data.shape[1:])
    for b in range(10):
        data[b][holes & (band == b)] = 0  # one band missing per hole pixel
    with rasterio.open(path, "w", **profile) as d:
        d.write(data)
        for i, n in enumerate(names, 1):
            d.set_band_description(i, n)
    [res] = classify(path, tiny_model, tmp_path / "out", chunks=100, client=cluster_client, progress=False)
    classes, confidence, _ = outputs_of(Path(res.out))
    assert (classes[holes] == 255).all() and (confidence[holes] == 0).all()


def test_same_map_for_one_or_two_workers(synth_dir, tiny_model, reference, tmp_path):
    proc = run_cli("classify", synth_dir / "scene.tif", "--model", tiny_model, "--out", tmp_path,
                   "--chunks", 100, "--workers", 1, "--threads-per-worker", 2, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert_same(outputs_of(tmp_path / "scene"), reference)


# ----------------------------------------------------------------------------- load


def test_batch_of_20_scenes_with_one_bad(tmp_path, tiny_model, cluster_client):
    from s2dask.scene.synthetic import make_scene

    scenes = [make_scene(tmp_path / "in" / f"s{i:02d}.tif", size=(48 + i, 40), seed=i) for i in range(20)]
    bad = tmp_path / "in" / "s07.tif"
    bad.write_bytes(b"this is not a raster")
    results = classify(scenes, tiny_model, tmp_path / "out", chunks=32, client=cluster_client,
                       progress=False)
    assert len(results) == 20
    failed = [r for r in results if r.status != "complete"]
    assert [r.scene for r in failed] == [str(bad)]
    assert "s07.tif" in failed[0].error
    batch = json.loads((tmp_path / "out" / "batch.json").read_text())
    assert [s["status"] for s in batch["scenes"]].count("complete") == 19
    assert batch["scenes"][7]["error"] == failed[0].error
    from s2dask.model.bundle import load_model
    from s2dask.scene import open_scene

    bundle = load_model(tiny_model)
    for r in results:
        if r.status != "complete":
            assert not (tmp_path / "out" / "s07").exists()
            continue
        rec = json.loads((Path(r.out) / "job.json").read_text())
        assert rec["status"] == "complete"
        arr = open_scene(r.scene, bands=bundle.bands).values
        want = bundle.predict(arr.reshape(10, -1).T).reshape(arr.shape[1:])
        np.testing.assert_array_equal(xr.open_zarr(Path(r.out) / "classes.zarr")["classes"].values, want)
