"""Mosaic class maps across tiles and UTM zones into one COG (client side).

:func:`mosaic` takes classify outputs (``OUT`` folders of ``<scene-id>/classes.tif``, or single
output folders), checks that they share one class table, lays out one grid in the target CRS
covering every map (or the area of interest), and computes it block by block on Dask
(:func:`s2dask.maps.mosaic_block.mosaic_block`: each block reads only the windows of the maps it
needs and reprojects them by nearest neighbour). Where maps overlap (Sentinel-2 tiles overlap by
about 10 km) the most confident pixel wins by default (``overlap="confidence"``; ``first`` and
``last`` follow the order given). The blocks go to a Zarr staging store next to the output, which
a worker streams into the COG (colour table, class names, nodata 255, overviews); the staging
store is removed at the end, and the mosaic's STAC item is written beside the COG.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import AreaError, OutputExistsError, ParameterError, StorageError
from ..io.storage import Location, atomic_write_json, is_remote
from ..model.contract import OUTPUT_NODATA, ClassInfo
from .mosaic_block import OVERLAP_RULES, Block, SourceMap, mosaic_block

__all__ = ["MosaicResult", "mosaic", "find_maps", "mosaic_grid", "OVERLAP_RULES"]

COG = "classes.tif"


@dataclass
class MosaicResult:
    """What :func:`mosaic` wrote."""

    path: str
    """The class COG."""
    item: str
    """Its STAC item."""
    confidence: str | None
    """The confidence COG (``confidence=True``)."""
    crs: str
    transform: tuple[float, ...]
    shape: tuple[int, int]
    sources: list[str]
    """The maps, in order."""
    counts: dict[int, int]
    """Pixels per class value (255: nodata)."""
    blocks: int
    """Blocks computed (of the grid's, those no map nor the area touches are left out)."""


def _table(ds: Any, where: str) -> tuple[ClassInfo, ...]:
    """The class table of an s2dask class COG (its class names and colour table)."""
    names = json.loads(ds.tags().get("CLASS_NAMES") or "{}")
    if not names:
        raise AreaError(f"{where} has no class names (CLASS_NAMES): give class maps written by s2dask classify")
    try:
        cmap = ds.colormap(1)
    except ValueError:
        cmap = {}
    out = []
    for value, name in sorted(names.items(), key=lambda kv: int(kv[0])):
        r, g, b, *_ = cmap.get(int(value), (136, 136, 136, 255))
        out.append(ClassInfo(int(value), str(name), f"#{r:02x}{g:02x}{b:02x}"))
    return tuple(out)


def _candidates(path: str) -> list[str]:
    loc = Location(path)
    if loc.join(COG).exists():
        return [loc.url]
    found = sorted(e.url.rsplit("/", 1)[0] if e.remote else os.path.dirname(e.url) for e in loc.list(f"*/{COG}"))
    return [f for f in found if not os.path.basename(f.rstrip("/")).startswith(".")]


def find_maps(inputs: Sequence[str | os.PathLike]) -> tuple[list[SourceMap], tuple[ClassInfo, ...]]:
    """The class maps of classify outputs and their common class table.

    Parameters
    ----------
    inputs
        ``OUT`` folders (every ``OUT/<scene-id>/classes.tif``) or single output folders, in order.

    Raises
    ------
    AreaError
        If a folder holds no class map, or the maps' class tables differ.
    """
    import rasterio

    from ..scene.stac_item import gdal_path

    maps: list[SourceMap] = []
    table: tuple[ClassInfo, ...] | None = None
    first = ""
    for given in inputs:
        folders = _candidates(os.fspath(given))
        if not folders:
            raise AreaError(f"{given} holds no class map ({COG}, or */{COG}): give classify output folders")
        for folder in folders:
            cog = Location(folder).join(COG).url
            where = gdal_path(cog) if is_remote(cog) else cog
            with rasterio.open(where) as ds:
                these = _table(ds, cog)
                crs, transform, shape = ds.crs, ds.transform, (ds.height, ds.width)
            if crs is None:
                raise AreaError(f"{cog} has no CRS: give class maps written by s2dask classify")
            if table is None:
                table, first = these, cog
            elif [(c.value, c.name) for c in these] != [(c.value, c.name) for c in table]:
                show = lambda t: ", ".join(f"{c.value} {c.name}" for c in t)  # noqa: E731
                raise AreaError(f"the maps have different class tables: {first} has {show(table)} but {cog} has "
                                f"{show(these)}; mosaic maps of one model")
            zarr = Location(folder).join("classes.zarr")
            maps.append(SourceMap(os.path.basename(folder.rstrip("/")), where, zarr.url if zarr.exists() else None,
                                  crs.to_wkt(), tuple(list(transform)[:6]), shape))
    return maps, table or ()


def _crs(value: Any) -> Any:
    import pyproj
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:  # pyproj first: GDAL would print PROJ's own "ERROR 1: ..." line to stderr beside ours
        pyproj.CRS.from_user_input(value)
        return CRS.from_user_input(value)
    except (CRSError, pyproj.exceptions.CRSError, ValueError, TypeError):
        raise ParameterError(f"unknown CRS {value!r}: give an EPSG code such as EPSG:4326 or EPSG:32617") from None


def _bounds(src: SourceMap) -> tuple[float, float, float, float]:
    t, (ny, nx) = src.transform, src.shape
    xs, ys = [t[2], t[2] + t[0] * nx + t[1] * ny], [t[5], t[5] + t[3] * nx + t[4] * ny]
    return min(xs), min(ys), max(xs), max(ys)


def _footprint(src: SourceMap, crs: Any) -> Any:
    """The map's outline in ``crs`` (edges densified), as a shapely polygon."""
    import shapely
    from rasterio.warp import transform as warp

    x0, y0, x1, y1 = _bounds(src)
    ring = shapely.segmentize(shapely.box(x0, y0, x1, y1), max(x1 - x0, y1 - y0) / 32).exterior.coords
    xs, ys = warp(src.crs, crs, [p[0] for p in ring], [p[1] for p in ring])
    return shapely.make_valid(shapely.Polygon(zip(xs, ys)))


def mosaic_grid(maps: Sequence[SourceMap], crs: Any, *, resolution: float | None = None,
                bounds: tuple[float, float, float, float] | None = None) -> tuple[Any, tuple[int, int]]:
    """``(transform, (ny, nx))`` of the mosaic in ``crs``: every map (or ``bounds``) covered, pixels
    aligned on multiples of the resolution (default: the finest of the maps in ``crs``).

    Raises
    ------
    ParameterError
        If the resolution is not positive.
    """
    from rasterio.transform import from_origin
    from rasterio.warp import calculate_default_transform, transform_bounds

    crs = _crs(crs)
    if resolution is None:
        resolution = min(abs(calculate_default_transform(m.crs, crs, m.shape[1], m.shape[0], *_bounds(m))[0].a)
                         for m in maps)
    if not resolution or resolution <= 0:
        raise ParameterError(f"--resolution must be positive, got {resolution}")
    if bounds is None:
        boxes = np.array([transform_bounds(m.crs, crs, *_bounds(m), densify_pts=21) for m in maps])
        bounds = (boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max())
    left, bottom, right, top = bounds
    x0, y1 = math.floor(left / resolution) * resolution, math.ceil(top / resolution) * resolution
    nx = max(1, math.ceil((right - x0) / resolution - 1e-9))
    ny = max(1, math.ceil((y1 - bottom) / resolution - 1e-9))
    return from_origin(x0, y1, resolution, resolution), (ny, nx)


def _layout(store: Path, shape: tuple[int, int], block: int, confidence: bool) -> None:
    import zarr

    group = zarr.open_group(str(store), mode="w", zarr_format=3)
    group.create_array("classes", shape=shape, chunks=(block, block), dtype="uint8", fill_value=OUTPUT_NODATA,
                       attributes={"nodata": OUTPUT_NODATA})
    if confidence:
        group.create_array("confidence", shape=shape, chunks=(block, block), dtype="uint8",
                           fill_value=OUTPUT_NODATA,
                           attributes={"nodata": OUTPUT_NODATA, "long_name": "confidence of the class (percent)"})


def _write_cogs(store: str, out: str, conf_out: str | None, *, classes: Sequence[ClassInfo], crs: str,
                transform: Any, overview_resampling: str, tags: dict) -> list[str]:
    """The COG(s) from the staging store, with a small GDAL cache (a task on a worker)."""
    import rasterio

    from .writers import validate_cog, write_cog

    errors = []
    with rasterio.Env(GDAL_CACHEMAX=64):
        write_cog(store, out, classes=classes, crs=crs, transform=transform,
                  overview_resampling=overview_resampling, tags=tags)
        errors += validate_cog(out)[1]
        if conf_out:
            write_cog(store, conf_out, classes=classes, crs=crs, transform=transform, overview_resampling="average",
                      layer="confidence")
    return errors


def mosaic(maps: Sequence[str | os.PathLike], out: str | os.PathLike, *, crs: Any, resolution: float | None = None,
           aoi: str | os.PathLike | None = None, overlap: str = "confidence", confidence: bool = False,
           client: Any = None, block: int = 1024, overview_resampling: str = "mode",
           overwrite: bool = False) -> MosaicResult:
    """Mosaic class maps into one COG in ``crs``, block by block on Dask.

    Parameters
    ----------
    maps
        classify output folders (``OUT`` or ``OUT/<scene-id>``), in order (``first``/``last``).
    out
        The mosaic COG (a local path, visible to the workers); its STAC item goes beside it
        (``<stem>.json``), the confidence COG too (``<stem>-confidence.tif``).
    crs
        The target CRS (``EPSG:4326``, ``EPSG:32617``, WKT ...).
    resolution
        Pixel size in units of ``crs`` (default: the finest of the maps there).
    aoi
        A polygon layer: the mosaic covers its bounds, pixels outside it are 255.
    overlap
        ``confidence`` (the most confident map wins; ties: the first), ``first`` or ``last``.
    confidence
        Also write the matching confidence mosaic.
    client
        A ``distributed.Client`` (default: Dask's current scheduler).
    block
        Edge of the output blocks (pixels): memory per task is bounded by it.
    overview_resampling
        ``mode`` or ``nearest``.
    overwrite
        Replace an existing mosaic.

    Returns
    -------
    MosaicResult

    Raises
    ------
    AreaError
        If a folder holds no map, the maps' class tables differ, or the AOI is not a polygon layer
        with a CRS, or misses every map.
    ParameterError
        If the CRS is unknown, or ``overlap``, ``block`` or ``resolution`` is invalid.
    OutputExistsError
        If ``out`` exists and ``overwrite`` is false.
    """
    import dask
    import shapely

    from ..scene.aoi import AoiReader, read_aoi
    from .stac import COG_TYPE, MapAsset, class_item

    if overlap not in OVERLAP_RULES:
        raise ParameterError(f"--overlap {overlap!r}: give one of {', '.join(OVERLAP_RULES)}")
    if block < 64:
        raise ParameterError(f"block {block} is too small: give at least 64 pixels")
    dst_crs = _crs(crs)
    out = Path(os.fspath(out)).absolute()
    if is_remote(str(out)):
        raise ParameterError(f"--out {out}: give a local path (visible to the workers)")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists: pass --overwrite to replace it, or choose another --out")
    sources, table = find_maps([os.fspath(m) for m in maps])
    if overlap == "confidence" and any(s.zarr is None for s in sources):
        missing = next(s for s in sources if s.zarr is None)
        raise AreaError(f"map {missing.name} has no classes.zarr (confidence): use --overlap first or last")
    area = read_aoi(aoi) if aoi else None
    area_geom = area.in_crs(dst_crs) if area else None
    feet = [_footprint(s, dst_crs) for s in sources]
    if area_geom is not None and not any(area_geom.intersects(f) for f in feet):
        raise AreaError(f"the area of interest {area.path} misses every map: check its CRS and extent")
    transform, shape = mosaic_grid(sources, dst_crs, resolution=resolution,
                                   bounds=area_geom.bounds if area_geom is not None else None)
    aoi_reader = AoiReader(shapely.to_wkb(area_geom), tuple(list(transform)[:6])) if area_geom is not None else None

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.mosaic.zarr"
    shutil.rmtree(stage, ignore_errors=True)
    _layout(stage, shape, block, confidence)
    store = Location(str(stage))
    ny, nx = shape
    tasks, run = [], uuid.uuid4().hex[:8]
    for y0 in range(0, ny, block):
        for x0 in range(0, nx, block):
            b = Block(y0, x0, min(block, ny - y0), min(block, nx - x0))
            (l, t), (r, btm) = transform @ (b.x0, b.y0), transform @ (b.x0 + b.width, b.y0 + b.height)
            box = shapely.box(min(l, r), min(t, btm), max(l, r), max(t, btm))
            if area_geom is not None and not area_geom.intersects(box):
                continue
            use = [s for s, f in zip(sources, feet) if f.intersects(box)]
            if not use:
                continue
            tasks.append(dask.delayed(mosaic_block, pure=False)(
                b, sources=use, crs=dst_crs.to_wkt(), transform=tuple(list(transform)[:6]), rule=overlap,
                store=store, aoi=aoi_reader, confidence=confidence,
                dask_key_name=f"s2dask-mosaic-{run}-{y0 // block}-{x0 // block}"))
    counts = np.zeros(256, dtype=np.int64)
    try:
        parts = client.gather(client.compute(tasks)) if client is not None else dask.compute(*tasks)
        for part in parts:  # 256 counts a block
            counts += part
        conf_out = str(out.with_name(f"{out.stem}-confidence.tif")) if confidence else None
        tags = {"S2DASK_MOSAIC_SOURCES": json.dumps([s.name for s in sources]), "S2DASK_OVERLAP": overlap}
        args = (str(stage), str(out), conf_out)
        kw = dict(classes=table, crs=dst_crs.to_wkt(), transform=transform,
                  overview_resampling=overview_resampling, tags=tags)
        bad = client.submit(_write_cogs, *args, pure=False, **kw).result() if client is not None \
            else _write_cogs(*args, **kw)
        if bad:
            raise StorageError(f"the mosaic {out} failed COG validation: {'; '.join(bad)}")
    except OSError as exc:
        raise StorageError(f"writing the mosaic {out} failed: {exc.strerror or exc}; check free space and "
                           "permissions") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    counts[OUTPUT_NODATA] += ny * nx - int(counts.sum())  # blocks not computed: nodata
    assets = [MapAsset("classes", f"./{out.name}", COG_TYPE, ("data",), "land-cover classes (mosaic)", classes=True)]
    if conf_out:
        assets.append(MapAsset("confidence", f"./{Path(conf_out).name}", COG_TYPE, ("data",),
                               "confidence of the class (percent)",
                               extra={"raster:bands": [{"nodata": OUTPUT_NODATA, "data_type": "uint8"}]}))
    props = {"s2dask:sources": [s.name for s in sources], "s2dask:overlap": overlap}
    if area is not None:
        props["s2dask:aoi"] = {"file": area.path, "sha256": area.sha256}
    item = class_item(out.stem, crs=dst_crs, transform=transform, shape=shape,
                      datetime=_dt.datetime.now(_dt.timezone.utc), classes=table, assets=assets, properties=props)
    item_path = out.with_name(f"{out.stem}.json")
    atomic_write_json(str(item_path), item.to_dict(include_self_link=False, transform_hrefs=False))
    return MosaicResult(str(out), str(item_path), conf_out, dst_crs.to_string(), tuple(list(transform)[:6]), shape,
                        [s.name for s in sources], {int(v): int(n) for v, n in enumerate(counts) if n},
                        len(tasks))
