"""JPEG 2000 decoding: a SAFE-like tile end to end, the decode share, and what helps.

A SAFE-like L2A product is generated once into the scratch folder (never into git): the
10 m bands (B02, B03, B04, B08) at ``--size``^2 and the 20 m bands (B05, B06, B07, B8A,
B11, B12) at half that, lossless uint16 JPEG 2000 written by GDAL's JP2OpenJPEG driver the
way Sentinel-2 products are laid out: 1024 x 1024 tiles, 64 x 64 code-blocks, 6
resolution levels, reversible 5/3 wavelet. Pixels come from the synthetic 10-band scene
(20 m bands: every second pixel). Writing a full tile (``--size 10980``) takes a while
(single-threaded encoder): it is cached by size.

Measured:

- decode share per task: for a few chunks, the block read (JP2 decode of every band's
  window, 20 m replication) against ``block_outputs`` (forward + class/confidence) of the
  same block, one thread, in this process; also for the same pixels read from the
  synthetic COG (DEFLATE) as a reference;
- the job end to end (``classify`` on a LocalCluster of the default size) per chunk edge:
  aligned with the JP2 tiles (1024, 2048) or not (1536), and with GDAL's multi-threaded
  JPEG 2000 decoding (``GDAL_NUM_THREADS`` inside the read) at 1 and at the host's
  ``cores / Dask threads`` (and 2 where that is 1, to see oversubscription);
- decode alone with 1 and 2 GDAL threads on one chunk (what spare cores could give).

    python benchmarks/jp2.py --size 4096              # -> results/jp2-4096.json
    python benchmarks/jp2.py --size 10980             # a full tile (first run writes it)
    python benchmarks/jp2.py --quick --json /tmp/j.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import numpy as np  # noqa: E402

BANDS_10M = ("B02", "B03", "B04", "B08")
BANDS_20M = ("B05", "B06", "B07", "B8A", "B11", "B12")
JP2_OPTIONS = {"QUALITY": "100", "REVERSIBLE": "YES", "BLOCKXSIZE": "1024", "BLOCKYSIZE": "1024",
               "CODEBLOCK_WIDTH": "64", "CODEBLOCK_HEIGHT": "64", "RESOLUTIONS": "6", "YCC": "NO"}


# ------------------------------------------------------------------ the SAFE-like product


def safe_product(size: int) -> Path:
    """The cached SAFE-like product of ``size``^2 10 m pixels (written on first use)."""
    name = f"S2B_MSIL2A_20230801T160000_N0300_R097_T17TNH_20230801T200000-{size}.SAFE"
    safe = C.scratch("jp2") / name
    img = safe / "GRANULE" / "L2A_T17TNH_A000000_20230801T160000" / "IMG_DATA"
    done = safe / ".complete"
    if done.is_file():
        return safe
    shutil.rmtree(safe, ignore_errors=True)
    src = C.scene(size)
    t = time.perf_counter()
    for band in (*BANDS_10M, *BANDS_20M):
        res = 10 if band in BANDS_10M else 20
        out = img / f"R{res}m" / f"T17TNH_20230801T160000_{band}_{res}m.jp2"
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_band(src, band, 1 if res == 10 else 2, out)
        print(f"wrote {out.name} ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    done.write_text(f"{time.perf_counter() - t:.1f} s\n")
    return safe


def _write_band(src_path: Path, band: str, step: int, out: Path) -> None:
    """One band of the synthetic COG (every ``step``-th pixel) as a tiled lossless JP2."""
    import rasterio
    import rasterio.shutil
    from rasterio.windows import Window

    with rasterio.open(src_path) as src:
        bidx = 1 + list(src.descriptions).index(band)
        h, w = -(-src.height // step), -(-src.width // step)
        profile = {"driver": "GTiff", "width": w, "height": h, "count": 1, "dtype": "uint16",
                   "crs": src.crs, "transform": src.transform * src.transform.scale(step, step),
                   "nodata": 0, "tiled": True, "blockxsize": 512, "blockysize": 512}
        tmp = out.with_suffix(".tmp.tif")
        with rasterio.open(tmp, "w", **profile) as dst:
            rows = 1024
            for y in range(0, h, rows):
                n = min(rows, h - y)
                block = src.read(bidx, window=Window(0, y * step, src.width, min(n * step, src.height - y * step)))
                dst.write(block[::step, ::step][:n, :w], 1, window=Window(0, y, w, n))
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
        rasterio.shutil.copy(tmp, out, driver="JP2OpenJPEG", **JP2_OPTIONS)
    tmp.unlink()


# ------------------------------------------------------------------ decode vs forward


def _set_gdal_threads(n: int) -> None:
    """GDAL decoder threads of every scene read in this process (the job's READ_ENV)."""
    from s2dask.scene.reader import READ_ENV

    READ_ENV["GDAL_NUM_THREADS"] = str(n)


def profile_chunks(path: Path, model: Path, *, chunks: int, n_chunks: int, gdal_threads: int,
                   engine_kw: dict) -> dict:
    """Read vs block_outputs on the first ``n_chunks`` chunks, one thread (this process)."""
    from s2dask.model.blocks import block_outputs
    from s2dask.model.bundle import load_model
    from s2dask.scene import open_scene

    _set_gdal_threads(gdal_threads)
    bundle = load_model(model)
    pred = _predictor(bundle, engine_kw)
    arr = open_scene(path, bands=bundle.bands, chunks=chunks).data
    blocks = [(i, j) for i in range(arr.numblocks[1]) for j in range(arr.numblocks[2])][:n_chunks]
    read = fwd = px = 0.0
    for i, j in blocks:
        t = time.perf_counter()
        block = np.asarray(arr.blocks[:, i, j].compute(scheduler="sync"))
        read += time.perf_counter() - t
        t = time.perf_counter()
        block_outputs(pred, block)
        fwd += time.perf_counter() - t
        px += block[0].size
    _set_gdal_threads(1)
    return {"chunks": chunks, "gdal_threads": gdal_threads, "n_chunks": len(blocks),
            "read_s": read, "block_outputs_s": fwd, "read_mpx_s": px / 1e6 / read,
            "forward_mpx_s": px / 1e6 / fwd, "decode_share": read / (read + fwd)}


def _predictor(bundle, engine_kw: dict):
    import inspect

    params = inspect.signature(bundle.predictor).parameters
    kw = {k: v for k, v in engine_kw.items() if k in params}
    if "threads" in params:  # one thread, as each worker's and as the read's (default: all cores)
        kw.setdefault("threads", 1)
    return bundle.predictor(**kw)


# ------------------------------------------------------------------ the job


def _worker_gdal_threads(n: int) -> None:
    from s2dask.scene.reader import READ_ENV

    READ_ENV["GDAL_NUM_THREADS"] = str(n)


def run_job(client, safe: Path, model: Path, *, chunks: int, gdal_threads: int, engine_kw: dict,
            label: str) -> dict:
    from s2dask.job.run import classify

    client.run(_worker_gdal_threads, gdal_threads)
    out = C.scratch("jp2-out") / label
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    (res,) = classify(str(safe), str(model), str(out), chunks=chunks, client=client,
                      progress=False, quicklook=False, **engine_kw)
    wall = time.perf_counter() - t
    client.run(_worker_gdal_threads, 1)
    shutil.rmtree(out, ignore_errors=True)
    rec = res.record
    return {"label": label, "chunks": chunks, "gdal_threads": gdal_threads, "wall_s": wall,
            "timings_s": rec["timings_s"], "throughput_mpx_s": rec["throughput_mpx_s"],
            "aligned_with_1024_tiles": chunks % 1024 == 0}


def main(argv=None) -> int:
    from s2dask.job.cluster import local_cluster_size

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096, help="10 m edge in pixels (10980: a full tile)")
    p.add_argument("--chunks", type=int, nargs="*", default=[1024, 1536, 2048])
    p.add_argument("--profile-chunks", type=int, default=2, help="chunks timed in the profile")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="threads per worker")
    p.add_argument("--quick", action="store_true", help="a 512^2 product (smoke test)")
    p.add_argument("--json", default=None)
    p.add_argument("--profile-only", action="store_true", help="no jobs: the decode share only")
    C.add_engine_args(p)
    a = p.parse_args(argv)
    size, chunk_list = (512, [256]) if a.quick else (a.size, a.chunks)
    engine_kw = C.job_engine_keywords(a.engine, a.precision)
    workers, threads = local_cluster_size(a.workers, a.threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    spare = max(1, cores // (workers * threads))
    gdal_sweep = sorted({1, spare, 2})
    t = time.perf_counter()
    safe, model = safe_product(size), C.model_bundle()
    data = C.header("jp2", {"size": size, "chunks": chunk_list, "workers": workers,
                            "threads_per_worker": threads, "cores": cores, "gdal_threads": gdal_sweep,
                            "jp2_options": JP2_OPTIONS, "product": str(safe),
                            "job_keywords": engine_kw})
    data["generate_s"] = time.perf_counter() - t
    data["product_mb"] = sum(f.stat().st_size for f in safe.rglob("*.jp2")) / 1e6
    pc = min(chunk_list[-1], 2048)
    data["profile"] = [profile_chunks(safe, model, chunks=pc, n_chunks=a.profile_chunks,
                                      gdal_threads=g, engine_kw=engine_kw) for g in gdal_sweep]
    data["profile_cog_reference"] = profile_chunks(C.scene(size), model, chunks=pc,
                                                   n_chunks=a.profile_chunks, gdal_threads=1,
                                                   engine_kw=engine_kw)
    name = "jp2-quick.json" if a.quick else f"jp2-{size}.json"
    data["jobs"] = []
    C.write_json(data, a.json, name)  # a long run leaves the profile behind
    if not a.profile_only:
        _jobs(data, safe, model, workers=workers, threads=threads, chunk_list=chunk_list,
              gdal_sweep=gdal_sweep, engine_kw=engine_kw, write=lambda: C.write_json(data, a.json, name))
    _print(data, size, workers, threads, cores)
    return 0


def _jobs(data: dict, safe: Path, model: Path, *, workers: int, threads: int, chunk_list: list,
          gdal_sweep: list, engine_kw: dict, write) -> None:
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                           dashboard_address=":0")
    client = Client(cluster, set_as_default=False)
    try:
        client.wait_for_workers(workers)
        run_job(client, C.scene(256), model, chunks=128, gdal_threads=1, engine_kw=engine_kw,
                label="warm-up")  # model built on every worker before anything is timed
        for c in chunk_list:
            data["jobs"].append(run_job(client, safe, model, chunks=c, gdal_threads=1,
                                        engine_kw=engine_kw, label=f"c{c}-g1"))
            write()
        best_c = max(data["jobs"], key=lambda r: r["throughput_mpx_s"]["end_to_end"])["chunks"]
        for g in gdal_sweep:
            if g != 1:
                data["jobs"].append(run_job(client, safe, model, chunks=best_c, gdal_threads=g,
                                            engine_kw=engine_kw, label=f"c{best_c}-g{g}"))
                write()
    finally:
        client.close()
        cluster.close()


def _print(data: dict, size: int, workers: int, threads: int, cores: int) -> None:
    print(f"SAFE-like product {size}^2 (10 m), {data['product_mb']:.0f} MB of JP2; "
          f"{workers} worker(s) x {threads} thread(s) on {cores} cores; load at start "
          f"{data['machine']['load_avg_at_start'][0]:.2f}")
    print(C.table([("jp2", r["chunks"], r["gdal_threads"], r["read_mpx_s"], r["forward_mpx_s"],
                    r["decode_share"]) for r in data["profile"]]
                  + [("cog (deflate)", data["profile_cog_reference"]["chunks"], 1,
                      data["profile_cog_reference"]["read_mpx_s"],
                      data["profile_cog_reference"]["forward_mpx_s"],
                      data["profile_cog_reference"]["decode_share"])],
                  ["input", "chunk", "gdal thr", "read Mpx/s", "fwd Mpx/s", "decode share"]))
    print(C.table([(r["label"], r["chunks"], r["aligned_with_1024_tiles"], r["gdal_threads"],
                    r["throughput_mpx_s"]["end_to_end"], r["timings_s"]["predict"], r["wall_s"])
                   for r in data["jobs"]],
                  ["job", "chunks", "aligned", "gdal thr", "e2e Mpx/s", "predict s", "wall s"]))


if __name__ == "__main__":
    sys.exit(main())
