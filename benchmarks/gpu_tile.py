"""A full tile on a GPU machine: the whole ``s2dask classify`` process, Keras on the GPU.

Issue 13 asks for this whenever a GPU machine is at hand: the full-tile benchmark with
``KERAS_BACKEND=jax``. For each cluster layout it times the whole CLI process (start-up
included) on a synthetic 10980^2 tile, then measures in the same run what the GPU gives
the same model: the Keras predictor a GPU worker builds (``Predictor.forward`` on a
chunk's pixels and ``block_outputs`` on a 2048^2 block, per batch size) and the GPU's
matmul peaks (float32 and bf16, 8192^3, through the Keras backend's own library).

Layouts (``--layouts``):
- ``cuda``: ``classify --gpu`` (dask-cuda: one worker per GPU) with ``--threads-per-worker
  T`` (``--gpu-threads``), so that T chunks are read, decoded and written while the GPU
  predicts;
- ``processes``: the default embedded LocalCluster (one single-thread worker per core);
  every worker sees the GPU, so ``auto`` gives each of them Keras on the GPU.

    KERAS_BACKEND=jax python benchmarks/gpu_tile.py [--size 10980] [--layouts cuda processes]
    python benchmarks/gpu_tile.py --quick   # any machine: the exactness check on 256^2 alone

The scene is made on the spot (GDAL compresses with every core), the model is the
benchmarks' random-weight MLP bundle without an OpenVINO IR. Without a GPU the script
still runs (a smoke test of itself) and says so in the result.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import numpy as np  # noqa: E402


def gpu_peaks(n: int, seconds: float) -> dict:
    """Matmul FLOP/s of the Keras backend's library on its first device: float32, bf16."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    out = {}
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        out["device"] = str(jax.devices()[0])
        for name, dtype, prec in (("fp32", jnp.float32, "highest"), ("tf32", jnp.float32, "default"),
                                  ("bf16", jnp.bfloat16, "default")):
            a = jnp.ones((n, n), dtype)
            f = jax.jit(lambda x, p=prec: jnp.matmul(x, x, precision=p))
            out[name] = C.rate(lambda: f(a).block_until_ready(), 2.0 * n**3, seconds, warm=True)
    elif backend == "torch":
        import torch

        dev = "cuda" if torch.cuda.is_available() else "cpu"
        out["device"] = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
        for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                                  ("bf16", torch.bfloat16, False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.ones((n, n), dtype=dtype, device=dev)

            def mm(a=a):
                a @ a
                if dev == "cuda":
                    torch.cuda.synchronize()
            out[name] = C.rate(mm, 2.0 * n**3, seconds, warm=True)
    return out


def forward_rates(model: Path, batch_sizes: list[int], chunk: int, seconds: float) -> list[dict]:
    """The predictor a worker builds (``engine=auto`` on this device), per batch size."""
    from s2dask.model.blocks import block_outputs
    from s2dask.model.bundle import load_model

    bundle = load_model(model)
    rng = np.random.default_rng(0)
    block = rng.integers(100, 4000, size=(len(bundle.contract.bands), chunk, chunk), dtype="uint16")
    x = block.reshape(block.shape[0], -1).T.astype("float32")
    rows = []
    for bs in batch_sizes:
        pred = bundle.predictor(batch_size=bs or None)
        rec = dict(pred.record())
        fwd = C.rate(lambda p=pred: p.forward(x), x.shape[0], seconds, warm=True)
        blk = C.rate(lambda p=pred: block_outputs(p, block), chunk * chunk, seconds, warm=True)
        rows.append({"batch_size": pred.batch_size, "engine": rec, "forward_mpx_s": fwd / 1e6,
                     "block_outputs_mpx_s": blk / 1e6})
        print(f"  batch {pred.batch_size}: forward {fwd / 1e6:.1f} Mpx/s, block_outputs {blk / 1e6:.1f} Mpx/s",
              file=sys.stderr, flush=True)
    return rows


_CPU_CLASSES = """
import sys
import numpy as np
from s2dask.model.bundle import load_model
rows = np.load(sys.argv[2])
np.save(sys.argv[3], load_model(sys.argv[1]).predict(rows))
"""


def check_classes(model: Path, size: int, out: Path) -> dict:
    """The GPU job's class map against in-process prediction here and on the CPU.

    ``classify`` on a ``size``^2 scene must equal ``load_model(...).predict`` in this
    process (both ``auto``: Keras on the GPU) pixel for pixel; a CPU process (the
    backend's CPU, ``S2DASK_DEVICE=cpu``) gives the float32 reference they are compared with.
    """
    import json
    import subprocess

    import rasterio

    from s2dask.model.bundle import load_model

    scene = C.scene(size)
    run = C.cli_classify(scene, model, out, keep=True)
    rec = run["record"]
    with rasterio.open(Path(rec["output"]["dir"]) / rec["output"]["cog"]) as src:
        job = src.read(1)
    with rasterio.open(scene) as src:
        rows = src.read().reshape(src.count, -1).T
    here = load_model(model).predict(rows).reshape(job.shape)
    np.save(out / "rows.npy", rows)
    env = {**os.environ, "S2DASK_DEVICE": "cpu", "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([sys.executable, "-c", _CPU_CLASSES, str(model), str(out / "rows.npy"),
                    str(out / "cpu.npy")], check=True, env=env)
    cpu = np.load(out / "cpu.npy").reshape(job.shape)
    engines = {w: {k: v.get(k) for k in ("engine", "precision", "device")}
               for w, v in rec["engine"]["workers"].items()}
    result = {"size": size, "job_engines": engines,
              "job_equals_in_process": int((job != here).sum()) == 0,
              "pixels_differing_job_vs_in_process": int((job != here).sum()),
              "agreement_gpu_vs_cpu": float((job == cpu).mean()),
              "pixels_differing_gpu_vs_cpu": int((job != cpu).sum())}
    print("  check:", json.dumps(result), file=sys.stderr, flush=True)
    return result


_STARTUP = """
import json, time
t0 = time.perf_counter()
from s2dask.model.backend import require_keras
keras = require_keras()
t1 = time.perf_counter()
from s2dask.model.backend import worker_devices
dev = worker_devices()
t2 = time.perf_counter()
from s2dask.model.bundle import load_model
bundle = load_model(__import__("sys").argv[1])
model = bundle.keras_model()
t3 = time.perf_counter()
pred = bundle.predictor()
t4 = time.perf_counter()
cache = None
if keras.backend.backend() == "jax":
    import jax
    cache = jax.config.jax_compilation_cache_dir
print(json.dumps({"jax_cache": cache, "import_keras_s": t1 - t0, "devices_s": t2 - t1, "load_model_s": t3 - t2,
                  "compile_s": t4 - t3, "devices": dev, "batch_size": pred.batch_size}))
"""


def startup_split(model: Path) -> dict:
    """What a fresh worker process spends before its first chunk, step by step."""
    import json
    import subprocess

    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _STARTUP, str(model)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"failed": proc.stderr[-2000:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t
    print("  start-up:", json.dumps(out), file=sys.stderr, flush=True)
    return out


def cli_args(layout: str, gpu_threads: int, batch_size: int | None) -> list[str]:
    args = []
    if layout == "cuda":  # gpu_threads 0: classify's default (the cores shared out among the GPUs)
        args = ["--gpu", *(["--threads-per-worker", str(gpu_threads)] if gpu_threads else [])]
    return args + (["--batch-size", str(batch_size)] if batch_size else [])


def main(argv=None) -> int:
    from s2dask.model.engines import detect_device

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=10980, help="scene edge in pixels (default a full tile)")
    p.add_argument("--layouts", nargs="+", default=["cuda", "processes"], choices=["cuda", "processes"])
    p.add_argument("--gpu-threads", type=int, nargs="+", default=[0],
                   help="threads of the dask-cuda worker, one run each (0: classify's default)")
    p.add_argument("--cli-batch-sizes", type=int, nargs="+", default=[0],
                   help="classify --batch-size per run (0: the job's default)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[0, 8192, 65536, 1048576],
                   help="batch sizes of the forward reference (0: the engine's default here)")
    p.add_argument("--check-size", type=int, default=1024, help="scene edge of the exactness check")
    p.add_argument("--check-only", action="store_true", help="the exactness check alone (another backend)")
    p.add_argument("--seconds", type=float, default=3.0, help="window of each rate")
    p.add_argument("--matmul-n", type=int, default=8192)
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/gpu_tile.json)")
    p.add_argument("--quick", action="store_true", help="smoke test: --check-only on a 256^2 scene")
    a = p.parse_args(argv)
    if a.quick:
        a.check_only, a.check_size = True, 256

    device = detect_device()
    data = C.header("gpu_tile", {"size": a.size, "layouts": a.layouts, "gpu_threads": a.gpu_threads,
                                 "cli_batch_sizes": a.cli_batch_sizes, "batch_sizes": a.batch_sizes,
                                 "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
                                 "device_seen": device, "flop_per_pixel": C.flop_per_pixel()})
    if device != "gpu":
        data["note"] = "no GPU seen: a smoke test of the script, not a GPU figure"
    import rasterio

    t = time.perf_counter()
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
        scene = C.scene(a.check_size if a.check_only else a.size)
    data["scene_s"] = time.perf_counter() - t
    model = C.model_bundle(ir=False)
    out = C.scratch("gpu-tile")
    print("worker start-up ...", file=sys.stderr, flush=True)
    data["worker_startup"] = [startup_split(model) for _ in range(1 if a.check_only else 3)]
    print("exactness check ...", file=sys.stderr, flush=True)
    data["check"] = check_classes(model, a.check_size, out / "check")
    C.write_json(data, a.json, "gpu_tile.json")
    if a.check_only:
        return 0
    data["runs"] = []
    for layout in a.layouts:
        if layout == "cuda":
            try:
                import dask_cuda  # noqa: F401
            except ImportError:
                data["runs"].append({"layout": layout, "skipped": "dask-cuda is not installed"})
                continue
        variants = [(t, bs) for t in (a.gpu_threads if layout == "cuda" else [0])
                    for bs in a.cli_batch_sizes]
        for threads, bs in variants:
            args = cli_args(layout, threads, bs or None)
            print(f"classify {layout} {' '.join(args)} ...", file=sys.stderr, flush=True)
            try:
                run = C.cli_classify(scene, model, out / layout, args=args)
            except RuntimeError as exc:
                data["runs"].append({"layout": layout, "args": args, "failed": str(exc)[-2000:]})
                C.write_json(data, a.json, "gpu_tile.json")
                continue
            rec = run.pop("record")
            data["runs"].append({"layout": layout, "args": args, **run, "timings_s": rec["timings_s"],
                                 "engine": rec["engine"], "cluster": rec["cluster"],
                                 "chunks": rec["parameters"].get("chunks")})
            print(f"  {run['wall_s']:.1f} s, {run['mpx_s']:.2f} Mpx/s", file=sys.stderr, flush=True)
            C.write_json(data, a.json, "gpu_tile.json")
    chunk = next((r["chunks"] for r in data["runs"] if r.get("chunks")), 2048)
    chunk = chunk[0] if isinstance(chunk, (list, tuple)) else int(chunk)
    print("forward reference ...", file=sys.stderr, flush=True)
    data["forward"] = forward_rates(model, a.batch_sizes, min(chunk, a.size), a.seconds)
    data["peaks_flop_s"] = gpu_peaks(a.matmul_n, a.seconds) if device == "gpu" else {}
    best = max(max(r["forward_mpx_s"], r["block_outputs_mpx_s"]) for r in data["forward"])
    for r in data["runs"]:
        if "mpx_s" in r:
            r["cli_vs_best_forward"] = r["mpx_s"] / best
    data["summary"] = {"best_forward_mpx_s": best,
                       "best_forward_gflop_s": best * 1e6 * C.flop_per_pixel() / 1e9,
                       "best_cli_mpx_s": max((r["mpx_s"] for r in data["runs"] if "mpx_s" in r),
                                             default=None)}
    C.write_json(data, a.json, "gpu_tile.json")
    print(C.table([(r["layout"], " ".join(r.get("args", [])), r.get("wall_s"), r.get("mpx_s"),
                    r.get("cli_vs_best_forward"), r.get("skipped") or r.get("failed", "")[:60])
                   for r in data["runs"]],
                  ["layout", "args", "CLI wall s", "CLI Mpx/s", "CLI/best fwd", "note"]))
    print(C.table([(r["batch_size"], r["forward_mpx_s"], r["block_outputs_mpx_s"]) for r in data["forward"]],
                  ["batch", "forward Mpx/s", "block_outputs Mpx/s"]))
    print("peaks (FLOP/s):", {k: (f"{v / 1e12:.1f} T" if isinstance(v, float) else v)
                             for k, v in data["peaks_flop_s"].items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
