"""The mask of one scene in a job: resolve ``--mask``, check its raster, record its statistics (client side).

:func:`scene_mask` turns the job's :class:`~s2dask.scene.mask.MaskSpec` into what one scene's
prediction tasks carry (a :class:`~s2dask.scene.mask.ChunkMask`: the scene's nodata and at most one
SCL and one user-mask reader, a few hundred bytes), after checking on the client, from headers
only, that the SCL or the user's raster lies on the scene's grid. :func:`record_mask` adds the
mask settings and the pixel statistics to a job record. The per-chunk arithmetic is in
:mod:`s2dask.scene.mask`; the task that applies it is :func:`s2dask.job.worker.predict_and_store`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from ..errors import SceneError
from ..io.storage import is_remote, remote_env
from .mask import (
    OUTSIDE_AOI,
    VALID,
    ChunkMask,
    MaskReader,
    MaskSpec,
    check_mask_grid,
    legend_entry,
    mask_attrs,
    mask_statistics,
    scl_factor,
)
from .stac_item import gdal_path

__all__ = ["SceneMask", "scene_mask", "record_mask", "with_aoi"]


@dataclass(frozen=True)
class SceneMask:
    """One scene's mask: the resolved settings and what its prediction tasks carry."""

    spec: MaskSpec
    """``mode`` is ``scl``, ``none`` or ``file`` here (``auto`` resolved)."""
    chunk: ChunkMask

    @property
    def layer_attrs(self) -> dict[str, Any] | None:
        """Attributes of the Zarr ``mask`` layer, or None when the job writes none (``--mask none``)."""
        return mask_attrs(self.spec) if self.chunk.layer else None

    @property
    def fill(self) -> int:
        """The ``mask`` layer's value where no task wrote (chunks outside an area of interest)."""
        return OUTSIDE_AOI if any(r.kind == "aoi" for r in self.chunk.readers) else VALID

    @property
    def legend(self) -> dict[str, Any] | None:
        """The quicklook's legend entry for masked pixels, or None."""
        return legend_entry(self.spec) if self.chunk.layer else None


def scene_mask(scene: Any, spec: MaskSpec, *, scene_id: str) -> SceneMask:
    """Resolve ``spec`` for an opened scene and check its mask raster against the scene's grid.

    Parameters
    ----------
    scene
        The ``(band, y, x)`` DataArray of :func:`s2dask.scene.open_scene` (``scl_path`` and
        ``scl_resolution`` in its attributes where it has an SCL).
    spec
        The job's mask settings (:func:`s2dask.scene.mask.parse_mask_option`).
    scene_id
        The scene's name in messages.

    Raises
    ------
    SceneError
        If ``--mask scl`` is asked for a scene without an SCL, or the SCL or the user's mask
        raster is not on the scene's grid (one line, with how to fix it).
    """
    spec = spec.resolve(scene=scene_id, has_scl=bool(scene.attrs.get("scl_path")))
    nodata = scene.rio.nodata
    readers: tuple[MaskReader, ...] = ()
    if spec.mode == "scl":
        path = str(scene.attrs["scl_path"])
        res = abs(float(scene.rio.resolution()[0]))
        factor = scl_factor(float(scene.attrs["scl_resolution"]), res, scene=scene_id)
        _check_scl(path, scene, factor, scene_id)
        readers = (MaskReader(path, kind="scl", factor=factor, classes=spec.classes),)
    elif spec.mode == "file":
        path = gdal_path(spec.path) if is_remote(spec.path) else spec.path
        with rasterio.Env(**remote_env(path)):
            check_mask_grid(path, crs=scene.rio.crs, transform=scene.rio.transform(),
                            shape=(scene.sizes["y"], scene.sizes["x"]), scene=scene_id)
        readers = (MaskReader(path, kind="file"),)
    return SceneMask(spec, ChunkMask(nodata=None if nodata is None else float(nodata), readers=readers,
                                     layer=spec.mode != "none"))


def with_aoi(mask: SceneMask, reader: Any) -> SceneMask:
    """``mask`` with an area of interest's reader (:class:`s2dask.scene.aoi.AoiReader`) added; the
    ``mask`` layer is then written even with ``--mask none`` (it says which pixels are outside)."""
    chunk = mask.chunk
    return SceneMask(mask.spec, ChunkMask(nodata=chunk.nodata, readers=(*chunk.readers, reader), layer=True))


def _check_scl(path: str, scene: Any, factor: int, scene_id: str) -> None:
    """Refuse an SCL raster that does not cover the scene's grid pixel for pixel (headers only)."""
    try:
        with rasterio.Env(**remote_env(path)), rasterio.open(path) as src:
            crs, t, shape = src.crs, src.transform, (src.height, src.width)
    except RasterioError as exc:
        raise SceneError(f"cannot open the SCL {path} of scene {scene_id} ({exc}): "
                         "check it, or pass --mask none") from None
    g = scene.rio.transform()
    want = (-(-scene.sizes["y"] // factor), -(-scene.sizes["x"] // factor))
    tol = 0.01 * abs(g.a)
    if crs != scene.rio.crs or shape != want or abs(t.c - g.c) > tol or abs(t.f - g.f) > tol:
        raise SceneError(f"the SCL {path} of scene {scene_id} is not on the scene's grid ({shape[0]}x{shape[1]} px "
                         f"at ({t.c:g}, {t.f:g}) vs {want[0]}x{want[1]} expected at ({g.c:g}, {g.f:g})): "
                         "pass --mask none, or --mask FILE with a mask on the scene's grid")


def record_mask(record: dict, mask: SceneMask, mask_counts: np.ndarray) -> dict:
    """Add the mask settings and statistics to a job record (in place) and return it.

    ``record["mask"]`` gets the settings; ``record["statistics"]`` gets ``valid_pixels``,
    ``nodata_pixels``, ``masked_pixels`` and ``masked_by_reason`` (:func:`s2dask.scene.mask.mask_statistics`)
    and each class its ``fraction_of_valid`` (class areas are over valid pixels only: masked
    pixels have no class).
    """
    stats = record["statistics"]
    found = mask_statistics(mask_counts)
    found.pop("pixels")
    stats.update(found)
    for c in stats.get("classes", []):
        c["fraction_of_valid"] = c["pixels"] / max(1, found["valid_pixels"])
    record["mask"] = mask.spec.to_json()
    return record
