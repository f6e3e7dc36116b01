"""s2dask against the naive way the tutorial classified a scene, on the same pixels.

Naive: in one process, the whole pixel array through ``model.predict(x, batch_size=100)``
(measured on a subset, per-pixel rates reported) and the same with a large batch.
s2dask: ``s2dask.job.run.classify`` of the same synthetic scene, with its own LocalCluster
(default size) and with the chunk sizes given.

    python benchmarks/baseline.py [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import numpy as np  # noqa: E402


def naive(scene: Path, model_dir: Path, *, subset: int, large_batch: int, repeat: int) -> dict:
    """The tutorial's way: read all pixels into (N, 10) and call Keras ``predict``."""
    import rasterio

    from s2dask.model.bundle import load_model

    t = time.perf_counter()
    with rasterio.open(scene) as src:
        arr = src.read()
    x = arr.reshape(arr.shape[0], -1).T.astype("float32")
    t_read = time.perf_counter() - t
    model = load_model(model_dir).keras_model()
    res = {"pixels": x.shape[0], "read_s": t_read}
    for name, bs, xs in (("predict_batch_100", 100, x[:subset]),
                         (f"predict_batch_{large_batch}", large_batch, x)):
        model.predict(xs[: 4 * bs], batch_size=bs, verbose=0)  # trace outside the timing
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            p = model.predict(xs, batch_size=bs, verbose=0)
            best = min(best, time.perf_counter() - t)
        classes = p.argmax(axis=1)
        res[name] = {"batch_size": bs, "pixels": xs.shape[0], "best_s": best,
                     "mpx_s": xs.shape[0] / best / 1e6, "repeat": repeat,
                     "class_counts": np.bincount(classes, minlength=p.shape[1]).tolist()}
    return res


def s2dask_e2e(scene: Path, model_dir: Path, *, chunks: int, size: int, engine_kw: dict) -> dict:
    from s2dask.job.run import classify

    out = C.scratch("baseline-out") / f"c{chunks}"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    (res,) = classify(str(scene), str(model_dir), str(out), chunks=chunks, progress=False, **engine_kw)
    wall = time.perf_counter() - t
    rec = res.record
    shutil.rmtree(out, ignore_errors=True)
    return {"chunks": chunks, "tasks": (-(-size // chunks)) ** 2, "cluster": rec["cluster"],
            "timings_s": rec["timings_s"], "throughput_mpx_s": rec["throughput_mpx_s"],
            "wall_with_cluster_start_s": wall, "mpx_s_with_cluster_start": size * size / 1e6 / wall}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="256^2 scene, small subset")
    p.add_argument("--size", type=int, default=1024, help="scene edge (pixels)")
    p.add_argument("--subset", type=int, default=200_000, help="pixels for predict(batch_size=100)")
    p.add_argument("--large-batch", type=int, default=16384)
    p.add_argument("--chunks", type=int, nargs="*", default=[512, 2048])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/baseline.json)")
    p.add_argument("--cli", action="store_true",
                   help="also the whole s2dask classify process (start-up included), default chunks")
    C.add_engine_args(p)
    a = p.parse_args(argv)
    engine_kw = C.job_engine_keywords(a.engine, a.precision)
    size, subset, chunks, repeat = a.size, a.subset, a.chunks, a.repeat
    if a.quick:
        size, subset, chunks, repeat = 256, 5000, [128], 1
    scene, model_dir = C.scene(size), C.model_bundle()
    settings = {"size": size, "subset": subset, "large_batch": a.large_batch, "chunks": chunks,
                "repeat": repeat, "scene": str(scene)}
    data = C.header("baseline", settings)
    print("naive model.predict in this process ...", file=sys.stderr)
    data["naive"] = nv = naive(scene, model_dir, subset=min(subset, size * size),
                               large_batch=a.large_batch, repeat=repeat)
    data["s2dask"] = []
    for c in chunks:
        print(f"s2dask classify, chunks {c} ...", file=sys.stderr)
        data["s2dask"].append(s2dask_e2e(scene, model_dir, chunks=c, size=size, engine_kw=engine_kw))
    n100 = nv["predict_batch_100"]["mpx_s"]
    nbig = nv[f"predict_batch_{a.large_batch}"]["mpx_s"]
    rows = [("naive predict(batch_size=100)", "", n100, 1.0, ""),
            (f"naive predict(batch_size={a.large_batch})", "", nbig, nbig / n100, "")]
    for r in data["s2dask"]:
        e = r["throughput_mpx_s"]["end_to_end"]
        r["vs_naive_100"] = e / n100
        r["vs_naive_large"] = e / nbig
        r["with_cluster_start_vs_naive_100"] = r["mpx_s_with_cluster_start"] / n100
        rows.append(("s2dask classify end to end", r["chunks"], e, e / n100, e / nbig))
        rows.append(("  incl. cluster start", r["chunks"], r["mpx_s_with_cluster_start"],
                     r["mpx_s_with_cluster_start"] / n100, r["mpx_s_with_cluster_start"] / nbig))
    if a.cli:
        print("s2dask classify, the whole CLI process ...", file=sys.stderr)
        cli = C.cli_classify(scene, model_dir, C.scratch("baseline-out") / "cli",
                             args=C.cli_engine_args(a.engine, a.precision))
        rec = cli.pop("record")
        data["cli"] = {**cli, "timings_s": rec["timings_s"], "chunks": rec["parameters"]["chunks"],
                       "engine": C.default_engine(a.engine, a.precision),
                       "vs_naive_100": cli["mpx_s"] / n100, "target_20x_naive_100": cli["mpx_s"] / n100 >= 20}
        rows.append(("s2dask classify, whole CLI process", "auto", cli["mpx_s"], cli["mpx_s"] / n100,
                     cli["mpx_s"] / nbig))
    best = max(r["vs_naive_100"] for r in data["s2dask"])
    data["summary"] = {"naive_100_mpx_s": n100, "naive_large_mpx_s": nbig,
                       "best_e2e_vs_naive_100": best,
                       "best_e2e_vs_naive_large": max(r["vs_naive_large"] for r in data["s2dask"]),
                       "target_6x_naive_100": best >= 6.0}
    C.write_json(data, a.json, "baseline-quick.json" if a.quick else "baseline.json")
    print(f"scene {size}^2 ({size * size / 1e6:.2f} Mpx); naive batch 100 on {nv['predict_batch_100']['pixels']} px")
    print(C.table(rows, ["way", "chunks", "Mpx/s", "x naive 100", f"x naive {a.large_batch}"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
