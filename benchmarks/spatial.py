"""A fully-convolutional model of realistic cost on a synthetic scene, in one run: its forward
pass against the machine's float32 and bf16 matmul peaks, the whole ``s2dask classify``
process against that forward rate, and the cost of reading each chunk with its halo.

The model: ``Rescaling -> 6 x Conv2D(64, 3x3, same, ReLU) -> Conv2D(5, 1x1, softmax)`` on ten
bands, random weights, bundled with ``s2dask bundle``: receptive field 13, halo 6.
FLOP per pixel (2 x multiply-adds): 2 * (9*10*64 + 5*9*64*64 + 64*5) = 380,800.

Figures, all from this run and this process's machine:
- peaks: numpy float32 ``matmul`` 4096^2 and OpenVINO's bf16 ``MatMul`` (1024^2, 4096^2), with
  as many threads as the forward pass gets;
- forward: OpenVINO (the CPU default) fp32 and bf16, and Keras fp32, predicting one chunk with
  its halo as a job task does (:meth:`SpatialPredictor.block_probabilities`), Mpx/s and
  GFLOP/s, and the ratio to each peak;
- CLI: ``s2dask classify SCENE --model M --out O --chunks C`` as a user runs it (embedded
  cluster, default engine and precision), Mpx/s over its whole wall time, and against the
  forward rate of the precision it ran (the same threads in all);
- halo: the read of a chunk with and without its halo (GDAL, the job's block reader) and the
  share of extra pixels the model computes.

    python benchmarks/spatial.py [--size 4096] [--chunks 2048] [--quick] [--json OUT]
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

CHANNELS, LAYERS = 64, 6


def flop_per_pixel(channels: int = CHANNELS) -> float:
    """2 x multiply-adds per output pixel of the benchmark's FCN."""
    return 2.0 * (9 * C.N_BANDS * channels + (LAYERS - 1) * 9 * channels * channels + channels * C.N_CLASSES)


FPP = flop_per_pixel()


def fcn_bundle(quick: bool) -> Path:
    """The benchmark's FCN as a bundle (cached in the scratch folder)."""
    out = C.scratch() / ("fcn-quick" if quick else "fcn")
    if (out / "model.json").is_file():
        return out
    import keras

    from s2dask.model.foreign import bundle

    keras.utils.set_random_seed(0)
    ch = 8 if quick else CHANNELS
    layers = [keras.Input((None, None, C.N_BANDS)), keras.layers.Rescaling(1e-4)]
    layers += [keras.layers.Conv2D(ch, 3, padding="same", activation="relu") for _ in range(LAYERS)]
    layers.append(keras.layers.Conv2D(C.N_CLASSES, 1, activation="softmax"))
    model = keras.Sequential(layers)
    src = C.scratch() / ("fcn-quick.keras" if quick else "fcn.keras")
    model.save(src)
    classes = C.scratch() / "classes.csv"
    classes.write_text("".join(f"{i + 1},class {i + 1}\n" for i in range(C.N_CLASSES)))
    bundle(src, out, bands="B02,B03,B04,B05,B06,B07,B08,B8A,B11,B12", classes=classes, overwrite=True)
    return out


def peaks(threads: int, quick: bool) -> dict:
    """``{name: GFLOP/s}``: numpy float32 and OpenVINO bf16 matmuls on ``threads`` threads."""
    from s2dask.model.openvino_ir import import_openvino

    ov = import_openvino()
    import openvino.opset13 as ops

    out = {"numpy fp32": C.matmul_flops(512 if quick else 4096, threads=threads, repeat=3 if quick else 5) / 1e9}
    core = ov.Core()
    rng = np.random.default_rng(0)
    for m in ((512,) if quick else (1024, 4096)):
        p = ops.parameter([m, m], ov.Type.bf16)
        w = ops.convert(ops.constant(rng.standard_normal((m, m), dtype="float32")), ov.Type.bf16)
        cm = core.compile_model(ov.Model([ops.matmul(p, w, False, False)], [p]), "CPU",
                                {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": threads,
                                 "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
        req = cm.create_infer_request()
        req.set_input_tensor(ov.Tensor(ov.Type.bf16, ov.Shape([m, m])))
        req.infer()
        out[f"openvino bf16 {m}"] = 2.0 * m**3 / C.best_time(req.infer, repeat=3 if quick else 5) / 1e9
    return out


def forward(bundle_dir: Path, scene: Path, chunk: int, threads: int, seconds: float, fpp: float) -> list[dict]:
    """Mpx/s of one chunk with its halo through each engine x precision, as a task predicts it."""
    from s2dask.errors import S2DaskError
    from s2dask.model.bundle import load_model
    from s2dask.model.engines import cpu_has_bf16
    from s2dask.scene import open_scene

    b = load_model(bundle_dir)
    h = b.card["halo"]
    da = open_scene(scene, bands=b.bands)
    _, ny, nx = da.shape
    y0, x0 = max(0, ny // 2 - chunk // 2 - h), max(0, nx // 2 - chunk // 2 - h)
    block = da[:, y0:y0 + chunk + 2 * h, x0:x0 + chunk + 2 * h].values
    edges = ((False, False), (False, False))
    px = (block.shape[1] - 2 * h) * (block.shape[2] - 2 * h)
    rows, classes = [], {}
    cases = [("openvino", "fp32"), ("openvino", "bf16"), ("keras", "fp32")]
    for engine, precision in cases:
        if precision == "bf16" and not cpu_has_bf16()[0]:
            continue
        try:
            pred = b.predictor(engine=engine, precision=precision, threads=threads)
        except S2DaskError as exc:
            print(f"skipping {engine} {precision}: {exc}", file=sys.stderr)
            continue
        if engine == "keras":
            from s2dask.model.backend import configure_threads

            configure_threads(threads)
        mpx = C.rate(lambda: pred.block_probabilities(block, edges), px / 1e6, seconds, warm=True)
        prob, exact = pred.block_probabilities(block, edges)
        classes[(engine, precision)] = np.argmax(prob, axis=0)[exact]
        rows.append({"engine": engine, "precision": precision, "threads": threads, "chunk": chunk,
                     "halo": h, "mpx_s": mpx, "gflop_s": mpx * 1e6 * fpp / 1e9})
    ref = classes.get(("openvino", "fp32"))
    for r in rows:  # the share of the chunk's classes each engine and precision gives as OpenVINO fp32
        got = classes[(r["engine"], r["precision"])]
        r["agreement_with_openvino_fp32"] = float((got == ref).mean()) if ref is not None else None
    return rows


def halo_read(scene: Path, chunk: int, halo: int, repeat: int) -> dict:
    """Seconds to read a chunk through the job's block reader, with and without its halo."""
    from s2dask.scene import open_scene
    from s2dask.scene.graph import block_reader

    reader = block_reader(open_scene(scene).data)
    _, ny, nx = open_scene(scene).shape
    y0, x0 = max(halo, ny // 2 - chunk // 2), max(halo, nx // 2 - chunk // 2)
    c = min(chunk, ny - y0 - halo, nx - x0 - halo)
    plain = C.best_time(lambda: reader(y0, x0, c, c), repeat=repeat)
    haloed = C.best_time(lambda: reader(y0 - halo, x0 - halo, c + 2 * halo, c + 2 * halo), repeat=repeat)
    return {"chunk": c, "halo": halo, "read_s": plain, "read_with_halo_s": haloed,
            "read_overhead": haloed / plain - 1.0, "extra_pixels": ((c + 2 * halo) ** 2) / c**2 - 1.0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=4096, help="scene edge in pixels (default 4096)")
    p.add_argument("--chunks", type=int, default=2048, help="chunk edge (default 2048)")
    p.add_argument("--seconds", type=float, default=6.0, help="time per forward measurement")
    p.add_argument("--quick", action="store_true", help="a small smoke run (256^2, a narrow net)")
    p.add_argument("--json", default=None, help="output file (default results/spatial.json)")
    args = p.parse_args(argv)
    size, chunk, seconds = (256, 128, 0.5) if args.quick else (args.size, args.chunks, args.seconds)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    result = C.header("spatial", {"size": size, "chunks": chunk, "threads": threads, "quick": args.quick,
                                  "channels": 8 if args.quick else CHANNELS, "layers": LAYERS,
                                  "flop_per_pixel": flop_per_pixel(8 if args.quick else CHANNELS)})
    scene = C.scene(size)
    model = fcn_bundle(args.quick)
    print(f"scene {scene} ({size}^2), model {model}", file=sys.stderr)

    result["peaks_gflop_s"] = peaks(threads, args.quick)
    fp32_peak = result["peaks_gflop_s"]["numpy fp32"]
    bf16_peak = max(v for k, v in result["peaks_gflop_s"].items() if "bf16" in k)
    result["forward"] = forward(model, scene, chunk, threads, seconds, result["settings"]["flop_per_pixel"])
    for r in result["forward"]:
        r["vs_fp32_peak"] = r["gflop_s"] / fp32_peak
        r["vs_bf16_peak"] = r["gflop_s"] / bf16_peak

    t = time.perf_counter()
    cli = C.cli_classify(scene, model, C.scratch() / "out-spatial", args=["--chunks", str(chunk)])
    record = cli.pop("record")
    engines = list((record.get("engine") or {}).get("workers", {}).values())
    ran = engines[0] if engines else {}
    match = [r for r in result["forward"] if r["engine"] == ran.get("engine") and r["precision"] == ran.get("precision")]
    result["cli"] = {**cli, "engine": ran.get("engine"), "precision": ran.get("precision"),
                     "task_seconds": record.get("timings", {}).get("task_seconds") or record.get("task_seconds"),
                     "vs_forward": cli["mpx_s"] / match[0]["mpx_s"] if match else None,
                     "measured_in_s": time.perf_counter() - t}
    result["halo"] = halo_read(scene, chunk, record["model"]["contract"]["card"]["halo"], 3 if args.quick else 5)
    result["gpu"] = "none here: run this benchmark with KERAS_BACKEND=jax on a GPU machine (benchmarks/gpu_tile.py)"

    rows = [(r["engine"], r["precision"], r["mpx_s"], r["gflop_s"], r["vs_fp32_peak"], r["vs_bf16_peak"],
             r["agreement_with_openvino_fp32"]) for r in result["forward"]]
    print(C.table(rows, ["engine", "precision", "Mpx/s", "GFLOP/s", "/fp32 peak", "/bf16 peak",
                         "= ov fp32"]))
    print(f"peaks (GFLOP/s, {threads} threads): " + ", ".join(f"{k} {v:.0f}" for k, v in result["peaks_gflop_s"].items()))
    vs = result["cli"]["vs_forward"]
    print(f"whole CLI: {cli['wall_s']:.1f} s, {cli['mpx_s']:.3f} Mpx/s ({result['cli']['engine']} "
          f"{result['cli']['precision']}), {vs:.2f} of its forward rate" if vs else f"whole CLI: {cli['wall_s']:.1f} s")
    hr = result["halo"]
    print(f"halo {hr['halo']} px on a {hr['chunk']}^2 chunk: read +{hr['read_overhead']:.1%}, "
          f"model +{hr['extra_pixels']:.1%} pixels")
    C.write_json(result, args.json, "spatial-quick.json" if args.quick else "spatial.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
