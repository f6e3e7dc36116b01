"""Label features for sampling: read a vector or CSV label file, check it, bring it into a
scene's CRS and find the pixels each feature covers (client side; nothing here reads pixels).

* Point (or each point of a MultiPoint): the pixel containing it (``floor`` of the inverse
  transform, so a point on a pixel edge belongs to the pixel right of / below it).
* Polygon and MultiPolygon: the pixels :func:`rasterio.features.rasterize` marks for the
  geometry: those whose centre falls inside, or with ``all_touched`` every pixel touched.
  The mask is computed on the feature's bounding window, in pieces of at most 2048 x 2048
  pixels, so a feature is never rasterised over the whole scene.
* ``buffer`` (scene CRS units, metres) buffers every geometry first: negative shrinks polygons
  so mixed edge pixels stay out (points vanish), positive grows them (points become discs).
* Invalid polygons (self-intersections, bow-ties) are **repaired** with
  :func:`shapely.make_valid` (polygonal parts kept) and the report says how many, with ids.
  Refusing them would make a QGIS user chase slivers; repairing keeps the drawn area.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import ParameterError, SamplesError, SceneError

__all__ = ["LabelFeatures", "crs_text", "feature_pixels", "labels_in_scene", "read_labels"]

_VECTOR_HINT = "a GeoPackage, GeoJSON, Shapefile or FlatGeobuf, or a CSV with x,y columns"
_POINTS = ("Point", "MultiPoint")
_POLYGONS = ("Polygon", "MultiPolygon")
_MASK_TILE = 2048
_MAX_IDS = 20

@dataclass
class LabelFeatures:
    """Label features in a scene's CRS, one entry per usable feature (see :func:`labels_in_scene`)."""

    geometry: np.ndarray  # shapely geometries
    value: np.ndarray  # int64 class values
    name: np.ndarray | None  # class names (object) or None
    fid: np.ndarray  # int64 feature ids
    crs: str  # the label file's CRS, as given or declared
    report: dict  # features read, skipped, repaired ...


# --------------------------------------------------------------------------- reading labels


def crs_text(crs: Any) -> str:
    """``EPSG:n`` where the CRS has a code, else its PROJ/WKT string."""
    epsg = crs.to_epsg() if crs is not None else None
    return f"EPSG:{epsg}" if epsg else crs.to_string()


def _read_frame(path: Path, labels_crs: Any):
    """The label file as a GeoDataFrame with OGR feature ids on its index."""
    import geopandas as gpd
    import pandas as pd

    if not path.exists():
        raise SamplesError(f"label file {path} does not exist: give {_VECTOR_HINT}")
    if path.suffix.lower() == ".csv":
        try:
            df = pd.read_csv(path, skipinitialspace=True)
        except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise SamplesError(f"cannot read label file {path} as CSV ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}): check the file") from None
        cols = {str(c).lower(): c for c in df.columns}
        if "x" not in cols or "y" not in cols:
            raise SamplesError(f"label CSV {path} has no x and y columns (columns: "
                               f"{', '.join(map(str, df.columns))}): give point coordinates in x and y")
        if labels_crs is None:
            raise SamplesError(f"label CSV {path} carries no CRS: give the CRS of its x,y with "
                               "--labels-crs (labels_crs=), e.g. EPSG:32617")
        xs = pd.to_numeric(df[cols["x"]], errors="coerce")
        ys = pd.to_numeric(df[cols["y"]], errors="coerce")
        geom = gpd.points_from_xy(xs, ys)
        geom[(xs.isna() | ys.isna()).to_numpy()] = None
        return gpd.GeoDataFrame(df, geometry=geom, crs=None)
    try:
        frame = gpd.read_file(path, engine="pyogrio", fid_as_index=True)
    except Exception as exc:  # pyogrio's DataSourceError, DataLayerError, GDAL errors ...
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise SamplesError(f"cannot read label file {path} ({type(exc).__name__}: {first}): "
                           f"give {_VECTOR_HINT}") from None
    if not isinstance(frame, gpd.GeoDataFrame) or frame.geometry.name not in frame:
        raise SamplesError(f"label file {path} has no geometry: give {_VECTOR_HINT}")
    return frame


def _label_values(frame, col: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Integer class values and a mask of features that have one."""
    import pandas as pd

    raw = frame[col]
    have = raw.notna().to_numpy()
    if not have.any():
        raise SamplesError(f"label column {col!r} of {path} is empty: fill it with integer class "
                           "values or pick another column with --label")
    num = pd.to_numeric(raw[have], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    bad = ~np.isfinite(num) | (num != np.round(num)) | (num < 0) | (num > 254)
    if bad.any():
        ids = frame.index.to_numpy()[have][bad][:_MAX_IDS]
        first = raw[have].iloc[int(np.flatnonzero(bad)[0])]
        raise SamplesError(
            f"label column {col!r} of {path} has value {first!r} (feature ids "
            f"{', '.join(map(str, ids))}): class values must be integers 0..254; put names in "
            "another column and give it with --name-column"
        )
    values = np.zeros(len(raw), dtype="int64")
    values[have] = num.astype("int64")
    return values, have


def _find(columns: Sequence[str], name: str) -> str | None:
    if name in columns:
        return name
    folded = [c for c in columns if c.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def read_labels(
    labels: str | os.PathLike,
    *,
    label: str = "Class_ID",
    name_column: str | None = None,
    labels_crs: Any = None,
) -> tuple[Any, dict]:
    """Read a label file and check its columns, CRS and geometries.

    Parameters
    ----------
    labels
        GeoPackage, GeoJSON, Shapefile, FlatGeobuf (anything pyogrio reads), or a CSV of
        points with ``x``,``y`` columns.
    label
        The integer class column (values 0..254); case-insensitive.
    name_column
        Optional class-name column, copied to the table.
    labels_crs
        CRS of a CSV's coordinates, or of a vector file that declares none. A file that
        declares a different CRS is refused.

    Returns
    -------
    (geopandas.GeoDataFrame, dict)
        Features that have a class value and a geometry (columns ``geometry``, ``value``,
        ``name``; OGR feature id or row number on the index), repaired where invalid; and a
        report of what was read, skipped and repaired.

    Raises
    ------
    SamplesError
        If the file cannot be read; has no CRS and none is given; lacks the label or name
        column; the label column is empty or not integer; or a geometry is neither point nor
        polygon.
    ParameterError
        If ``labels_crs`` is invalid or disagrees with the file's CRS.
    """
    import shapely
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    path = Path(labels).expanduser()
    user_crs = None
    if labels_crs is not None:
        try:
            user_crs = CRS.from_user_input(labels_crs)
        except (CRSError, TypeError, ValueError) as exc:
            raise ParameterError(f"invalid --labels-crs {labels_crs!r} ({exc}): give e.g. EPSG:32617") from None
    frame = _read_frame(path, user_crs)
    if frame.crs is None:
        if user_crs is None:
            raise SamplesError(f"label file {path} declares no CRS: give it with --labels-crs "
                               "(labels_crs=), e.g. EPSG:4326, or save the file with its CRS")
        frame = frame.set_crs(user_crs)
    elif user_crs is not None and not CRS.from_user_input(frame.crs).equals(user_crs):
        raise ParameterError(f"label file {path} declares {crs_text(frame.crs)} but --labels-crs "
                             f"says {crs_text(user_crs)}: drop --labels-crs or fix the file")
    columns = [str(c) for c in frame.columns if c != frame.geometry.name]
    col = _find(columns, label)
    if col is None:
        raise SamplesError(f"label file {path} has no label column {label!r} (columns: "
                           f"{', '.join(columns) or 'none'}): name the class column with --label")
    ncol = None
    if name_column is not None:
        ncol = _find(columns, name_column)
        if ncol is None:
            raise SamplesError(f"label file {path} has no name column {name_column!r} (columns: "
                               f"{', '.join(columns)}): fix --name-column or leave it out")
    values, have = _label_values(frame, col, path)
    geoms = frame.geometry.to_numpy()
    has_geom = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    types = np.array(frame.geometry.geom_type.fillna("None").to_numpy(), dtype=object)
    wrong = has_geom & ~np.isin(types, _POINTS + _POLYGONS)
    if wrong.any():
        ids = frame.index.to_numpy()[wrong][:_MAX_IDS]
        raise SamplesError(
            f"label file {path} has {int(wrong.sum())} feature(s) of geometry type "
            f"{', '.join(sorted(set(types[wrong])))} (ids {', '.join(map(str, ids))}): only points "
            "and polygons can label pixels; drop those features or convert them to polygons"
        )
    keep = have & has_geom
    report: dict[str, Any] = {
        "source": str(path), "crs": crs_text(frame.crs), "features": int(len(frame)),
        "label_column": col, "name_column": ncol,
        "features_without_label": int((~have).sum()),
        "features_without_geometry": int((have & ~has_geom).sum()),
    }
    out = frame.loc[keep, [frame.geometry.name]].copy()
    out["value"] = values[keep]
    out["name"] = frame.loc[keep, ncol].astype(str).to_numpy() if ncol else None
    invalid = ~shapely.is_valid(out.geometry.to_numpy())
    report["invalid_polygons_repaired"] = int(invalid.sum())
    report["repaired_ids"] = [_plain(i) for i in out.index.to_numpy()[invalid][:_MAX_IDS]]
    if invalid.any():
        fixed = shapely.make_valid(out.geometry.to_numpy()[invalid])
        out.loc[invalid, out.geometry.name] = [_polygonal(g) for g in fixed]
    return out, report


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _polygonal(geom):
    """The polygonal part of a repaired geometry (lines and points of a collection dropped)."""
    import shapely

    parts = [p for p in shapely.get_parts(geom) if p.geom_type in _POLYGONS]
    polys = [q for p in parts for q in shapely.get_parts(p)]
    return shapely.MultiPolygon(polys) if polys else shapely.Polygon()


def labels_in_scene(frame, report: dict, scene: xr.DataArray, buffer: float | None) -> LabelFeatures:
    """Reproject features from :func:`read_labels` to the scene's CRS and apply ``buffer``.

    Parameters
    ----------
    frame, report
        What :func:`read_labels` returned; ``report`` gains the counts of features outside
        the scene and emptied by the buffer.
    scene
        The scene (CRS, bounds) from :func:`~s2dask.scene.open_scene`.
    buffer
        Buffer distance in scene CRS units (metres), or None.

    Returns
    -------
    LabelFeatures

    Raises
    ------
    SamplesError
        If no feature overlaps the scene (the message gives both extents in the scene CRS).
    ParameterError
        If ``buffer`` is given for a scene in a geographic CRS.
    """
    import shapely

    crs = scene.rio.crs
    frame = frame.to_crs(crs)
    left, bottom, right, top = scene.rio.bounds()
    box = shapely.box(left, bottom, right, top)
    geoms = frame.geometry.to_numpy()
    inside = shapely.intersects(geoms, box)
    if not inside.any():
        lb = frame.total_bounds
        raise SamplesError(
            f"labels {report['source']} do not overlap scene {scene.attrs.get('scene_id')}: in "
            f"{crs_text(crs)} the labels span x {lb[0]:.1f}..{lb[2]:.1f}, y {lb[1]:.1f}..{lb[3]:.1f} "
            f"and the scene x {left:.1f}..{right:.1f}, y {bottom:.1f}..{top:.1f}; check the labels' "
            "CRS (--labels-crs) and that they belong to this scene"
        )
    report["features_outside_scene"] = int((~inside).sum())
    report["outside_ids"] = [_plain(i) for i in frame.index.to_numpy()[~inside][:_MAX_IDS]]
    emptied = 0
    if buffer:
        if crs.is_geographic:
            raise ParameterError(f"--buffer is in scene CRS units, but scene CRS {crs_text(crs)} is "
                                 "geographic (degrees): use a projected scene or leave --buffer out")
        buffered = shapely.buffer(geoms, float(buffer))
        emptied = int((shapely.is_empty(buffered) & ~shapely.is_empty(geoms)).sum())
        geoms = buffered
    report["features_emptied_by_buffer"] = emptied
    names = frame["name"].to_numpy() if frame["name"].notna().any() else None
    return LabelFeatures(geoms, frame["value"].to_numpy("int64"), names,
                   np.asarray(frame.index.to_numpy(), dtype="int64"), report["crs"], report)


# --------------------------------------------------------------------------- pixels of features


def _point_pixels(geoms: np.ndarray, inv, height: int, width: int) -> list[np.ndarray]:
    """Flat pixel indices (row * width + col) of each point feature, unique per feature."""
    import shapely

    coords, owner = shapely.get_coordinates(geoms, return_index=True)
    cols = np.floor(inv.a * coords[:, 0] + inv.b * coords[:, 1] + inv.c)
    rows = np.floor(inv.d * coords[:, 0] + inv.e * coords[:, 1] + inv.f)
    ok = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    flat = rows[ok].astype("int64") * width + cols[ok].astype("int64")
    owner = owner[ok]
    out = [np.empty(0, dtype="int64")] * len(geoms)
    order = np.argsort(owner, kind="stable")
    owner, flat = owner[order], flat[order]
    bounds = np.searchsorted(owner, np.arange(len(geoms) + 1))
    for k in np.flatnonzero(np.diff(bounds)):
        out[k] = np.unique(flat[bounds[k]:bounds[k + 1]])
    return out


def _polygon_pixels(geom, transform, height: int, width: int, all_touched: bool) -> np.ndarray:
    """Flat indices of the pixels ``rasterize`` marks for one polygon, window by window."""
    from rasterio.features import geometry_mask
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    if geom is None or geom.is_empty:
        return np.empty(0, dtype="int64")
    minx, miny, maxx, maxy = geom.bounds
    c0 = max(int(math.floor((minx - transform.c) / transform.a)) - 1, 0)
    c1 = min(int(math.ceil((maxx - transform.c) / transform.a)) + 1, width)
    r0 = max(int(math.floor((maxy - transform.f) / transform.e)) - 1, 0)
    r1 = min(int(math.ceil((miny - transform.f) / transform.e)) + 1, height)
    found = []
    for y0 in range(r0, r1, _MASK_TILE):
        for x0 in range(c0, c1, _MASK_TILE):
            h, w = min(_MASK_TILE, r1 - y0), min(_MASK_TILE, c1 - x0)
            mask = geometry_mask([geom], out_shape=(h, w), invert=True, all_touched=all_touched,
                                 transform=window_transform(Window(x0, y0, w, h), transform))
            rr, cc = np.nonzero(mask)
            found.append((rr + y0).astype("int64") * width + (cc + x0))
    return np.sort(np.concatenate(found)) if found else np.empty(0, dtype="int64")


def feature_pixels(lab: LabelFeatures, scene: xr.DataArray, all_touched: bool) -> list[np.ndarray]:
    """Per feature, the sorted flat indices ``row * width + col`` of the scene pixels it labels.

    Raises
    ------
    SceneError
        If the scene's grid is rotated or south-up.
    """
    import shapely

    transform = scene.rio.transform()
    if transform.b or transform.d or transform.e >= 0:
        raise SceneError(f"scene {scene.attrs.get('source')} has a rotated or south-up grid "
                         f"({tuple(transform)[:6]}): sampling needs a north-up scene")
    height, width = scene.sizes["y"], scene.sizes["x"]
    point = np.isin(shapely.get_type_id(lab.geometry), (0, 4))  # Point, MultiPoint
    pixels: list[np.ndarray] = [np.empty(0, dtype="int64")] * len(lab.geometry)
    if point.any():
        for k, px in zip(np.flatnonzero(point), _point_pixels(lab.geometry[point], ~transform, height, width)):
            pixels[k] = px
    for k in np.flatnonzero(~point):
        pixels[k] = _polygon_pixels(lab.geometry[k], transform, height, width, all_touched)
    return pixels
