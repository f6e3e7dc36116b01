"""End to end: ``s2dask.job.run.classify`` on synthetic 10-band uint16 COG scenes.

For each scene size: megapixels/s end to end, the job record's time split, the peak
resident memory (RSS) of every worker process, and, on the same cluster right after the
job, the forward pass's aggregate throughput (every worker at once, the same processes
and threads as the job) and numpy's matmul peak on the same workers.

    python benchmarks/e2e.py                  # 1024^2 and 4096^2
    python benchmarks/e2e.py --full           # and a full 10980^2 tile
    python benchmarks/e2e.py --quick          # 256^2 only (smoke test)
    python benchmarks/e2e.py --cli --sizes 4096 10980   # whole CLI process vs forward.py's rate

``--cli``: the whole ``s2dask classify`` process (interpreter, imports, its own
LocalCluster, model delivery, every chunk, COG, record), timed from outside, against the
aggregate forward rate of as many single-thread processes as the job has workers, measured
right after in the same run with forward.py's method (synchronised windows, summed, best
of rounds) on the engine, precision and batch size the job ran with (``--engine``,
``--precision`` pass through to both). Targets (issue 13): 4096^2 >= 0.6, 10980^2 >= 0.8.
Also from the job's own record (``task_seconds``, summed from the chunk markers): the model
step's aggregate rate inside the tasks and the whole process against it, a ratio that does
not move with the machine's speed between the job and the reference; and the tasks' split
into read (and decode), model and writes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

# ---------------------------------------------------------------- run on the workers
# (defined here, shipped by value: state lives on the ``sys`` module of each worker)


def _rss_sampler_start(interval: float = 0.05) -> int:
    import os
    import sys
    import threading
    import time

    import psutil

    state = getattr(sys, "_s2dask_bench_rss", None)
    if state is None:
        state = sys._s2dask_bench_rss = {"max": 0, "stop": False}
        proc = psutil.Process(os.getpid())

        def loop():
            while True:
                try:
                    rss = proc.memory_info().rss
                except Exception:
                    rss = 0
                if rss > state["max"]:
                    state["max"] = rss
                time.sleep(interval)

        threading.Thread(target=loop, daemon=True, name="s2dask-bench-rss").start()
    state["max"] = psutil.Process(os.getpid()).memory_info().rss
    return state["max"]


def _rss_max() -> int:
    import sys

    return int(getattr(sys, "_s2dask_bench_rss", {}).get("max", 0))


def _worker_forward(ref, start_at: float, seconds: float, pixels: int, matmul_n: int) -> dict:
    """Time the worker's cached Predictor.forward (and numpy matmul) in a fixed window."""
    import time

    import numpy as np

    from s2dask.job.worker import get_predictor

    pred = get_predictor(ref)
    rng = np.random.default_rng(1)
    x = rng.uniform(100, 4000, size=(pixels, pred.n_bands)).astype("float32")
    pred.forward(x[: pred.batch_size])  # warm
    while time.time() < start_at:
        time.sleep(0.005)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pred.forward(x)
        done += pixels
    fwd = done / (time.perf_counter() - t0)
    a = rng.standard_normal((matmul_n, matmul_n), dtype="float32")
    c = np.empty_like(a)
    np.matmul(a, a, out=c)
    best = float("inf")
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or best == float("inf"):
        t = time.perf_counter()
        np.matmul(a, a, out=c)
        best = min(best, time.perf_counter() - t)
    return {"forward_px_s": fwd, "matmul_flop_s": 2.0 * matmul_n**3 / best}


def _profile_chunk(ref, scene: str, store: str, chunks: int) -> dict:
    """One prediction task's steps, timed apart, on a worker (its cached Predictor)."""
    import time

    import numpy as np

    from s2dask.job.worker import get_predictor
    from s2dask.maps.writers import write_region
    from s2dask.model.blocks import block_outputs
    from s2dask.scene import open_scene

    pred = get_predictor(ref)
    da_ = open_scene(scene, bands=None, chunks=chunks).data
    t = {}
    t0 = time.perf_counter()
    block = np.asarray(da_.blocks[:, 0, 0].compute(scheduler="sync"))
    t["read_decode"] = time.perf_counter() - t0
    nb, ny, nx = block.shape
    t0 = time.perf_counter()
    rows = np.ascontiguousarray(block.reshape(nb, ny * nx).T)
    valid = pred.valid_mask(rows)
    x = rows[valid].astype("float32", copy=False)
    t["transpose_mask_cast"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    p = pred.forward(x)
    t["forward"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    best = p.argmax(axis=1)
    _ = np.clip(np.rint(p[np.arange(p.shape[0]), best] * 100.0), 0, 100).astype("uint8")
    t["argmax_confidence"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = block_outputs(pred, block)
    t["block_outputs_total"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_region(store, out, y=slice(0, ny), x=slice(0, nx), probabilities=False)
    t["write_zarr"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    np.bincount(out[0].ravel(), minlength=256)
    t["bincount"] = time.perf_counter() - t0
    task = t["read_decode"] + t["block_outputs_total"] + t["write_zarr"] + t["bincount"]
    return {"pixels": ny * nx, "seconds": t, "task_s": task,
            "forward_share_of_task": t["forward"] / task}


# ---------------------------------------------------------------- one scene


def run_scene(size: int, *, workers: int, threads: int, chunks: int, batch_size: int | None,
              fwd_seconds: float, matmul_n: int, keep: bool, engine_kw: dict | None = None) -> dict:
    from distributed import Client, LocalCluster

    from s2dask.job.run import classify
    from s2dask.job.worker import ModelRef
    from s2dask.model.blocks import DEFAULT_BATCH_SIZE
    from s2dask.model.bundle import load_model

    scene = C.scene(size)
    model = C.model_bundle()
    out = C.scratch("e2e-out") / f"{size}"
    shutil.rmtree(out, ignore_errors=True)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                           dashboard_address=":0")
    client = Client(cluster)
    try:
        client.wait_for_workers(workers)
        client.run(_rss_sampler_start)
        start_rss = client.run(_rss_max)
        samples: list[tuple[float, dict]] = []
        stop = threading.Event()

        def poll():  # coarse timeline for the record (the fine max is kept on each worker)
            t0 = time.perf_counter()
            while not stop.wait(1.0):
                try:
                    samples.append((time.perf_counter() - t0, client.run(_rss_max)))
                except Exception:
                    pass

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        t = time.perf_counter()
        (res,) = classify(str(scene), str(model), str(out), chunks=chunks, client=client,
                          batch_size=batch_size, progress=False, **(engine_kw or {}))
        wall = time.perf_counter() - t
        stop.set()
        poller.join()
        peak = client.run(_rss_max)
        rec = res.record
        bundle = load_model(model)
        # the job's own predictor on each worker (same options, so the same cache entry)
        bs = int(batch_size or rec["parameters"].get("batch_size") or DEFAULT_BATCH_SIZE)
        ref = ModelRef(bundle.sha256, str(Path(bundle.path).resolve()), batch_size, **(engine_kw or {}))
        start_at = time.time() + 3.0
        futs = [client.submit(_worker_forward, ref, start_at, fwd_seconds, 4 * bs, matmul_n,
                              workers=[w], allow_other_workers=False, pure=False)
                for w in sorted(client.scheduler_info()["workers"])]
        fw = client.gather(futs)
        store = str(Path(res.out) / "classes.zarr")
        w0 = sorted(client.scheduler_info()["workers"])[0]
        prof = client.submit(_profile_chunk, ref, str(scene), store, chunks, workers=[w0],
                             allow_other_workers=False, pure=False).result()
    finally:
        client.close()
        cluster.close()
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    mpx = size * size / 1e6
    fwd_mpx = sum(f["forward_px_s"] for f in fw) / 1e6
    mm = sum(f["matmul_flop_s"] for f in fw)
    e2e = rec["throughput_mpx_s"]["end_to_end"]
    tm = rec["timings_s"]
    # prediction tasks read, predict and write their Zarr chunk: the part of the predict
    # phase that is not forward pass (at the aggregate forward rate) is read + Zarr + overhead
    fwd_time = mpx / fwd_mpx
    return {
        "size": size, "megapixels": mpx, "chunks": chunks, "workers": workers,
        "threads_per_worker": threads, "batch_size": rec["parameters"]["batch_size"],
        "n_tasks": (-(-size // chunks)) ** 2,
        "timings_s": tm, "wall_s": wall,
        "split_s": {"open": tm["open"], "predict_and_write_zarr": tm["predict"],
                    "of_which_forward_est": fwd_time,
                    "of_which_read_zarr_overhead_est": max(0.0, tm["predict"] - fwd_time),
                    "write_cog_validate_quicklook": tm["write"]},
        "throughput_mpx_s": rec["throughput_mpx_s"],
        "forward_mpx_s_same_cluster": fwd_mpx,
        "forward_per_worker": fw,
        "matmul_gflop_s_same_cluster": mm / 1e9,
        "forward_vs_matmul": fwd_mpx * 1e6 * C.flop_per_pixel() / mm,
        "e2e_vs_forward": e2e / fwd_mpx,
        "predict_phase_vs_forward": (rec["throughput_mpx_s"]["predict"] or 0) / fwd_mpx,
        "one_task_profile": prof,
        "worker_rss_start_bytes": start_rss,
        "worker_rss_peak_bytes": peak,
        "worker_rss_peak_gib_max": max(peak.values()) / 2**30,
        "rss_timeline": [{"t": round(t, 1), "rss_gib": {k: round(v / 2**30, 3) for k, v in d.items()}}
                         for t, d in samples],
        "classes_pixels": {c["name"]: c["pixels"] for c in rec["statistics"]["classes"]},
    }


def forward_reference(workers: int, choice: dict, *, quick: bool) -> dict:
    """forward.py's measurement: ``workers`` single-thread processes, summed (same run)."""
    import forward as F

    items = [{**choice, "what": w} for w in ("forward", "block_outputs")]
    seconds = 0.2 if quick else 0.4
    base = {"model": str(C.model_bundle()), "seconds": seconds, "repeat": 1 if quick else 3,
            "slot_s": seconds + 0.25, "pixels": 8192 if quick else 65536, "quick": quick,
            "items": items}
    g = F.summarise(F.run_group([{**base, "threads": 1} for _ in range(workers)]))
    rates = {r["what"]: r["mpx_s"] for r in g["items"]}
    return {"processes": workers, "mpx_s": rates, "reference_mpx_s": max(rates.values()),
            "peaks_gflop_s": g["peaks_gflop_s"], "on_time": g["on_time"]}


def run_cli(size: int, *, workers: int, chunks: int | None, engine: str | None,
            precision: str | None, quick: bool) -> dict:
    """The whole CLI process on a ``size``^2 scene, then the forward reference."""
    import os

    args = ["--workers", str(workers), "--threads-per-worker", "1",
            *(["--chunks", str(chunks)] if chunks else []), *C.cli_engine_args(engine, precision)]
    load = os.getloadavg()[0]
    run = C.cli_classify(C.scene(size), C.model_bundle(), C.scratch("e2e-cli") / str(size), args=args)
    rec = run.pop("record")
    choice = C.default_engine(engine, precision)
    ref = forward_reference(workers, choice, quick=quick)
    return {"size": size, "megapixels": size * size / 1e6, "load_before": load, **run,
            "engine": choice, "job_record_engine": {k: rec[k] for k in ("engine", "precision", "workers")
                                                    if k in rec},
            "chunks": rec["parameters"]["chunks"], "timings_s": rec["timings_s"],
            "forward": ref, "cli_vs_forward": run["mpx_s"] / ref["reference_mpx_s"],
            "target": 0.8 if size >= 10980 else 0.6,
            "in_job": in_job_split(rec, workers, run["wall_s"])}


def in_job_split(rec: dict, workers: int, wall_s: float) -> dict:
    """The job's own task timings (``task_seconds`` in job.json, summed from the chunk markers):
    the model step's rate inside the tasks, and the whole process against it. Measured in the
    job itself, so this ratio does not move with the machine's speed between the job and the
    forward reference measured after it."""
    spent = rec.get("task_seconds") or {}
    model_s = spent.get("model")
    if not model_s:
        return {}
    pixels = rec["statistics"]["pixels"]
    rate = pixels / model_s * workers / 1e6  # every worker's single thread in the model step
    steps = {k: spent[k] for k in ("read", "model", "write") if spent.get(k) is not None}
    return {"task_seconds": steps, "task_shares": {k: v / sum(steps.values()) for k, v in steps.items()},
            "model_mpx_s_aggregate": rate,
            "model_only_wall_s": pixels / 1e6 / rate,
            "cli_vs_in_job_model": pixels / 1e6 / wall_s / rate}


def main_cli(a, workers: int) -> int:
    sizes = a.sizes or ([256] if a.quick else [4096, 10980])
    data = C.header("e2e-cli", {"sizes": sizes, "workers": workers, "threads_per_worker": 1,
                                "chunks": a.cli_chunks, "engine": a.engine, "precision": a.precision})
    data["runs"] = []
    for size in sizes:
        data["runs"].append(run_cli(size, workers=workers, chunks=a.cli_chunks, engine=a.engine,
                                    precision=a.precision, quick=a.quick))
        C.write_json(data, a.json, "e2e-cli-quick.json" if a.quick else "e2e-cli.json")
    print(C.table([(r["size"], f"{r['engine']['engine']} {r['engine']['precision']}", r["wall_s"],
                    r["mpx_s"], r["forward"]["reference_mpx_s"], r["cli_vs_forward"], r["target"],
                    r["in_job"].get("model_mpx_s_aggregate"), r["in_job"].get("cli_vs_in_job_model"),
                    (r["in_job"].get("task_shares") or {}).get("read"), r["load_before"])
                   for r in data["runs"]],
                  ["size", "engine", "CLI wall s", "CLI Mpx/s", "fwd Mpx/s", "CLI/fwd", "target",
                   "in-job model Mpx/s", "CLI/in-job", "read share", "load"]))
    return 0


def main(argv=None) -> int:
    from s2dask.job.cluster import local_cluster_size

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="*", default=None, help="scene edges (pixels)")
    p.add_argument("--full", action="store_true", help="also a full 10980^2 tile")
    p.add_argument("--quick", action="store_true", help="one 256^2 scene, short timings")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="threads per worker")
    p.add_argument("--chunks", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--forward-seconds", type=float, default=5.0)
    p.add_argument("--keep", action="store_true", help="keep the outputs in the scratch dir")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/e2e.json)")
    p.add_argument("--cli", action="store_true",
                   help="time the whole s2dask classify process against forward.py's rate")
    p.add_argument("--cli-chunks", type=int, default=None, help="--chunks of the CLI run (default: its own)")
    C.add_engine_args(p)
    a = p.parse_args(argv)
    workers, threads = local_cluster_size(a.workers, a.threads)
    if a.cli:
        return main_cli(a, workers * threads)
    engine_kw = C.job_engine_keywords(a.engine, a.precision)
    sizes = a.sizes or ([256] if a.quick else [1024, 4096])
    if a.full and 10980 not in sizes:
        sizes = [*sizes, 10980]
    chunks = min(a.chunks, 128) if a.quick else a.chunks
    fwd_s = 0.5 if a.quick else a.forward_seconds
    mm_n = 512 if a.quick else 2048
    settings = {"sizes": sizes, "workers": workers, "threads_per_worker": threads, "chunks": chunks,
                "batch_size": a.batch_size, "forward_seconds": fwd_s, "matmul_n": mm_n,
                "scratch": str(C.SCRATCH), "flop_per_pixel": C.flop_per_pixel()}
    data = C.header("e2e", settings)
    data["runs"] = []
    default = "e2e-quick.json" if a.quick else ("e2e-full.json" if a.full else "e2e.json")
    for size in sizes:
        r = run_scene(size, workers=workers, threads=threads, chunks=chunks,
                      batch_size=a.batch_size, fwd_seconds=fwd_s, matmul_n=mm_n, keep=a.keep,
                      engine_kw=engine_kw)
        data["runs"].append(r)
        C.write_json(data, a.json, default)  # after each size: a long run leaves partial results
    peaks = [r["worker_rss_peak_gib_max"] for r in data["runs"]]
    data["summary"] = {
        "e2e_vs_forward_min": min(r["e2e_vs_forward"] for r in data["runs"]),
        "rss_peak_gib_max": max(peaks),
        "rss_peak_spread": max(peaks) / min(peaks) - 1.0,
        "targets": {"e2e_vs_forward>=0.8": min(r["e2e_vs_forward"] for r in data["runs"]) >= 0.8,
                    "rss_flat_within_20%": max(peaks) / min(peaks) - 1.0 <= 0.2,
                    "rss_under_4GiB": max(peaks) < 4.0},
    }
    path = C.write_json(data, a.json, default)
    rows = [(r["size"], r["n_tasks"], r["throughput_mpx_s"]["end_to_end"], r["forward_mpx_s_same_cluster"],
             r["e2e_vs_forward"], r["timings_s"]["open"], r["timings_s"]["predict"],
             r["timings_s"]["write"], r["worker_rss_peak_gib_max"]) for r in data["runs"]]
    print(f"{workers} worker(s) x {threads} thread(s), chunks {chunks}")
    print(C.table(rows, ["size", "tasks", "e2e Mpx/s", "fwd Mpx/s", "e2e/fwd", "open s",
                         "predict s", "write s", "peak RSS GiB"]))
    print("one task's steps on an otherwise idle worker (s):")
    keys = ("read_decode", "transpose_mask_cast", "forward", "argmax_confidence", "write_zarr")
    print(C.table([(r["size"], r["one_task_profile"]["pixels"], *(r["one_task_profile"]["seconds"][k] for k in keys),
                    r["one_task_profile"]["forward_share_of_task"]) for r in data["runs"]],
                  ["size", "pixels", *keys, "fwd share"]))
    if len(data["runs"]) > 1 and not a.quick:
        _plot(data, C.plot_path(path))
    return 0


def _plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    labels = [f"{r['size']}²" for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    parts = [("open", "open"), ("predict + Zarr", "predict"), ("COG + quicklook", "write")]
    bottom = [0.0] * len(runs)
    for label, key in parts:
        vals = [r["timings_s"][key] / r["timings_s"]["total"] for r in runs]
        ax1.bar(labels, vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, r in enumerate(runs):
        ax1.text(i, 1.02, f"{r['e2e_vs_forward']:.0%} of fwd", ha="center", fontsize=8)
    ax1.set_ylim(0, 1.12)
    ax1.set_ylabel("share of job time")
    ax1.legend(fontsize=8, loc="lower right")
    ax1.set_title("end to end / forward pass (same cluster)")
    # each scene has its own cluster: workers are numbered by address within a run
    n = max(len(r["worker_rss_peak_bytes"]) for r in runs)
    for i in range(n):
        ax2.plot(labels, [sorted(r["worker_rss_peak_bytes"].values())[::-1][i] / 2**30
                          if i < len(r["worker_rss_peak_bytes"]) else float("nan") for r in runs],
                 "o-", label=f"worker {i} (by peak)")
    ax2.set_ylabel("peak RSS (GiB)")
    ax2.set_ylim(0, None)
    ax2.set_title("peak memory per worker process")
    ax2.legend(fontsize=7)
    fig.suptitle(f"s2dask e2e on {data['machine']['cpu']} ({data['machine']['cores_usable']} cores)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
