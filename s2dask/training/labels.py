"""From labelled points and polygons plus a scene to a training table (``s2dask sample``).

:func:`sample` reads a label file (GeoPackage, GeoJSON, Shapefile, FlatGeobuf through pyogrio,
or a CSV of ``x``,``y`` points with ``labels_crs``), brings it into the scene's CRS, finds the
pixels each feature covers, reads only those pixels' band values from the scene that
:func:`~s2dask.scene.open_scene` opens (so the values are exactly what ``classify`` sees) and
writes one row per (feature, pixel) to Parquet or CSV, with a JSON summary beside it.

Which pixels a feature gives, and how label files are read and repaired: see
:mod:`s2dask.training.vector`.

How the pixels are read
-----------------------
Client side, labelled pixels are grouped by the scene chunk they fall in. Each touched chunk
becomes one read task (the scene's own chunk task, every band of that window) followed by one
gather task that keeps just the labelled pixels; untouched chunks are never read (the
graph is culled), so labels spread over a 10980 x 10980 tile read only their chunks, and
memory per worker is bounded by the chunk. The table is assembled on the client.

Masks
-----
``mask``/``mask_classes`` mean what they mean to ``classify`` (:func:`s2dask.scene.mask.parse_mask_option`;
default: the scene's SCL where it has one). With a mask, each gather task also computes its
chunk's mask codes (:meth:`s2dask.scene.mask.ChunkMask.codes`) and hands back those of its pixels;
rows on masked pixels are left out of the table and counted per class and per reason. A pixel
the SCL calls "no data" counts as nodata, as in ``job.json``. When the mask resolves to none
the reads are exactly those of an unmasked run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import OutputExistsError, ParameterError, SamplesError, SceneError, StorageError
from ..io.storage import atomic_write_text, staged_file
from ..job.progress import gather
from ..scene.aoi import inside_pixels, read_aoi
from ..scene.mask import MASK_CODES, NODATA, VALID, ChunkMask, parse_mask_option
from ..scene.mask_source import SceneMask, scene_mask
from .vector import LabelFeatures, crs_text, feature_pixels, labels_in_scene, read_labels

__all__ = [
    "PixelReads",
    "SampleResult",
    "TABLE_METADATA_KEY",
    "format_summary",
    "plan_reads",
    "read_labels",
    "sample",
]

#: Parquet schema-metadata key under which the table records its own contract
#: (label column, name column, group column, bands, scene, CRS), read by ``read_samples``.
TABLE_METADATA_KEY = b"s2dask"
_TABLE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class SampleResult:
    """What :func:`sample` wrote.

    Attributes
    ----------
    table
        The Parquet or CSV table (one row per feature and pixel).
    summary_path
        The JSON summary beside it (``SAMPLES.json``).
    summary
        The summary as written (per class features, pixels, nodata pixels left out, ...).
    """

    table: Path
    summary_path: Path
    summary: dict


# --------------------------------------------------------------------------- reading pixels


def _gather(block: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Worker side: the labelled pixels of one chunk, ``(n, band)``."""
    return np.ascontiguousarray(block[:, rows, cols].T)


def _gather_masked(block: np.ndarray, rows: np.ndarray, cols: np.ndarray, mask: ChunkMask,
                   y0: int, x0: int) -> tuple[np.ndarray, np.ndarray]:
    """Worker side: the labelled pixels of one chunk ``(n, band)`` and their mask codes ``(n,)``."""
    codes = mask.codes(block, y0, x0)
    return np.ascontiguousarray(block[:, rows, cols].T), np.ascontiguousarray(codes[rows, cols])


@dataclass(frozen=True)
class PixelReads:
    """The read plan of :func:`plan_reads`: one Dask task per chunk that labels touch.

    Attributes
    ----------
    tasks
        ``dask.delayed`` objects, each gathering ``(n, band)`` values from one chunk (the
        scene's own read task for that chunk is its only input); with a mask, each returns
        ``(values, codes)``, the codes uint8 ``(n,)``.
    positions
        For each task, the positions in ``flat`` of the pixels it returns, in its order.
    chunks
        Number of chunks in the scene (to compare with ``len(tasks)``).
    """

    tasks: list
    positions: list
    chunks: int


def plan_reads(scene: xr.DataArray, flat: np.ndarray, *, mask: ChunkMask | None = None) -> PixelReads:
    """Plan the reads of the pixels at flat indices ``row * width + col`` of ``scene``.

    Parameters
    ----------
    scene
        A chunked ``(band, y, x)`` DataArray from :func:`~s2dask.scene.open_scene`.
    flat
        int64 flat pixel indices (unique, or not: each position gets its value).
    mask
        The scene's :class:`~s2dask.scene.mask.ChunkMask`: each task also returns its pixels' codes.

    Returns
    -------
    PixelReads
        One gather task per touched chunk; untouched chunks appear in no task's graph.
    """
    from dask import delayed

    width = scene.sizes["x"]
    ybounds = np.cumsum((0,) + tuple(scene.chunks[1]))
    xbounds = np.cumsum((0,) + tuple(scene.chunks[2]))
    rows, cols = flat // width, flat % width
    ci = np.searchsorted(ybounds, rows, side="right") - 1
    cj = np.searchsorted(xbounds, cols, side="right") - 1
    chunk = ci * (len(xbounds) - 1) + cj
    order = np.argsort(chunk, kind="stable")
    bounds = np.flatnonzero(np.diff(chunk[order])) + 1
    blocks = scene.data.to_delayed()
    tasks, where = [], []
    for part in np.split(order, bounds):
        if not len(part):
            continue
        i, j = int(ci[part[0]]), int(cj[part[0]])
        r = (rows[part] - ybounds[i]).astype("int32")
        c = (cols[part] - xbounds[j]).astype("int32")
        if mask is None:
            tasks.append(delayed(_gather, pure=True)(blocks[0, i, j], r, c))
        else:
            tasks.append(delayed(_gather_masked, pure=True)(blocks[0, i, j], r, c, mask,
                                                            int(ybounds[i]), int(xbounds[j])))
        where.append(part)
    return PixelReads(tasks, where, (len(ybounds) - 1) * (len(xbounds) - 1))


def _compute(tasks: list, client: Any) -> list:
    if client is None:
        from ..job.cluster import connect

        client, cluster = connect(dashboard=False)
        try:
            return gather(client, client.compute(tasks), "sampling")
        finally:
            client.close()
            cluster.close()
    if isinstance(client, str):  # a local dask scheduler: "threads" or "synchronous"
        import dask

        return list(dask.compute(*tasks, scheduler=client))
    return gather(client, client.compute(tasks), "sampling")  # a bar on a terminal only


def _read_pixels(scene: xr.DataArray, flat: np.ndarray, client: Any,
                 mask: ChunkMask | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Band values ``(len(flat), band)`` and mask codes ``(len(flat),)`` (all VALID without a mask).

    Each touched chunk is read once, no other chunk.
    """
    unique, inverse = np.unique(flat, return_inverse=True)
    plan = plan_reads(scene, unique, mask=mask)
    values = np.empty((len(unique), scene.sizes["band"]), dtype=scene.dtype)
    codes = np.full(len(unique), VALID, dtype="uint8")
    for part, got in zip(plan.positions, _compute(plan.tasks, client)):
        if mask is None:
            values[part] = got
        else:
            values[part], codes[part] = got
    inverse = inverse.reshape(-1)
    return values[inverse], codes[inverse], {"chunks_read": len(plan.tasks), "chunks": plan.chunks,
                                             "unique_pixels": int(len(unique))}


# --------------------------------------------------------------------------- the table


def _nodata_rows(values: np.ndarray, nodata: Any) -> np.ndarray:
    bad = np.zeros(len(values), dtype=bool)
    if np.issubdtype(values.dtype, np.floating):
        bad |= np.isnan(values).any(axis=1)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        bad |= (values == nodata).any(axis=1)
    return bad


def _draw(feat: np.ndarray, keep: np.ndarray, per_feature: int | None, seed: int) -> np.ndarray:
    """Keep at most ``per_feature`` of each feature's valid rows, drawn with ``seed``."""
    if not per_feature:
        return keep
    rng = np.random.default_rng(seed)
    out = keep.copy()
    rows = np.flatnonzero(keep)
    owners, starts, counts = np.unique(feat[rows], return_index=True, return_counts=True)
    for s, n in zip(starts[counts > per_feature], counts[counts > per_feature]):
        mine = rows[s:s + n]
        drop = np.setdiff1d(mine, rng.choice(mine, size=per_feature, replace=False))
        out[drop] = False
    return out


def _table(scene: xr.DataArray, lab: LabelFeatures, feat: np.ndarray, flat: np.ndarray,
           values: np.ndarray, report: dict):
    import pandas as pd

    t = scene.rio.transform()
    width = scene.sizes["x"]
    rows, cols = flat // width, flat % width
    data: dict[str, Any] = {
        "x": t.c + t.a * (cols + 0.5) + t.b * (rows + 0.5),
        "y": t.f + t.d * (cols + 0.5) + t.e * (rows + 0.5),
    }
    for k, band in enumerate(scene["band"].values):
        data[str(band)] = values[:, k]
    data[report["label_column"]] = lab.value[feat]
    if report["name_column"] and lab.name is not None:
        data[report["name_column"]] = pd.array(lab.name[feat], dtype="string")
    data["feature_id"] = lab.fid[feat]
    data["scene_id"] = pd.array([str(scene.attrs.get("scene_id", ""))] * len(flat), dtype="string")
    return pd.DataFrame(data)


def _shared_pixels(flat: np.ndarray, label: np.ndarray) -> dict:
    """Pixels holding rows of more than one feature (duplicate points, overlapping polygons)."""
    order = np.lexsort((label, flat))
    f, lab = flat[order], label[order]
    uniq, start, count = np.unique(f, return_index=True, return_counts=True)
    multi = count > 1
    first = lab[start]
    last = lab[start + count - 1]
    return {"pixels": int(multi.sum()), "rows": int(count[multi].sum()),
            "with_different_labels": int((multi & (first != last)).sum())}


def _masked_by_reason(codes: np.ndarray, masked: np.ndarray) -> dict[str, int]:
    """Rows left out by the mask, per reason (every masking reason, 0 where none)."""
    found = np.bincount(codes[masked], minlength=len(MASK_CODES))
    return {c.name: int(found[c.code]) for c in MASK_CODES if c.code not in (VALID, NODATA)}


def _class_rows(lab: LabelFeatures, feat: np.ndarray, pixels: list, nodata: np.ndarray,
                kept: np.ndarray, valid: np.ndarray, codes: np.ndarray, masked: np.ndarray) -> list[dict]:
    out = []
    lengths = np.array([len(p) for p in pixels])
    for v in np.unique(lab.value):
        mine = lab.value == v
        rows = lab.value[feat] == v
        name = None
        if lab.name is not None:
            names, counts = np.unique(lab.name[mine].astype(str), return_counts=True)
            name = str(names[np.argmax(counts)])
        out.append({
            "value": int(v), "name": name, "features": int(mine.sum()),
            "features_with_pixels": int((mine & (lengths > 0)).sum()),
            "pixels": int((rows & kept).sum()),
            "nodata_pixels_left_out": int((rows & nodata).sum()),
            "pixels_dropped_by_per_feature": int((rows & valid & ~kept).sum()),
            "masked_pixels_left_out": int((rows & masked).sum()),
            "masked_by_reason": _masked_by_reason(codes, rows & masked),
        })
    return out


# --------------------------------------------------------------------------- writing


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp)`` into storage's staged file, renamed when complete."""
    try:
        with staged_file(path) as tmp:
            write(tmp)
    except OSError as exc:
        raise StorageError(f"writing {path} failed ({exc}): check the folder's space and permissions") from None


def _contract(scene: xr.DataArray, report: dict) -> dict:
    return {
        "kind": "s2dask-samples", "version": 1, "label": report["label_column"],
        "name_column": report["name_column"], "group_column": "feature_id",
        "bands": [str(b) for b in scene["band"].values],
        "scene_id": scene.attrs.get("scene_id"), "crs": crs_text(scene.rio.crs),
        "pixel_size": [abs(float(r)) for r in scene.rio.resolution()],
    }


def _write_table(df, path: Path, fmt: str, contract: dict) -> None:
    if fmt == "csv":
        _write_atomic(path, lambda p: df.to_csv(p, index=False))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[TABLE_METADATA_KEY] = json.dumps(contract).encode()
    _write_atomic(path, lambda p: pq.write_table(table.replace_schema_metadata(meta), p))


def _check_out(out: str | os.PathLike, overwrite: bool) -> tuple[Path, Path, str]:
    path = Path(out).expanduser()
    fmt = _TABLE_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ParameterError(f"output {path} has an unsupported extension: end it in .parquet "
                             "(keeps dtypes, read by train) or .csv (for people)")
    summary = path.with_suffix(".json")
    for p in (path, summary):
        if p.is_dir():
            raise ParameterError(f"output {p} is a folder: give a file path such as {p / 'samples.parquet'}")
        if p.exists() and not overwrite:
            raise OutputExistsError(f"{p} already exists: pass --overwrite (overwrite=True) or "
                                    "choose another --out")
    if not path.parent.is_dir():
        raise ParameterError(f"the folder of output {path} does not exist: create it first")
    return path, summary, fmt


# --------------------------------------------------------------------------- the entry point


def _open(scene: Any, bands: Sequence[str] | str | None, chunks: Any) -> xr.DataArray:
    from ..scene import open_scene
    from ..scene.bands import canonical_bands

    if isinstance(scene, xr.DataArray):
        da = scene if bands is None else scene.sel(band=canonical_bands(bands))
    else:
        da = open_scene(scene, bands=bands, chunks=chunks)
    if da.rio.crs is None:
        raise SceneError(f"scene {da.attrs.get('source', '')} has no CRS: labels cannot be placed on it")
    return da


def _check_options(per_feature: int | None, buffer: float | None) -> None:
    if per_feature is not None and (int(per_feature) != per_feature or per_feature < 1):
        raise ParameterError(f"--per-feature must be a positive integer, got {per_feature!r}")
    if buffer is not None and not math.isfinite(float(buffer)):
        raise ParameterError(f"--buffer must be a finite number of metres, got {buffer!r}")


def _every_row_left_out(da: xr.DataArray, nodata: np.ndarray, masked: np.ndarray,
                        codes: np.ndarray) -> SamplesError:
    if not masked.any():
        return SamplesError(f"every labelled pixel ({len(nodata)}) is nodata in scene "
                            f"{da.attrs.get('source')}: the labels fall where the scene has no data")
    why = ", ".join(f"{k} {v}" for k, v in _masked_by_reason(codes, masked).items() if v)
    return SamplesError(f"every labelled pixel ({len(nodata)}) is nodata ({int(nodata.sum())}) or masked "
                        f"({why}) in scene {da.attrs.get('source')}: label clear pixels, or pass --mask none "
                        "(or other --mask-classes) to keep them")


def _scene_mask(da: xr.DataArray, mask: Any, mask_classes: Any) -> SceneMask:
    """The scene's mask as ``classify`` resolves it (parse first: bad options fail before any read)."""
    spec = parse_mask_option(mask, classes=mask_classes)
    return scene_mask(da, spec, scene_id=str(da.attrs.get("scene_id") or da.attrs.get("source") or "scene"))


def sample(
    scene: str | os.PathLike | xr.DataArray,
    labels: str | os.PathLike,
    *,
    out: str | os.PathLike,
    label: str = "Class_ID",
    name_column: str | None = None,
    bands: Sequence[str] | str | None = None,
    per_feature: int | None = None,
    buffer: float | None = None,
    all_touched: bool = False,
    seed: int = 0,
    labels_crs: Any = None,
    chunks: int | tuple[int, int] = 1024,
    mask: str | os.PathLike | None = None,
    mask_classes: str | Sequence[int] | None = None,
    client: Any = None,
    overwrite: bool = False,
    aoi: str | os.PathLike | None = None,
) -> SampleResult:
    """Turn labelled points and polygons into a training table of the scene's pixels.

    Parameters
    ----------
    scene
        Anything :func:`~s2dask.scene.open_scene` opens, or a DataArray it returned.
    labels
        A vector file (GeoPackage, GeoJSON, Shapefile, FlatGeobuf) in any CRS, or a CSV of
        points with ``x``,``y`` columns (then ``labels_crs`` is required).
    out
        ``SAMPLES.parquet`` (keeps dtypes and records the table's contract for ``train``) or
        ``SAMPLES.csv``; the summary goes to ``SAMPLES.json`` beside it.
    label
        Integer class column of the labels (0..254), written under the same name.
    name_column
        Class-name column, copied to the table.
    bands
        Bands to sample, in order (default: every band of the scene).
    per_feature
        Keep at most this many valid pixels per feature, drawn with ``seed``.
    buffer
        Buffer every geometry first, in scene CRS units (metres); negative shrinks polygons.
    all_touched
        Take every pixel a polygon touches instead of those whose centre is inside.
    seed
        Seed of the ``per_feature`` draw.
    labels_crs
        CRS of a CSV's ``x``,``y`` (or of a vector file declaring none).
    chunks
        Spatial chunk edge of the scene reads; each touched chunk is one read task.
    mask
        ``"scl"``, ``"none"`` or a raster on the scene's grid (non-zero = invalid), as for
        ``classify``; ``None``: the scene's SCL where it has one. Rows on masked pixels are left
        out and counted per class and reason.
    mask_classes
        SCL classes masked (default :data:`s2dask.scene.mask.DEFAULT_MASK_CLASSES`).
    client
        A ``distributed.Client``; ``None`` starts an embedded LocalCluster for the call
        (:func:`s2dask.job.cluster.connect`); ``"threads"``/``"synchronous"`` use Dask's
        in-process schedulers.
    overwrite
        Replace an existing table and summary.
    aoi
        An area of interest (polygon layer, any CRS), as for ``classify``: only pixels whose
        centre is inside it are sampled (and only the chunks they lie in read).

    Returns
    -------
    SampleResult

    Raises
    ------
    SamplesError
        If the label file is unreadable, has no CRS, lacks the label column or it is empty,
        holds geometries other than points and polygons, misses the scene, labels no pixel,
        or every labelled pixel is nodata or masked.
    SceneError, BandError
        If the scene cannot be opened or lacks a band, ``mask="scl"`` is asked of a scene
        without an SCL, or the mask raster is not on the scene's grid.
    ParameterError
        If an option is invalid (see the message).
    OutputExistsError
        If the table or its summary exists and ``overwrite`` is false. Nothing is written on
        any error.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    path, summary_path, fmt = _check_out(out, overwrite)
    _check_options(per_feature, buffer)
    parse_mask_option(mask, classes=mask_classes)
    da = _open(scene, bands, chunks)
    smask = _scene_mask(da, mask, mask_classes)
    frame, report = read_labels(labels, label=label, name_column=name_column, labels_crs=labels_crs)
    reserved = {"x", "y", "feature_id", "scene_id", *map(str, da["band"].values)}
    for col in (report["label_column"], report["name_column"]):
        if col and col in reserved:
            raise SamplesError(f"label file column {col!r} would clash with a table column "
                               f"({', '.join(sorted(reserved))}): rename it in the label file")
    lab = labels_in_scene(frame, report, da, buffer)
    pixels = feature_pixels(lab, da, all_touched)
    area, outside_aoi = (read_aoi(aoi) if aoi else None), 0
    if area is not None:  # pixels outside the area of interest are neither read nor sampled
        keep = [inside_pixels(area, crs=da.rio.crs, transform=da.rio.transform(), width=da.sizes["x"], flat=p)
                for p in pixels]
        outside_aoi = int(sum(len(p) - int(k.sum()) for p, k in zip(pixels, keep)))
        pixels = [p[k] for p, k in zip(pixels, keep)]
    timings["labels"] = time.perf_counter() - t0
    feat = np.repeat(np.arange(len(pixels)), [len(p) for p in pixels])
    flat = np.concatenate(pixels) if pixels else np.empty(0, dtype="int64")
    if not len(flat):
        raise SamplesError(f"no pixel of scene {da.attrs.get('scene_id')} lies under the labels of "
                           f"{report['source']} (features too small or buffered away): use "
                           "--all-touched, a smaller negative --buffer or larger polygons")
    t1 = time.perf_counter()
    values, codes, reads = _read_pixels(da, flat, client, smask.chunk if smask.chunk.readers else None)
    timings["read"] = time.perf_counter() - t1
    nodata = _nodata_rows(values, da.rio.nodata if da.rio.nodata is not None else da.attrs.get("nodata"))
    nodata |= codes == NODATA  # SCL "no data": nodata, as in job.json
    masked = ~nodata & (codes != VALID)
    valid = ~nodata & ~masked
    if not valid.any():
        raise _every_row_left_out(da, nodata, masked, codes)
    kept = _draw(feat, valid, per_feature, seed)
    df = _table(da, lab, feat[kept], flat[kept], values[kept], report)
    summary = {
        "table": str(path), "format": fmt, "rows": int(kept.sum()),
        "scene": {"id": da.attrs.get("scene_id"), "source": da.attrs.get("source"),
                  "crs": crs_text(da.rio.crs), "bands": [str(b) for b in da["band"].values],
                  "shape": [int(n) for n in da.shape]},
        "labels": report, "label_crs": report["crs"], "scene_crs": crs_text(da.rio.crs),
        "classes": _class_rows(lab, feat, pixels, nodata, kept, valid, codes, masked),
        "labels_outside_scene": report["features_outside_scene"],
        "nodata_pixels_left_out": int(nodata.sum()),
        "masked_pixels_left_out": int(masked.sum()),
        "masked_by_reason": _masked_by_reason(codes, masked),
        "mask": smask.spec.to_json(),
        **({"aoi": area.to_json(), "outside_aoi_pixels_left_out": outside_aoi} if area is not None else {}),
        "features_without_pixels": int(sum(len(p) == 0 for p in pixels)),
        "shared_pixels": _shared_pixels(flat[kept], lab.value[feat[kept]]),
        "reads": reads,
        "options": {"per_feature": per_feature, "buffer": buffer, "all_touched": bool(all_touched),
                    "seed": int(seed), "chunks": [int(c[0]) for c in da.chunks[1:]]},
        "contract": _contract(da, report),
    }
    _write_table(df, path, fmt, summary["contract"])
    timings["total"] = time.perf_counter() - t0
    summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    atomic_write_text(summary_path, json.dumps(summary, indent=2, default=str))
    return SampleResult(path, summary_path, summary)


def format_summary(summary: dict) -> str:
    """The summary of :func:`sample` as a few lines of text for the terminal."""
    lab, reads = summary["labels"], summary["reads"]
    lines = [f"sampled {summary['rows']} pixels from {lab['source']} ({summary['label_crs']}) in scene "
             f"{summary['scene']['id']} ({summary['scene_crs']}); read {reads['chunks_read']} of "
             f"{reads['chunks']} chunks"]
    masking = summary.get("mask", {}).get("mode", "none") != "none"
    lines.append(f"  {'value':>5}  {'class':<24} {'features':>8} {'pixels':>8} {'nodata':>8} {'dropped':>8}"
                 + (f" {'masked':>8}" if masking else ""))
    for c in summary["classes"]:
        lines.append(f"  {c['value']:>5}  {str(c['name'] or ''):<24} {c['features']:>8} {c['pixels']:>8} "
                     f"{c['nodata_pixels_left_out']:>8} {c['pixels_dropped_by_per_feature']:>8}"
                     + (f" {c['masked_pixels_left_out']:>8}" if masking else ""))
    notes = []
    if masking:
        m = summary["mask"]
        why = ", ".join(f"{k} {v}" for k, v in summary["masked_by_reason"].items() if v)
        notes.append(f"masked pixels left out: {summary['masked_pixels_left_out']}" + (f" ({why})" if why else "")
                     + f"; mask {m['mode']}" + (f" {m['path']}" if m.get("path") else "")
                     + (f", SCL classes {','.join(map(str, m['scl_classes']))}" if "scl_classes" in m else ""))
    for key, text in (("features_outside_scene", "outside the scene"),
                      ("features_without_label", "without a label value (skipped)"),
                      ("features_without_geometry", "without a geometry (skipped)"),
                      ("features_emptied_by_buffer", "emptied by --buffer")):
        if lab.get(key):
            notes.append(f"{lab[key]} feature(s) {text}")
    if summary["features_without_pixels"]:
        notes.append(f"{summary['features_without_pixels']} feature(s) cover no pixel centre "
                     "(try --all-touched)")
    if lab.get("invalid_polygons_repaired"):
        notes.append(f"{lab['invalid_polygons_repaired']} invalid polygon(s) repaired with make_valid "
                     f"(ids {', '.join(map(str, lab['repaired_ids']))})")
    shared = summary["shared_pixels"]
    if shared["pixels"]:
        notes.append(f"{shared['pixels']} pixel(s) hold rows of several features ({shared['rows']} rows; "
                     f"{shared['with_different_labels']} with different labels): one row per feature")
    lines += [f"  {n}" for n in notes]
    return "\n".join(lines)
