"""Reading scene blocks: the small reader interface the graph builder calls, and its GDAL reader.

A :class:`BlockReader` is anything picklable that returns one ``(band, y, x)`` block for a
window and says its band count and dtype; :func:`s2dask.scene.graph.block_graph` makes one
task per chunk out of it, so a test can swap in a fake reader without any IO.

:class:`RasterReader` is the real one (GeoTIFF/COG, band folders, SAFE). Each call opens
and closes its own rasterio handles (never shared between threads, so no lock), runs under
:data:`READ_ENV` (``GDAL_NUM_THREADS=1``: Dask supplies the parallelism), brings coarser
bands onto the finest grid (nearest: exact ``k x k`` replication of the source window;
bilinear: a ``WarpedVRT`` onto the full target grid, seamless across chunks) and applies the
processing-baseline offset. Failed HTTP requests of remote files are retried by GDAL itself
(:mod:`s2dask.io.retry`), counted, and left for the chunk's marker with the read's duration. It
runs on workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from ..errors import StorageError, detached
from ..io.retry import RetryCounter, RetryPolicy, note_read, read_with_retry
from ..io.storage import remote_env

__all__ = ["READ_ENV", "BandRead", "Grid", "BlockReader", "RasterReader"]

#: GDAL configuration that every pixel read of :func:`s2dask.scene.open_scene` runs under.
READ_ENV: dict[str, str] = {
    "GDAL_NUM_THREADS": "1",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
}


@runtime_checkable
class BlockReader(Protocol):
    """What the graph builder needs of a reader: picklable, and callable per window."""

    @property
    def n_bands(self) -> int:
        """Bands in every block."""

    @property
    def dtype(self) -> str:
        """The blocks' dtype."""

    def __call__(self, y0: int, x0: int, height: int, width: int) -> np.ndarray:
        """The ``(n_bands, height, width)`` block whose top-left pixel is ``(y0, x0)``."""


class BandRead(NamedTuple):
    """Where one output band comes from."""

    name: str  # canonical band name
    path: str  # file holding it
    bidx: int  # 1-based band index in that file
    factor: int  # one source pixel covers factor x factor target pixels (1: same grid)
    offset: int  # added to valid DNs (baseline 04.00+ harmonisation); 0 for none


class Grid(NamedTuple):
    """The target pixel grid (the finest band's)."""

    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]  # affine a, b, c, d, e, f
    height: int
    width: int


@dataclass(frozen=True)
class RasterReader:
    """Read one ``(band, y, x)`` block of a scene; the callable that every graph task runs.

    Picklable (paths and numbers only), so it travels to distributed workers; each call
    opens and closes its own rasterio handles, so concurrent calls share nothing.
    """

    reads: tuple[BandRead, ...]
    grid: Grid
    resampling: str
    dtype: str
    nodata: float
    #: retries of failed HTTP requests (GDAL's own); ``None``: from the worker's environment
    retry: RetryPolicy | None = None

    @property
    def n_bands(self) -> int:
        return len(self.reads)

    def __call__(self, y0: int, x0: int, height: int, width: int) -> np.ndarray:
        t0 = time.perf_counter()
        out = np.empty((len(self.reads), height, width), dtype=self.dtype)
        groups = self._groups()
        policy = self.retry or RetryPolicy.from_env()
        counter = RetryCounter()
        error = None
        with rasterio.Env(**READ_ENV):
            for (path, factor), positions in groups.items():
                idxs = [self.reads[k].bidx for k in positions]
                window = f"window y={y0}:{y0 + height} x={x0}:{x0 + width} of {path}"
                try:  # GDAL retries each failed HTTP request itself; counted here
                    data = read_with_retry(self._read_file, path, idxs, factor, y0, x0, height,
                                           width, policy=policy, what=window, counter=counter)
                except StorageError as exc:
                    error = exc
                except (RasterioError, OSError) as exc:
                    error = StorageError(f"reading {window} failed ({exc}): check that the file is "
                                         "complete and readable")
                if error is not None:
                    break
                for row, k in enumerate(positions):
                    out[k] = _apply_offset(data[row], self.reads[k].offset, self.nodata)
        if error is not None:
            raise detached(error)  # outside the handler: no cause travels (see errors.detached)
        note_read((y0, x0, height, width), counter, time.perf_counter() - t0)
        return out

    def _groups(self) -> dict[tuple[str, int], list[int]]:
        """``{(file, factor): [output band positions]}``: each file is read once per block."""
        groups: dict[tuple[str, int], list[int]] = {}
        for k, r in enumerate(self.reads):
            groups.setdefault((r.path, r.factor), []).append(k)
        return groups

    def overview_sample(self, size: int) -> np.ndarray | None:
        """``(n_bands, size, size)`` values spread over the whole grid, read from overviews.

        A GeoTIFF's overviews (a COG's) give the whole scene in a tile or two per file, where
        windows at full resolution decode a full tile each. ``None`` (read windows instead)
        when a file is not a GeoTIFF with overviews (a decimated read would then decode
        every tile), when bands need resampling between grids, or when a read fails (the
        windows then report it).
        """
        if self.resampling != "nearest" and any(r.factor != 1 for r in self.reads):
            return None
        out = np.empty((len(self.reads), size, size), dtype=self.dtype)
        groups = self._groups()
        try:
            with rasterio.Env(**READ_ENV):
                # every file's header first: no pixel is read unless all of them have overviews
                for (path, _), positions in groups.items():
                    with rasterio.Env(**remote_env(path, self.retry)), rasterio.open(path) as src:
                        if src.driver != "GTiff" or not all(src.overviews(self.reads[k].bidx)
                                                            for k in positions):
                            return None
                for (path, factor), positions in groups.items():
                    idxs = [self.reads[k].bidx for k in positions]
                    with rasterio.Env(**remote_env(path, self.retry)), rasterio.open(path) as src:
                        window = Window(0, 0, min(-(-self.grid.width // factor), src.width),
                                        min(-(-self.grid.height // factor), src.height))
                        data = src.read(idxs, window=window, out_shape=(len(idxs), size, size),
                                        resampling=Resampling.nearest)
                    for row, k in enumerate(positions):
                        out[k] = _apply_offset(data[row], self.reads[k].offset, self.nodata)
        except (RasterioError, OSError):
            return None
        return out

    def _read_file(self, path: str, idxs: list[int], factor: int, y0: int, x0: int, height: int,
                   width: int) -> np.ndarray:
        with rasterio.Env(**remote_env(path, self.retry)), rasterio.open(path) as src:
            return self._read(src, idxs, factor, y0, x0, height, width)

    def _read(
        self, src: Any, idxs: list[int], factor: int, y0: int, x0: int, height: int, width: int
    ) -> np.ndarray:
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


def _apply_offset(band: np.ndarray, offset: int, nodata: float) -> np.ndarray:
    """Harmonise one band: ``DN + offset`` clipped at 1 for valid pixels; nodata untouched."""
    if not offset:
        return band
    if np.issubdtype(band.dtype, np.integer):
        top = np.iinfo(band.dtype).max
        shifted = np.clip(band.astype(np.int64) + offset, 1, top).astype(band.dtype)
    else:
        shifted = np.maximum(band + offset, 1).astype(band.dtype)
    return np.where(band == nodata, band, shifted)
