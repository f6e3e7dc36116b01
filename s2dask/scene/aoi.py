"""Areas of interest: read a polygon layer, place it on a scene's grid, rasterise it per chunk.

``classify --aoi FILE`` reads and predicts only the chunks of a scene that the area touches
(:func:`scene_aoi` lists them on the client, from the geometry alone) and gives the pixels
outside it class 255 and the mask code :data:`~s2dask.scene.mask.OUTSIDE_AOI`. What a
prediction task carries is an :class:`AoiReader`: the area clipped to the scene and simplified
to half a pixel, as WKB in the scene's CRS, plus the scene's transform; the task rasterises its
own window (pixel centres inside the polygons), so no process ever holds a whole-scene mask.

:func:`read_aoi` runs on the client; :class:`AoiReader` on the workers (it imports rasterio and
shapely only when called).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import AreaError, AreaMissError

__all__ = ["Aoi", "AoiReader", "SceneAoi", "read_aoi", "scene_aoi", "chunks_touched", "to_wgs84_bounds",
           "inside_pixels"]

_POLYGONS = ("Polygon", "MultiPolygon")
_HINT = "give a polygon layer (GeoPackage, GeoJSON, Shapefile, FlatGeobuf) with a CRS"


@dataclass(frozen=True)
class Aoi:
    """An area of interest as read from its file (client side)."""

    path: str
    """The file, as given."""
    sha256: str
    """Hash of the file's bytes (recorded in ``job.json``; a resumed output must use the same)."""
    crs: str
    """The layer's CRS (WKT)."""
    wkb: bytes
    """The union of its polygons, in its CRS."""

    @property
    def geometry(self) -> Any:
        """The union of the polygons (shapely), in :attr:`crs`."""
        import shapely

        return shapely.from_wkb(self.wkb)

    def in_crs(self, crs: Any) -> Any:
        """The area in ``crs`` (edges densified first, so straight lines may bend)."""
        import shapely
        from pyproj import CRS, Transformer

        geom = self.geometry
        src, dst = CRS.from_user_input(self.crs), CRS.from_user_input(crs)
        if src == dst:
            return geom
        x0, y0, x1, y1 = geom.bounds
        geom = shapely.segmentize(geom, max(x1 - x0, y1 - y0, 1e-9) / 256)
        tr = Transformer.from_crs(src, dst, always_xy=True)
        return shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))

    def to_json(self) -> dict[str, Any]:
        """The ``aoi`` section of ``job.json``: file, hash, CRS and bounds (own CRS and WGS84)."""
        from pyproj import CRS

        crs = CRS.from_user_input(self.crs)
        epsg = crs.to_epsg()
        return {"file": self.path, "sha256": self.sha256, "crs": f"EPSG:{epsg}" if epsg else crs.to_wkt(),
                "bounds": list(self.geometry.bounds), "bounds_wgs84": list(self.in_crs("EPSG:4326").bounds)}


def read_aoi(path: str | os.PathLike) -> Aoi:
    """Read an area of interest: every polygon of a vector file's first layer, in its CRS.

    Parameters
    ----------
    path
        Anything pyogrio reads (GeoPackage, GeoJSON, Shapefile, FlatGeobuf), local or ``s3://``.

    Raises
    ------
    AreaError
        If the file cannot be read, holds no polygons or other geometries than polygons, or has
        no CRS (one line, with what to give instead).
    """
    import geopandas as gpd
    import shapely

    from ..io.storage import Location, is_remote

    text = os.fspath(path)
    try:
        data = Location(text).read_bytes()
        frame = gpd.read_file(text, engine="pyogrio")
    except Exception as exc:  # pyogrio's DataSourceError, GDAL, fsspec errors ...
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise AreaError(f"cannot read the area of interest {text} ({type(exc).__name__}: {first}): "
                        f"{_HINT}") from None
    geoms = [g for g in getattr(frame, "geometry", []) if g is not None and not g.is_empty]
    kinds = sorted({g.geom_type for g in geoms})
    if not geoms or any(k not in _POLYGONS for k in kinds):
        found = ", ".join(kinds) if kinds else "no geometries"
        raise AreaError(f"the area of interest {text} is not a polygon layer ({found}): {_HINT}")
    if frame.crs is None:
        raise AreaError(f"the area of interest {text} has no CRS: {_HINT} (e.g. write a .prj, or save "
                        "it as a GeoPackage with its CRS)")
    union = shapely.union_all(shapely.make_valid(np.asarray(geoms, dtype=object)))
    shown = text if is_remote(text) else os.path.abspath(os.path.expanduser(text))
    return Aoi(shown, hashlib.sha256(data).hexdigest(), frame.crs.to_wkt(), shapely.to_wkb(union))


def to_wgs84_bounds(bounds: tuple[float, float, float, float], crs: Any) -> tuple[float, ...]:
    """``(west, south, east, north)`` in degrees of a box in ``crs`` (edges densified)."""
    from rasterio.warp import transform_bounds

    return tuple(transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21))


def chunks_touched(geom: Any, *, transform: Any, shape: tuple[int, int],
                   chunks: tuple[int, int]) -> frozenset[tuple[int, int]]:
    """``{(iy, ix)}``: the chunks of a grid whose box intersects ``geom`` (in the grid's CRS)."""
    import shapely

    (ny, nx), (cy, cx) = shape, chunks
    iy, ix = np.meshgrid(np.arange(-(-ny // cy)), np.arange(-(-nx // cx)), indexing="ij")
    iy, ix = iy.ravel(), ix.ravel()
    r0, r1 = iy * cy, np.minimum((iy + 1) * cy, ny)
    c0, c1 = ix * cx, np.minimum((ix + 1) * cx, nx)
    a, b, c, d, e, f = list(transform)[:6]
    xs = np.stack([a * c0 + b * r0 + c, a * c1 + b * r1 + c])
    ys = np.stack([d * c0 + e * r0 + f, d * c1 + e * r1 + f])
    boxes = shapely.box(xs.min(0), ys.min(0), xs.max(0), ys.max(0))
    shapely.prepare(geom)
    hit = shapely.intersects(geom, boxes) & ~shapely.touches(geom, boxes)
    return frozenset((int(y), int(x)) for y, x in zip(iy[hit], ix[hit]))


@dataclass(frozen=True)
class AoiReader:
    """The area's inside/outside codes of one grid window; small and picklable (worker side).

    Rasterises :attr:`wkb` (the area in the scene's CRS) with the window's transform: pixels
    whose centre is inside get :data:`~s2dask.scene.mask.VALID`, the others
    :data:`~s2dask.scene.mask.OUTSIDE_AOI`.
    """

    wkb: bytes
    transform: tuple[float, ...]
    """The scene grid's affine transform (6 numbers)."""
    kind: str = "aoi"

    def __call__(self, y0: int, x0: int, height: int, width: int) -> np.ndarray:
        """Codes ``(height, width)`` uint8 of the window whose top-left pixel is ``(y0, x0)``."""
        import shapely
        from affine import Affine
        from rasterio.features import rasterize

        from .mask import OUTSIDE_AOI, VALID

        window = Affine(*self.transform[:6]) @ Affine.translation(x0, y0)
        inside = rasterize([(shapely.from_wkb(self.wkb), 1)], out_shape=(height, width), transform=window,
                           fill=0, dtype="uint8")
        return np.where(inside == 1, np.uint8(VALID), np.uint8(OUTSIDE_AOI)).astype(np.uint8)


@dataclass(frozen=True)
class SceneAoi:
    """An area of interest on one scene's grid (client side): what its tasks carry, what it touches."""

    aoi: Aoi
    reader: AoiReader
    chunks: frozenset[tuple[int, int]]
    """The chunks ``(iy, ix)`` it touches: the only ones read and predicted."""
    total: int
    """Chunks of the scene."""

    def record(self) -> dict[str, Any]:
        """The ``aoi`` section of ``job.json`` (without the chunk counts, added by the job)."""
        return self.aoi.to_json()


def scene_aoi(aoi: Aoi, *, crs: Any, transform: Any, shape: tuple[int, int], chunks: tuple[int, int],
              scene: str) -> SceneAoi:
    """Place ``aoi`` on a scene's grid: clip it to the scene, simplify it to half a pixel, list the
    chunks it touches.

    Raises
    ------
    AreaMissError
        If the area misses the scene entirely (a batch skips the scene).
    AreaError
        If the scene has no CRS.
    """
    import shapely

    if crs is None:
        raise AreaError(f"scene {scene} has no CRS: an area of interest cannot be placed on it")
    (ny, nx), t = shape, transform
    xs = [t.c, t.c + t.a * nx + t.b * ny]
    ys = [t.f, t.f + t.d * nx + t.e * ny]
    frame = shapely.box(min(xs), min(ys), max(xs), max(ys))
    geom = aoi.in_crs(crs)
    clipped = shapely.intersection(shapely.make_valid(geom), frame).simplify(abs(t.a) / 2)
    touched = chunks_touched(clipped, transform=t, shape=shape, chunks=chunks) if not clipped.is_empty else ()
    if not touched:
        raise AreaMissError(f"the area of interest {aoi.path} (bounds {_fmt(geom.bounds)} in the scene CRS) misses "
                            f"scene {scene} (bounds {_fmt(frame.bounds)})")
    total = -(-ny // chunks[0]) * -(-nx // chunks[1])
    return SceneAoi(aoi, AoiReader(shapely.to_wkb(clipped), tuple(list(t)[:6])), frozenset(touched), total)


def _fmt(bounds: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"


def inside_pixels(aoi: Aoi, *, crs: Any, transform: Any, width: int, flat: np.ndarray) -> np.ndarray:
    """Which of the pixels ``flat`` (``row * width + col``) of a grid have their centre inside the area."""
    import shapely

    geom = aoi.in_crs(crs)
    shapely.prepare(geom)
    rows, cols = np.divmod(np.asarray(flat, dtype=np.int64), width)
    xs, ys = transform @ (cols + 0.5, rows + 0.5)
    return shapely.contains_xy(geom, xs, ys)
