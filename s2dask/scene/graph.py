"""The dask graph of a scene: one task per spatial chunk, each calling a block reader.

:func:`block_graph` is the whole graph layer (every chunk holds all bands, so a
``(10, 10980, 10980)`` scene with ``chunks=2048`` is 36 tasks); it knows nothing of files,
only of the :class:`~s2dask.scene.reader.BlockReader` interface. :func:`scene_array` wraps
it with coordinates, CRS, transform, nodata and identity for a :class:`Layout`. Runs on
the client; the reader travels to the workers inside the graph.
"""

from __future__ import annotations

import operator
import weakref
from pathlib import Path
from typing import Any, Hashable

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from affine import Affine
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from ..errors import S2DaskError, SceneError
from ..io.retry import RetryPolicy
from .formats import Layout, safe_id, select_bands
from .reader import BlockReader, RasterReader

__all__ = ["chunk_pair", "block_graph", "block_reader", "scene_array"]

#: the reader behind each array :func:`block_graph` made, by array name (see :func:`block_reader`)
_READERS: "weakref.WeakValueDictionary[str, BlockReader]" = weakref.WeakValueDictionary()


def chunk_pair(chunks: Any, *, error: type[S2DaskError] = SceneError) -> tuple[int, int]:
    """``(y, x)`` chunk edges from one positive integer or a pair of them.

    Raises
    ------
    S2DaskError
        Of type ``error`` (:class:`SceneError` by default) if ``chunks`` is not a positive
        integer or a pair of them.
    """
    try:
        if isinstance(chunks, bool):
            raise TypeError
        if isinstance(chunks, (tuple, list)):
            if len(chunks) != 2 or any(isinstance(c, bool) for c in chunks):
                raise TypeError
            pair = (operator.index(chunks[0]), operator.index(chunks[1]))
        else:
            pair = (operator.index(chunks),) * 2
    except TypeError:
        pair = (0, 0)
    if min(pair) <= 0:
        raise error(f"invalid chunks={chunks!r}: chunk size must be a positive integer (a spatial "
                    "chunk edge such as 2048, --chunks 2048) or a (y, x) pair such as (1024, 2048)")
    return int(pair[0]), int(pair[1])


def _splits(total: int, step: int) -> tuple[int, ...]:
    return tuple(min(step, total - start) for start in range(0, total, step))


def block_graph(reader: BlockReader, *, height: int, width: int, chunks: tuple[int, int],
                token: Hashable = ()) -> da.Array:
    """A dask array of ``(reader.n_bands, height, width)``: one task per spatial chunk.

    Parameters
    ----------
    reader
        Called as ``reader(y0, x0, h, w)`` by each task; it must be picklable.
    height, width
        The scene's size in pixels.
    chunks
        ``(y, x)`` chunk edges; the last row and column of chunks may be smaller.
    token
        What else identifies the data (file sizes and versions), so a changed input gets
        a new graph name.
    """
    ychunks, xchunks = _splits(height, chunks[0]), _splits(width, chunks[1])
    key = f"open-scene-{tokenize(reader, ychunks, xchunks, token)}"
    dsk: dict[tuple, tuple] = {}
    y0 = 0
    for i, h in enumerate(ychunks):
        x0 = 0
        for j, w in enumerate(xchunks):
            dsk[(key, 0, i, j)] = (reader, y0, x0, h, w)
            x0 += w
        y0 += h
    graph = HighLevelGraph.from_collections(key, dsk, dependencies=())
    _READERS[key] = reader
    dtype = np.dtype(reader.dtype)
    return da.Array(graph, key, chunks=((reader.n_bands,), ychunks, xchunks), dtype=dtype,
                    meta=np.empty((0, 0, 0), dtype=dtype))


def block_reader(array: da.Array) -> BlockReader | None:
    """The reader of an array made by :func:`block_graph`, or None for any other array.

    A task that needs a window other than its chunk (a chunk plus a halo:
    :mod:`s2dask.maps.halo`) calls the reader itself instead of gathering neighbouring chunks.
    """
    return _READERS.get(getattr(array, "name", None))


def scene_array(layout: Layout, src: Path, wanted: list[str] | None, chunk_yx: tuple[int, int],
                resampling: str, *, retry: RetryPolicy | None = None) -> xr.DataArray:
    """The lazy ``(band, y, x)`` DataArray of a layout: graph, coordinates, CRS, identity.

    ``retry`` travels in the reader: how GDAL retries failed HTTP requests.

    Raises
    ------
    BandError
        If a band in ``wanted`` is not in the layout.
    """
    names = select_bands(list(layout.reads), wanted, src)
    grid = layout.grid
    reader = RasterReader(
        reads=tuple(layout.reads[n] for n in names),
        grid=grid,
        resampling=resampling,
        dtype=layout.dtype,
        nodata=layout.nodata,
        retry=retry,
    )
    data = block_graph(reader, height=grid.height, width=grid.width, chunks=chunk_yx,
                       token=layout.stamp)
    a, b, c, d, e, f = grid.transform
    xs = c + a * (np.arange(grid.width) + 0.5)
    ys = f + e * (np.arange(grid.height) + 0.5)
    attrs = dict(layout.attrs)
    attrs.setdefault("scene_id", safe_id(src.stem))
    attrs["scene_id"] = safe_id(str(attrs["scene_id"]))
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
