"""Chaos: a batch of scenes while workers are killed and object storage fails requests.

A moto S3 server on loopback behind ``tests/_faulty_proxy.py`` holds the scenes and the
outputs. First an undisturbed run of the batch; then the same batch while a chaos loop
kills a random worker process every ``--kill-every`` seconds (``os._exit`` in the worker,
as distributed's own tests do; the nanny starts a new one) and the proxy answers a
fraction of S3 requests with ``503 SlowDown`` or a dropped connection. Reported as JSON:
scenes completed, outputs equal to the undisturbed run, storage faults injected, retries
recorded in the job records (``job.json`` ``retries``), worker restarts, and the wall
time against the undisturbed run. Target: every scene completes and equals, wall time
under 2x at one kill per 10 s.

    python benchmarks/chaos.py --quick                       # 4 scenes of 256^2, short
    python benchmarks/chaos.py --scenes 12 --size 1024 --kill-every 10 --fail-fraction 0.05
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the fault proxy is test code

import _common as C  # noqa: E402

BUCKET = "s2dask-chaos"


def _aws_env(endpoint: str) -> None:
    """AWS_* for this process and the workers it starts (they inherit the environment)."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[key]
    os.environ.update({"AWS_ACCESS_KEY_ID": "chaos", "AWS_SECRET_ACCESS_KEY": "chaos-secret",
                       "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                       "AWS_EC2_METADATA_DISABLED": "true"})


def _upload_scenes(n: int, size: int, moto: str) -> list[str]:
    import boto3

    from s2dask.scene.synthetic import make_scene

    s3 = boto3.client("s3", endpoint_url=moto)
    s3.create_bucket(Bucket=BUCKET)
    urls = []
    for i in range(n):
        local = C.scratch("chaos-scenes") / f"scene-{size}-{i:02d}.tif"
        if not local.is_file():
            make_scene(local, size=size, seed=100 + i)
        s3.upload_file(str(local), BUCKET, f"scenes/{local.name}")
        urls.append(f"s3://{BUCKET}/scenes/{local.name}")
    return urls


class ChaosLoop(threading.Thread):
    """Kill a random worker process every ``every`` seconds until stopped."""

    def __init__(self, client, every: float, seed: int = 0):
        super().__init__(daemon=True, name="chaos")
        self.client, self.every, self.rng = client, every, random.Random(seed)
        self.kills = 0
        self.seen: set[str] = set()  # every worker address met: restarted ones get new ones
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.every):
            workers = sorted(self.client.scheduler_info()["workers"])
            self.seen.update(workers)
            if not workers:
                continue
            victim = self.rng.choice(workers)
            try:  # the worker dies before it can answer: the call's error is expected
                self.client.run(os._exit, 1, workers=[victim], on_error="ignore")
                self.kills += 1
            except Exception:
                pass

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


def _run_batch(urls, model, out, *, client, chunks) -> tuple[float, list]:
    from s2dask.job.run import classify

    t = time.perf_counter()
    results = classify(urls, str(model), out, chunks=chunks, client=client, progress=False)
    return time.perf_counter() - t, results


def _equal(a_url: str, b_url: str) -> bool:
    import numpy as np
    import xarray as xr

    from s2dask.io.storage import storage_options_for

    a = xr.open_zarr(a_url, storage_options=storage_options_for(a_url))
    b = xr.open_zarr(b_url, storage_options=storage_options_for(b_url))
    return all(np.array_equal(a[v].values, b[v].values) for v in ("classes", "confidence"))


def run(a) -> dict:
    import logging

    from _faulty_proxy import Fault, FaultyProxy
    from distributed import Client, LocalCluster
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's access log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    moto = f"http://{host}:{port}"
    proxy = FaultyProxy(moto).start()
    _aws_env(proxy.url)
    try:
        urls = _upload_scenes(a.scenes, a.size, moto)
        model = C.model_bundle()
        cluster = LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, memory_limit=a.memory_limit)
        client = Client(cluster)
        try:
            # warm-up (model delivered and built in every worker), so both timed runs start alike
            _run_batch(urls[:1], model, f"s3://{BUCKET}/warm", client=client, chunks=a.chunks)
            t_ref, ref = _run_batch(urls, model, f"s3://{BUCKET}/ref", client=client, chunks=a.chunks)
            first = set(client.scheduler_info()["workers"])
            proxy.set_faults([
                Fault(methods={"GET", "PUT", "HEAD"}, path=r"/(scenes|chaos)/", fraction=a.fail_fraction,
                      kind="503", seed=a.seed),
            ])
            chaos = ChaosLoop(client, a.kill_every, seed=a.seed)
            chaos.start()
            try:
                t_chaos, res = _run_batch(urls, model, f"s3://{BUCKET}/chaos", client=client,
                                          chunks=a.chunks)
            finally:
                chaos.stop()
                faults = proxy.failed
                proxy.set_faults([])
            seen_workers = len(first | chaos.seen | set(client.scheduler_info()["workers"]))
        finally:  # a worker the nanny is restarting may not stop in time: not a result
            for closing in (client.close, cluster.close):
                try:
                    closing()
                except Exception as exc:
                    print(f"closing: {type(exc).__name__}: {exc}", file=sys.stderr)
        scenes = []
        for r0, r1 in zip(ref, res):
            equal = r1.status == "complete" and r0.status == "complete" and _equal(
                f"{r0.out}/classes.zarr", f"{r1.out}/classes.zarr")
            retries = (r1.record.get("retries") or {}).get("total") if r1.status == "complete" else None
            scenes.append({"scene": r1.scene, "status": r1.status, "equal": equal,
                           "retries_recorded": retries, "error": r1.error})
    finally:
        proxy.stop()
        server.stop()
    done = sum(s["status"] == "complete" for s in scenes)
    return {"undisturbed_wall_s": t_ref, "chaos_wall_s": t_chaos, "wall_ratio": t_chaos / t_ref,
            "scenes": len(scenes), "completed": done, "equal": sum(s["equal"] for s in scenes),
            "worker_kills": chaos.kills, "worker_processes_seen": seen_workers,
            "worker_restarts": seen_workers - a.workers,
            "storage_faults_injected": faults, "proxy_requests": proxy.requests,
            "retries_recorded_total": sum(s["retries_recorded"] or 0 for s in scenes),
            "per_scene": scenes,
            "targets": {"all_complete_and_equal": done == len(scenes) == sum(s["equal"] for s in scenes),
                        "wall_ratio<2": t_chaos / t_ref < 2.0}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--size", type=int, default=1024, help="scene edge (pixels)")
    p.add_argument("--chunks", type=int, default=256)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--memory-limit", default="2GiB")
    p.add_argument("--kill-every", type=float, default=10.0, help="seconds between worker kills")
    p.add_argument("--fail-fraction", type=float, default=0.05, help="share of S3 requests failed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="4 scenes of 256^2, a kill every 3 s")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/chaos.json)")
    a = p.parse_args(argv)
    if a.quick:
        a.scenes, a.size, a.chunks, a.kill_every = 4, 256, 64, 3.0
    data = C.header("chaos", {k: v for k, v in vars(a).items() if k != "json"})
    data["result"] = run(a)
    C.write_json(data, a.json, "chaos-quick.json" if a.quick else "chaos.json")
    r = data["result"]
    print(f"{r['completed']}/{r['scenes']} complete, {r['equal']} equal, {r['worker_kills']} kills, "
          f"{r['storage_faults_injected']} storage faults, wall {r['wall_ratio']:.2f}x undisturbed")
    return 0 if r["targets"]["all_complete_and_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
