"""Chunks with a halo: each task reads its chunk plus ``h`` pixels on every side, writes the chunk.

Any computation whose output pixel depends on a neighbourhood (the ``--smooth N`` window
mean of :mod:`s2dask.maps.smooth`, a small CNN with a receptive field of radius ``h``) gives the
same map whatever the chunking when every chunk is computed from the chunk *and its halo*,
and only the chunk is written. This module is that machinery, independent of what runs on
the block:

* :func:`halo_array` (client) turns a ``(band, y, x)`` scene array into an array whose block
  ``(i, j)`` is chunk ``(i, j)`` of the job's chunking plus ``h`` pixels on every side, filled
  with ``fill`` where the halo leaves the scene. A scene opened from rasters (GeoTIFF/COG,
  band folders, SAFE) has a picklable block reader (:func:`s2dask.scene.graph.block_reader`):
  each task then reads its halo window itself, one read per task, nothing gathered from
  neighbouring tasks. Any other dask-backed scene (a Zarr store) is sliced lazily: dask reads
  the pieces of the neighbouring chunks the halo covers, and one task pads and joins them.
* :func:`chunk_halo` (both sides) gives the window of chunk ``(i, j)`` and its halo,
  and :func:`inside` the mask of the pixels that are in the scene (False in the padding):
  the task uses it to treat the padding as *invalid* (never predicted, never counted).

A task that maps over :func:`halo_array` receives blocks of ``(ch + 2h, cw + 2h)``; it finds
its chunk from dask's ``block_info[0]["chunk-location"]`` and :func:`chunk_halo`, computes
on the whole block and writes ``block[:, halo.inner]`` only.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from ..errors import ParameterError
from ..scene.graph import block_reader
from ..scene.reader import BlockReader
from .smooth import Halo, halo_window

__all__ = ["chunk_halo", "inside", "read_padded", "halo_array"]


def _splits(total: int, step: int) -> list[int]:
    return [min(step, total - start) for start in range(0, total, step)]


def chunk_halo(iy: int, ix: int, *, chunks: tuple[int, int], shape: tuple[int, int], halo: int) -> Halo:
    """The read window, padding and inner slices of chunk ``(iy, ix)`` with a halo of ``halo`` px.

    Parameters
    ----------
    iy, ix
        The chunk's position in the grid of ``chunks``.
    chunks
        ``(cy, cx)`` chunk edges (the last row and column of chunks may be smaller).
    shape
        ``(rows, cols)`` of the scene.
    halo
        Halo width in pixels.

    Raises
    ------
    ParameterError
        If the chunk is outside the scene or ``halo`` is negative.
    """
    (cy, cx), (ny, nx) = chunks, shape
    y0, x0 = iy * cy, ix * cx
    if not (0 <= y0 < ny and 0 <= x0 < nx):
        raise ParameterError(f"chunk ({iy}, {ix}) of {cy} x {cx} px is outside a scene of {ny} x {nx} px")
    return halo_window(y0, min(y0 + cy, ny), x0, min(x0 + cx, nx), shape=shape, halo=halo)


def inside(halo: Halo) -> np.ndarray:
    """``(ch + 2h, cw + 2h)`` bool: True on pixels of the scene, False on the padding."""
    ry0, ry1, rx0, rx1 = halo.read
    return np.pad(np.ones((ry1 - ry0, rx1 - rx0), dtype=bool), halo.pad, constant_values=False)


def read_padded(reader: BlockReader, halo: Halo, fill: Any) -> np.ndarray:
    """Read ``halo.read`` through a block reader and pad it to the chunk + halo window (a task).

    Parameters
    ----------
    reader
        Called as ``reader(y0, x0, height, width)``.
    halo
        From :func:`chunk_halo`.
    fill
        Value of the padding (the scene's nodata).
    """
    y0, y1, x0, x1 = halo.read
    block = reader(y0, x0, y1 - y0, x1 - x0)
    return np.pad(block, ((0, 0), *halo.pad), constant_values=fill)


def _fill_value(fill: Any, dtype: np.dtype) -> Any:
    """``fill`` if ``dtype`` can hold it, else 0 (the padding is masked by :func:`inside` anyway)."""
    try:
        if fill is None or (np.issubdtype(dtype, np.integer) and not float(fill).is_integer()):
            return dtype.type(0)
        value = dtype.type(fill)
        return value if np.issubdtype(dtype, np.floating) or value == fill else dtype.type(0)
    except (TypeError, ValueError, OverflowError):
        return dtype.type(0)


def halo_array(data: da.Array, *, chunks: tuple[int, int], halo: int, fill: Any = 0) -> da.Array:
    """A ``(band, y, x)`` array whose block ``(i, j)`` is chunk ``(i, j)`` plus a halo.

    Parameters
    ----------
    data
        The scene's dask array (all bands in every chunk).
    chunks
        ``(cy, cx)``: the chunking of the output the tasks write (the halo is added to it).
    halo
        Halo width ``h`` in pixels (``N // 2`` for an ``N x N`` window).
    fill
        Value of the pixels outside the scene (the scene's nodata; 0 if the dtype cannot hold it).

    Returns
    -------
    dask.array.Array
        Blocks of ``(bands, ch_i + 2h, cw_j + 2h)``, one per chunk of ``chunks``.

    Raises
    ------
    ParameterError
        If ``halo`` is negative or ``chunks`` not positive.
    """
    if halo < 0 or min(chunks) <= 0:
        raise ParameterError(f"halo must be >= 0 and chunks positive, got halo={halo}, chunks={chunks}")
    nb, ny, nx = data.shape
    fill = _fill_value(fill, data.dtype)
    ychunks, xchunks = _splits(ny, chunks[0]), _splits(nx, chunks[1])
    halos = [[chunk_halo(i, j, chunks=chunks, shape=(ny, nx), halo=halo) for j in range(len(xchunks))]
             for i in range(len(ychunks))]
    reader = block_reader(data)
    if reader is None:
        return _sliced(data, halos, fill)
    key = f"halo-read-{tokenize(reader, ychunks, xchunks, halo, fill, data.name)}"
    dsk = {(key, 0, i, j): (read_padded, reader, halos[i][j], fill)
           for i in range(len(ychunks)) for j in range(len(xchunks))}
    graph = HighLevelGraph.from_collections(key, dsk, dependencies=())
    out_chunks = ((nb,), tuple(c + 2 * halo for c in ychunks), tuple(c + 2 * halo for c in xchunks))
    return da.Array(graph, key, chunks=out_chunks, dtype=data.dtype,
                    meta=np.empty((0, 0, 0), dtype=data.dtype))


def _sliced(data: da.Array, halos: list[list[Halo]], fill: Any) -> da.Array:
    """The same blocks for an array without a block reader: lazy slices, padded, one block each."""
    rows = []
    for row in halos:
        blocks = []
        for h in row:
            y0, y1, x0, x1 = h.read
            piece = da.pad(data[:, y0:y1, x0:x1], ((0, 0), *h.pad), constant_values=fill)
            blocks.append(piece.rechunk(piece.shape))
        rows.append(da.concatenate(blocks, axis=2))
    return da.concatenate(rows, axis=1)
