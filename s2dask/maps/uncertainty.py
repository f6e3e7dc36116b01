"""Per-pixel uncertainty layers from class probabilities, and where to label next.

The layers (pure numpy, worker side: the prediction task calls :func:`compute_layers` on the
probabilities it already holds, so no second pass over the scene is needed):

``entropy``
    ``-sum_k p_k log p_k / log K``: 0 when one class has all the probability, 1 when all K
    classes are equally likely.
``margin``
    ``1 - (p1 - p2)`` with p1, p2 the two largest probabilities: 1 when the two best classes
    tie, 0 when the best has everything.
``least``
    ``1 - max_k p_k`` (least confidence): 0 for a certain pixel, at most ``1 - 1/K``.

**Scale**: uint8 *percent*, 0..100, where 100 = most uncertain, rounded to the nearest integer;
**nodata = 255**. Percent, not 0..255, because (1) the other uint8 layers of a job
(``confidence``, ``probabilities``) are already percent, so a reader compares them directly
(``least == 100 - confidence`` up to rounding); (2) it leaves 255 free as nodata, the same value
as the class map's nodata, whereas a 0..255 scale would make 255 both "most uncertain" and
"no data"; (3) one percent is finer than any decision taken on these layers.

Layer names: the Zarr array is ``uncertainty_<kind>`` (:func:`layer_name`), the optional COG
``uncertainty-<kind>.tif`` (:func:`cog_name`); :func:`layer_attrs` gives the array attributes.

:func:`suggest` (client side) reads a layer chunk-wise and returns the most uncertain pixels,
spread out by a minimum distance, as a GeoPackage of points to label next (uncertainty
sampling for active learning).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import ParameterError, SceneError
from .layers import (
    DEFAULT_CHUNK,
    RasterSource,
    check_output,
    class_names,
    open_layer,
    open_map,
    write_map_points,
)

__all__ = ["KINDS", "NODATA", "SCALE", "entropy", "margin", "least", "compute_layers",
           "parse_kinds", "layer_name", "cog_name", "layer_attrs", "suggest"]

KINDS = ("entropy", "margin", "least")
"""The uncertainty measures, in the order they are listed everywhere."""
NODATA = 255
"""Value of pixels without data in every uncertainty layer."""
SCALE = 100
"""Layers are ``round(uncertainty * SCALE)``: percent."""


def _prepare(prob: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(prob, dtype="float32")
    if p.ndim < 1 or p.shape[0] < 2:
        raise ParameterError(f"probabilities must have shape (n_classes >= 2, ...), got {p.shape}")
    ok = np.isfinite(p).all(axis=0)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != p.shape[1:]:
            raise ParameterError(f"valid mask shape {valid.shape} does not match the "
                                 f"probabilities' pixels {p.shape[1:]}")
        ok &= valid
    return np.clip(np.where(ok, p, 0.0), 0.0, 1.0), ok


def _to_uint8(u: np.ndarray, ok: np.ndarray) -> np.ndarray:
    out = np.rint(np.clip(u, 0.0, 1.0) * SCALE).astype("uint8")
    out[~ok] = NODATA
    return out


def entropy(prob: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Shannon entropy normalised by ``log(n_classes)``, as uint8 percent (255 = nodata).

    Parameters
    ----------
    prob
        ``(n_classes, ...)`` probabilities (float).
    valid
        ``(...)`` boolean mask of pixels with data; pixels with non-finite probabilities are
        nodata as well.

    Raises
    ------
    ParameterError
        If there are fewer than 2 classes or the mask's shape does not match.
    """
    p, ok = _prepare(prob, valid)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    h = -terms.sum(axis=0) / np.log(p.shape[0])
    return _to_uint8(h, ok)


def margin(prob: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """``1 - (p1 - p2)`` (best minus second best), as uint8 percent (255 = nodata).

    Parameters and errors as :func:`entropy`.
    """
    p, ok = _prepare(prob, valid)
    top2 = np.partition(p, p.shape[0] - 2, axis=0)[-2:]
    return _to_uint8(1.0 - (top2[1] - top2[0]), ok)


def least(prob: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """``1 - max p`` (least confidence), as uint8 percent (255 = nodata).

    Parameters and errors as :func:`entropy`.
    """
    p, ok = _prepare(prob, valid)
    return _to_uint8(1.0 - p.max(axis=0), ok)


_FUNCS = {"entropy": entropy, "margin": margin, "least": least}
_LONG = {"entropy": "normalised Shannon entropy of the class probabilities (-sum p log p / log K)",
         "margin": "1 - (best - second best class probability)",
         "least": "1 - probability of the chosen class (least confidence)"}


def parse_kinds(kinds: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"entropy,margin"`` (or a list) to a validated tuple in :data:`KINDS` order.

    Raises
    ------
    ParameterError
        If a name is not one of :data:`KINDS`.
    """
    if not kinds:
        return ()
    items = kinds.split(",") if isinstance(kinds, str) else list(kinds)
    items = [k.strip().lower() for k in items if k and k.strip()]
    bad = [k for k in items if k not in KINDS]
    if bad:
        raise ParameterError(f"unknown uncertainty measure {bad[0]!r}; choose from {', '.join(KINDS)}")
    return tuple(k for k in KINDS if k in items)


def layer_name(kind: str) -> str:
    """Zarr array name of a layer: ``uncertainty_entropy`` ..."""
    return f"uncertainty_{parse_kinds([kind])[0]}"


def cog_name(kind: str) -> str:
    """COG file name of a layer: ``uncertainty-entropy.tif`` ..."""
    return f"uncertainty-{parse_kinds([kind])[0]}.tif"


def layer_attrs(kind: str) -> dict:
    """Attributes of a layer's Zarr array (long name, units, scale, nodata)."""
    kind = parse_kinds([kind])[0]
    return {"long_name": _LONG[kind], "units": "percent", "scale": "0 = certain, 100 = most uncertain",
            "nodata": NODATA, "measure": kind, "grid_mapping": "spatial_ref"}


def compute_layers(prob: np.ndarray, valid: np.ndarray | None, kinds: Sequence[str]) -> dict[str, np.ndarray]:
    """All requested layers of one block: ``{layer_name(kind): uint8 array}``.

    Parameters
    ----------
    prob
        ``(n_classes, y, x)`` probabilities of the block.
    valid
        ``(y, x)`` mask of pixels with data (None: all finite pixels).
    kinds
        Measures from :data:`KINDS` (see :func:`parse_kinds`).
    """
    return {layer_name(k): _FUNCS[k](prob, valid) for k in parse_kinds(kinds)}


# --------------------------------------------------------------------------- suggest


def _greedy(xs: np.ndarray, ys: np.ndarray, *, n: int, min_distance: float) -> np.ndarray:
    """Indices of up to ``n`` points picked greedily in the given order, each at least
    ``min_distance`` from every point picked before it."""
    d2 = float(min_distance) ** 2
    if d2 == 0:
        return np.arange(min(n, xs.size), dtype="int64")
    picked: list[int] = []
    pxy = np.empty((0, 2))
    start, batch = 0, 1024
    while start < xs.size and len(picked) < n:
        idx = np.arange(start, min(start + batch, xs.size))
        start, batch = idx[-1] + 1, min(batch * 2, 65536)
        cand = np.column_stack([xs[idx], ys[idx]])
        far = np.ones(len(idx), dtype=bool)
        for s in range(0, len(pxy), 2048):  # vectorised: drop those near earlier picks
            diff = cand[:, None, :] - pxy[None, s:s + 2048, :]
            far &= ((diff ** 2).sum(-1) >= d2).all(axis=1)
        first_new = len(pxy)
        for i, xy in zip(idx[far], cand[far]):  # sequential among this batch's survivors
            if len(pxy) > first_new and ((pxy[first_new:] - xy) ** 2).sum(1).min() < d2:
                continue
            picked.append(int(i))
            pxy = np.vstack([pxy, xy[None, :]])
            if len(picked) >= n:
                break
    return np.asarray(picked, dtype="int64")


def _candidates(src: RasterSource, classes: RasterSource | None, window, u: np.ndarray,
                valid: np.ndarray, *, n: int, min_distance: float) -> dict[str, np.ndarray]:
    """The window's candidates: its valid pixels ``u`` (read at ``window``), most uncertain first,
    thinned by :func:`_greedy` to at most ``n``."""
    y0, y1, x0, x1 = window
    ok = valid & (u <= SCALE)
    rows, cols = np.nonzero(ok)
    vals = u[rows, cols]
    order = np.argsort(-vals.astype("int16"), kind="stable")  # most uncertain first, then scan order
    rows, cols, vals = rows[order] + y0, cols[order] + x0, vals[order]
    xs, ys = src.xy(rows, cols)
    keep = _greedy(xs, ys, n=n, min_distance=min_distance)
    out = {"row": rows[keep], "col": cols[keep], "value": vals[keep], "x": xs[keep], "y": ys[keep]}
    if classes is not None:
        cls = classes.read(y0, y1, x0, x1)
        out["class"] = cls[out["row"] - y0, out["col"] - x0].astype("int64")
    return out


def suggest(path: str | os.PathLike, *, n: int, out: str | os.PathLike, min_distance: float = 0.0,
            layer: str = "entropy", chunk: int = DEFAULT_CHUNK, overwrite: bool = False):
    """The ``n`` most uncertain pixels of a map, spread out, as a GeoPackage of points.

    The rule, stated so that results can be reproduced: pixels are ranked by uncertainty
    (descending; ties in row-major scan order). The layer is read one ``chunk x chunk`` window
    at a time; in each window the same greedy rule as below keeps at most ``n`` candidates
    (each at least ``min_distance`` metres from the window's earlier candidates). Then a global
    greedy pass over all windows' candidates, in the same ranking, picks a candidate when it is
    at least ``min_distance`` from every pixel already picked, until ``n`` are picked. Memory
    holds one window plus ``n`` candidates per window, never the whole layer. Distances are
    between pixel centres, in the map's CRS units (metres: a metric CRS is required when
    ``min_distance > 0``).

    Parameters
    ----------
    path
        A job output folder (reads ``classes.zarr``'s ``uncertainty_<layer>``, or the COG
        ``uncertainty-<layer>.tif``, and the classes), a Zarr store, or a single-band
        uncertainty GeoTIFF (uint8 percent, nodata 255; the predicted class is taken from a
        ``classes.tif`` next to it when there is one on the same grid, else left empty).
    n
        Number of points wanted (fewer when the map has fewer valid pixels far enough apart).
    out
        The GeoPackage to write (columns: ``rank``, ``uncertainty`` (percent), ``layer``,
        ``class_value``, ``class_name``, ``row``, ``col``, ``x``, ``y``; the map's CRS).
    min_distance
        Minimum distance between two suggested points, in metres (default 0: none).
    layer
        ``entropy``, ``margin`` or ``least``.
    chunk
        Window edge in pixels.
    overwrite
        Replace ``out`` if it exists.

    Returns
    -------
    geopandas.GeoDataFrame
        The points written, most uncertain first (``rank`` 1, 2, ...).

    Raises
    ------
    ParameterError
        If ``n`` < 1, ``min_distance`` < 0, the layer name is unknown, or a distance is asked
        on a map whose CRS is not in metres.
    SceneError
        If the map or the layer cannot be read.
    OutputExistsError
        If ``out`` exists and ``overwrite`` is False (checked before reading anything).
    """
    if int(n) < 1:
        raise ParameterError(f"--n must be a positive number of points, got {n}")
    if not np.isfinite(min_distance) or min_distance < 0:
        raise ParameterError(f"--min-distance must be >= 0 metres, got {min_distance}")
    kind = parse_kinds([layer])[0] if layer else "entropy"
    out = check_output(out, overwrite)
    src = open_layer(path, layer_name(kind))
    if min_distance > 0 and not src.metric:
        raise ParameterError(f"--min-distance is in metres but {path} is not in a metric CRS "
                             f"({src.crs}); reproject the map or use --min-distance 0")
    classes, table = _classes_for(Path(path), src)
    parts = [_candidates(src, classes, w, u, valid, n=int(n), min_distance=min_distance)
             for w, u, valid in src.blocks(chunk)]
    cand = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.lexsort((cand["col"], cand["row"], -cand["value"].astype("int16")))
    cand = {k: v[order] for k, v in cand.items()}
    keep = _greedy(cand["x"], cand["y"], n=int(n), min_distance=min_distance)
    names = class_names(table)
    cls = cand["class"][keep] if "class" in cand else np.full(len(keep), -1)
    return write_map_points(
        out, src,
        {"rank": np.arange(1, len(keep) + 1), "uncertainty": cand["value"][keep].astype("int64"),
         "layer": kind,
         "class_value": [int(v) if v >= 0 and v != NODATA else None for v in cls],
         "class_name": [names.get(int(v), str(int(v))) if v >= 0 and v != NODATA else None for v in cls],
         "row": cand["row"][keep], "col": cand["col"][keep]},
        cand["x"][keep], cand["y"][keep], overwrite=overwrite)


def _classes_for(path: Path, src: RasterSource) -> tuple[RasterSource | None, list[dict] | None]:
    """The class map on the same grid as ``src`` (and its table), or (None, None)."""
    base = path.parent if path.is_file() else path
    try:
        classes, table = open_map(path if not path.is_file() else base)
    except SceneError:
        return None, None
    if classes.shape != src.shape or classes.transform != src.transform:
        return None, None
    return classes, table
