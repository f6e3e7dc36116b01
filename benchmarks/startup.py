"""Start-up of ``s2dask classify``: where the time goes before the first chunk runs.

Runs the whole CLI process (``python -m s2dask.cli classify``) on a synthetic scene with
the tutorial's MLP bundle (its OpenVINO IR stored, as ``s2dask train`` writes it, or
without with ``--no-ir``) and reads ``timings_s.startup`` from its ``job.json``: seconds
since the process started at which the job's libraries were imported, the embedded
cluster was up, every worker had the model (engine resolved, predictor compiled), the
scenes were checked, and the first task of the scene started on a worker. The machine's
load (``/proc/loadavg``) is recorded before and after each run: the figure is a
wall-clock time on a shared machine.

    python benchmarks/startup.py                       # 4096^2, IR in the bundle, 3 runs
    python benchmarks/startup.py --no-ir --repeat 1    # workers convert model.keras
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def run_once(scene: Path, bundle: Path, out: Path, extra: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "s2dask.cli", "classify", str(scene), "--model", str(bundle),
           "--out", str(out), "--quiet", *extra]
    load0, t0 = _load(), time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"classify failed: {proc.stderr.strip()[-500:]}")
    record = json.loads(next(out.glob("*/job.json")).read_text())
    return {"startup": record["timings_s"].get("startup"), "wall_s": round(wall, 2),
            "predict_s": round(record["timings_s"]["predict"], 2), "load_before": load0,
            "load_after": _load(), "engine": record.get("engine", {}).get("workers"),
            "stdout": proc.stdout.strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-ir", action="store_true", help="a bundle without the OpenVINO IR")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    scene, bundle = C.scene(args.size), C.model_bundle(ir=not args.no_ir)
    extra = ["--workers", str(args.workers)] if args.workers else []
    runs = [run_once(scene, bundle, C.scratch("startup-out") / str(i), extra) for i in range(args.repeat)]
    keys = ["imports", "cluster_up", "scenes_checked", "model_delivered", "first_chunk"]
    rows = [[i, *[(r["startup"] or {}).get(k) for k in keys], r["wall_s"], r["load_before"], r["load_after"]]
            for i, r in enumerate(runs)]
    print(C.table(rows, ["run", *keys, "wall s", "load before", "load after"]))
    print(runs[-1]["stdout"])
    data = C.header("startup", {"size": args.size, "ir": not args.no_ir, "workers": args.workers,
                                "repeat": args.repeat})
    data["runs"] = runs
    C.write_json(data, args.json, f"startup-{args.size}{'-no-ir' if args.no_ir else ''}.json")


if __name__ == "__main__":
    main()
