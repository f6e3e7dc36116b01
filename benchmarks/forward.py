"""The forward pass jobs run (``Predictor.forward``) against the machine's float32 matmul peak.

The default model (10 -> 4x200 -> 5 MLP from :func:`s2dask.model.build_model`) in
megapixels/s across batch sizes, with and without XLA (``jit_compile``), at 1 and 2
backend threads, as 2 concurrent single-thread processes (what the default 2-worker
LocalCluster does), and with oneDNN off. Each configuration runs in its own process
(thread pools are fixed at start-up) that also measures numpy's matmul peak with the
same threads; concurrent processes measure in synchronised windows and are summed.

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

import numpy as np  # noqa: E402

import _common as C  # noqa: E402

FPP = C.flop_per_pixel()


# ------------------------------------------------------------------ the child process


def _wait(t: float) -> bool:
    late = time.time() > t
    while time.time() < t:
        time.sleep(0.002)
    return not late


def _rate(fn, units: float, seconds: float, repeat: int) -> dict:
    """Run ``fn`` for ``seconds`` split in ``repeat`` parts; units/s best and median."""
    rates = []
    part = seconds / repeat
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= part:
                break
        rates.append(units * n / dt)
    return {"best": max(rates), "median": float(np.median(rates))}


def child(spec: dict) -> dict:
    """Measure the spec's items in time slots starting at ``spec['start_at']``."""
    threads = spec["threads"]
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")
    from s2dask.backend import configure_threads

    configure_threads(threads)  # the job path: intra-op = threads, inter-op = 1
    import tensorflow as tf

    from s2dask.model import load_model
    from s2dask.backend import compile_forward
    from s2dask.predict import Predictor, block_outputs

    bundle = load_model(spec["model"])
    model = bundle.keras_model()
    rng = np.random.default_rng(0)
    preds = {}
    for it in spec["items"]:
        key = (it["batch_size"], it["jit"])
        if key not in preds:
            p = Predictor(model, bundle.contract, batch_size=it["batch_size"])
            p._forward = compile_forward(model, p.batch_size, p.n_bands, jit_compile=it["jit"])
            preds[key] = p
    pixels = spec["pixels"]
    x = rng.uniform(100, 4000, size=(pixels, 10)).astype("float32")
    block = rng.integers(100, 4000, size=(10, 512, 512), dtype="uint16")
    for p in preds.values():  # compile and warm before the first slot
        p.forward(x)
    n = spec["matmul_n"]
    a = rng.standard_normal((n, n), dtype="float32")
    cc = np.empty_like(a)
    np.matmul(a, a, out=cc)
    print("READY", flush=True)  # the parent answers with the common start time
    start_at = float(sys.stdin.readline())
    out = {"threads": threads, "pid": os.getpid(),
           "tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
           "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default(1)"), "items": []}
    # round robin: every item (and the matmul) once per round, best over the rounds, so a
    # burst of load from other processes on a shared machine hits all of them alike
    slot, t0, rounds = spec["slot_s"], start_at, spec["repeat"]
    fwd = {i: [] for i in range(len(spec["items"]))}
    late = {i: False for i in range(len(spec["items"]))}
    mm, mm_late = [], False
    k = 0
    for _ in range(rounds):
        for i, it in enumerate(spec["items"]):
            late[i] |= not _wait(t0 + k * slot)
            k += 1
            p = preds[(it["batch_size"], it["jit"])]
            if it.get("what") == "block_outputs":
                fn, units = (lambda p=p: block_outputs(p, block)), block.shape[1] * block.shape[2]
            else:
                fn, units = (lambda p=p: p.forward(x)), pixels
            fwd[i].append(_rate(fn, units, spec["seconds"], 1)["best"])
        mm_late |= not _wait(t0 + k * slot)
        k += spec["matmul_slots"]
        mm.append(_rate(lambda: np.matmul(a, a, out=cc), 2.0 * n**3, spec["matmul_seconds"], 1)["best"])
    for i, it in enumerate(spec["items"]):
        out["items"].append({**it, "px_s": {"best": max(fwd[i]), "median": float(np.median(fwd[i])),
                                            "rounds": fwd[i]}, "on_time": not late[i]})
    out["matmul"] = {"n": n, "flop_s": {"best": max(mm), "median": float(np.median(mm)), "rounds": mm},
                     "on_time": not mm_late}
    if spec.get("layers"):
        out["layers"] = layers(model, spec["layers"], x, spec)
    return out


def layers(model, batch_size: int, x: np.ndarray, spec: dict) -> dict:
    """Where the time goes: each part of the model compiled alone, and numpy's own
    ``(B,200)@(200,200)`` (the shape that holds 97.6% of the FLOPs)."""
    import tensorflow as tf

    lay = {l.name: l for l in model.layers}
    hidden = [l for l in model.layers if l.name.startswith("dense_")]
    parts = {
        "normalise": ([lay["normalise"]], 10, 0),
        "dense_0 (K=10)": ([hidden[0]], 10, 2 * 10 * 200),
        "dense_1..3 (200x200)": (hidden[1:], 200, 2 * 3 * 200 * 200),
        "classes (N=5) + softmax": ([lay["classes"]], 200, 2 * 200 * 5),
    }
    rng = np.random.default_rng(0)
    res = {}
    for jit in (False, True):
        for name, (ls, k, flop) in parts.items():
            spec_in = tf.TensorSpec((batch_size, k), tf.float32)

            def f(z, ls=ls):
                for l in ls:
                    z = l(z, training=False)
                return z

            fn = tf.function(f, input_signature=[spec_in], jit_compile=jit).get_concrete_function()
            z = tf.constant(rng.uniform(0, 1, size=(batch_size, k)).astype("float32"))
            fn(z)
            r = _rate(lambda: fn(z).numpy(), batch_size, spec["seconds"] / 2, spec["repeat"])
            res[f"{name} jit={jit}"] = {"px_s": r, "flop_per_px": flop,
                                        "s_per_mpx": 1e6 / r["best"]}
    a = rng.standard_normal((batch_size, 200), dtype="float32")
    w = rng.standard_normal((200, 200), dtype="float32")
    o = np.empty((batch_size, 200), dtype="float32")
    r = _rate(lambda: np.matmul(a, w, out=o), batch_size, spec["seconds"] / 2, spec["repeat"])
    res["numpy (B,200)@(200,200)"] = {"px_s": r, "flop_per_px": 2 * 200 * 200,
                                      "flop_s": r["best"] * 2 * 200 * 200}
    return res


# ------------------------------------------------------------------ the parent


def run_group(specs: list[dict], envs: list[dict]) -> list[dict]:
    """Start the children; once all are compiled and warm, they measure in the same slots."""
    procs = []
    for spec, env in zip(specs, envs):
        e = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env}
        procs.append(subprocess.Popen([sys.executable, __file__, "--_child", json.dumps(spec)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=e))
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
    for o in outs:
        late = [i for i in o["items"] if not i["on_time"]]
        if late:
            print(f"warning: pid {o['pid']} started {len(late)} slot(s) late",
                  file=sys.stderr)
    return outs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, short windows (smoke test)")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/forward.json)")
    p.add_argument("--seconds", type=float, default=0.4, help="measuring window per item and round")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._child:
        print(json.dumps(child(json.loads(a._child)), default=C._json_default))
        return 0

    from s2dask.predict import DEFAULT_BATCH_SIZE

    model = str(C.model_bundle())
    if a.quick:
        sizes, seconds, repeat, mm_n, mm_s = [4096], 0.3, 2, 512, 0.3
        pixels = 8192
    else:
        sizes, seconds, repeat, mm_n, mm_s = ([2048, 4096, 8192, 16384, 32768, 65536],
                                              a.seconds, 5, 4096, 0.5)
        pixels = 131072
    slot = seconds + 0.25  # a window plus the overrun of its last call
    base = {"model": model, "seconds": seconds, "repeat": repeat, "matmul_n": mm_n,
            "matmul_seconds": mm_s, "matmul_slots": 1 if a.quick else 5, "slot_s": slot}

    def items(bss, jits=(False, True)):
        return [{"batch_size": b, "jit": j} for j in jits for b in bss]

    two = [b for b in sizes if b in (4096, 16384, 65536)] or sizes
    groups = {  # name: (list of (threads, env), items, layers)
        "1 process x 2 threads": ([(2, {})], items(sizes), None),
        "1 process x 1 thread": ([(1, {})], items(sizes), None),
        "2 processes x 1 thread": ([(1, {}), (1, {})], items(sizes), None),
        "1 process x 2 threads, oneDNN off": ([(2, {"TF_ENABLE_ONEDNN_OPTS": "0"})], items(two), None),
        "2 processes x 1 thread, oneDNN off": ([(1, {"TF_ENABLE_ONEDNN_OPTS": "0"})] * 2, items(two), None),
    }
    if a.quick:
        groups = {"2 processes x 1 thread": ([(1, {}), (1, {})], items(sizes, (False,)), None)}
    data = C.header("forward", {"flop_per_pixel": FPP, "pixels_per_call": pixels, "seconds": seconds,
                                "repeat": repeat, "matmul_n": mm_n, "batch_sizes": sizes,
                                "default_batch_size": DEFAULT_BATCH_SIZE, "model": "10->4x200->5 MLP"})
    data["groups"] = {}
    rows = []
    for name, (procs, its, _) in groups.items():
        specs = [{**base, "threads": t, "items": its + ([{"batch_size": DEFAULT_BATCH_SIZE, "jit": j,
                                                          "what": "block_outputs"}
                                                         for j in (False, True)] if not a.quick else []),
                  "pixels": max(pixels, 2 * max(b["batch_size"] for b in its))} for t, _ in procs]
        if name == "1 process x 1 thread" and not a.quick:
            specs[0]["layers"] = DEFAULT_BATCH_SIZE
        print(f"running {name} ...", file=sys.stderr)
        outs = run_group(specs, [e for _, e in procs])
        g = summarise(outs)
        data["groups"][name] = g
        for r in g["items"]:
            rows.append((name, r.get("what", "forward"), r["batch_size"], r["jit"], r["mpx_s"],
                         r["gflop_s"], r["vs_matmul"]))
    # the answer for jobs: the best (batch, jit) of 2 single-thread processes
    best = {}
    for name, g in data["groups"].items():
        fw = [r for r in g["items"] if r.get("what", "forward") == "forward"]
        b = max(fw, key=lambda r: r["mpx_s"])
        best[name] = {"batch_size": b["batch_size"], "jit": b["jit"], "mpx_s": b["mpx_s"],
                      "vs_matmul": b["vs_matmul"], "matmul_gflop_s": g["matmul_gflop_s"]}
    data["best"] = best
    peak2 = data["groups"].get("1 process x 2 threads", {}).get("matmul_gflop_s")
    if peak2 and "2 processes x 1 thread" in data["groups"]:
        g = data["groups"]["2 processes x 1 thread"]
        data["best"]["2 processes x 1 thread vs 2-thread numpy peak"] = max(
            r["gflop_s"] for r in g["items"] if r.get("what", "forward") == "forward") / peak2
    path = C.write_json(data, a.json, "forward-quick.json" if a.quick else "forward.json")
    print(C.table(rows, ["config", "path", "batch", "jit", "Mpx/s", "GFLOP/s", "/matmul"]))
    for name, g in data["groups"].items():
        print(f"{name}: numpy matmul {g['matmul_gflop_s']:.0f} GFLOP/s (n={mm_n})")
    for name, g in data["groups"].items():
        if g.get("layers"):
            print(f"layer split ({name}, batch {DEFAULT_BATCH_SIZE}):")
            print(C.table([(k, v["s_per_mpx"] if "s_per_mpx" in v else "", v["px_s"]["best"] / 1e6)
                           for k, v in g["layers"].items()], ["part", "s/Mpx", "Mpx/s"]))
    if not a.quick:
        plot(data, C.plot_path(path))
    return 0


def summarise(outs: list[dict]) -> dict:
    """Best over the rounds of each process; concurrent processes (same windows) summed."""
    pick = "best"
    mm = sum(o["matmul"]["flop_s"][pick] for o in outs)
    items = []
    for i, it in enumerate(outs[0]["items"]):
        px = sum(o["items"][i]["px_s"][pick] for o in outs)
        items.append({k: v for k, v in it.items() if k not in ("px_s", "on_time")} |
                     {"mpx_s": px / 1e6, "gflop_s": px * FPP / 1e9, "vs_matmul": px * FPP / mm,
                      "per_process_px_s": [o["items"][i]["px_s"] for o in outs],
                      "on_time": all(o["items"][i]["on_time"] for o in outs)})
    g = {"processes": len(outs), "threads": outs[0]["threads"], "statistic": pick,
         "onednn": outs[0]["onednn"], "tf_intra_op": outs[0]["tf_intra_op"],
         "matmul_gflop_s": mm / 1e9, "matmul_per_process": [o["matmul"] for o in outs],
         "items": items}
    if outs[0].get("layers"):
        g["layers"] = outs[0]["layers"]
    return g


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, g in data["groups"].items():
        for jit, ls in ((False, "--"), (True, "-")):
            pts = sorted((r["batch_size"], r["vs_matmul"]) for r in g["items"]
                         if r["jit"] == jit and r.get("what", "forward") == "forward")
            if pts:
                ax.plot(*zip(*pts), ls, marker="o", label=f"{name}, {'XLA' if jit else 'no XLA'}")
    ax.axhline(0.85, color="grey", lw=0.8)
    ax.text(2048, 0.86, "target 85%", fontsize=8, color="grey")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (pixels per forward call)")
    ax.set_ylabel("model FLOP/s / numpy matmul FLOP/s\n(same processes and threads)")
    top = max([r["vs_matmul"] for g in data["groups"].values() for r in g["items"]] + [1.0])
    ax.set_ylim(0, top + 0.1)
    ax.set_title(f"forward pass vs matmul peak - {data['machine']['cpu']}, "
                 f"{data['machine']['cores_usable']} cores", fontsize=9)
    ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
