"""Memory of a prediction task per chunk pixel, and a run under a small worker memory limit.

For each chunk edge: ``s2dask.job.run.classify`` on a synthetic scene of 4 x 4 chunks (edge
2048: 2 x 2) on a LocalCluster of ONE single-threaded worker process. The worker's RSS is
sampled every 20 ms; its baseline is taken after a warm-up job (Python, Dask, the
backend and the compiled model all resident), so ``peak - baseline`` is what one task at
a time costs. ``bytes_per_chunk_pixel = (peak - baseline) / edge^2`` is the figure behind
:func:`s2dask.job.memory.max_chunk_edge`.

    python benchmarks/memory.py                          # edges 256 512 1024 2048
    python benchmarks/memory.py --edges 512 --probabilities
    python benchmarks/memory.py --limit-check 1.5GiB --size 4096 --workers 2
    python benchmarks/memory.py --engine-baseline        # worker baseline per engine
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

# ------------------------------------------------------------ run on the worker (by value)


def _sampler(reset: bool = False, interval: float = 0.02) -> dict:
    """Start (once) a thread that keeps this process's peak RSS; return ``{rss, peak}``."""
    import os
    import sys
    import threading
    import time

    import psutil

    proc = psutil.Process(os.getpid())
    state = getattr(sys, "_s2dask_mem", None)
    if state is None:
        state = sys._s2dask_mem = {"peak": 0}

        def loop():
            while True:
                rss = proc.memory_info().rss
                if rss > state["peak"]:
                    state["peak"] = rss
                time.sleep(interval)

        threading.Thread(target=loop, daemon=True, name="s2dask-mem").start()
    rss = proc.memory_info().rss
    if reset:
        state["peak"] = rss
    return {"rss": rss, "peak": max(state["peak"], rss)}


# ------------------------------------------------------------ runs


def measure(edge: int, *, probabilities: bool, size: int | None = None) -> dict:
    import gc

    from distributed import Client, LocalCluster

    from s2dask.job.run import classify

    size = size or (2 * edge if edge >= 2048 else max(4 * edge, 1024))
    scene, warm = C.scene(size), C.scene(256)
    model = C.model_bundle()
    out = C.scratch("memory-out")
    shutil.rmtree(out, ignore_errors=True)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit="16GiB") as cluster, Client(cluster) as client:
        client.run(_sampler)
        classify(str(warm), str(model), str(out / "warm"), chunks=128, client=client, progress=False)
        client.run(gc.collect)
        time.sleep(0.5)
        [base] = client.run(_sampler, True).values()
        t = time.perf_counter()
        classify(str(scene), str(model), str(out / "run"), chunks=edge, client=client,
                 probabilities=probabilities, progress=False)
        wall = time.perf_counter() - t
        [after] = client.run(_sampler).values()
    shutil.rmtree(out, ignore_errors=True)
    extra = after["peak"] - base["rss"]
    return {"edge": edge, "scene": size, "probabilities": probabilities, "wall_s": wall,
            "baseline_rss_bytes": base["rss"], "peak_rss_bytes": after["peak"],
            "task_peak_bytes": extra, "bytes_per_chunk_pixel": extra / edge**2,
            "baseline_gib": base["rss"] / 2**30, "peak_gib": after["peak"] / 2**30}


def limit_check(limit: str, *, size: int, workers: int) -> dict:
    """Default options on ``size``^2 with workers of memory limit ``limit``: completes, no kill."""
    from distributed import Client, LocalCluster

    from s2dask.job.run import classify

    scene, model = C.scene(size), C.model_bundle()
    out = C.scratch("memory-limit-out")
    shutil.rmtree(out, ignore_errors=True)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit=limit) as cluster, Client(cluster) as client:
        client.run(_sampler)
        info = client.scheduler_info()["workers"]
        t = time.perf_counter()
        error = None
        try:
            [res] = classify(str(scene), str(model), str(out), client=client, progress=False)
            status, chunks = res.status, res.record["parameters"]["chunks"]
        except Exception as exc:  # recorded, not raised: the figure is the outcome
            status, chunks, error = "failed", None, f"{type(exc).__name__}: {exc}"[:400]
        wall = time.perf_counter() - t
        peaks = {w: s["peak"] for w, s in client.run(_sampler).items()}
        # a worker killed by the nanny comes back with a new address (and a new sampler)
        restarted = sorted(set(client.scheduler_info()["workers"]) ^ set(info))
    shutil.rmtree(out, ignore_errors=True)
    return {"limit": limit, "size": size, "workers": workers, "status": status, "chunks": chunks,
            "error": error, "wall_s": wall, "worker_peak_gib": {w: p / 2**30 for w, p in peaks.items()},
            "memory_limit_bytes": [w["memory_limit"] for w in info.values()],
            "workers_replaced": restarted}


_ENGINE_RSS = """
import json, sys
import numpy as np, dask, distributed, xarray, zarr, rasterio, psutil  # a worker's stack
from s2dask.model.bundle import load_model
engine, bundle = sys.argv[1], sys.argv[2]
b = load_model(bundle, check_keras=False)
x = np.random.default_rng(0).integers(0, 3000, (4 * 8192, 10)).astype("float32")
if engine == "openvino":
    from s2dask.model.engines import get_openvino_predictor
    from s2dask.model.openvino_ir import load_ir
    pred = get_openvino_predictor(b.sha256, b.contract, lambda: load_ir(bundle), precision="fp32",
                                  batch_size=8192, threads=1)
else:
    pred = b.predictor(batch_size=8192)
pred.predict_rows(x)  # warm: every buffer of the forward pass allocated
print(json.dumps({"engine": engine, "rss_bytes": psutil.Process().memory_info().rss,
                  "tensorflow_imported": "tensorflow" in sys.modules}))
"""


def engine_baselines() -> dict:
    """RSS of a fresh process with a worker's imports, the model built and one warm batch,
    per engine (s2dask.model.engines directly: OpenVINO from the bundle's stored IR, no TensorFlow).

    The Dask worker itself adds to this: the TensorFlow figure here against the 1.05 GiB
    measured in a real worker gives that overhead, added to the OpenVINO figure for
    :data:`s2dask.job.memory.OPENVINO_BASELINE_BYTES`.
    """
    import json
    import subprocess

    bundle = C.model_bundle()  # with its IR, as 's2dask train' writes it
    out = {}
    for engine in ("openvino", "tensorflow"):
        proc = subprocess.run([sys.executable, "-c", _ENGINE_RSS, engine, str(bundle)],
                              capture_output=True, text=True, check=True)
        out[engine] = json.loads(proc.stdout.strip().splitlines()[-1])
        out[engine]["rss_gib"] = out[engine]["rss_bytes"] / 2**30
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edges", type=int, nargs="*", default=[256, 512, 1024, 2048])
    p.add_argument("--probabilities", action="store_true", help="also measure with probabilities")
    p.add_argument("--limit-check", default=None, metavar="LIMIT", help="e.g. 1.5GiB")
    p.add_argument("--size", type=int, default=4096, help="scene edge of the limit check")
    p.add_argument("--workers", type=int, default=2, help="workers of the limit check")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/memory.json)")
    p.add_argument("--engine-baseline", action="store_true",
                   help="RSS of a process with the model built, per engine (OpenVINO, TensorFlow)")
    a = p.parse_args(argv)
    data = C.header("memory", vars(a))
    if a.engine_baseline:
        data["engine_baseline"] = engine_baselines()
        print({e: round(r["rss_gib"], 3) for e, r in data["engine_baseline"].items()})
        C.write_json(data, a.json, "memory-engine-baseline.json")
        return 0
    if a.limit_check:
        data["limit_check"] = limit_check(a.limit_check, size=a.size, workers=a.workers)
        print(data["limit_check"])
        C.write_json(data, a.json, "memory-limit.json")
        return 0 if data["limit_check"]["status"] == "complete" else 1
    data["runs"] = []
    for prob in ([False, True] if a.probabilities else [False]):
        for edge in a.edges:
            r = measure(edge, probabilities=prob)
            print(f"edge {edge:5d} prob={prob!s:5}: baseline {r['baseline_gib']:.3f} GiB, peak "
                  f"{r['peak_gib']:.3f} GiB, {r['bytes_per_chunk_pixel']:.1f} B/px ({r['wall_s']:.1f} s)")
            data["runs"].append(r)
            C.write_json(data, a.json, "memory.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
