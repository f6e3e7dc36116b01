"""Loading a STAC item: odc-stac's dask graph against s2dask's own chunk reader, on one full tile.

Writes a 10980 x 10980 Sentinel-2 L2A item to the scratch folder: four 10 m bands, six 20 m
bands (5490^2) and the 20 m SCL as sparse tiled GeoTIFFs (``SPARSE_OK=TRUE``, 1024^2 tiles,
DEFLATE; only a few tiles hold data, so the files are small and reads are cheap), and an
Earth Search v1 style item (``blue`` ... ``swir22``, ``scl``; ``raster:bands`` scale 0.0001 /
offset -0.1) pointing at them. Then, for chunks of 2048 x 2048:

* ``odc.stac.load(items, bands=..., chunks={"x": 2048, "y": 2048}, resolution=10)``, stacked to
  the ``(band, y, x)`` block a prediction task needs (``to_array("band")`` and one chunk along
  ``band``): tasks in the graph, graph layers, pickled graph bytes, tasks in the dependency
  closure of one output chunk, how many of them are separate per-band reads that must be
  gathered into the prediction task (and their bytes: what crosses the network when they ran
  on other workers), time and traced peak memory to compute one chunk;
* s2dask: the item parsed by :mod:`s2dask.scene.stac_catalog`, opened through its read plan like a band
  folder by :func:`s2dask.open_scene` (the band files carry band names), one task per chunk
  reading all its bands; the SCL read inside the prediction task (:class:`s2dask.scene.mask.MaskReader`)
  adds no task. Same figures.

    python benchmarks/stac_loading.py                      # -> results/stac_loading.json
    python benchmarks/stac_loading.py --quick --json /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SCRATCH, header, table, write_json  # noqa: E402

BANDS_10 = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08"}
BANDS_20 = {"rededge1": "B05", "rededge2": "B06", "rededge3": "B07", "nir08": "B8A",
            "swir16": "B11", "swir22": "B12"}
X0, Y0, EPSG = 499980.0, 8100000.0, 32638


def write_sparse(path: Path, size: int, res: float, dtype: str, *, fill_tiles: int = 2) -> None:
    """A tiled, DEFLATE GeoTIFF with 1024^2 tiles where only ``fill_tiles`` tiles are written."""
    import rasterio
    from affine import Affine

    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1, dtype=dtype,
                       crs=f"EPSG:{EPSG}", transform=Affine(res, 0, X0, 0, -res, Y0), nodata=0,
                       tiled=True, blockxsize=1024, blockysize=1024, compress="DEFLATE",
                       SPARSE_OK="TRUE", BIGTIFF="IF_SAFER") as dst:
        rng = np.random.default_rng(0)
        for k in range(min(fill_tiles, (size // 1024) ** 2)):
            win = rasterio.windows.Window(1024 * k, 0, 1024, 1024)
            dst.write(rng.integers(1001, 9000, size=(1, 1024, 1024)).astype(dtype), window=win)


def make_item(folder: Path, size: int) -> Path:
    """Sparse band files named by band (``B02.tif``) and an Earth Search v1 style item over them."""
    from datetime import datetime, timezone

    import pystac
    from rasterio.warp import transform_geom
    from shapely.geometry import box, shape

    folder.mkdir(parents=True, exist_ok=True)
    half = -(-size // 2)
    footprint = transform_geom(f"EPSG:{EPSG}", "EPSG:4326",
                               box(X0, Y0 - 10 * size, X0 + 10 * size, Y0).__geo_interface__)
    item = pystac.Item("S2B_T38XNF_20250422T091553_L2A", geometry=footprint,
                       bbox=list(shape(footprint).bounds),
                       datetime=datetime(2025, 4, 22, 9, 19, tzinfo=timezone.utc),
                       properties={"constellation": "sentinel-2", "platform": "sentinel-2b",
                                   "proj:epsg": EPSG, "s2:processing_baseline": "05.11",
                                   "s2:mgrs_tile": "38XNF"},
                       collection="sentinel-2-c1-l2a",
                       stac_extensions=[f"https://stac-extensions.github.io/{e}/schema.json" for e in
                                        ("projection/v1.1.0", "raster/v1.1.0", "eo/v1.1.0")])
    assets = [(k, b, size, 10, "uint16") for k, b in BANDS_10.items()]
    assets += [(k, b, half, 20, "uint16") for k, b in BANDS_20.items()] + [("scl", "SCL", half, 20, "uint8")]
    for key, band, n, res, dtype in assets:
        path = folder / f"{band}.tif"
        if not path.exists():
            write_sparse(path, n, res, dtype)
        rb = {"nodata": 0, "data_type": dtype, "spatial_resolution": res}
        if band != "SCL":
            rb.update(scale=0.0001, offset=-0.1)
        item.add_asset(key, pystac.Asset(str(path), media_type=pystac.MediaType.COG, roles=["data"], extra_fields={
            "gsd": res, "proj:shape": [n, n], "proj:transform": [res, 0, X0, 0, -res, Y0],
            "raster:bands": [rb], **({"eo:bands": [{"name": band}]} if band != "SCL" else {})}))
    out = folder / "item.json"
    out.write_text(json.dumps(item.to_dict()))
    return out


def closure(graph: dict, key) -> set:
    """Every task key the computation of ``key`` depends on (itself included)."""
    from dask.core import get_dependencies

    seen, todo = set(), [key]
    while todo:
        k = todo.pop()
        if k in seen:
            continue
        seen.add(k)
        todo.extend(get_dependencies(graph, k))
    return seen


def _layer(key) -> str:
    return str(key[0] if isinstance(key, tuple) else key).rsplit("-", 1)[0]


def graph_figures(arr, read_layers: set[str]) -> dict:
    """Task counts, layers, pickled bytes and the closure of the first output chunk of ``arr``.

    ``read_layers`` name the layers whose tasks read pixels (odc-stac: one per band; s2dask:
    ``open-scene``). A read task in another task's closure is a separate input that the
    prediction task must gather (from another worker when it ran there).
    """
    import cloudpickle

    hlg = arr.__dask_graph__()
    graph = dict(hlg)
    keys = list(_flatten(arr.__dask_keys__()))
    first = closure(graph, keys[0])
    reads = [k for k in first if _layer(k) in read_layers]
    read_bytes = 0
    for k in reads:  # the block each read task returns: its chunk of the input array
        read_bytes += int(np.prod([c[0] for c in arr.chunks[-2:]])) * arr.dtype.itemsize
    by_layer: dict[str, int] = {}
    for k in first:
        by_layer[_layer(k)] = by_layer.get(_layer(k), 0) + 1
    try:
        nbytes = len(cloudpickle.dumps(graph))
    except Exception as exc:  # informative only
        nbytes = f"not picklable: {exc}"
    return {
        "output_chunks": len(keys),
        "tasks": len(graph),
        "tasks_per_output_chunk": round(len(graph) / len(keys), 2),
        "layers": len(hlg.layers),
        "graph_pickle_bytes": nbytes,
        "closure_of_one_chunk": len(first),
        "closure_by_layer": dict(sorted(by_layer.items())),
        "separate_reads_per_chunk": len(reads),
        "bytes_gathered_per_chunk": read_bytes if len(reads) > 1 else 0,
        "output_chunk_bytes": int(np.prod([c[0] for c in arr.chunks])) * arr.dtype.itemsize,
    }


def _flatten(k):
    if isinstance(k, list):
        for x in k:
            yield from _flatten(x)
    else:
        yield k


def timed_chunk(arr, size: int) -> dict:
    """Compute the first output chunk (synchronously): seconds and tracemalloc peak."""
    import dask

    window = arr[..., :size, :size]
    tracemalloc.start()
    t = time.perf_counter()
    with dask.config.set(scheduler="sync"):
        out = window.compute()
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"seconds": round(seconds, 3), "traced_peak_mib": round(peak / 2**20, 1),
            "result_mib": round(out.nbytes / 2**20, 1), "shape": list(out.shape)}


def run_odc(item_path: Path, chunk: int, keys: list[str]) -> dict:
    import odc.stac
    import pystac

    item = pystac.Item.from_file(str(item_path))
    t = time.perf_counter()
    ds = odc.stac.load([item], bands=keys, chunks={"x": chunk, "y": chunk}, resolution=10,
                       resampling="nearest", dtype="uint16", nodata=0)
    stacked = ds.to_array("band").isel(time=0).chunk({"band": -1}).data
    build = time.perf_counter() - t
    per_band = graph_figures(ds[keys[0]].data, {keys[0]})
    out = graph_figures(stacked, set(keys))
    out.update(build_seconds=round(build, 3), per_band_array=per_band,
               one_chunk=timed_chunk(stacked, chunk))
    return out


def run_own(item_path: Path, chunk: int, bands: list[str]) -> dict:
    from s2dask.scene import open_scene
    from s2dask.scene.mask import MaskReader, scl_factor
    from s2dask.scene.stac_catalog import open_stac_item, read_plan

    t = time.perf_counter()
    scene = open_stac_item(item_path)
    plan = read_plan(scene, bands)
    folder = Path(next(iter(plan.paths.values()))).parent  # the plan's files carry band names
    arr = open_scene(folder, bands=bands, chunks=chunk).data
    build = time.perf_counter() - t
    out = graph_figures(arr, {"open-scene"})
    out.update(build_seconds=round(build, 3), one_chunk=timed_chunk(arr, chunk))
    reader = MaskReader(plan.scl_path, kind="scl", factor=scl_factor(plan.scl_resolution, 10, scene="b"))
    tracemalloc.start()
    t = time.perf_counter()
    codes = reader(0, 0, chunk, chunk)
    out["scl_in_task"] = {"seconds": round(time.perf_counter() - t, 3),
                          "traced_peak_mib": round(tracemalloc.get_traced_memory()[1] / 2**20, 1),
                          "codes_mib": round(codes.nbytes / 2**20, 1), "extra_tasks": 0,
                          "reader_pickle_bytes": len(pickle.dumps(reader))}
    tracemalloc.stop()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=10980, help="10 m tile edge in pixels (10980: a full tile)")
    p.add_argument("--chunks", type=int, default=2048)
    p.add_argument("--quick", action="store_true", help="a 2048^2 tile, chunks of 1024 (smoke test)")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/stac_loading.json)")
    args = p.parse_args(argv)
    size, chunk = (2048, 1024) if args.quick else (args.size, args.chunks)
    folder = SCRATCH / f"stac-item-{size}"
    item_path = make_item(folder, size)
    keys = [*BANDS_10, *BANDS_20]
    bands = [*BANDS_10.values(), *BANDS_20.values()]
    result = header("stac_loading", {"size": size, "chunks": chunk, "bands": bands, "scl": True,
                                     "files": "sparse tiled GeoTIFF, 1024^2 tiles, DEFLATE"})
    from importlib.metadata import version

    result["versions"].update({"odc-stac": version("odc-stac"), "pystac": version("pystac")})
    result["odc_stac"] = {"with_scl": run_odc(item_path, chunk, [*keys, "scl"]),
                          "bands_only": run_odc(item_path, chunk, keys)}
    result["s2dask_reader"] = run_own(item_path, chunk, bands)
    o, s = result["odc_stac"]["with_scl"], result["s2dask_reader"]
    rows = [(name, r["tasks"], r["tasks_per_output_chunk"], r["layers"], r["closure_of_one_chunk"],
             r["separate_reads_per_chunk"], r["graph_pickle_bytes"], r["one_chunk"]["seconds"],
             r["one_chunk"]["traced_peak_mib"])
            for name, r in (("odc-stac 10 bands + SCL", o), ("odc-stac 10 bands", result["odc_stac"]["bands_only"]),
                            ("s2dask reader 10 bands (+SCL in task)", s))]
    print(table(rows, ("loader", "tasks", "tasks/chunk", "layers", "closure/chunk", "reads/chunk",
                       "graph bytes", "1 chunk s", "peak MiB")))
    write_json(result, args.json, "stac_loading.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
