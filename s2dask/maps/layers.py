"""Class maps and map layers as chunk-wise readable rasters, and the writers of map products.

A *map* is what ``s2dask classify`` leaves in ``DIR/<scene-id>/`` (``classes.tif``,
``classes.zarr``, ``job.json``) or any single-band raster (GeoTIFF/COG, or a Zarr store with a
``classes`` array). :func:`open_map` and :func:`open_layer` return a :class:`RasterSource`: its
grid (shape, CRS, transform), nodata and a ``read(window)`` that reads one window only, so the
functions built on it (:mod:`s2dask.maps.accuracy`, :func:`s2dask.maps.uncertainty.suggest`) hold one
chunk at a time, never the whole map.

Class names come, in this order, from the job record (``job.json``, ``statistics.classes``),
the Zarr attributes (``class_values``/``class_names``) or the raster tags (``CLASS_NAMES``, a
JSON ``{value: name}`` written by s2dask's COG writer, or per-band ``CLASS_<value>`` tags);
without any of these the caller gets ``None`` and names classes by their values.

This module runs on the client (it is IO, not worker code).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import rasterio
from rasterio.transform import Affine

from ..errors import OutputExistsError, SceneError, StorageError
from ..io.storage import staged_file

__all__ = ["RasterSource", "open_map", "open_layer", "class_table", "class_names", "check_output",
           "write_atomically", "write_points", "write_map_points", "DEFAULT_CHUNK"]

DEFAULT_CHUNK = 2048
"""Edge of the windows a map is read in (pixels): 2048^2 uint8 = 4 MiB per window."""


@dataclass(frozen=True)
class RasterSource:
    """One band of a raster (GeoTIFF or a Zarr array), read one window at a time."""

    path: str
    """The file or Zarr group it reads."""
    array: str | None
    """The Zarr array's name, or None for a GeoTIFF (band 1)."""
    shape: tuple[int, int]
    """(rows, cols)."""
    crs: Any
    """A :class:`rasterio.crs.CRS` (None when the raster has none)."""
    transform: Affine
    """Pixel corner to map coordinates."""
    nodata: float | None
    """The nodata value, or None."""
    dtype: str
    """The array's dtype."""

    def windows(self, chunk: int = DEFAULT_CHUNK) -> Iterator[tuple[int, int, int, int]]:
        """``(y0, y1, x0, x1)`` windows of ``chunk`` pixels, row-major: a fixed order for a given shape."""
        ny, nx = self.shape
        for y0 in range(0, ny, chunk):
            for x0 in range(0, nx, chunk):
                yield y0, min(y0 + chunk, ny), x0, min(x0 + chunk, nx)

    def blocks(self, chunk: int = DEFAULT_CHUNK
               ) -> Iterator[tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]]:
        """``(window, block, valid)`` for each of :meth:`windows`, read one at a time: the
        chunk-wise walk over the whole map (``valid`` is :meth:`valid` of the block)."""
        for w in self.windows(chunk):
            block = self.read(*w)
            yield w, block, self.valid(block)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Read the ``[y0:y1, x0:x1]`` window as a 2-D array."""
        if self.array is None:
            with rasterio.open(self.path) as src:
                return src.read(1, window=((y0, y1), (x0, x1)))
        import zarr

        return np.asarray(zarr.open_array(store=self.path, path=self.array, mode="r")[y0:y1, x0:x1])

    def valid(self, block: np.ndarray) -> np.ndarray:
        """True where ``block`` (read from this source) holds data."""
        if self.nodata is None:
            return np.ones(block.shape, dtype=bool)
        if np.isnan(self.nodata):
            return ~np.isnan(block)
        return block != self.nodata

    def xy(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates of the centres of pixels ``(rows, cols)``."""
        t = self.transform
        c = np.asarray(cols, dtype="float64") + 0.5
        r = np.asarray(rows, dtype="float64") + 0.5
        return t.a * c + t.b * r + t.c, t.d * c + t.e * r + t.f

    def rowcol(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pixel ``(rows, cols)`` holding map coordinates ``(x, y)`` (may be outside the grid)."""
        inv = ~self.transform
        x = np.asarray(x, dtype="float64")
        y = np.asarray(y, dtype="float64")
        cols = np.floor(inv.a * x + inv.b * y + inv.c).astype("int64")
        rows = np.floor(inv.d * x + inv.e * y + inv.f).astype("int64")
        return rows, cols

    @property
    def pixel_area_m2(self) -> float:
        """Area of one pixel in CRS units squared (square metres for a metric CRS)."""
        t = self.transform
        return abs(t.a * t.e - t.b * t.d)

    @property
    def metric(self) -> bool:
        """True when the CRS is projected in metres (distances and areas are meaningful)."""
        crs = self.crs
        return bool(crs and crs.is_projected and (crs.linear_units or "").lower() in ("metre", "meter", "m"))


def _tif_source(path: Path) -> RasterSource:
    try:
        with rasterio.open(path) as src:
            if src.count != 1:
                raise SceneError(f"{path} has {src.count} bands, a map must have one; pass the "
                                 "class (or uncertainty) raster itself")
            return RasterSource(str(path), None, (src.height, src.width), src.crs, src.transform,
                                src.nodata, src.dtypes[0])
    except rasterio.errors.RasterioError as exc:
        raise SceneError(f"cannot open {path} as a raster: {' '.join(str(exc).split())[:160]}; "
                         "pass a GeoTIFF/COG, a Zarr store or a job output folder") from None


def _zarr_source(store: Path, name: str) -> RasterSource:
    import zarr
    from rasterio.crs import CRS

    group = zarr.open_group(str(store), mode="r")
    if name not in group:
        have = sorted(k for k in group.array_keys() if k not in ("x", "y", "spatial_ref"))
        raise SceneError(f"{store} has no array {name!r} (it has: {', '.join(have) or 'none'}); "
                         "was the job run with that option?")
    arr = group[name]
    x = np.asarray(group["x"][:], dtype="float64")
    y = np.asarray(group["y"][:], dtype="float64")
    ref = dict(group["spatial_ref"].attrs) if "spatial_ref" in group else {}
    wkt = ref.get("crs_wkt") or ref.get("spatial_ref")
    crs = CRS.from_wkt(wkt) if wkt else None
    if "GeoTransform" in ref:
        transform = Affine.from_gdal(*[float(v) for v in str(ref["GeoTransform"]).split()])
    else:
        dx = x[1] - x[0] if x.size > 1 else 1.0
        dy = y[1] - y[0] if y.size > 1 else -1.0
        transform = Affine(dx, 0.0, x[0] - dx / 2, 0.0, dy, y[0] - dy / 2)
    attrs = dict(arr.attrs)
    nodata = attrs.get("nodata", attrs.get("_FillValue", 255 if arr.dtype == np.uint8 else None))
    return RasterSource(str(store), name, tuple(arr.shape[-2:]), crs, transform, nodata, str(arr.dtype))


def open_map(path: str | os.PathLike) -> tuple[RasterSource, list[dict] | None]:
    """Open a class map for chunk-wise reading, with its class table when one is recorded.

    Parameters
    ----------
    path
        A job output folder (``classes.tif``, else ``classes.zarr``), a Zarr store with a
        ``classes`` array, or a single-band class raster (GeoTIFF/COG).

    Returns
    -------
    (RasterSource, list of {"value", "name"} or None)

    Raises
    ------
    SceneError
        If the path is not a readable single-band map.
    """
    p = Path(path)
    if not p.exists():
        raise SceneError(f"map {p} does not exist; pass a job output folder or a class raster")
    if p.is_dir() and not _is_zarr(p):
        if (p / "classes.tif").exists():
            return _tif_source(p / "classes.tif"), class_table(p)
        if (p / "classes.zarr").exists():
            return _zarr_source(p / "classes.zarr", "classes"), class_table(p)
        raise SceneError(f"{p} holds neither classes.tif nor classes.zarr; pass a job output "
                         "folder (DIR/<scene-id>) or a class raster")
    if _is_zarr(p):
        return _zarr_source(p, "classes"), class_table(p)
    return _tif_source(p), class_table(p)


def open_layer(path: str | os.PathLike, name: str) -> RasterSource:
    """Open the map layer ``name`` (e.g. ``uncertainty_entropy``) of a job folder or Zarr store,
    or a single-band raster given directly.

    Parameters
    ----------
    path
        Job output folder, Zarr store, or a single-band GeoTIFF (``name`` is then ignored).
    name
        Zarr array name.

    Raises
    ------
    SceneError
        If the layer is missing or the raster unreadable.
    """
    p = Path(path)
    if not p.exists():
        raise SceneError(f"{p} does not exist; pass a job output folder or a single-band raster")
    if p.is_dir() and not _is_zarr(p):
        if (p / "classes.zarr").exists():
            return _zarr_source(p / "classes.zarr", name)
        cog = p / (name.replace("_", "-") + ".tif")
        if cog.exists():
            return _tif_source(cog)
        raise SceneError(f"{p} holds neither classes.zarr nor {cog.name}; pass a job output "
                         "folder or the layer's GeoTIFF")
    if _is_zarr(p):
        return _zarr_source(p, name)
    return _tif_source(p)


def _is_zarr(p: Path) -> bool:
    return p.is_dir() and ((p / "zarr.json").exists() or (p / ".zgroup").exists())


def _table(values, names) -> list[dict]:
    return [{"value": int(v), "name": str(n)} for v, n in zip(values, names)]


def class_table(path: str | os.PathLike) -> list[dict] | None:
    """The class table ``[{"value", "name"}, ...]`` recorded with a map, or None.

    Looks at ``job.json`` (a job folder), the Zarr attributes, then the raster tags.
    """
    p = Path(path)
    if p.is_dir() and (p / "job.json").exists():
        try:
            record = json.loads((p / "job.json").read_text())
            rows = record.get("statistics", {}).get("classes") or []
            if rows:
                return _table([r["value"] for r in rows], [r["name"] for r in rows])
        except (ValueError, KeyError, TypeError):
            pass
    store = p / "classes.zarr" if (p.is_dir() and not _is_zarr(p)) else p
    if _is_zarr(store):
        import zarr

        attrs = dict(zarr.open_group(str(store), mode="r").attrs)
        if "class_values" in attrs and "class_names" in attrs:
            return _table(attrs["class_values"], attrs["class_names"])
    tif = p / "classes.tif" if p.is_dir() else p
    if tif.is_file():
        with rasterio.open(tif) as src:
            tags, band = src.tags(), src.tags(1)
        if "CLASS_NAMES" in tags:
            try:
                names = json.loads(tags["CLASS_NAMES"])
                return sorted(_table(names.keys(), names.values()), key=lambda c: c["value"])
            except (ValueError, AttributeError):
                pass
        per_band = {int(k[6:]): v for k, v in band.items() if k.startswith("CLASS_") and k[6:].isdigit()}
        if per_band:
            return _table(sorted(per_band), [per_band[k] for k in sorted(per_band)])
    return None


def class_names(table: list[dict] | None) -> dict[int, str]:
    """``{value: name}`` of a class table (empty for None: the caller names classes by value)."""
    return {c["value"]: c["name"] for c in (table or [])}


def check_output(dst: str | os.PathLike, overwrite: bool = False) -> Path:
    """``dst`` as a Path, refused when it exists and ``overwrite`` is False.

    Raises
    ------
    OutputExistsError
        If ``dst`` exists and ``overwrite`` is False.
    """
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise OutputExistsError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
    return dst


def write_atomically(dst: str | os.PathLike, write: Callable[[Path], None], *,
                     overwrite: bool = False, suffix: str = "") -> str:
    """Call ``write(tmp)`` on a temporary name next to ``dst``, then move it to ``dst``.

    A thin wrapper of :func:`s2dask.io.storage.staged_file` (the project's one temp + rename)
    that adds the overwrite check and this module's error message: nothing is ever
    half-written at ``dst``, and an existing ``dst`` is only replaced with ``overwrite=True``.

    Parameters
    ----------
    dst
        The local file to write.
    write
        Writes the whole file at the path it is given.
    overwrite
        Replace an existing ``dst``.
    suffix
        End of the temporary name (for writers that pick the format from the extension).

    Raises
    ------
    OutputExistsError
        If ``dst`` exists and ``overwrite`` is False.
    StorageError
        If the folder cannot be written.
    """
    dst = check_output(dst, overwrite)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with staged_file(dst, suffix=suffix) as part:
            write(part)
    except OSError as exc:
        raise StorageError(f"cannot write {dst}: {exc.strerror or exc}; check free space and "
                           "permissions of the output folder") from None
    return str(dst)


def write_points(frame, dst: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Write a GeoDataFrame of points as a GeoPackage (layer named after the file), atomically.

    Raises
    ------
    OutputExistsError
        If ``dst`` exists and ``overwrite`` is False.
    """
    import pyogrio

    dst = Path(dst)

    def _write(part: Path) -> None:
        pyogrio.write_dataframe(frame, part, layer=dst.stem, driver="GPKG")

    return write_atomically(dst, _write, overwrite=overwrite, suffix=".gpkg")


def write_map_points(dst: str | os.PathLike, src: RasterSource, columns: dict[str, Any],
                     xs: np.ndarray, ys: np.ndarray, *, overwrite: bool = False):
    """Points of a map at ``(xs, ys)`` (pixel centres, ``src``'s CRS) as a GeoPackage.

    The frame has ``columns`` (in their order), then ``x`` and ``y``, and point geometries;
    it is written with :func:`write_points` and returned.

    Raises
    ------
    OutputExistsError
        If ``dst`` exists and ``overwrite`` is False.
    """
    import geopandas as gpd

    frame = gpd.GeoDataFrame({**columns, "x": xs, "y": ys}, geometry=gpd.points_from_xy(xs, ys),
                             crs=src.crs)
    write_points(frame, dst, overwrite=overwrite)
    return frame
