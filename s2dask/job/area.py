"""A job's area of interest and its STAC outputs (client side): what :mod:`s2dask.job.run` calls.

- :func:`job_aoi` reads ``--aoi`` once per job (:func:`s2dask.scene.aoi.read_aoi`); :func:`place_aoi`
  puts it on each scene's grid (the chunks it touches; a scene it misses raises
  :class:`~s2dask.errors.AreaMissError`, which a batch turns into a skipped scene, :func:`skipped`).
- :func:`record_aoi` turns a job record's statistics into the area's: pixel counts, fractions and
  areas over the pixels inside it, and the ``aoi`` section (file, hash, bounds, CRS, chunks
  computed of total).
- :func:`write_item` writes the output's STAC item (and copies the model's card) into the partial
  output, so that they are committed with the rest; :func:`publish` adds committed outputs to
  ``OUT/catalog.json`` (:mod:`s2dask.maps.stac`).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from ..errors import AreaError, AreaMissError, S2DaskError
from ..io.storage import Location, atomic_write_bytes, join
from ..maps.stac import update_catalog, write_map_item
from ..model.card import MLM_FILE
from ..scene.aoi import Aoi, SceneAoi, read_aoi, scene_aoi
from ..scene.mask import OUTSIDE_AOI

__all__ = ["job_aoi", "place_aoi", "aoi_params", "record_aoi", "skipped", "check_hits", "write_item", "publish"]


@functools.lru_cache(maxsize=4)
def _read(path: str, stamp: Any) -> Aoi:
    return read_aoi(path)


def job_aoi(options: Any) -> Aoi | None:
    """The job's area of interest (``options.aoi``), read once; None without one.

    Raises
    ------
    AreaError
        If the file is not a polygon layer with a CRS.
    """
    path = getattr(options, "aoi", None)
    if not path:
        return None
    text = os.fspath(path)
    try:
        stamp = os.stat(text).st_mtime_ns
    except OSError:
        stamp = None
    return _read(text, stamp)


def place_aoi(options: Any, scene: Any, chunks: tuple[int, int], scene_id: str) -> SceneAoi | None:
    """The job's area on one scene's grid (None without ``--aoi``).

    Raises
    ------
    AreaMissError
        If the area misses the scene.
    """
    aoi = job_aoi(options)
    if aoi is None:
        return None
    return scene_aoi(aoi, crs=scene.rio.crs, transform=scene.rio.transform(),
                     shape=(scene.sizes["y"], scene.sizes["x"]), chunks=tuple(chunks), scene=scene_id)


def aoi_params(aoi: SceneAoi | None) -> dict:
    """What a resumed output must match (``params.json``): the area's hash."""
    return {} if aoi is None else {"aoi_sha256": aoi.aoi.sha256}


def record_aoi(record: dict, aoi: SceneAoi | None, totals: np.ndarray, n_counts: int) -> dict:
    """Statistics over the area only, and the ``aoi`` section of ``job.json`` (in place).

    ``statistics.pixels`` becomes the pixels inside the area; ``outside_aoi_pixels`` the others
    (those of chunks never computed included); class fractions and ``fraction_of_valid`` are over
    the area's pixels. ``aoi`` records the file, hash, CRS, bounds, and chunks computed of total.
    """
    if aoi is None:
        return record
    stats = record["statistics"]
    codes = np.asarray(totals[n_counts:], dtype=np.int64)
    inside = int(codes.sum() - codes[OUTSIDE_AOI])
    stats["outside_aoi_pixels"] = int(stats["pixels"]) - inside
    stats["pixels"] = inside
    stats["nodata_pixels"] = int(codes[1])  # NODATA: not the 255s of pixels outside the area
    for c in stats["classes"]:
        c["fraction"] = c["pixels"] / max(1, inside)
    record["aoi"] = {**aoi.record(), "chunks_computed": len(aoi.chunks), "chunks_total": aoi.total}
    return record


def skipped(source: str, exc: AreaMissError) -> tuple:
    """The fields of the :class:`~s2dask.job.run.JobResult` of a scene the area misses (printed,
    not an error): ``(scene, "skipped", None, record, message)``."""
    return (source, "skipped", None, {"scene": source, "status": "skipped", "reason": str(exc)},
            f"{exc}: skipped")


def check_hits(results: list, options: Any) -> None:
    """Refuse a job whose area of interest missed every scene.

    Raises
    ------
    AreaError
        If there is an area and every result is a skipped scene.
    """
    if getattr(options, "aoi", None) and results and all(r.status == "skipped" for r in results):
        raise AreaError(f"the area of interest {options.aoi} misses every scene "
                        f"({', '.join(r.scene for r in results[:3])}{' ...' if len(results) > 3 else ''}): "
                        "check its CRS and extent, or give scenes that cover it")


def write_item(partial: Location, record: dict, *, bundle: Any, layers: dict[str, str]) -> None:
    """Copy the model's card into the partial output and write its STAC item there.

    Raises
    ------
    StorageError
        If either cannot be written.
    """
    card = Location(join(str(bundle.path), MLM_FILE))
    have_card = False
    try:
        data = card.read_bytes()
    except (OSError, S2DaskError):  # a bundle from before cards: no model asset
        data = None
    if data is not None:
        atomic_write_bytes(partial.join(MLM_FILE), data)
        have_card = True
    write_map_item(partial, record, classes=bundle.classes, layers=layers if record["output"].get("cog") else {},
                   model_card=have_card)


def publish(out: Location) -> None:
    """Add the committed outputs of ``out`` to its ``catalog.json`` (:func:`s2dask.maps.stac.update_catalog`)."""
    update_catalog(out)
