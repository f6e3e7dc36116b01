"""Pixel tables on a regular grid (cell centres ``x``, ``y`` and band columns) as COGs.

``s2dask grid-to-raster``: the tutorial's ``grid_data.csv`` is a scene given as a table;
:func:`grid_to_raster` turns such a table into the multi-band COG that
:func:`s2dask.scene.open_scene` reads. The module is named after that command and the
tables it reads (grid tables); it writes files, it reads no scene. Runs on the client.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioError

from ..errors import BandError, OutputExistsError, SceneError, StorageError
from ..io.storage import staged_file
from .bands import band_columns, canonical_bands

__all__ = ["grid_to_raster"]

#: more cells x bands than this is refused (x/y are then likely not cell centres in CRS units)
MAX_VALUES = 2_000_000_000


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
    src = Path(csv_path).expanduser()
    out = Path(out_path).expanduser()
    crs_obj = _check_paths(src, out, crs, overwrite)
    table = _read_table(src)
    xcol, ycol = _xy_columns(table, src)
    band_cols = _band_columns(table, src)
    names = list(band_cols) if bands is None else canonical_bands(bands)
    missing = [b for b in names if b not in band_cols]
    if missing:
        raise BandError(
            f"band(s) {', '.join(missing)} missing from grid table {src}; it has {', '.join(band_cols)}"
        )
    rows, cols, transform = _cells(table, xcol, ycol, src, n_bands=len(names))
    raster = _raster(table, [band_cols[b] for b in names], rows, cols, nodata)
    _write(out, raster, crs=crs_obj, transform=transform, nodata=nodata, names=names, src=src)
    return out


def _check_paths(src: Path, out: Path, crs: Any, overwrite: bool) -> CRS:
    """The table exists, the CRS parses, the output is a file path not there yet (or overwrite)."""
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
    return crs_obj


def _read_table(src: Path):
    import pandas as pd

    try:
        return pd.read_csv(src)
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SceneError(f"cannot read grid table {src} as CSV ({exc}): check the file") from None


def _xy_columns(table, src: Path) -> tuple[Any, Any]:
    lower = {str(c).strip().lower(): c for c in table.columns}
    for axis in ("x", "y"):
        if axis not in lower:
            raise SceneError(
                f"grid table {src} has no {axis!r} column (columns: {', '.join(map(str, table.columns))}): "
                "give cell-centre coordinates in columns x and y"
            )
    return lower["x"], lower["y"]


def _band_columns(table, src: Path) -> dict[str, Any]:
    """``{band: column}`` in table order; two columns for one band are refused."""
    found = band_columns(table.columns)
    for name, cols in found.items():
        if len(cols) > 1:
            raise SceneError(
                f"grid table {src} has two columns for band {name} ({cols[0]!r}, {cols[1]!r}): keep one"
            )
    if not found:
        raise SceneError(
            f"grid table {src} has no band columns (columns: {', '.join(map(str, table.columns))}): name them B2..B12 or B02..B12, B8A"
        )
    return {name: cols[0] for name, cols in found.items()}


def _cells(table, xcol, ycol, src: Path, *, n_bands: int) -> tuple[np.ndarray, np.ndarray, Affine]:
    """Row and column of every table row on the regular grid, and the grid's transform."""
    import pandas as pd

    xs = pd.to_numeric(table[xcol], errors="coerce").to_numpy(dtype="float64")
    ys = pd.to_numeric(table[ycol], errors="coerce").to_numpy(dtype="float64")
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
    if width * height * n_bands > MAX_VALUES:
        raise SceneError(
            f"grid table {src} spans {height} x {width} cells of {dx:g} x {dy:g}: too large for one raster; "
            "check that x/y are cell centres in the CRS units"
        )
    dup = pd.Index(rows * width + cols).duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise SceneError(
            f"grid table {src} has {int(dup.sum())} duplicate cell(s) (first at x={xs[i]:g}, y={ys[i]:g}, "
            f"line {i + 2}): keep one row per cell"
        )
    return rows, cols, Affine(dx, 0.0, x_min - dx / 2, 0.0, -dy, y_max + dy / 2)


def _raster(table, columns: list, rows: np.ndarray, cols: np.ndarray, nodata: float) -> np.ndarray:
    """The ``(band, y, x)`` array: uint16 when every value (and nodata) fits, else float32."""
    import pandas as pd

    values = np.column_stack(
        [pd.to_numeric(table[c], errors="coerce").to_numpy(dtype="float64") for c in columns]
    )
    finite = np.isfinite(values)
    valid = values[finite]
    integral = bool(np.all(valid == np.floor(valid))) if valid.size else True
    in_range = bool(valid.size == 0 or (valid.min() >= 0 and valid.max() <= 65535))
    nodata_ok = float(nodata) == int(nodata) and 0 <= nodata <= 65535
    dtype = "uint16" if integral and in_range and nodata_ok else "float32"
    values[~finite] = nodata
    raster = np.full((len(columns), int(rows.max()) + 1, int(cols.max()) + 1), nodata, dtype=dtype)
    raster[:, rows, cols] = values.T.astype(dtype)
    return raster


def _write(out: Path, raster: np.ndarray, *, crs: CRS, transform: Affine, nodata: float,
           names: list[str], src: Path) -> None:
    """Write the COG next to ``out`` and rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = raster.shape
    try:
        with staged_file(out) as tmp, rasterio.open(
            tmp, "w", driver="COG", width=width, height=height, count=count, dtype=raster.dtype,
            crs=crs, transform=transform, nodata=nodata, BLOCKSIZE=512, COMPRESS="DEFLATE",
            PREDICTOR="YES", BIGTIFF="IF_SAFER",
        ) as dst:
            dst.write(raster)
            for i, name in enumerate(names, start=1):
                dst.set_band_description(i, name)
            dst.update_tags(S2DASK_SOURCE=src.name)
    except (RasterioError, OSError) as exc:
        raise StorageError(
            f"writing {out} failed ({exc}): check the folder is writable and has space"
        ) from exc


def _grid_step(values: np.ndarray, axis: str, src: Path) -> float | None:
    """The regular spacing of one coordinate axis, or None when there is a single value."""
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
