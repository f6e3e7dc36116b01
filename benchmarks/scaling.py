"""The same job at 1 and 2 workers, threads against processes, and across chunk sizes.

Every configuration starts its own LocalCluster through ``s2dask.job.run.classify`` (as the
CLI does) on the same synthetic scene; speed-ups are against 1 worker x 1 thread
measured in the same run.

    python benchmarks/scaling.py [--quick] [--size 4096] [--json OUT]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def run(scene: Path, model: Path, *, size: int, workers: int, threads: int, chunks: int,
        tf_threads: int | None, label: str) -> dict:
    from s2dask.job.run import classify

    out = C.scratch("scaling-out") / label.replace(" ", "_")
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    (res,) = classify(str(scene), str(model), str(out), chunks=chunks, workers=workers,
                      threads_per_worker=threads, tf_threads=tf_threads, progress=False)
    wall = time.perf_counter() - t
    shutil.rmtree(out, ignore_errors=True)
    rec = res.record
    return {"label": label, "workers": workers, "threads_per_worker": threads, "chunks": chunks,
            "tf_threads": tf_threads or max(1, (C.machine()["cores_usable"] or 1) // (workers * threads)),
            "tasks": (-(-size // chunks)) ** 2, "timings_s": rec["timings_s"],
            "throughput_mpx_s": rec["throughput_mpx_s"], "wall_with_cluster_start_s": wall}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="256^2 scene, two configurations")
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--chunks", type=int, nargs="*", default=[512, 1024, 2048, 4096],
                   help="chunk sweep at 2 workers x 1 thread")
    p.add_argument("--base-chunks", type=int, default=1024,
                   help="chunks of the workers x threads comparison")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/scaling.json)")
    a = p.parse_args(argv)
    size = 256 if a.quick else a.size
    # (label, workers, threads per worker, chunks, tf threads); the workers x threads
    # comparison uses --base-chunks (enough tasks for every thread), the sweep 2 x 1
    bc = a.base_chunks
    configs = [("1w x 1t, tf 1", 1, 1, bc, 1),
               ("1w x 1t, tf 2 (default)", 1, 1, bc, None),
               ("1w x 2t", 1, 2, bc, None),
               ("2w x 1t (default)", 2, 1, bc, None)]
    configs += [(f"2w x 1t, chunks {c}", 2, 1, c, None) for c in a.chunks if c != bc]
    if a.quick:
        configs = [("1w x 1t, tf 1", 1, 1, 128, 1), ("2w x 1t (default)", 2, 1, 128, None)]
    scene, model = C.scene(size), C.model_bundle()
    from s2dask.model.bundle import load_model

    load_model(model).keras_model()  # import the backend now, not in the first config's "open"
    data = C.header("scaling", {"size": size, "configs": [c[0] for c in configs],
                                "base_chunks": 128 if a.quick else bc})
    data["runs"] = []
    for label, w, t, c, tf in configs:
        print(f"{label} ...", file=sys.stderr)
        data["runs"].append(run(scene, model, size=size, workers=w, threads=t, chunks=c,
                                tf_threads=tf, label=label) | {"group": "sweep" if "chunks" in label
                                                               else "workers x threads"})
    base = data["runs"][0]["throughput_mpx_s"]["end_to_end"]
    rows = []
    for r in data["runs"]:
        e = r["throughput_mpx_s"]["end_to_end"]
        r["speedup_vs_1w1t_tf1"] = e / base
        rows.append((r["label"], r["chunks"], r["tasks"], r["tf_threads"], e,
                     r["throughput_mpx_s"]["predict"], r["speedup_vs_1w1t_tf1"],
                     r["wall_with_cluster_start_s"]))
    path = C.write_json(data, a.json, "scaling-quick.json" if a.quick else "scaling.json")
    print(f"scene {size}^2")
    print(C.table(rows, ["config", "chunks", "tasks", "tf thr", "e2e Mpx/s", "predict Mpx/s",
                         "x 1w1t tf1", "wall s"]))
    if not a.quick:
        _plot(data, C.plot_path(path))
    return 0


def _plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    cfg = [r for r in runs if r["group"] == "workers x threads"]
    ch = sorted((r for r in runs if r["workers"] == 2 and r["threads_per_worker"] == 1),
                key=lambda r: r["chunks"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar([r["label"] for r in cfg], [r["throughput_mpx_s"]["end_to_end"] for r in cfg])
    ax1.set_ylabel("end to end Mpx/s")
    ax1.set_title(f"workers x threads (chunks {data['settings']['base_chunks']}, "
                  f"{data['settings']['size']}² scene)", fontsize=9)
    ax1.tick_params(axis="x", labelsize=7, rotation=15)
    ax2.plot([r["chunks"] for r in ch], [r["throughput_mpx_s"]["end_to_end"] for r in ch], "o-",
             label="end to end")
    ax2.plot([r["chunks"] for r in ch], [r["throughput_mpx_s"]["predict"] for r in ch], "s--",
             label="predict phase")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("chunk edge (pixels)")
    ax2.set_ylabel("Mpx/s")
    ax2.set_ylim(0, None)
    ax2.set_title("2 workers x 1 thread, chunk size", fontsize=9)
    ax2.legend(fontsize=8)
    fig.suptitle(f"{data['machine']['cpu']} ({data['machine']['cores_usable']} cores)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
