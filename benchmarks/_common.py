"""Shared helpers of the benchmarks: machine description, JSON, the matmul peak, a model.

Every benchmark reports its figures as ratios measured in the same run (the machine
these run on is shared and noisy): against the float32 matmul peak of numpy measured in
the same process, and against the naive way measured in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: generated scenes and models go here, never into the repository
SCRATCH = Path(os.environ.get("S2DASK_BENCH_SCRATCH", Path(tempfile.gettempdir()) / "s2dask-bench"))

N_BANDS = 10
N_CLASSES = 5
UNITS = (200, 200, 200, 200)


def flop_per_pixel(n_bands: int = N_BANDS, units: Sequence[int] = UNITS,
                   n_classes: int = N_CLASSES) -> int:
    """2 x multiply-adds of the dense layers per pixel (246000 for 10 -> 4x200 -> 5)."""
    dims = [n_bands, *units, n_classes]
    return 2 * sum(a * b for a, b in zip(dims[:-1], dims[1:]))


# ------------------------------------------------------------------ machine and versions


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return sorted(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile",
                                          "amx_bf16") if f in have)
    except OSError:
        pass
    return []


def gpu_info() -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return [l.strip() for l in out.stdout.splitlines() if l.strip()] if out.returncode == 0 else []
    except (OSError, subprocess.SubprocessError):
        return []


def machine() -> dict:
    import psutil

    return {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpu_info(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_avg_at_start": list(os.getloadavg()),
    }


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("s2dask", "keras", "tensorflow", "tensorflow-cpu", "numpy", "dask", "distributed",
                 "rasterio", "zarr", "xarray", "rioxarray", "threadpoolctl", "psutil"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    try:
        from threadpoolctl import threadpool_info

        out["blas"] = [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
                       for i in threadpool_info() if i.get("user_api") == "blas"]
    except Exception:  # pragma: no cover - informative only
        pass
    try:
        import rasterio

        out["gdal"] = rasterio.__gdal_version__
    except Exception:  # pragma: no cover
        pass
    return out


def header(name: str, settings: dict) -> dict:
    """The common head of every result file."""
    return {"benchmark": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": machine(), "versions": versions(), "settings": settings}


def write_json(data: dict, path: str | os.PathLike | None, default_name: str) -> Path:
    path = Path(path) if path else RESULTS / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}")
    return path


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def table(rows: Sequence[Sequence[Any]], head: Sequence[str]) -> str:
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h))
              for i, h in enumerate(head)]
    lines = ["  ".join(str(h).rjust(w) for h, w in zip(head, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


# ------------------------------------------------------------------ timing and peak


def best_time(fn: Callable[[], Any], *, repeat: int = 5, number: int = 1) -> float:
    """Best wall time of ``number`` calls, over ``repeat`` repeats (seconds per call)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t) / number)
    return best


def rate(fn: Callable[[], Any], units: float, seconds: float, *, warm: bool = False) -> float:
    """units/s of ``fn`` run repeatedly for at least ``seconds`` (one uncounted call first
    with ``warm``)."""
    if warm:
        fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return units * n / dt


def matmul_flops(n: int = 4096, *, threads: int | None = None, repeat: int = 5,
                 m: int | None = None, k: int | None = None) -> float:
    """Best float32 FLOP/s of numpy ``(m,k) @ (k,n)`` (square ``n`` by default)."""
    from threadpoolctl import threadpool_limits

    m = m or n
    k = k or n
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype="float32")
    b = rng.standard_normal((k, n), dtype="float32")
    c = np.empty((m, n), dtype="float32")
    ctx = threadpool_limits(limits=threads, user_api="blas") if threads else _null()
    with ctx:
        np.matmul(a, b, out=c)  # warm-up
        t = best_time(lambda: np.matmul(a, b, out=c), repeat=repeat)
    return 2.0 * m * n * k / t


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------ the model and scenes


def scratch(*parts: str) -> Path:
    p = SCRATCH.joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p


def model_bundle(seed: int = 0, *, ir: bool = True) -> Path:
    """The tutorial's MLP (10 -> 4x200 -> 5), random weights, saved as a bundle (cached).

    With its OpenVINO IR beside ``model.keras``, as ``s2dask train`` writes it (``ir=False``:
    without, so that workers convert the Keras model themselves).
    """
    from s2dask.scene.bands import DEFAULT_BANDS
    from s2dask.scene.synthetic import SYNTHETIC_CLASSES

    out = SCRATCH / f"model-{seed}{'-ir' if ir else ''}"
    if (out / "model.json").is_file():
        return out
    from s2dask.model.bundle import build_model, save_bundle

    classes = [{"value": c["value"], "name": c["name"], "colour": c["colour"]}
               for c in SYNTHETIC_CLASSES[:N_CLASSES]]
    spectra = np.array([c["spectrum"] for c in SYNTHETIC_CLASSES], dtype="float32")
    model = build_model(N_BANDS, len(classes), mean=spectra.mean(0), variance=spectra.var(0) + 1.0,
                        units=UNITS, seed=seed)
    tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=scratch()))
    save_bundle(model, tmp, bands=list(DEFAULT_BANDS), classes=classes)
    if ir:
        from s2dask.model.openvino_ir import export_ir

        export_ir(tmp, keras_model=model)
    try:
        os.replace(tmp, out)
    except OSError:  # another process made it meanwhile
        pass
    return out


def scene(size: int, seed: int = 0) -> Path:
    """A synthetic 10-band uint16 COG of ``size``^2 pixels (cached in the scratch dir)."""
    from s2dask.scene.synthetic import make_scene

    path = scratch("scenes") / f"synthetic-{size}-s{seed}.tif"
    if not path.is_file():
        t = time.perf_counter()
        make_scene(path, size=size, seed=seed)
        print(f"made {path} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return path


def plot_path(json_path: Path) -> Path:
    return json_path.with_suffix(".png")


# ------------------------------------------------------------------ engine pass-through


def job_engine_keywords(engine: str | None, precision: str | None) -> dict:
    """``engine=``/``precision=`` for ``classify`` where this s2dask's job takes them.

    Before the engine wiring (issue 13) lands the job runs Keras and has no such option:
    then only ``None``/``"auto"`` are accepted (the default path is measured either way).
    """
    import dataclasses

    from s2dask.job.run import JobOptions

    fields = {f.name for f in dataclasses.fields(JobOptions)}
    if "engine" in fields:
        return {k: v for k, v in (("engine", engine), ("precision", precision)) if v}
    if (engine or "auto") != "auto" or (precision or "auto") != "auto":
        raise SystemExit("this s2dask's job has no engine/precision option yet: run without "
                         "--engine/--precision (the job uses its default, Keras)")
    return {}


def cli_engine_args(engine: str | None, precision: str | None) -> list[str]:
    """``--engine``/``--precision`` for ``s2dask classify`` where the CLI takes them."""
    kw = job_engine_keywords(engine, precision)
    return [a for k, v in kw.items() for a in (f"--{k}", str(v))]


def add_engine_args(parser) -> None:
    parser.add_argument("--engine", default=None, help="classify --engine (default: the job's default)")
    parser.add_argument("--precision", default=None, help="classify --precision (default: the job's)")


def cli_classify(scene: Path, model: Path, out: Path, *, args: Sequence[str] = (),
                 keep: bool = False) -> dict:
    """The whole ``s2dask classify`` process on one scene (start-up included), timed.

    Returns the wall time, the scene's Mpx/s over it and the scene's ``job.json``; the
    outputs are removed unless ``keep``.
    """
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "s2dask.cli", "classify", str(scene), "--model", str(model),
           "--out", str(out), "--quiet", *args]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    (rec_path,) = [p for p in out.glob("*/job.json")]
    record = json.loads(rec_path.read_text())
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    px = record["statistics"]["pixels"]
    return {"command": " ".join(cmd[1:]), "wall_s": wall, "mpx_s": px / 1e6 / wall,
            "record": record}


def default_engine(engine: str | None, precision: str | None) -> dict:
    """The engine, precision and batch size the job runs with these options."""
    import dataclasses

    from s2dask.job.run import JobOptions
    from s2dask.model.blocks import DEFAULT_BATCH_SIZE

    job_engine_keywords(engine, precision)  # refuses options the job lacks
    if "engine" not in {f.name for f in dataclasses.fields(JobOptions)}:
        return {"engine": "keras", "precision": "fp32", "batch_size": DEFAULT_BATCH_SIZE}
    from s2dask.model.engines import DEFAULT_OPENVINO_BATCH_SIZE, resolve

    ch = resolve(engine or "auto", precision or "auto")
    bs = DEFAULT_OPENVINO_BATCH_SIZE if ch.engine == "openvino" else DEFAULT_BATCH_SIZE
    return {"engine": ch.engine, "precision": ch.precision, "batch_size": bs}
