"""The sampling design of an accuracy assessment: stratified random points to label.

Strata are the mapped classes; :func:`allocate` says how many points each gets (proportional
to mapped area, raised to a minimum per class, as Olofsson et al. (2014) recommend), and
:func:`design` draws them chunk-wise from the map and writes them as a GeoPackage with an
empty ``reference`` column. :func:`s2dask.maps.accuracy.assess` then scores the labelled points.

Runs on the client; the map is read one window at a time (:mod:`s2dask.maps.layers`).
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import ParameterError
from .layers import DEFAULT_CHUNK, RasterSource, check_output, class_names, open_map, write_map_points

__all__ = ["allocate", "design"]


def allocate(mapped_pixels: dict[int, int], n: int, *, min_per_class: int = 50) -> dict[int, int]:
    """Sample size per stratum: proportional to mapped area, raised to a minimum, capped by size.

    ``n_h = min(N_h, max(round_lr(n W_h), min_per_class))`` where ``round_lr`` rounds the
    proportional shares ``n W_h`` down and hands the remaining points to the largest fractional
    parts (so they sum to ``n``). The total can therefore exceed ``n`` (minimums for rare classes,
    which Olofsson et al. recommend so that their user's accuracy can be estimated) or fall short
    of it (a class with fewer pixels than its share is taken whole).

    Raises
    ------
    ParameterError
        If ``n`` < 1 or ``min_per_class`` < 0.
    """
    if int(n) < 1:
        raise ParameterError(f"--n must be a positive sample size, got {n}")
    if int(min_per_class) < 0:
        raise ParameterError(f"--min-per-class must be >= 0, got {min_per_class}")
    values = sorted(v for v, c in mapped_pixels.items() if c > 0)
    sizes = np.array([mapped_pixels[v] for v in values], dtype="float64")
    if not values:
        return {}
    raw = n * sizes / sizes.sum()
    base = np.floor(raw).astype("int64")
    for i in np.argsort(-(raw - base), kind="stable")[: int(n - base.sum())]:
        base[i] += 1
    return {v: int(min(s, max(b, min_per_class))) for v, s, b in zip(values, sizes.astype("int64"), base)}


def _count_windows(src: RasterSource, chunk: int) -> tuple[list, list[dict[int, int]]]:
    """First pass: the windows and the pixel count of each class in each."""
    windows, counts = [], []
    for w, block, valid in src.blocks(chunk):
        vals, cnt = np.unique(block[valid], return_counts=True)
        windows.append(w)
        counts.append({int(v): int(c) for v, c in zip(vals, cnt)})
    return windows, counts


def _draw(sizes: dict[int, int], totals: dict[int, int], counts: list[dict[int, int]],
          seed: int) -> dict[int, list[tuple[int, np.ndarray]]]:
    """Draw ranks per stratum and resolve them to ``{window: [(class, ranks in window)]}``."""
    rng = np.random.default_rng(seed)
    todo: dict[int, list[tuple[int, np.ndarray]]] = {}
    for v, n_h in sizes.items():
        ranks = np.sort(rng.choice(totals[v], size=n_h, replace=False))
        per_window = np.array([c.get(v, 0) for c in counts], dtype="int64")
        ends = np.cumsum(per_window)
        where = np.searchsorted(ends, ranks, side="right")
        for wi in np.unique(where):
            local = ranks[where == wi] - (ends[wi] - per_window[wi])
            todo.setdefault(int(wi), []).append((v, local))
    return todo


def design(map: str | os.PathLike, *, n: int, out: str | os.PathLike, min_per_class: int = 50,
           seed: int = 0, chunk: int = DEFAULT_CHUNK, overwrite: bool = False):
    """A stratified random sample of a class map (strata = mapped classes) as points to label.

    Allocation: :func:`allocate` (proportional, at least ``min_per_class`` per class, at most all
    of its pixels). Drawing, chunk-wise: a first pass counts each class's pixels per
    ``chunk x chunk`` window; for each stratum (in class-value order) ``n_h`` distinct ranks are
    drawn uniformly from ``0 .. N_h - 1`` with ``numpy.random.default_rng(seed)``; a rank is the
    position of a pixel of that class in the row-major order of windows, then of pixels within a
    window; a second pass reads only the windows holding drawn ranks and turns ranks into pixels.
    The same map, ``n``, ``seed`` and ``chunk`` always give the same points.

    Parameters
    ----------
    map
        Job output folder or single-band class raster (see :func:`s2dask.maps.layers.open_map`).
    n
        Target sample size.
    out
        GeoPackage to write: points at pixel centres in the map's CRS with columns ``id``,
        ``map_value``, ``map_class``, ``reference`` (empty: fill it in while labelling; for a
        blind interpretation hide ``map_*`` from the interpreter), ``stratum_pixels``,
        ``stratum_sample``, ``x``, ``y``.
    min_per_class
        Minimum points per mapped class (default 50).
    seed
        Random seed.
    chunk
        Window edge of the chunk-wise reads (pixels).
    overwrite
        Replace ``out`` if it exists.

    Returns
    -------
    geopandas.GeoDataFrame
        The points written, by stratum (class value), then row and column.

    Raises
    ------
    ParameterError
        If ``n`` or ``min_per_class`` is out of range.
    SceneError
        If the map cannot be read.
    OutputExistsError
        If ``out`` exists and ``overwrite`` is False (checked before reading the map).
    """
    allocate({1: 1}, n, min_per_class=min_per_class)  # validates n and min_per_class early
    out = check_output(out, overwrite)
    src, table = open_map(map)
    windows, counts = _count_windows(src, chunk)
    totals: dict[int, int] = {}
    for c in counts:
        for v, k in c.items():
            totals[v] = totals.get(v, 0) + k
    sizes = allocate(totals, n, min_per_class=min_per_class)
    todo = _draw(sizes, totals, counts, seed)
    rows, cols, vals = [], [], []
    for wi in sorted(todo):  # second pass: only the windows that hold drawn pixels
        y0, y1, x0, x1 = windows[wi]
        block = src.read(y0, y1, x0, x1)
        for v, local in todo[wi]:
            flat = np.flatnonzero((block == v) & src.valid(block))[local]
            rows.append(flat // (x1 - x0) + y0)
            cols.append(flat % (x1 - x0) + x0)
            vals.append(np.full(len(flat), v))
    rows_a, cols_a, vals_a = (np.concatenate(a) if a else np.empty(0, "int64") for a in (rows, cols, vals))
    order = np.lexsort((cols_a, rows_a, vals_a))
    rows_a, cols_a, vals_a = rows_a[order], cols_a[order], vals_a[order]
    xs, ys = src.xy(rows_a, cols_a)
    names = class_names(table)
    return write_map_points(
        out, src,
        {"id": np.arange(1, len(vals_a) + 1), "map_value": vals_a.astype("int64"),
         "map_class": [names.get(int(v), str(int(v))) for v in vals_a],
         "reference": _empty_strings(len(vals_a)),
         "stratum_pixels": [totals[int(v)] for v in vals_a],
         "stratum_sample": [sizes[int(v)] for v in vals_a]},
        xs, ys, overwrite=overwrite)


def _empty_strings(k: int):
    """An empty (all-missing) string column of length ``k``: it stays a text field in a GPKG."""
    import pandas as pd

    return pd.Series([None] * k, dtype="string")
