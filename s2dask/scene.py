"""Open a Sentinel-2 scene as one lazy, chunked ``(band, y, x)`` DataArray; write pixel tables as COGs.

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
"""

from __future__ import annotations

import math
import os
import re
import struct
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple, Sequence

from .bands import BAND_NAMES, canonical_band, canonical_bands, find_band_in_name
from .errors import BandError, OutputExistsError, SceneError, StorageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import xarray as xr

__all__ = ["open_scene", "grid_to_raster", "scene_summary", "READ_ENV", "RESAMPLING_METHODS"]

#: GDAL configuration that every pixel read of :func:`open_scene` runs under.
READ_ENV: dict[str, str] = {
    "GDAL_NUM_THREADS": "1",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
}

#: Accepted values of ``resampling=``.
RESAMPLING_METHODS: tuple[str, ...] = ("nearest", "bilinear")

_RASTER_SUFFIXES = {".tif", ".tiff", ".jp2", ".j2k", ".vrt", ".img"}
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray", ".zmetadata")
_SAFE_MTD = ("MTD_MSIL2A.xml", "MTD_MSIL1C.xml")
_SAFE_NAME = re.compile(
    r"^(?P<mission>S2[A-D_])_MSI(?P<level>L1C|L2A)_(?P<sensing>\d{8}T\d{6})_N(?P<baseline>\d{4})"
    r"_R\d{3}_(?P<tile>T\d{2}[A-Z]{3})_\d{8}T\d{6}",
    re.IGNORECASE,
)
_TILE_IN_NAME = re.compile(r"(?:^|_)(T\d{2}[A-Z]{3})(?=_)")
_TIME_IN_NAME = re.compile(r"(?:^|_)(\d{8}T\d{6})(?=_|$|\.)")
_RES_IN_NAME = re.compile(r"(?:^|_|R)(\d{2,3})m(?=$|_|\.)")
_IDENTITY_TAGS = ("scene_id", "tile_id", "sensing_time", "processing_baseline", "product_level")
# reading every block offset of a GeoTIFF costs ~0.5 us per block; beyond this many, sample
_MAX_BLOCK_CHECKS = 200_000


# --------------------------------------------------------------------------- internal model


class _BandRead(NamedTuple):
    """Where one output band comes from."""

    name: str  # canonical band name
    path: str  # file holding it
    bidx: int  # 1-based band index in that file
    factor: int  # one source pixel covers factor x factor target pixels (1: same grid)
    offset: int  # added to valid DNs (baseline 04.00+ harmonisation); 0 for none


class _Grid(NamedTuple):
    """The target pixel grid (the finest band's)."""

    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]  # affine a, b, c, d, e, f
    height: int
    width: int


@dataclass
class _Layout:
    """What the header pass found: bands available, their grid, dtype, nodata, identity."""

    reads: dict[str, _BandRead]  # canonical name -> source, in the input's band order
    grid: _Grid
    dtype: str
    nodata: float
    attrs: dict[str, Any] = field(default_factory=dict)
    stamp: tuple = ()  # file sizes and mtimes, so a changed file gets a new graph name


@dataclass(frozen=True)
class _BlockReader:
    """Read one ``(band, y, x)`` block of a scene; the callable that every graph task runs.

    Picklable (paths and numbers only), so it travels to distributed workers; each call
    opens and closes its own rasterio handles, so concurrent calls share nothing.
    """

    reads: tuple[_BandRead, ...]
    grid: _Grid
    resampling: str
    dtype: str
    nodata: float

    def __call__(self, y0: int, x0: int, height: int, width: int) -> "np.ndarray":
        import numpy as np
        import rasterio
        from rasterio.errors import RasterioError

        out = np.empty((len(self.reads), height, width), dtype=self.dtype)
        groups: dict[tuple[str, int], list[int]] = {}
        path = ""
        for k, r in enumerate(self.reads):
            groups.setdefault((r.path, r.factor), []).append(k)
        try:
            with rasterio.Env(**READ_ENV):
                for (path, factor), positions in groups.items():
                    idxs = [self.reads[k].bidx for k in positions]
                    with rasterio.Env(**_remote_env(path)), rasterio.open(path) as src:
                        data = self._read(src, idxs, factor, y0, x0, height, width)
                    for row, k in enumerate(positions):
                        out[k] = _apply_offset(data[row], self.reads[k].offset, self.nodata)
        except (RasterioError, OSError) as exc:
            raise StorageError(
                f"reading window y={y0}:{y0 + height} x={x0}:{x0 + width} of {path} failed "
                f"({exc}): check that the file is complete and readable"
            ) from exc
        return out

    def _read(
        self, src: Any, idxs: list[int], factor: int, y0: int, x0: int, height: int, width: int
    ) -> "np.ndarray":
        import numpy as np
        from rasterio.windows import Window

        if factor == 1:
            return src.read(idxs, window=Window(x0, y0, width, height))
        if self.resampling == "nearest":
            sy0, sx0 = y0 // factor, x0 // factor
            sy1 = min(-(-(y0 + height) // factor), src.height)
            sx1 = min(-(-(x0 + width) // factor), src.width)
            data = src.read(idxs, window=Window(sx0, sy0, sx1 - sx0, sy1 - sy0))
            data = np.repeat(np.repeat(data, factor, axis=1), factor, axis=2)
            oy, ox = y0 - sy0 * factor, x0 - sx0 * factor
            return data[:, oy : oy + height, ox : ox + width]
        from affine import Affine
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        with WarpedVRT(
            src,
            crs=src.crs,
            transform=Affine(*self.grid.transform),
            width=self.grid.width,
            height=self.grid.height,
            resampling=Resampling.bilinear,
            src_nodata=self.nodata,
            nodata=self.nodata,
        ) as vrt:
            return vrt.read(idxs, window=Window(x0, y0, width, height))


def _apply_offset(band: "np.ndarray", offset: int, nodata: float) -> "np.ndarray":
    """Harmonise one band: ``DN + offset`` clipped at 1 for valid pixels; nodata untouched."""
    import numpy as np

    if not offset:
        return band
    if np.issubdtype(band.dtype, np.integer):
        top = np.iinfo(band.dtype).max
        shifted = np.clip(band.astype(np.int64) + offset, 1, top).astype(band.dtype)
    else:
        shifted = np.maximum(band + offset, 1).astype(band.dtype)
    return np.where(band == nodata, band, shifted)


# --------------------------------------------------------------------------- public API


def open_scene(
    path: str | os.PathLike[str],
    *,
    bands: Sequence[str] | str | None = None,
    chunks: int | tuple[int, int] = 2048,
    resampling: str = "nearest",
) -> "xr.DataArray":
    """Open a Sentinel-2 scene as a lazy, chunked ``(band, y, x)`` DataArray.

    Parameters
    ----------
    path
        A multi-band GeoTIFF/COG; a folder of single-band rasters named by band
        (``B02.tif``, ``T17TNH_20230801T160000_B02_10m.jp2``); a Sentinel-2 ``.SAFE`` product
        folder (L2A or L1C, JPEG2000 bands); or a Zarr store written by xarray/rioxarray
        (a variable with a ``band`` dimension, or one variable per band).
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

    Returns
    -------
    xarray.DataArray
        Dask-backed, dims ``(band, y, x)``, ``band`` holding canonical names, ``x``/``y`` the
        pixel centres, CRS/transform/nodata written with rioxarray. ``attrs``: ``scene_id``
        (filesystem-safe), ``source`` (the path), ``nodata``, ``harmonised`` (True when the
        processing-baseline offset was applied or known to be absent), ``offset_applied``
        (band -> offset added), ``native_resolution`` (band -> metres), ``resampling``, and
        ``tile_id``, ``sensing_time``, ``processing_baseline``, ``product_level`` where the
        input carries them.

    Raises
    ------
    SceneError
        If the path does not exist; a file is not a raster, is unreadable or truncated; a
        folder holds no recognisable band rasters; bands sit on different CRSs or misaligned
        grids; or an argument is invalid. Raised before anything is computed.
    BandError
        If a requested band is missing or unknown (the message lists the bands that exist).
    """
    chunk_yx = _check_chunks(chunks)
    if resampling not in RESAMPLING_METHODS:
        raise SceneError(f"unknown resampling {resampling!r}: use one of {', '.join(RESAMPLING_METHODS)}")
    wanted = canonical_bands(bands) if bands is not None else None
    from .storage import is_remote

    if is_remote(path):
        return _open_remote(os.fspath(path), wanted, chunk_yx, resampling)
    src = Path(path).expanduser()
    if not src.exists():
        raise SceneError(
            f"scene {src} does not exist: check the path (a file, a band folder, a .SAFE or a Zarr store)"
        )
    if src.is_dir():
        if _is_zarr(src):
            return _open_zarr(src, wanted, chunk_yx)
        layout = _safe_layout(src) if _is_safe(src) else _folder_layout(src)
    else:
        layout = _file_layout(src, wanted)
    return _build(layout, src, wanted, chunk_yx, resampling)


def scene_summary(scene: "xr.DataArray") -> dict[str, Any]:
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
    import rioxarray  # noqa: F401  (registers .rio)

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
    for key in _IDENTITY_TAGS[1:]:
        if scene.attrs.get(key):
            out[key] = scene.attrs[key]
    return out


def grid_to_raster(
    csv_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    crs: Any,
    bands: Sequence[str] | str | None = None,
    nodata: float = 0,
    overwrite: bool = False,
) -> Path:
    """Write a pixel table on a regular grid (cell centres ``x``, ``y`` + band columns) as a COG.

    The output is a tiled (512 x 512), DEFLATE-compressed Cloud-Optimised GeoTIFF with band
    descriptions set to canonical band names; cells absent from the table (or with empty
    values) hold ``nodata``. It is written to a temporary file next to ``out_path`` and moved
    into place, so a reader never sees a half-written file.

    Parameters
    ----------
    csv_path
        CSV with columns ``x`` and ``y`` (cell centres, in ``crs`` units) and one column per
        band (``B2``, ``B02``, ``B8A`` ...); other columns (``ID``) are ignored.
    out_path
        Destination ``.tif``.
    crs
        CRS of the coordinates (``"EPSG:32617"``, an EPSG int, WKT, a rasterio CRS).
    bands
        Bands to write, in this order; ``None`` writes every band column in table order.
    nodata
        Value for missing cells (0, the Sentinel-2 convention, by default).
    overwrite
        Replace an existing ``out_path``.

    Returns
    -------
    pathlib.Path
        ``out_path``.

    Raises
    ------
    SceneError
        If the table is missing or unreadable, lacks ``x``/``y`` or any band column, has empty
        coordinates, irregular spacing or duplicate cells, or ``crs`` is invalid.
    BandError
        If a requested band has no column (the message lists the band columns there are).
    OutputExistsError
        If ``out_path`` exists and ``overwrite`` is false.
    StorageError
        If writing the file fails.
    """
    import numpy as np
    import pandas as pd
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.errors import CRSError, RasterioError

    src = Path(csv_path).expanduser()
    out = Path(out_path).expanduser()
    if not src.is_file():
        raise SceneError(f"grid table {src} does not exist or is not a file: check the path")
    try:
        crs_obj = CRS.from_user_input(crs)
    except (CRSError, ValueError, TypeError) as exc:
        raise SceneError(
            f"invalid CRS {crs!r} for grid table {src} ({exc}): give an EPSG code such as EPSG:32617"
        ) from None
    if out.is_dir():
        raise SceneError(f"output {out} is a folder: give a file path such as {out / 'scene.tif'}")
    if out.exists() and not overwrite:
        raise OutputExistsError(
            f"{out} already exists: pass overwrite=True (--overwrite) or choose another path"
        )

    try:
        table = pd.read_csv(src)
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SceneError(f"cannot read grid table {src} as CSV ({exc}): check the file") from None
    lower = {str(c).strip().lower(): c for c in table.columns}
    for axis in ("x", "y"):
        if axis not in lower:
            raise SceneError(
                f"grid table {src} has no {axis!r} column (columns: {', '.join(map(str, table.columns))}): "
                "give cell-centre coordinates in columns x and y"
            )
    band_cols: dict[str, Any] = {}
    for col in table.columns:
        if col in (lower["x"], lower["y"]):
            continue
        try:
            name = canonical_band(str(col))
        except BandError:
            continue
        if name in band_cols:
            raise SceneError(
                f"grid table {src} has two columns for band {name} ({band_cols[name]!r}, {col!r}): keep one"
            )
        band_cols[name] = col
    if not band_cols:
        raise SceneError(
            f"grid table {src} has no band columns (columns: {', '.join(map(str, table.columns))}): name them B2..B12 or B02..B12, B8A"
        )
    names = list(band_cols) if bands is None else canonical_bands(bands)
    missing = [b for b in names if b not in band_cols]
    if missing:
        raise BandError(
            f"band(s) {', '.join(missing)} missing from grid table {src}; it has {', '.join(band_cols)}"
        )

    xs = pd.to_numeric(table[lower["x"]], errors="coerce").to_numpy(dtype="float64")
    ys = pd.to_numeric(table[lower["y"]], errors="coerce").to_numpy(dtype="float64")
    bad = ~(np.isfinite(xs) & np.isfinite(ys))
    if bad.any():
        first = int(np.flatnonzero(bad)[0]) + 2  # 1-based, after the header line
        raise SceneError(
            f"grid table {src} has {int(bad.sum())} row(s) with missing or non-numeric x/y "
            f"(first at line {first}): every row needs both cell-centre coordinates"
        )
    if len(xs) == 0:
        raise SceneError(f"grid table {src} has no rows: it needs at least one cell")
    dx = _grid_step(xs, "x", src)
    dy = _grid_step(ys, "y", src)
    if dx is None and dy is None:
        raise SceneError(
            f"grid table {src} has a single cell: the pixel size cannot be derived from one cell"
        )
    dx = dx if dx is not None else dy
    dy = dy if dy is not None else dx
    x_min, y_max = float(xs.min()), float(ys.max())
    cols = np.rint((xs - x_min) / dx).astype(np.int64)
    rows = np.rint((y_max - ys) / dy).astype(np.int64)
    width, height = int(cols.max()) + 1, int(rows.max()) + 1
    if width * height * len(names) > 2_000_000_000:
        raise SceneError(
            f"grid table {src} spans {height} x {width} cells of {dx:g} x {dy:g}: too large for one raster; "
            "check that x/y are cell centres in the CRS units"
        )
    cell = rows * width + cols
    dup = pd.Index(cell).duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise SceneError(
            f"grid table {src} has {int(dup.sum())} duplicate cell(s) (first at x={xs[i]:g}, y={ys[i]:g}, "
            f"line {i + 2}): keep one row per cell"
        )

    values = np.column_stack(
        [pd.to_numeric(table[band_cols[b]], errors="coerce").to_numpy(dtype="float64") for b in names]
    )
    finite = np.isfinite(values)
    valid = values[finite]
    integral = bool(np.all(valid == np.floor(valid))) if valid.size else True
    in_range = bool(valid.size == 0 or (valid.min() >= 0 and valid.max() <= 65535))
    nodata_ok = float(nodata) == int(nodata) and 0 <= nodata <= 65535
    dtype = "uint16" if integral and in_range and nodata_ok else "float32"
    values[~finite] = nodata
    raster = np.full((len(names), height, width), nodata, dtype=dtype)
    raster[:, rows, cols] = values.T.astype(dtype)
    transform = Affine(dx, 0.0, x_min - dx / 2, 0.0, -dy, y_max + dy / 2)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with rasterio.open(
            tmp,
            "w",
            driver="COG",
            width=width,
            height=height,
            count=len(names),
            dtype=dtype,
            crs=crs_obj,
            transform=transform,
            nodata=nodata,
            BLOCKSIZE=512,
            COMPRESS="DEFLATE",
            PREDICTOR="YES",
            BIGTIFF="IF_SAFER",
        ) as dst:
            dst.write(raster)
            for i, name in enumerate(names, start=1):
                dst.set_band_description(i, name)
            dst.update_tags(S2DASK_SOURCE=src.name)
        os.replace(tmp, out)
    except (RasterioError, OSError) as exc:
        raise StorageError(
            f"writing {out} failed ({exc}): check the folder is writable and has space"
        ) from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


# --------------------------------------------------------------------------- argument checks


def _check_chunks(chunks: Any) -> tuple[int, int]:
    if isinstance(chunks, bool):
        pass
    elif isinstance(chunks, int) and chunks > 0:
        return chunks, chunks
    elif (
        isinstance(chunks, (tuple, list))
        and len(chunks) == 2
        and all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in chunks)
    ):
        return int(chunks[0]), int(chunks[1])
    raise SceneError(
        f"invalid chunks={chunks!r}: give a positive spatial chunk edge (2048) or a (y, x) pair such as (1024, 2048)"
    )


def _select(available: Sequence[str], wanted: Sequence[str] | None, src: Path) -> list[str]:
    if wanted is None:
        return list(available)
    missing = [b for b in wanted if b not in available]
    if missing:
        raise BandError(
            f"band(s) {', '.join(missing)} missing from scene {src}; it has {', '.join(available) or 'no bands'}: "
            "ask only for bands the scene holds"
        )
    return list(wanted)


def _grid_step(values: "np.ndarray", axis: str, src: Path) -> float | None:
    """The regular spacing of one coordinate axis, or None when there is a single value."""
    import numpy as np

    uniq = np.unique(values)
    if uniq.size < 2:
        return None
    diffs = np.diff(uniq)
    steps, counts = np.unique(np.round(diffs, 6), return_counts=True)
    step = float(steps[np.argmax(counts)])
    ratio = diffs / step
    off = np.abs(ratio - np.rint(ratio))
    if step <= 0 or np.any(off > 1e-4):
        i = int(np.argmax(off))
        raise SceneError(
            f"grid table {src} has irregular {axis} spacing (cells {step:g} apart, but {uniq[i]:g} -> "
            f"{uniq[i + 1]:g} is {diffs[i]:g}): the table must be a regular grid of cell centres"
        )
    return step


# --------------------------------------------------------------------------- header pass


class _RasterInfo(NamedTuple):
    path: Path
    driver: str
    crs: Any
    transform: Any
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    nodatavals: tuple[float | None, ...]
    descriptions: tuple[str | None, ...]
    tags: dict[str, str]
    stamp: tuple


def _inspect(path: Path) -> _RasterInfo:
    """Read one raster's header; refuse non-rasters, unreadable and truncated files."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.Env(**_remote_env(str(path))), rasterio.open(path) as src:
            _check_complete(src, path)
            stat = _stat(path)
            return _RasterInfo(
                path=path,
                driver=src.driver,
                crs=src.crs,
                transform=src.transform,
                width=src.width,
                height=src.height,
                count=src.count,
                dtypes=tuple(src.dtypes),
                nodatavals=tuple(src.nodatavals),
                descriptions=tuple(src.descriptions),
                tags=dict(src.tags()),
                stamp=(str(path), stat.st_size, stat.st_mtime_ns),
            )
    except RasterioError as exc:
        raise SceneError(
            f"cannot read {path} as a raster ({exc}): give a complete GeoTIFF/COG or JPEG2000 file"
        ) from None


def _check_complete(src: Any, path: Path) -> None:
    """Refuse a file whose pixel data is cut short, from headers only."""
    size = _stat(path).st_size
    if src.driver == "GTiff":
        bh, bw = src.block_shapes[0]
        nby, nbx = -(-src.height // bh), -(-src.width // bw)
        planar = str(getattr(src.interleaving, "name", src.interleaving)).lower() == "band"
        band_ids = range(1, src.count + 1) if planar else (1,)
        blocks: Iterable[tuple[int, int]]
        if nby * nbx * len(band_ids) <= _MAX_BLOCK_CHECKS:
            blocks = [(i, j) for i in range(nby) for j in range(nbx)]
        else:  # the last block of each band, usually the last in the file, plus a sample
            stride = max(1, (nby * nbx * len(band_ids)) // _MAX_BLOCK_CHECKS + 1)
            blocks = [(k // nbx, k % nbx) for k in range(0, nby * nbx, stride)] + [(nby - 1, nbx - 1)]
        end = 0
        for b in band_ids:
            for i, j in blocks:
                off = src.get_tag_item(f"BLOCK_OFFSET_{j}_{i}", "TIFF", bidx=b)
                n = src.get_tag_item(f"BLOCK_SIZE_{j}_{i}", "TIFF", bidx=b)
                if off and n:
                    end = max(end, int(off) + int(n))
        if end > size:
            raise SceneError(
                f"{path} is truncated: its pixel data ends at byte {end} but the file has {size} bytes; "
                "copy or download it again"
            )
    elif src.driver.startswith("JP2") and not str(path).startswith("/vsi"):
        _check_jp2(path, size)


def _check_jp2(path: Path, size: int) -> None:
    """Walk the JP2 boxes: each must fit in the file and the codestream must end with EOC."""
    problem = None
    with open(path, "rb") as fh:
        if fh.read(12) != b"\x00\x00\x00\x0cjP  \r\n\x87\n":
            return  # a raw codestream (.j2k): nothing to walk
        pos = 0
        while pos < size:
            fh.seek(pos)
            head = fh.read(8)
            if len(head) < 8:
                problem = f"a box header at byte {pos} is cut short"
                break
            length, kind = struct.unpack(">I4s", head)
            header = 8
            if length == 1:
                ext = fh.read(8)
                if len(ext) < 8:
                    problem = f"a box header at byte {pos} is cut short"
                    break
                length, header = struct.unpack(">Q", ext)[0], 16
            elif length == 0:
                length = size - pos
            if length < header or pos + length > size:
                problem = (
                    f"box {kind.decode('latin-1')!r} at byte {pos} needs {length} bytes, {size - pos} remain"
                )
                break
            if kind == b"jp2c":
                fh.seek(pos + length - 2)
                if fh.read(2) != b"\xff\xd9":
                    problem = "the codestream does not end with its EOC marker"
                    break
            pos += length
    if problem:
        raise SceneError(f"{path} is truncated or corrupt: {problem}; copy or download it again")


def _band_from_description(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return canonical_band(text)
    except BandError:
        return find_band_in_name(text)


def _file_layout(path: Path, wanted: list[str] | None) -> _Layout:
    info = _inspect(path)
    _require_crs(info)
    described = [_band_from_description(d) for d in info.descriptions]
    if any(described):
        names = [d for d in described if d]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SceneError(
                f"{path} describes band(s) {', '.join(dupes)} more than once: fix the band descriptions"
            )
        index = {name: i + 1 for i, name in enumerate(described) if name}
    else:
        if wanted is None:
            raise SceneError(
                f"{path} has {info.count} band(s) without band descriptions: pass bands=[...] "
                "(--bands) naming every band in file order, e.g. B02,B03,B04"
            )
        if len(wanted) != info.count:
            raise SceneError(
                f"{path} has {info.count} band(s) without band descriptions but bands= names {len(wanted)}: "
                "name every band of the file, in file order"
            )
        index = {name: i + 1 for i, name in enumerate(wanted)}
    reads = {name: _BandRead(name, str(path), bidx, 1, 0) for name, bidx in index.items()}
    nodata = _common_nodata({n: info.nodatavals[b - 1] for n, b in index.items()}, path)
    attrs = _tag_identity(info.tags)
    attrs.update(harmonised=False, offset_applied={})
    dtypes = {info.dtypes[b - 1] for b in index.values()}
    return _Layout(
        reads=reads,
        grid=_grid_of(info),
        dtype=_result_dtype(dtypes),
        nodata=nodata,
        attrs=attrs,
        stamp=(info.stamp,),
    )


def _folder_layout(folder: Path) -> _Layout:
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in _RASTER_SUFFIXES:
            band = find_band_in_name(p.name)
            if band:
                found.setdefault(band, []).append(p)
    if not found:
        raise SceneError(
            f"no Sentinel-2 band rasters found in folder {folder}: name single-band files by band "
            "(B02.tif, T17TNH_20230801T160000_B02_10m.jp2), or give a multi-band GeoTIFF, a .SAFE or a Zarr store"
        )
    for band, paths in found.items():
        if len(paths) > 1:
            raise SceneError(
                f"folder {folder} has {len(paths)} files for band {band} ({', '.join(p.name for p in paths)}): keep one per band"
            )
    layout = _stack_layout({b: found[b][0] for b in BAND_NAMES if b in found}, folder, {})
    layout.attrs.update(harmonised=False, offset_applied={})
    return layout


def _stack_layout(paths: dict[str, Path], src: Path, offsets: dict[str, int]) -> _Layout:
    """Single-band rasters, one per band, onto the finest band's grid (checked, not warped)."""
    infos = {b: _inspect(p) for b, p in paths.items()}
    for band, info in infos.items():
        if info.count != 1:
            raise SceneError(
                f"{info.path} (band {band}) holds {info.count} bands: a band folder needs single-band files"
            )
        _require_crs(info)
    crss = {b: i.crs for b, i in infos.items()}
    first = next(iter(crss.values()))
    if any(c != first for c in crss.values()):
        listing = ", ".join(f"{b}: {_crs_name(c)}" for b, c in crss.items())
        raise SceneError(f"bands of {src} are on different CRSs ({listing}): reproject them to one CRS first")
    finest = min(infos, key=lambda b: abs(infos[b].transform.a))
    target = infos[finest]
    t = target.transform
    reads: dict[str, _BandRead] = {}
    for band, info in infos.items():
        s = info.transform
        kx, ky = s.a / t.a, s.e / t.e
        factor = round(kx)
        tol = 0.01 * abs(t.a)
        aligned = (
            s.b == 0
            and s.d == 0
            and t.b == 0
            and t.d == 0
            and factor >= 1
            and abs(kx - factor) < 1e-6
            and abs(ky - factor) < 1e-6
            and abs(s.c - t.c) <= tol
            and abs(s.f - t.f) <= tol
            and -(-target.width // factor) == info.width
            and -(-target.height // factor) == info.height
        )
        if not aligned:
            raise SceneError(
                f"band {band} of {src} is not aligned with the {finest} grid ({info.width}x{info.height} px of "
                f"{abs(s.a):g} m at ({s.c:g}, {s.f:g}) vs {target.width}x{target.height} px of {abs(t.a):g} m at "
                f"({t.c:g}, {t.f:g})): bands must share the extent and origin, with pixel sizes in integer ratios"
            )
        reads[band] = _BandRead(band, str(info.path), 1, factor, int(offsets.get(band, 0)))
    nodata = _common_nodata({b: i.nodatavals[0] for b, i in infos.items()}, src)
    attrs: dict[str, Any] = {
        "native_resolution": {b: abs(float(i.transform.a)) for b, i in infos.items()},
    }
    return _Layout(
        reads=reads,
        grid=_grid_of(target),
        dtype=_result_dtype({i.dtypes[0] for i in infos.values()}),
        nodata=nodata,
        attrs=attrs,
        stamp=tuple(i.stamp for i in infos.values()),
    )


def _require_crs(info: _RasterInfo) -> None:
    if info.crs is None:
        raise SceneError(
            f"{info.path} has no CRS: assign one (gdal_edit.py -a_srs EPSG:32617 FILE) before opening it"
        )


def _crs_name(crs: Any) -> str:
    epsg = crs.to_epsg() if crs is not None else None
    return f"EPSG:{epsg}" if epsg else str(crs)


def _grid_of(info: _RasterInfo) -> _Grid:
    t = info.transform
    return _Grid(info.crs.to_wkt(), (t.a, t.b, t.c, t.d, t.e, t.f), info.height, info.width)


def _result_dtype(dtypes: Iterable[str]) -> str:
    import numpy as np

    return str(np.result_type(*[np.dtype(d) for d in dtypes]))


def _common_nodata(values: dict[str, float | None], src: Path) -> float:
    declared = {v for v in values.values() if v is not None}
    if len(declared) > 1:
        listing = ", ".join(f"{b}: {v}" for b, v in values.items() if v is not None)
        raise SceneError(
            f"bands of {src} declare different nodata values ({listing}): give them one nodata value"
        )
    value = declared.pop() if declared else 0
    return int(value) if float(value).is_integer() else float(value)


def _tag_identity(tags: dict[str, str]) -> dict[str, Any]:
    lower = {k.lower(): v for k, v in tags.items()}
    return {key: lower[key] for key in _IDENTITY_TAGS if lower.get(key)}


# --------------------------------------------------------------------------- SAFE products


def _is_safe(path: Path) -> bool:
    return path.suffix.upper() == ".SAFE" or any((path / m).is_file() for m in _SAFE_MTD)


def _safe_layout(safe: Path) -> _Layout:
    mtd = next((safe / m for m in _SAFE_MTD if (safe / m).is_file()), None)
    meta = _parse_mtd(mtd) if mtd else {}
    name_match = _SAFE_NAME.match(safe.name)
    level = (
        (name_match.group("level").upper() if name_match else None)
        or (mtd.name[6:9] if mtd else None)
        or meta.get("product_level")
    )
    img_dirs = sorted(p for p in (safe / "GRANULE").glob("*/IMG_DATA") if p.is_dir())
    if not img_dirs:
        raise SceneError(
            f"SAFE product {safe} has no GRANULE/*/IMG_DATA folder: give a complete, unzipped .SAFE product"
        )
    if len(img_dirs) > 1:
        raise SceneError(
            f"SAFE product {safe} holds {len(img_dirs)} granules: open one granule's bands as a folder instead"
        )
    candidates: dict[str, list[tuple[float, Path]]] = {}
    for p in sorted(img_dirs[0].rglob("*")):
        if p.is_file() and p.suffix.lower() in _RASTER_SUFFIXES:
            band = find_band_in_name(p.name)
            if band:
                candidates.setdefault(band, []).append((_resolution_hint(p), p))
    if not candidates:
        raise SceneError(
            f"SAFE product {safe} has no band rasters under {img_dirs[0]}: give a complete, unzipped .SAFE product"
        )
    chosen = {b: min(candidates[b], key=lambda rp: rp[0])[1] for b in BAND_NAMES if b in candidates}

    baseline = meta.get("processing_baseline")
    if baseline is None and name_match:
        digits = name_match.group("baseline")
        baseline = f"{digits[:2]}.{digits[2:]}"
    offsets: dict[str, int] = meta.get("offsets", {})
    new_baseline = baseline is not None and _baseline_value(baseline) >= 4.0
    if new_baseline and not offsets:
        raise SceneError(
            f"SAFE product {safe} has processing baseline {baseline} but no BOA_ADD_OFFSET/RADIO_ADD_OFFSET in "
            f"its {mtd.name if mtd else 'MTD_MSIL*.xml (missing)'}: restore the product's metadata file"
        )
    layout = _stack_layout(chosen, safe, offsets)

    tile = name_match.group("tile").upper() if name_match else None
    for p in [*chosen.values(), img_dirs[0].parent]:
        if tile:
            break
        m = _TILE_IN_NAME.search(p.name)
        tile = m.group(1) if m else None
    sensing = name_match.group("sensing").upper() if name_match else None
    if sensing is None and meta.get("sensing_time"):
        sensing = re.sub(r"[-:]", "", meta["sensing_time"])[:15]
    if sensing is None:
        for p in chosen.values():
            m = _TIME_IN_NAME.search(p.name)
            if m:
                sensing = m.group(1)
                break
    attrs = layout.attrs
    if tile:
        attrs["tile_id"] = tile
    if sensing:
        attrs["sensing_time"] = meta.get("sensing_time") or (
            f"{sensing[:4]}-{sensing[4:6]}-{sensing[6:8]}T{sensing[9:11]}:{sensing[11:13]}:{sensing[13:15]}"
        )
    if baseline:
        attrs["processing_baseline"] = baseline
    if level:
        attrs["product_level"] = level
    if tile and sensing and level:
        attrs["scene_id"] = f"{tile}_{sensing}_{level}"
    attrs["harmonised"] = baseline is not None
    attrs["offset_applied"] = {b: int(offsets.get(b, 0)) for b in layout.reads}
    return layout


def _resolution_hint(path: Path) -> float:
    """A band file's resolution from ``R20m/`` or ``_20m`` in its path, else from its header."""
    for text in (path.stem, path.parent.name):
        m = _RES_IN_NAME.search(text)
        if m:
            return float(m.group(1))
    return abs(float(_inspect(path).transform.a))


def _baseline_value(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def _parse_mtd(mtd: Path) -> dict[str, Any]:
    """Processing baseline, sensing start, product type and per-band DN offsets from MTD_MSIL*.xml."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(mtd).getroot()
    except (ET.ParseError, OSError) as exc:
        raise SceneError(f"cannot parse {mtd} ({exc}): restore the product's metadata file") from None
    meta: dict[str, Any] = {}
    offsets: dict[str, int] = {}
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        text = (el.text or "").strip()
        if tag == "PROCESSING_BASELINE" and text:
            meta["processing_baseline"] = text
        elif tag == "PRODUCT_START_TIME" and text:
            meta["sensing_time"] = text.rstrip("Z").split(".")[0]
        elif tag == "PRODUCT_TYPE" and text:
            meta["product_level"] = "L2A" if "2A" in text.upper() else "L1C" if "1C" in text.upper() else None
        elif tag in ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET"):
            raw = el.get("value", text)
            try:
                band = BAND_NAMES[int(el.get("band_id", ""))]
                offsets[band] = int(float(raw))
            except (ValueError, IndexError):
                raise SceneError(
                    f"{mtd} has an unreadable {tag} (band_id={el.get('band_id')!r}, value={raw!r}): "
                    "restore the product's metadata file"
                ) from None
    meta["offsets"] = offsets
    return meta


# --------------------------------------------------------------------------- Zarr stores


def _is_zarr(path: Path) -> bool:
    return path.suffix.lower() == ".zarr" or any((path / m).exists() for m in _ZARR_MARKERS)


def _open_zarr(store: Path, wanted: list[str] | None, chunk_yx: tuple[int, int], *,
               url: str | None = None, storage_options: dict | None = None) -> "xr.DataArray":
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    try:
        with warnings.catch_warnings():  # a store without consolidated metadata is fine here
            warnings.filterwarnings("ignore", message=".*consolidated metadata", category=RuntimeWarning)
            ds = xr.open_zarr(
                url or store, chunks=None, mask_and_scale=False, decode_coords="all", decode_times=False,
                storage_options=storage_options,
            )
    except Exception as exc:  # zarr raises a zoo of types for a broken store
        raise SceneError(
            f"cannot open Zarr store {store} ({type(exc).__name__}: {exc}): give a store written by xarray"
        ) from None

    per_band: dict[str, str] = {}
    stacked: list[str] = []
    for var, arr in ds.data_vars.items():
        if set(arr.dims) == {"y", "x"}:
            try:
                per_band[canonical_band(str(var))] = str(var)
            except BandError:
                pass
        elif arr.ndim == 3 and "band" in arr.dims and {"y", "x"} <= set(arr.dims):
            stacked.append(str(var))
    if per_band:
        available = [b for b in BAND_NAMES if b in per_band]
        names = _select(available, wanted, store)
        # chunk each variable first: combining lazily-indexed (unchunked) variables would load them
        parts = [ds[per_band[b]].chunk({"y": chunk_yx[0], "x": chunk_yx[1]}) for b in names]
        arr = xr.concat(parts, dim="band", coords="minimal", compat="override", join="exact")
        arr = arr.assign_coords(band=names)
        attrs = {**ds.attrs, **ds[per_band[names[0]]].attrs}
    elif len(stacked) == 1:
        arr = ds[stacked[0]].transpose("band", "y", "x")
        stored = [_band_from_description(str(v)) for v in arr["band"].values]
        long_name = arr.attrs.get("long_name")
        if not all(stored) and isinstance(long_name, (list, tuple)) and len(long_name) == arr.sizes["band"]:
            stored = [_band_from_description(str(v)) for v in long_name]
        if all(stored):
            available = [str(s) for s in stored]
            names = _select(available, wanted, store)
        else:
            if wanted is None or len(wanted) != arr.sizes["band"]:
                raise SceneError(
                    f"Zarr store {store} has {arr.sizes['band']} unnamed band(s): pass bands=[...] naming every band in stored order"
                )
            available, names = list(wanted), list(wanted)
        arr = arr.chunk({"band": -1, "y": chunk_yx[0], "x": chunk_yx[1]})  # lazy from here on
        arr = arr.assign_coords(band=available).sel(band=names)
        attrs = {**ds.attrs, **arr.attrs}
    elif len(stacked) > 1:
        raise SceneError(
            f"Zarr store {store} has several (band, y, x) variables ({', '.join(stacked)}): keep one, or store one variable per band"
        )
    else:
        raise SceneError(
            f"Zarr store {store} has no band data: store a (band, y, x) variable or one (y, x) variable per band (B02, B03 ...)"
        )

    crs = arr.rio.crs or ds.rio.crs
    if crs is None:
        raise SceneError(
            f"Zarr store {store} has no CRS (no spatial_ref coordinate): write it with .rio.write_crs() before saving"
        )
    nodata = arr.rio.nodata
    if nodata is None:
        nodata = attrs.get("nodata", 0)
    nodata = int(nodata) if float(nodata).is_integer() else float(nodata)
    keep = {
        k: attrs[k]
        for k in (*_IDENTITY_TAGS, "harmonised", "offset_applied", "native_resolution", "resampling")
        if k in attrs
    }
    keep.setdefault("scene_id", _safe_id(store.stem))
    keep.setdefault("harmonised", False)
    keep.setdefault("offset_applied", {})
    keep.update(source=url or str(store), nodata=nodata)
    out = xr.DataArray(
        arr.data, dims=("band", "y", "x"), coords={"band": names, "y": arr["y"].values, "x": arr["x"].values}
    )
    out = out.chunk({"band": -1, "y": chunk_yx[0], "x": chunk_yx[1]})
    out = out.rio.write_crs(crs).rio.write_transform(arr.rio.transform(recalc=True))
    out = out.rio.write_nodata(nodata, encoded=False)
    out.attrs.update(keep)
    out.name = keep["scene_id"]
    return out


# --------------------------------------------------------------------------- graph


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "scene"


def _splits(total: int, step: int) -> tuple[int, ...]:
    return tuple(min(step, total - start) for start in range(0, total, step))


def _build(
    layout: _Layout, src: Path, wanted: list[str] | None, chunk_yx: tuple[int, int], resampling: str
) -> "xr.DataArray":
    import dask.array as da
    import numpy as np
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr
    from affine import Affine
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    names = _select(list(layout.reads), wanted, src)
    grid = layout.grid
    reader = _BlockReader(
        reads=tuple(layout.reads[n] for n in names),
        grid=grid,
        resampling=resampling,
        dtype=layout.dtype,
        nodata=layout.nodata,
    )
    ychunks, xchunks = _splits(grid.height, chunk_yx[0]), _splits(grid.width, chunk_yx[1])
    key = f"open-scene-{tokenize(reader, ychunks, xchunks, layout.stamp)}"
    dsk: dict[tuple, tuple] = {}
    y0 = 0
    for i, h in enumerate(ychunks):
        x0 = 0
        for j, w in enumerate(xchunks):
            dsk[(key, 0, i, j)] = (reader, y0, x0, h, w)
            x0 += w
        y0 += h
    graph = HighLevelGraph.from_collections(key, dsk, dependencies=())
    dtype = np.dtype(layout.dtype)
    data = da.Array(
        graph,
        key,
        chunks=((len(names),), ychunks, xchunks),
        dtype=dtype,
        meta=np.empty((0, 0, 0), dtype=dtype),
    )

    a, b, c, d, e, f = grid.transform
    xs = c + a * (np.arange(grid.width) + 0.5)
    ys = f + e * (np.arange(grid.height) + 0.5)
    attrs = dict(layout.attrs)
    attrs.setdefault("scene_id", _safe_id(src.stem))
    attrs["scene_id"] = _safe_id(str(attrs["scene_id"]))
    if "native_resolution" in attrs:
        attrs["native_resolution"] = {n: attrs["native_resolution"][n] for n in names}
        if any(r.factor > 1 for r in reader.reads):
            attrs["resampling"] = resampling
    if attrs.get("offset_applied"):
        attrs["offset_applied"] = {n: attrs["offset_applied"].get(n, 0) for n in names}
    attrs.update(source=str(src), nodata=layout.nodata)
    out = xr.DataArray(
        data, dims=("band", "y", "x"), coords={"band": names, "y": ys, "x": xs}, name=attrs["scene_id"]
    )
    out = out.rio.write_crs(grid.crs_wkt).rio.write_transform(Affine(a, b, c, d, e, f))
    out = out.rio.write_nodata(layout.nodata, encoded=False)
    out.attrs.update(attrs)
    return out


# --------------------------------------------------------------------------- object stores


def _vsi_to_url(path: str) -> str | None:
    if path.startswith("/vsis3/"):
        return "s3://" + path[len("/vsis3/"):]
    return None


def _remote_env(path: str) -> dict[str, str]:
    """GDAL options for reading a ``/vsis3/`` path (endpoint, region); none for local files."""
    url = _vsi_to_url(path)
    if url is None:
        return {}
    from .storage import gdal_env_for

    return gdal_env_for(url)


class _Stat(NamedTuple):
    st_size: int
    st_mtime_ns: int


def _stat(path: Path) -> Any:
    url = _vsi_to_url(str(path))
    if url is None:
        return path.stat()
    from .storage import fs_for

    fs, key = fs_for(url)
    info = fs.info(key)
    etag = str(info.get("ETag", "")).strip('"')
    return _Stat(int(info["size"]), hash(etag) & 0xFFFFFFFF)


def _open_remote(url: str, wanted: list[str] | None, chunk_yx: tuple[int, int],
                 resampling: str) -> "xr.DataArray":
    """A scene on an object store: a single GeoTIFF/COG (read by GDAL) or a Zarr store."""
    from .errors import StorageError
    from .storage import check_input_location, protocol_of, storage_options_for

    try:
        check_input_location(url)
    except StorageError as exc:
        raise SceneError(str(exc)) from None
    if url.rstrip("/").lower().endswith(".zarr"):
        name = Path(url.rstrip("/").rsplit("/", 1)[-1])
        return _open_zarr(name, wanted, chunk_yx, url=url, storage_options=storage_options_for(url))
    if protocol_of(url) not in ("s3", "s3a"):
        raise SceneError(f"scene {url}: only s3:// rasters can be read from an object store here; "
                         "copy it locally or use s3://")
    if Path(url).suffix.lower() not in _RASTER_SUFFIXES:
        raise SceneError(f"scene {url}: on an object store a scene must be one GeoTIFF/COG file or a "
                         ".zarr store (band folders and .SAFE products are read from disk)")
    src = Path("/vsis3/" + url.split("://", 1)[1])
    layout = _file_layout(src, wanted)
    out = _build(layout, src, wanted, chunk_yx, resampling)
    out.attrs["source"] = url
    return out
