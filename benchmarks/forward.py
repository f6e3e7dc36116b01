"""The forward pass jobs run, per engine x precision x batch size, against the machine's
float32 and bf16 matmul peaks measured in the same run.

Engines: ``keras`` (:class:`s2dask.model.blocks.Predictor`, XLA-compiled, float32) and
``openvino`` (:class:`s2dask.model.engines.OpenVINOPredictor`, fp32 and bf16, the class and
confidence computed in the graph). The default model (10 -> 4x200 -> 5 MLP from
:func:`s2dask.model.bundle.build_model`) is timed on ``forward`` (probabilities) and on
``block_outputs`` (what a job task runs: classes + confidence of a uint16 block).

Rooflines, measured in every round next to the models, same processes and threads:
- float32: numpy ``matmul`` of 4096^2 float32 matrices (the project's reference);
- bf16: the best of OpenVINO's bf16 ``MatMul`` (1024^2, 4096^2, bf16 in and out: no
  conversion pass) and TensorFlow's bf16 ``tf.matmul`` (2048^2, 4096^2), i.e. what the
  machine's matrix units really give.

Groups: 1 process x 1 thread, 2 processes x 1 thread (the default 2-worker cluster; the
processes measure in synchronised windows and are summed), 1 process x 2 threads. A
last section times start-up in fresh processes: import + convert (OpenVINO's converter
on a tf.function, Keras' own exporter), and loading a stored IR without TensorFlow.

FLOP count: 2 x multiply-adds = 2*(10*200 + 3*200*200 + 200*5) = 246000 per pixel.

    python benchmarks/forward.py [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import numpy as np  # noqa: E402

FPP = C.flop_per_pixel()


# ------------------------------------------------------------------ the child process


def _wait(t: float) -> bool:
    late = time.time() > t
    while time.time() < t:
        time.sleep(0.002)
    return not late


def _peaks(threads: int, quick: bool) -> dict:
    """name -> (fn, flop per call): the float32 and bf16 matmul references."""
    from s2dask.model.openvino_ir import import_openvino

    ov = import_openvino()
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    n = 512 if quick else 4096
    a = rng.standard_normal((n, n), dtype="float32")
    c = np.empty_like(a)
    peaks = {"numpy fp32": ((lambda: np.matmul(a, a, out=c)), 2.0 * n**3, "fp32")}
    core = ov.Core()
    for m in ((512,) if quick else (1024, 4096)):
        p = ops.parameter([m, m], ov.Type.bf16)
        w = ops.convert(ops.constant(rng.standard_normal((m, m), dtype="float32")), ov.Type.bf16)
        cm = core.compile_model(ov.Model([ops.matmul(p, w, False, False)], [p]), "CPU",
                                {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": threads,
                                 "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                                 "ENABLE_CPU_PINNING": False})
        req = cm.create_infer_request()
        req.set_input_tensor(ov.Tensor(ov.Type.bf16, ov.Shape([m, m])))
        req.infer()
        peaks[f"openvino bf16 {m}"] = (req.infer, 2.0 * m**3, "bf16")
    if "tensorflow" in sys.modules:  # the Keras engine is loaded: TF's bf16 matmul too
        import tensorflow as tf

        for m in ((512,) if quick else (2048, 4096)):
            x = tf.cast(tf.random.normal((m, m)), tf.bfloat16)
            f = tf.function(lambda x: tf.matmul(x, x))
            f(x)
            peaks[f"tensorflow bf16 {m}"] = ((lambda f=f, x=x: f(x).numpy()), 2.0 * m**3, "bf16")
    return peaks


def _predictors(spec: dict, bundle) -> dict:
    from s2dask.model.engines import OpenVINOPredictor, convert

    out, ovm = {}, None
    for it in spec["items"]:
        key = _key(it)
        if key in out:
            continue
        if it["engine"] == "keras":
            out[key] = bundle.predictor(batch_size=it["batch_size"], engine="keras")
            continue
        if ovm is None:
            ovm = convert(bundle.keras_model())
        out[key] = OpenVINOPredictor(ovm, bundle.contract, precision=it["precision"],
                                     batch_size=it["batch_size"], threads=spec["threads"], hint=key[3],
                                     width_multiple=it.get("width_multiple"))
    return out


def _key(it: dict) -> tuple:
    return (it["engine"], it["precision"], it["batch_size"], it.get("hint", "LATENCY"),
            it.get("width_multiple"))


def child(spec: dict) -> dict:
    """Measure the spec's items and peaks in time slots starting at a common time."""
    threads = spec["threads"]
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")
    from s2dask.model.backend import configure_threads

    configure_threads(threads)  # TF: intra-op = threads, inter-op = 1 (the job path)
    from s2dask.model.blocks import block_outputs
    from s2dask.model.bundle import load_model

    bundle = load_model(spec["model"])
    preds = _predictors(spec, bundle)
    rng = np.random.default_rng(0)
    pixels = spec["pixels"]
    x = rng.uniform(100, 4000, size=(pixels, 10)).astype("float32")
    block = rng.integers(100, 4000, size=(10, 512, 512), dtype="uint16")
    for p in preds.values():  # compile and warm before the first slot
        p.forward(x[: 2 * p.batch_size])
        block_outputs(p, block[:, :64])
    peaks = _peaks(threads, spec["quick"])
    print("READY", flush=True)  # the parent answers with the common start time
    start_at = float(sys.stdin.readline())
    slot, k, secs = spec["slot_s"], 0, spec["seconds"]
    fwd = {i: [] for i in range(len(spec["items"]))}
    pk = {name: [] for name in peaks}
    late = False
    for _ in range(spec["repeat"]):  # round robin: a burst of load hits every item alike
        for i, it in enumerate(spec["items"]):
            late |= not _wait(start_at + k * slot)
            k += 1
            p = preds[_key(it)]
            if it.get("what") == "block_outputs":
                fwd[i].append(C.rate(lambda p=p: block_outputs(p, block), block[0].size, secs))
            else:
                fwd[i].append(C.rate(lambda p=p: p.forward(x), pixels, secs))
        for name, (fn, flop, _) in peaks.items():
            late |= not _wait(start_at + k * slot)
            k += 1
            pk[name].append(C.rate(fn, flop, secs))
    return {"threads": threads, "pid": os.getpid(), "on_time": not late,
            "items": [{**it, "px_s": max(fwd[i]), "rounds": fwd[i]} for i, it in enumerate(spec["items"])],
            "peaks": {n: {"flop_s": max(v), "rounds": v, "precision": peaks[n][2]} for n, v in pk.items()}}


# ------------------------------------------------------------------ the parent


def run_group(specs: list[dict]) -> list[dict]:
    """Start the children; once all are compiled and warm, they measure in the same slots."""
    procs = [subprocess.Popen([sys.executable, __file__, "--_child", json.dumps(s)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
             for s in specs]
    for pr in procs:
        line = pr.stdout.readline()
        if line.strip() != "READY":
            pr.wait()
            raise RuntimeError(f"child failed ({pr.returncode}):\n{line}{pr.stderr.read()[-3000:]}")
    start_at = time.time() + 0.3
    for pr in procs:
        pr.stdin.write(f"{start_at}\n")
        pr.stdin.flush()
    outs = []
    for pr in procs:
        so, se = pr.communicate()
        if pr.returncode != 0:
            raise RuntimeError(f"child failed ({pr.returncode}):\n{se[-3000:]}")
        outs.append(json.loads(so.strip().splitlines()[-1]))
    if not all(o["on_time"] for o in outs):
        print("warning: some slots started late (machine busy)", file=sys.stderr)
    return outs


def summarise(outs: list[dict]) -> dict:
    """Concurrent processes (same windows) summed; ratios against the same group's peaks."""
    peaks = {n: sum(o["peaks"][n]["flop_s"] for o in outs) for n in outs[0]["peaks"]}
    fp32 = peaks["numpy fp32"]
    bf16_name = max((n for n in peaks if outs[0]["peaks"][n]["precision"] == "bf16"), key=peaks.get)
    bf16 = peaks[bf16_name]
    items = []
    for i, it in enumerate(outs[0]["items"]):
        px = sum(o["items"][i]["px_s"] for o in outs)
        items.append({**it, "mpx_s": px / 1e6, "gflop_s": px * FPP / 1e9, "vs_fp32_peak": px * FPP / fp32,
                      "vs_bf16_peak": px * FPP / bf16,
                      "per_process_rounds": [o["items"][i]["rounds"] for o in outs]})
    return {"processes": len(outs), "threads": outs[0]["threads"], "statistic": "best of rounds",
            "peaks_gflop_s": {n: v / 1e9 for n, v in peaks.items()}, "fp32_peak_gflop_s": fp32 / 1e9,
            "bf16_peak_gflop_s": bf16 / 1e9, "bf16_peak_from": bf16_name,
            "on_time": all(o["on_time"] for o in outs), "items": items}


# ------------------------------------------------------------------ start-up and conversion

_STARTUP = {
    "convert: openvino.convert_model(tf.function)": """
import keras, tensorflow as tf, openvino as ov
m = keras.saving.load_model(MODEL + '/model.keras', compile=False)
t1 = time.perf_counter()
f = tf.function(lambda x: m(x, training=False), input_signature=[tf.TensorSpec((None, 10), tf.float32)])
ov.Core().compile_model(ov.convert_model(f.get_concrete_function()), 'CPU')
""",
    "convert: keras model.export(format='openvino') (s2dask.model.engines.convert)": """
import keras
from s2dask.model import engines as E
m = keras.saving.load_model(MODEL + '/model.keras', compile=False)
t1 = time.perf_counter()
E.OpenVINOPredictor(E.convert(m), json.load(open(MODEL + '/model.json')), precision='bf16')
""",
    "stored IR: s2dask.model.engines.load_ir (no TensorFlow)": """
from s2dask.model import engines as E
c = json.load(open(MODEL + '/model.json'))
t1 = time.perf_counter()
E.OpenVINOPredictor(E.load_ir(MODEL, contract=c), c, precision='bf16')
""",
    "keras engine: Predictor (XLA compile)": """
from s2dask.model.bundle import load_model
b = load_model(MODEL)
t1 = time.perf_counter()
b.predictor(batch_size=8192, engine="keras")
""",
}


def startup(model: str) -> dict:
    """Each way of getting a compiled predictor, timed in a fresh process (``model``: the
    benchmark bundle, its IR stored beside ``model.keras`` as ``s2dask train`` writes it)."""
    out = {}
    for name, body in _STARTUP.items():
        code = ("import time, json, sys\nt0 = time.perf_counter()\n"
                f"MODEL = {model!r}\n{body}\n"
                "t2 = time.perf_counter()\n"
                "print(json.dumps({'total_s': t2 - t0, 'convert_compile_s': t2 - t1, "
                "'tensorflow_imported': 'tensorflow' in sys.modules}))\n")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if res.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{res.stderr[-2000:]}")
        out[name] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, short windows (smoke test)")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/forward.json)")
    p.add_argument("--seconds", type=float, default=0.4, help="measuring window per item and round")
    p.add_argument("--repeat", type=int, default=3, help="rounds (best of them is reported)")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._child:
        print(json.dumps(child(json.loads(a._child)), default=C._json_default))
        return 0

    from s2dask.model.blocks import DEFAULT_BATCH_SIZE
    from s2dask.model.engines import (
        BF16_WIDTH_MULTIPLE,
        DEFAULT_OPENVINO_BATCH_SIZE,
        bf16_width_multiple,
        resolve,
    )

    model = str(C.model_bundle())
    default = resolve()
    ovb = DEFAULT_OPENVINO_BATCH_SIZE
    width = bf16_width_multiple()
    if a.quick:
        sizes, seconds, repeat, pixels = [1024], 0.2, 1, 8192
        items = [{"engine": "keras", "precision": "fp32", "batch_size": 1024}] + \
                [{"engine": "openvino", "precision": pr, "batch_size": 1024} for pr in ("fp32", "bf16")]
    else:
        sizes, seconds, repeat, pixels = [1024, 2048, 4096, 8192], a.seconds, a.repeat, 65536
        items = [{"engine": "keras", "precision": "fp32", "batch_size": DEFAULT_BATCH_SIZE}]
        items += [{"engine": "openvino", "precision": pr, "batch_size": b}
                  for pr in ("fp32", "bf16") for b in sizes]
        items += [{"engine": "openvino", "precision": pr, "batch_size": ovb, "hint": "THROUGHPUT"}
                  for pr in ("fp32", "bf16")]
        items += [{"engine": e, "precision": pr, "batch_size": b, "what": "block_outputs"}
                  for e, pr, b in (("keras", "fp32", DEFAULT_BATCH_SIZE), ("openvino", "fp32", ovb),
                                   ("openvino", "bf16", ovb))]
        # bf16 with the hidden widths padded the other way than this CPU's default (AMX tiles or not)
        items += [{"engine": "openvino", "precision": "bf16", "batch_size": ovb, "what": "block_outputs",
                   "width_multiple": BF16_WIDTH_MULTIPLE if width == 1 else 1}]
    base = {"model": model, "seconds": seconds, "repeat": repeat, "slot_s": seconds + 0.25,
            "pixels": pixels, "quick": a.quick, "items": items}
    groups = {"1 process x 1 thread": [1], "2 processes x 1 thread": [1, 1], "1 process x 2 threads": [2]}
    if a.quick:
        groups = {"1 process x 1 thread": [1]}
    data = C.header("forward", {"flop_per_pixel": FPP, "pixels_per_call": pixels, "seconds": seconds,
                                "repeat": repeat, "batch_sizes": sizes, "model": "10->4x200->5 MLP",
                                "keras_batch_size": DEFAULT_BATCH_SIZE, "openvino_batch_size": ovb,
                                "bf16_width_multiple": width,
                                "default_choice": default.record()})
    from s2dask.model.openvino_ir import import_openvino

    openvino = import_openvino()

    data["versions"]["openvino"] = openvino.__version__
    data["groups"], rows = {}, []
    for name, threads in groups.items():
        print(f"running {name} ...", file=sys.stderr)
        g = summarise(run_group([{**base, "threads": t} for t in threads]))
        data["groups"][name] = g
        for r in g["items"]:
            path = r.get("what", "forward") + (f" pad {r['width_multiple']}" if "width_multiple" in r else "")
            rows.append((name, r["engine"], r["precision"], path, r["batch_size"],
                         r.get("hint", "LATENCY") if r["engine"] == "openvino" else "XLA",
                         r["mpx_s"], r["gflop_s"], r["vs_fp32_peak"], r["vs_bf16_peak"]))
    data["best"] = best(data, default)
    if not a.quick:
        data["startup"] = startup(model)
    C.write_json(data, a.json, "forward-quick.json" if a.quick else "forward.json")
    print(C.table(rows, ["config", "engine", "prec", "path", "batch", "hint", "Mpx/s", "GFLOP/s",
                         "/fp32 peak", "/bf16 peak"]))
    for name, g in data["groups"].items():
        print(f"{name}: peaks " + ", ".join(f"{k} {v:.0f}" for k, v in g["peaks_gflop_s"].items())
              + " GFLOP/s")
    for name, b in data["best"].items():
        print(f"best default-engine forward, {name}: {b}")
    for name, s in data.get("startup", {}).items():
        print(f"start-up, {name}: {s}")
    return 0


def best(data: dict, default) -> dict:
    """Per group: the best forward of the default engine/precision, and its ratios."""
    out = {}
    for name, g in data["groups"].items():
        fw = [r for r in g["items"] if r.get("what", "forward") == "forward" and "width_multiple" not in r
              and r["engine"] == default.engine and r["precision"] == default.precision]
        if not fw:
            continue
        b = max(fw, key=lambda r: r["mpx_s"])
        out[name] = {"engine": default.engine, "precision": default.precision,
                     "batch_size": b["batch_size"], "hint": b.get("hint", "LATENCY"),
                     "mpx_s": round(b["mpx_s"], 3), "vs_fp32_peak": round(b["vs_fp32_peak"], 3),
                     "vs_bf16_peak": round(b["vs_bf16_peak"], 3)}
    return out


if __name__ == "__main__":
    sys.exit(main())
