"""Open a Sentinel-2 scene as one lazy, chunked ``(band, y, x)`` DataArray.

Whatever form a scene comes in (a multi-band GeoTIFF/COG, a folder of single-band rasters, a
``.SAFE`` product, a Zarr store), :func:`open_scene` returns the same thing: an
:class:`xarray.DataArray` backed by dask, canonical band names on ``band``, CRS, transform
and nodata written the rioxarray way, and scene identity in ``attrs``. Nothing but headers
is read until the array is computed.

How the reads work (GeoTIFF, band folders, SAFE)
------------------------------------------------
* One graph layer with one task per spatial chunk; every chunk holds all bands, so a
  ``(10, 10980, 10980)`` scene with ``chunks=2048`` is 36 tasks. What goes into the graph is a
  small picklable reader (paths, band indexes, factors, offsets), never an open dataset: each task
  opens its own rasterio handles and closes them before it returns. Handles are therefore never
  shared between threads and no lock is needed (the same reasoning as rioxarray's ``lock=False``,
  which opens a new handle per request). It works unchanged on distributed workers.
* Each read runs under :data:`READ_ENV`: ``GDAL_NUM_THREADS=1`` so that GDAL's own decoder threads
  (multi-threaded DEFLATE in GTiff, tile decoding in JP2OpenJPEG, which defaults to all cores) do
  not multiply with Dask's threads; Dask supplies the parallelism, one chunk per thread.
  ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR`` stops every task from listing the band's folder
  (a SAFE ``IMG_DATA`` folder) when it reopens a file; headers were validated at open time.
* Bands coarser than the finest band (20 m and 60 m in a SAFE) are brought onto the finest grid
  inside the task. ``resampling="nearest"`` reads only the source window under the output chunk
  and replicates each pixel ``k x k`` times (``np.repeat``), which is exact and chunk-aligned.
  ``resampling="bilinear"`` reads the chunk through a :class:`rasterio.vrt.WarpedVRT` onto the
  full target grid, so GDAL fetches the neighbouring source pixels it needs and chunk edges
  are seamless (the result does not depend on the chunking).
* Processing baseline 04.00+ products carry ``BOA_ADD_OFFSET`` (L2A) / ``RADIO_ADD_OFFSET``
  (L1C). They are harmonised to the pre-04.00 convention in the same task:
  ``value = DN + offset`` clipped at ``>= 1`` for valid pixels, nodata stays nodata, dtype
  stays ``uint16``.
* Truncated files are refused at open time without reading pixels: GeoTIFF block offsets and
  sizes are compared with the file size, and the box structure of JPEG2000 files is walked.

Zarr stores are opened with :func:`xarray.open_zarr` (lazy) and rechunked to the same layout.

The package's modules: :mod:`~s2dask.scene.formats` (what a file, band folder, SAFE or Zarr
store holds), :mod:`~s2dask.scene.integrity` (truncated files), :mod:`~s2dask.scene.reader`
(the block reader that runs on workers) and :mod:`~s2dask.scene.graph` (the dask graph).
``grid_to_raster`` lives in :mod:`s2dask.scene.grid` and is importable from here as before.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from ..errors import SceneError, StorageError
from ..io.retry import RetryPolicy
from ..io.storage import check_input_location, is_remote, protocol_of, storage_options_for
from .bands import canonical_bands
from .formats import (
    IDENTITY_TAGS,
    RASTER_SUFFIXES,
    file_layout,
    folder_layout,
    is_safe,
    is_zarr,
    open_zarr,
    safe_layout,
    stored_band_names,
)
from .graph import chunk_pair, scene_array
from .grid import grid_to_raster
from .reader import READ_ENV
from .scl import scl_attrs
from .stac_catalog import StacScene, is_stac
from .stac_open import open_stac_scene

__all__ = ["open_scene", "grid_to_raster", "scene_summary", "READ_ENV", "RESAMPLING_METHODS"]

#: Accepted values of ``resampling=``.
RESAMPLING_METHODS: tuple[str, ...] = ("nearest", "bilinear")


def open_scene(
    path: str | os.PathLike[str],
    *,
    bands: Sequence[str] | str | None = None,
    chunks: int | tuple[int, int] = 2048,
    resampling: str = "nearest",
    boa_add_offset: int | None = None,
    names: Sequence[str] | str | None = None,
    retry: RetryPolicy | None = None,
) -> xr.DataArray:
    """Open a Sentinel-2 scene as a lazy, chunked ``(band, y, x)`` DataArray.

    Parameters
    ----------
    path
        A multi-band GeoTIFF/COG; a folder of single-band rasters named by band
        (``B02.tif``, ``T17TNH_20230801T160000_B02_10m.jp2``); a Sentinel-2 ``.SAFE`` product
        folder (L2A or L1C, JPEG2000 bands); a Zarr store written by xarray/rioxarray
        (a variable with a ``band`` dimension, or one variable per band); or a STAC item
        (Item JSON, ``items.json#ITEM_ID``, a one-item collection or catalogue, local or
        ``s3://``, or a parsed :class:`s2dask.scene.stac_catalog.StacScene`) whose band assets are read
        like a band folder (hrefs local, ``s3://`` or ``https://``).
    bands
        Band names (any alias: ``B2``, ``B02``, ``b8a``), in the order wanted. Where the input
        names its bands, this selects and orders them; where it does not (a GeoTIFF without
        band descriptions), it names the file's bands in file order and must list them all.
        ``None`` keeps every band the input has, in its order.
    chunks
        Spatial chunk edge in pixels, or a ``(y, x)`` pair. Every chunk holds all bands.
    resampling
        How bands coarser than the finest one are brought onto its grid: ``"nearest"``
        (exact ``k x k`` pixel replication) or ``"bilinear"``.
    boa_add_offset
        STAC items only: the DN offset their data carry (``-1000``: baseline 04.00+ values
        with the offset in them, 1000 is subtracted; ``0``: nothing is done), for items
        that do not say it (see :mod:`s2dask.scene.stac_catalog`).
    names
        The input's bands in stored order (``--bands`` of ``classify``), for a GeoTIFF or
        Zarr stack whose bands are unnamed; ``bands`` then only selects. Where the input
        names its bands (descriptions, file names), they must agree (else ``SceneError``
        quoting both).
    retry
        How GDAL retries failed HTTP requests of remote rasters when the blocks are read
        (:class:`s2dask.io.retry.RetryPolicy`; ``None``: from each worker's environment).

    Returns
    -------
    xarray.DataArray
        Dask-backed, dims ``(band, y, x)``, ``band`` holding canonical names, ``x``/``y`` the
        pixel centres, CRS/transform/nodata written with rioxarray. ``attrs``: ``scene_id``
        (filesystem-safe), ``source`` (the path), ``nodata``, ``harmonised`` (True when the
        processing-baseline offset was applied or known to be absent), ``offset_applied``
        (band -> offset added), ``native_resolution`` (band -> metres), ``resampling``, and
        ``tile_id``, ``sensing_time``, ``processing_baseline``, ``product_level`` where the
        input carries them; ``scl_path`` and ``scl_resolution`` where it has a Scene
        Classification Layer (SAFE L2A, a band folder with an SCL file, a STAC ``scl``
        asset); for STAC items ``stac_item``, ``offset_notes`` and ``offset_rule``;
        ``bands_named_by``: ``"input"``, ``"names"`` or ``"bands"`` (an unnamed input named
        by the ``bands`` list).

    Raises
    ------
    SceneError
        If the path does not exist; a file is not a raster, is unreadable or truncated; a
        folder holds no recognisable band rasters; bands sit on different CRSs or misaligned
        grids; or an argument is invalid. Raised before anything is computed.
    BandError
        If a requested band is missing or unknown (the message lists the bands that exist).
    """
    chunk_yx = chunk_pair(chunks)
    if resampling not in RESAMPLING_METHODS:
        raise SceneError(f"unknown resampling {resampling!r}: use one of {', '.join(RESAMPLING_METHODS)}")
    wanted = canonical_bands(bands) if bands is not None else None
    given = canonical_bands(names) if names is not None else None
    if isinstance(path, StacScene) or is_stac(path):
        return open_stac_scene(path, wanted, chunk_yx, resampling, boa_add_offset=boa_add_offset)
    if is_remote(path):
        return _open_remote(os.fspath(path), wanted, chunk_yx, resampling, given, retry)
    src = Path(path).expanduser()
    if not src.exists():
        raise SceneError(
            f"scene {src} does not exist: check the path (a file, a band folder, a .SAFE or a Zarr store)"
        )
    if src.is_dir():
        if is_zarr(src):
            return open_zarr(src, wanted, chunk_yx, names=given)
        kind = "safe" if is_safe(src) else "folder"
        layout = safe_layout(src) if kind == "safe" else folder_layout(src)
        layout.attrs.update(scl_attrs(src, kind, abs(layout.grid.transform[0])))
        stored_band_names(list(layout.reads), names=given, wanted=None, src=src,
                          what="band files", ordered=False)
        layout.attrs["bands_named_by"] = "input"
    else:
        layout = file_layout(src, wanted, given)
    return scene_array(layout, src, wanted, chunk_yx, resampling, retry=retry)


def scene_summary(scene: xr.DataArray) -> dict[str, Any]:
    """Describe an opened scene cheaply (no pixel reads): id, shape, bands, CRS, resolution...

    Parameters
    ----------
    scene
        A DataArray returned by :func:`open_scene`.

    Returns
    -------
    dict
        ``scene_id, source, shape, bands, crs, resolution (x, y metres), nodata, chunks,
        n_chunks, dtype, harmonised, offset_applied`` and the identity attrs present.
    """
    crs = scene.rio.crs
    epsg = crs.to_epsg() if crs is not None else None
    res_x, res_y = scene.rio.resolution()
    chunks = tuple(c[0] for c in scene.chunks) if scene.chunks else tuple(scene.shape)
    n_chunks = math.prod(len(c) for c in scene.chunks) if scene.chunks else 1
    out: dict[str, Any] = {
        "scene_id": scene.attrs.get("scene_id"),
        "source": scene.attrs.get("source"),
        "shape": tuple(int(n) for n in scene.shape),
        "bands": [str(b) for b in scene["band"].values],
        "crs": f"EPSG:{epsg}" if epsg else (crs.to_string() if crs is not None else None),
        "resolution": (abs(float(res_x)), abs(float(res_y))),
        "nodata": scene.rio.nodata,
        "dtype": str(scene.dtype),
        "chunks": chunks,
        "n_chunks": n_chunks,
        "harmonised": bool(scene.attrs.get("harmonised", False)),
        "offset_applied": dict(scene.attrs.get("offset_applied", {}) or {}),
    }
    for key in IDENTITY_TAGS[1:]:
        if scene.attrs.get(key):
            out[key] = scene.attrs[key]
    return out


def _open_remote(url: str, wanted: list[str] | None, chunk_yx: tuple[int, int],
                 resampling: str, names: list[str] | None = None,
                 retry: RetryPolicy | None = None) -> xr.DataArray:
    """A scene on an object store: a single GeoTIFF/COG (read by GDAL) or a Zarr store."""
    try:
        check_input_location(url)
    except StorageError as exc:
        raise SceneError(str(exc)) from None
    if url.rstrip("/").lower().endswith(".zarr"):
        name = Path(url.rstrip("/").rsplit("/", 1)[-1])
        return open_zarr(name, wanted, chunk_yx, url=url, storage_options=storage_options_for(url),
                         names=names)
    if protocol_of(url) not in ("s3", "s3a"):
        raise SceneError(f"scene {url}: only s3:// rasters can be read from an object store here; "
                         "copy it locally or use s3://")
    if Path(url).suffix.lower() not in RASTER_SUFFIXES:
        raise SceneError(f"scene {url}: on an object store a scene must be one GeoTIFF/COG file or a "
                         ".zarr store (band folders and .SAFE products are read from disk)")
    src = Path("/vsis3/" + url.split("://", 1)[1])
    layout = file_layout(src, wanted, names)
    out = scene_array(layout, src, wanted, chunk_yx, resampling, retry=retry)
    out.attrs["source"] = url
    return out
