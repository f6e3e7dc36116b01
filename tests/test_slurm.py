"""The SLURM recipes run for real: cluster/slurm/s2dask.sbatch and jobqueue.py on a SLURM.

They need a SLURM whose node is up: ``.ci/run`` starts a single-node one with
``cluster/slurm/local-slurm.sh start`` when it runs as root with Debian's apt and exports
``S2DASK_SLURM=1``; elsewhere these tests skip with the reason (and fail where
``S2DASK_SLURM=1`` promised one). Both recipes run with their defaults: this venv, TLS with
certificates made for the run. Faults: a worker job cancelled mid-run (the job completes, the
same map), the allocation ending mid-run (``--resume`` in a new allocation completes it). A
chunk is held mid-run by the worker preload of tests/_hang.py, so that the fault lands while
the job runs, whatever the machine's speed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from _cluster import CLUSTER, REPO, recipe_env

from s2dask.job.run import classify

TESTS = Path(__file__).resolve().parent
SBATCH = CLUSTER / "slurm" / "s2dask.sbatch"
JOBQUEUE = CLUSTER / "slurm" / "jobqueue.py"


def _slurm_missing() -> str | None:
    """Why no SLURM can run these tests here, or ``None``."""
    start = "cluster/slurm/local-slurm.sh start (as root; .ci/run does) runs one on this machine"
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return f"no SLURM here (sbatch not found): {start}"
    if not Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).is_file():
        return f"no SLURM configured here (no $SLURM_CONF, no /etc/slurm/slurm.conf): {start}"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return f"sinfo did not answer within 20 s: is slurmctld running? {start}"
    if states.returncode != 0 or not {"idle", "mix", "alloc"} & set(states.stdout.split()):
        last = (states.stdout + states.stderr).strip().splitlines()[-1:] or ["no node"]
        return f"no SLURM node is up (sinfo: {last[0][:160]}): {start}"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm():
    reason = _slurm_missing()
    if reason and os.environ.get("S2DASK_SLURM") == "1":
        pytest.fail(f"S2DASK_SLURM=1 but {reason}")
    if reason:
        pytest.skip(reason)


def classes_of(out: Path) -> tuple[np.ndarray, np.ndarray]:
    ds = xr.open_zarr(out / "classes.zarr")
    return ds["classes"].values, ds["confidence"].values


def assert_same(out: Path, want) -> None:
    for got, ref in zip(classes_of(out), want):
        np.testing.assert_array_equal(got, ref)


@pytest.fixture(scope="module")
def reference(synth_dir, tiny_model, cluster_client, tmp_path_factory):
    """The map of the LocalCluster every other test compares with."""
    [res] = classify(synth_dir / "scene.tif", tiny_model, tmp_path_factory.mktemp("ref"), chunks=128,
                     client=cluster_client, progress=False)
    return classes_of(Path(res.out))


def _env(tmp_path: Path, run_dir: Path, *, hold: bool = False) -> dict[str, str]:
    """The submitting shell: this venv active, a scheduler on any free port, no dashboard;
    ``hold``: the read of chunk y=128:256 x=0:128 never finishes on the first worker that
    starts it (tests/_hang.py), and its pid is written to ``tmp_path/held``."""
    env = recipe_env({"VIRTUAL_ENV": sys.prefix, "S2DASK_VENV": sys.prefix, "S2DASK_SRC": str(REPO),
                      "S2DASK_RUN_DIR": str(run_dir),
                      "S2DASK_PORT": "0", "S2DASK_DASHBOARD": "0", "S2DASK_DASHBOARD_ADDRESS": ":0",
                      "TF_CPP_MIN_LOG_LEVEL": "3"})
    if hold:
        env.update({"DASK_DISTRIBUTED__WORKER__PRELOAD": '["_hang"]', "PYTHONPATH": str(TESTS),
                    "S2DASK_TEST_HANG": "128,0", "S2DASK_TEST_HANG_ONCE": str(tmp_path / "claimed"),
                    "S2DASK_TEST_HANG_LOG": str(tmp_path / "held")})
    return env


def _args(scene: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [str(scene), "--model", str(model), "--out", str(out), "--chunks", "128", "-q", *extra]


def _wait_for(what: str, ready, *, timeout: float = 180, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"it ended (exit {proc.returncode}) before {what}: {proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:g} s")
        time.sleep(0.2)


def _job_gone(job: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, timeout=20)
    return not out.stdout.strip()


def _logs(run_dir: Path) -> str:
    return "".join(f"\n--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(run_dir.rglob("*.log")))


def _sbatch(args: list[str], env: dict[str, str], cwd: Path, *, wait: bool) -> subprocess.CompletedProcess:
    return subprocess.run(["sbatch", "--parsable", *(["--wait"] if wait else []), str(SBATCH), *args],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_sbatch_recipe_gives_the_same_map_with_tls(synth_dir, tiny_model, reference, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    res = _sbatch(_args(synth_dir / "scene.tif", tiny_model, out), _env(tmp_path, run_dir), tmp_path, wait=True)
    assert res.returncode == 0, res.stderr + _logs(tmp_path)
    assert_same(out / "scene", reference)
    assert (run_dir / "tls" / "ca.pem").is_file()  # made for the allocation
    assert "tls://" in (run_dir / "logs" / f"workers-{os.uname().nodename.split('.')[0]}.log").read_text()
    record = json.loads((out / "scene" / "job.json").read_text())
    assert record["cluster"]["scheduler"].startswith("tls://") and record["cluster"]["workers"] == 2


def test_sbatch_allocation_ends_mid_run_then_resume_completes(synth_dir, tiny_model, reference, tmp_path):
    run_dir, out, scene = tmp_path / "run", tmp_path / "out", synth_dir / "scene.tif"
    res = _sbatch(_args(scene, tiny_model, out), _env(tmp_path, run_dir, hold=True), tmp_path, wait=False)
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip().split(";")[0]
    markers = out / ".scene.partial" / "chunks"
    try:
        _wait_for("8 chunks done and one held",
                  lambda: (tmp_path / "held").is_file() and len(list(markers.glob("*.json"))) == 8)
    finally:
        subprocess.run(["scancel", job], timeout=20)  # the allocation ends
    _wait_for(f"job {job} gone", lambda: _job_gone(job), timeout=60)
    assert not (out / "scene").exists() and len(list(markers.glob("*.json"))) == 8

    again = _sbatch(_args(scene, tiny_model, out, "--resume"), _env(tmp_path, run_dir), tmp_path, wait=True)
    assert again.returncode == 0, again.stderr + _logs(tmp_path)
    assert json.loads((out / "scene" / "job.json").read_text())["parameters"]["resumed_chunks"] == 8
    assert_same(out / "scene", reference)


def test_jobqueue_recipe_survives_a_cancelled_worker_job(synth_dir, tiny_model, reference, tmp_path):
    pytest.importorskip("dask_jobqueue")
    run_dir, out = tmp_path / "run", tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(JOBQUEUE), "--jobs", "2", "--run-dir", str(run_dir), "--",
                             *_args(synth_dir / "scene.tif", tiny_model, out)],
                            env=_env(tmp_path, run_dir, hold=True), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        held = tmp_path / "held"
        _wait_for("a held chunk", lambda: held.is_file() and held.read_text().strip(), proc=proc)
        pid = held.read_text().split()[0]
        environ = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        job = environ["SLURM_JOB_ID"]
        subprocess.run(["scancel", job], check=True, timeout=20)  # that worker's job, mid-run
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err + _logs(run_dir)
    assert (run_dir / "tls" / "cert.pem").is_file()  # TLS by default
    assert_same(out / "scene", reference)
