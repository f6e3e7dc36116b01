"""Smoke test of the benchmarks: each ``--quick`` run finishes and writes its JSON keys.

They run at once (each in its own process and scratch dir) to keep this short; the
figures themselves are not checked (they belong to ``benchmarks/results/``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("threadpoolctl")
pytest.importorskip("psutil")

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
NAMES = ("forward", "baseline", "e2e", "scaling", "batch", "gpu_tile", "spatial")
HEAD = {"benchmark", "created", "command", "machine", "versions", "settings"}
KEYS = {
    "forward": {"groups", "best"},
    "baseline": {"naive", "s2dask", "summary"},
    "e2e": {"runs", "summary"},
    "scaling": {"runs"},
    "batch": {"runs", "summary"},
    "gpu_tile": {"worker_startup", "check"},  # without a GPU: its exactness check alone
    "spatial": {"peaks_gflop_s", "forward", "cli", "halo"},
}


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench")
    procs = {}
    for name in NAMES:
        env = {**os.environ, "S2DASK_BENCH_SCRATCH": str(base / f"scratch-{name}"),
               "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
        out = base / f"{name}.json"
        procs[name] = (subprocess.Popen(
            [sys.executable, str(BENCH / f"{name}.py"), "--quick", "--json", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=base), out)
    results = {}
    for name, (proc, out) in procs.items():
        try:
            text, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            text, _ = proc.communicate()
        results[name] = (proc.returncode, text, out)
    return results


@pytest.mark.parametrize("name", NAMES)
def test_quick_run_writes_json(quick_runs, name):
    rc, text, out = quick_runs[name]
    assert rc == 0, text[-3000:]
    data = json.loads(out.read_text())
    assert HEAD <= set(data), sorted(data)
    assert KEYS[name] <= set(data), sorted(data)
    assert data["benchmark"] == name
    assert data["machine"]["cores_logical"] >= 1
    assert "numpy" in data["versions"]
    if name == "gpu_tile":  # the job's class map is what in-process prediction gives
        assert data["check"]["pixels_differing_job_vs_in_process"] == 0, data["check"]


def test_flop_count():
    sys.path.insert(0, str(BENCH))
    try:
        import _common
    finally:
        sys.path.remove(str(BENCH))
    assert _common.flop_per_pixel() == 2 * (10 * 200 + 3 * 200 * 200 + 200 * 5) == 246000
