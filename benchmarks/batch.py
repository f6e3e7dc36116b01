"""Worker utilisation over a batch of scenes: one at a time against the pipelined batch.

Utilisation = time the workers spent in tasks / (worker threads x wall time), from the
scheduler's task stream (``distributed.get_task_stream``: every task's compute span on
every worker, prediction chunks and COG tasks alike). Wall time is the client's, from
the call to its return (scene checks, layout, chunks, COGs, records and commits).

- sequential: one ``classify(scene)`` call per scene, one after the other (what a batch
  did before: the next scene starts once the previous one is committed);
- pipelined: one ``classify(scenes)`` call (the next scene's chunks run while the previous
  scene's COG is written and it is committed; two scenes in flight).

Both on the same LocalCluster (default size, started once, the model built on every worker
by a warm-up job before either is timed), the same synthetic 10-band uint16 COGs.

    python benchmarks/batch.py                      # 8 scenes of 2048^2 -> results/batch.json
    python benchmarks/batch.py --quick --json /tmp/b.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def _busy(stream: list[dict]) -> dict:
    """Seconds in compute per kind of task (chunk predictions, COG writes, other)."""
    out = {"predict": 0.0, "cog": 0.0, "other": 0.0}
    for t in stream:
        key = str(t["key"])
        kind = "predict" if "s2dask-predict" in key else "cog" if "write_rasters" in key else "other"
        out[kind] += sum(s["stop"] - s["start"] for s in t["startstops"] if s["action"] == "compute")
    return out


def run_mode(mode: str, scenes: list[Path], model: Path, client, *, threads: int, kw: dict) -> dict:
    from distributed import get_task_stream

    from s2dask.job.run import classify

    out = C.scratch("batch-out") / mode
    shutil.rmtree(out, ignore_errors=True)
    with get_task_stream(client=client) as ts:
        t = time.perf_counter()
        if mode == "sequential":
            results = [r for s in scenes for r in classify(str(s), str(model), str(out),
                                                           client=client, progress=False, **kw)]
        else:
            results = classify([str(s) for s in scenes], str(model), str(out), client=client,
                               progress=False, **kw)
        wall = time.perf_counter() - t
    assert all(r.status == "complete" for r in results), [r.error for r in results]
    busy = _busy(ts.data)
    total = sum(busy.values())
    mpx = sum(r.record["statistics"]["pixels"] for r in results) / 1e6
    shutil.rmtree(out, ignore_errors=True)
    return {"mode": mode, "wall_s": wall, "threads": threads, "busy_s": busy,
            "utilisation": total / (threads * wall),
            "utilisation_predict_only": busy["predict"] / (threads * wall),
            "megapixels": mpx, "mpx_s": mpx / wall, "tasks": len(ts.data),
            "chunks": results[0].record["parameters"]["chunks"],
            "engine": {k: results[0].record[k] for k in ("engine", "precision") if k in results[0].record}}


def main(argv=None) -> int:
    from distributed import Client, LocalCluster

    from s2dask.job.cluster import local_cluster_size
    from s2dask.job.run import classify

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--size", type=int, default=2048, help="scene edge (pixels)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="threads per worker")
    p.add_argument("--quick", action="store_true", help="3 scenes of 256^2 (smoke test)")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/batch.json)")
    C.add_engine_args(p)
    a = p.parse_args(argv)
    n, size = (3, 256) if a.quick else (a.scenes, a.size)
    workers, threads = local_cluster_size(a.workers, a.threads)
    kw = C.job_engine_keywords(a.engine, a.precision)
    scenes = [C.scene(size, seed=i) for i in range(n)]
    model = C.model_bundle()
    data = C.header("batch", {"scenes": n, "size": size, "workers": workers,
                              "threads_per_worker": threads, "job_keywords": kw})
    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                           dashboard_address=":0")
    client = Client(cluster, set_as_default=False)
    try:
        client.wait_for_workers(workers)
        warm = C.scratch("batch-out") / "warm-up"
        shutil.rmtree(warm, ignore_errors=True)
        classify(str(scenes[0]), str(model), str(warm), client=client, progress=False, **kw)
        shutil.rmtree(warm, ignore_errors=True)
        data["runs"] = [run_mode(m, scenes, model, client, threads=workers * threads, kw=kw)
                        for m in ("sequential", "pipelined")]
    finally:
        client.close()
        cluster.close()
    seq, pipe = data["runs"]
    data["summary"] = {"utilisation_sequential": seq["utilisation"],
                       "utilisation_pipelined": pipe["utilisation"],
                       "speedup": seq["wall_s"] / pipe["wall_s"],
                       "target_utilisation>=0.85": pipe["utilisation"] >= 0.85}
    C.write_json(data, a.json, "batch-quick.json" if a.quick else "batch.json")
    print(f"{n} scenes of {size}^2, {workers} worker(s) x {threads} thread(s), "
          f"load at start {data['machine']['load_avg_at_start'][0]:.2f}")
    print(C.table([(r["mode"], r["wall_s"], r["mpx_s"], r["busy_s"]["predict"], r["busy_s"]["cog"],
                    r["utilisation"], r["utilisation_predict_only"]) for r in data["runs"]],
                  ["mode", "wall s", "Mpx/s", "predict busy s", "COG busy s", "utilisation",
                   "predict only"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
