"""Worker side of a mosaic: one output block from the windows of the source maps it needs.

:func:`mosaic_block` is the task of one block of the mosaic's grid: for each source map
(:class:`SourceMap`, a few hundred bytes: paths and the grid) whose footprint meets the block it
reads only the source window under the block (the class COG, and the Zarr ``confidence`` layer
when the overlap rule needs it), reprojects it onto the block by nearest neighbour
(``rasterio.warp.reproject``), and keeps per pixel the source the overlap rule picks
(:func:`combine`). The block is written to its region of the mosaic's Zarr staging store; memory
is bounded by the block and its source windows, whatever the size of the mosaic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..model.contract import OUTPUT_NODATA

__all__ = ["SourceMap", "Block", "combine", "mosaic_block", "OVERLAP_RULES"]

#: How overlapping maps are combined: highest confidence (ties: the first), the first map, the last map.
OVERLAP_RULES = ("confidence", "first", "last")


@dataclass(frozen=True)
class SourceMap:
    """One classify output as a mosaic task reads it (picklable: paths and numbers)."""

    name: str
    cog: str
    """The class map (``classes.tif``): anything GDAL opens."""
    zarr: str | None
    """The output's ``classes.zarr`` (its ``confidence`` layer), or None."""
    crs: str
    """WKT."""
    transform: tuple[float, ...]
    shape: tuple[int, int]


@dataclass(frozen=True)
class Block:
    """One block of the mosaic's grid."""

    y0: int
    x0: int
    height: int
    width: int


def _window(src: SourceMap, dst_crs: str, bounds: tuple[float, float, float, float]):
    """The source pixel window ``(r0, r1, c0, c1)`` under ``bounds`` (a pixel of margin), or None."""
    from affine import Affine
    from rasterio.warp import transform_bounds

    try:
        left, bottom, right, top = transform_bounds(dst_crs, src.crs, *bounds, densify_pts=21)
    except Exception:  # the block lies outside the source CRS's valid area
        return None
    inv = ~Affine(*src.transform)
    cols, rows = zip(*(inv @ (x, y) for x in (left, right) for y in (bottom, top)))
    r0, r1 = int(np.floor(min(rows))) - 1, int(np.ceil(max(rows))) + 1
    c0, c1 = int(np.floor(min(cols))) - 1, int(np.ceil(max(cols))) + 1
    r0, c0 = max(r0, 0), max(c0, 0)
    r1, c1 = min(r1, src.shape[0]), min(c1, src.shape[1])
    return (r0, r1, c0, c1) if r1 > r0 and c1 > c0 else None


def _read(src: SourceMap, window: tuple[int, int, int, int], confidence: bool) -> tuple[np.ndarray, np.ndarray | None]:
    import rasterio
    from rasterio.windows import Window

    r0, r1, c0, c1 = window
    with rasterio.Env(GDAL_CACHEMAX=64, GDAL_NUM_THREADS=1), rasterio.open(src.cog) as ds:
        classes = ds.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
    conf = None
    if confidence and src.zarr:
        import zarr

        from ..io.storage import as_location

        loc = as_location(src.zarr)
        group = zarr.open_group(loc.url, mode="r", storage_options=loc.options) if loc.remote \
            else zarr.open_group(loc.url, mode="r")
        conf = np.asarray(group["confidence"][r0:r1, c0:c1])
    return classes, conf


def _reproject(data: np.ndarray, src: SourceMap, window: tuple[int, int, int, int], *, dst_crs: str,
               dst_transform: Any, shape: tuple[int, int], nodata: int) -> np.ndarray:
    from affine import Affine
    from rasterio.warp import Resampling, reproject

    r0, _, c0, _ = window
    out = np.full(shape, nodata, dtype=np.uint8)
    reproject(data, out, src_transform=Affine(*src.transform) @ Affine.translation(c0, r0), src_crs=src.crs,
              src_nodata=nodata, dst_transform=dst_transform, dst_crs=dst_crs, dst_nodata=nodata,
              resampling=Resampling.nearest, num_threads=1, tolerance=0)  # exact, not approximated
    return out


def combine(classes: np.ndarray, conf: np.ndarray, new: np.ndarray, new_conf: np.ndarray | None, *,
            rule: str) -> None:
    """Merge one source's reprojected block into the mosaic block (in place) by the overlap rule.

    Only the source's classified pixels (not 255) count. ``first`` fills pixels still empty,
    ``last`` replaces, ``confidence`` replaces where the source is more confident (ties: the
    earlier source stays).
    """
    valid = new != OUTPUT_NODATA
    empty = classes == OUTPUT_NODATA
    if rule == "first":
        take = valid & empty
    elif rule == "last":
        take = valid
    else:
        newc = new_conf if new_conf is not None else np.zeros_like(new)
        take = valid & (empty | (newc > conf))
    classes[take] = new[take]
    conf[take] = new_conf[take] if new_conf is not None else 0


def mosaic_block(block: Block, *, sources: Sequence[SourceMap], crs: str, transform: tuple[float, ...],
                 rule: str, store: Any, aoi: Any = None, confidence: bool = False) -> np.ndarray:
    """Compute one block of the mosaic and write it to the staging Zarr store.

    Parameters
    ----------
    block
        Where the block lies in the mosaic's grid.
    sources
        The maps that may cover it, in the order given (``first``/``last`` follow it).
    crs, transform
        The mosaic's grid (WKT, 6 numbers).
    rule
        One of :data:`OVERLAP_RULES`.
    store
        The staging Zarr group (:class:`~s2dask.io.storage.Location`) with ``classes`` and
        ``confidence`` arrays on the mosaic's grid.
    aoi
        An :class:`s2dask.scene.aoi.AoiReader` on the mosaic's grid: pixels outside get 255.
    confidence
        Write the ``confidence`` array too.

    Returns
    -------
    numpy.ndarray
        Pixels per class value (256 int64).
    """
    from affine import Affine

    from ..io.storage import open_array

    shape = (block.height, block.width)
    dst = Affine(*transform) @ Affine.translation(block.x0, block.y0)
    bounds = (dst.c, dst.f + dst.e * block.height, dst.c + dst.a * block.width, dst.f)
    classes = np.full(shape, OUTPUT_NODATA, dtype=np.uint8)
    conf = np.zeros(shape, dtype=np.uint8)
    need_conf = rule == "confidence" or confidence
    for src in sources:
        window = _window(src, crs, bounds)
        if window is None:
            continue
        data, cdata = _read(src, window, need_conf)
        new = _reproject(data, src, window, dst_crs=crs, dst_transform=dst, shape=shape, nodata=OUTPUT_NODATA)
        new_conf = None if cdata is None else _reproject(cdata, src, window, dst_crs=crs, dst_transform=dst,
                                                         shape=shape, nodata=0)
        combine(classes, conf, new, new_conf, rule=rule)
    if aoi is not None:
        from ..scene.mask import OUTSIDE_AOI

        outside = aoi(block.y0, block.x0, block.height, block.width) == OUTSIDE_AOI
        classes[outside] = OUTPUT_NODATA
    conf[classes == OUTPUT_NODATA] = OUTPUT_NODATA
    ys, xs = slice(block.y0, block.y0 + block.height), slice(block.x0, block.x0 + block.width)
    open_array(store, "classes")[ys, xs] = classes
    if confidence:
        open_array(store, "confidence")[ys, xs] = conf
    return np.bincount(classes.ravel(), minlength=256).astype(np.int64)
