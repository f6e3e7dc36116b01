"""Does an opened scene fit a model's input contract? Checked on the client, before any compute.

:func:`check_fits` refuses, each with one line saying how to fix it: bands the model needs
and the scene lacks (naming the model), an unnamed multi-band file named only by the
model's band list (its order would be a guess), a scene without CRS or in a geographic CRS
(degrees: the hectares and the model's pixel size would be wrong), reflectance (floats
0..1) given to a model of digital numbers, and a band that holds only nodata where the other
bands have data. The last two look at a few small windows spread over the scene
(:func:`sample_pixels`: 9 windows of 32 x 32 pixels by default), never at the whole scene.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import dask
import numpy as np
import xarray as xr

from ..errors import BandError, SceneError, StorageError
from .formats import unnamed_message
from .reader import BlockReader

__all__ = ["sample_pixels", "check_fits", "missing_bands_message", "utm_epsg"]

#: windows per side and their edge in pixels that :func:`sample_pixels` reads by default
SAMPLE_GRID, SAMPLE_SIZE = 3, 32
#: windows read at once by :func:`sample_pixels`
SAMPLE_THREADS = 8
#: a float scene whose sampled valid values are all below this holds reflectance, not DNs
REFLECTANCE_CEILING = 2.0


def _graph_reader(data) -> BlockReader | None:
    """The block reader of a scene opened by :func:`open_scene` (one graph layer of reads)."""
    layers = getattr(getattr(data, "dask", None), "layers", {})
    if len(layers) != 1:
        return None
    task = next(iter(next(iter(layers.values())).values()), None)
    if isinstance(task, tuple) and task and isinstance(task[0], BlockReader):
        return task[0]
    return None


def sample_pixels(scene: xr.DataArray, *, grid: int = SAMPLE_GRID,
                  size: int = SAMPLE_SIZE) -> np.ndarray:
    """``(band, n)`` values of ``grid x grid`` small windows spread evenly over a scene.

    Only those windows are read (through the scene's own block reader when it has one,
    else by slicing the lazy array), so the cost does not grow with the scene; the
    reader's windows are read concurrently (GDAL releases the GIL; remote files are
    latency-bound). A scene of GeoTIFFs with overviews (COGs) at least four times the
    sample's edge is instead sampled on a ``grid*size`` square grid over its whole extent,
    from the overviews: a tile or two per file instead of a full-resolution tile per window.

    Parameters
    ----------
    scene
        A ``(band, y, x)`` DataArray from :func:`s2dask.scene.open_scene`.
    grid, size
        Windows per side, and their edge in pixels.
    """
    ny, nx = int(scene.sizes["y"]), int(scene.sizes["x"])
    reader = _graph_reader(scene.data)
    overview = getattr(reader, "overview_sample", None)
    if overview is not None and min(ny, nx) >= 4 * grid * size:  # a COG: its overviews
        sample = overview(grid * size)
        if sample is not None:
            return sample.reshape(sample.shape[0], -1)
    h, w = min(size, ny), min(size, nx)
    starts = sorted({(int((ny - h) * (i + 0.5) / grid), int((nx - w) * (j + 0.5) / grid))
                     for i in range(grid) for j in range(grid)})
    if reader is not None:
        with ThreadPoolExecutor(max_workers=min(len(starts), SAMPLE_THREADS),
                                thread_name_prefix="s2dask-sample") as pool:
            blocks = list(pool.map(lambda s: reader(s[0], s[1], h, w), starts))
    else:
        lazy = [scene.data[:, y0:y0 + h, x0:x0 + w] for y0, x0 in starts]
        blocks = list(dask.compute(*lazy, scheduler="sync"))
    return np.concatenate([np.asarray(b).reshape(b.shape[0], -1) for b in blocks], axis=1)


def utm_epsg(lon: float, lat: float) -> int:
    """The WGS 84 / UTM zone EPSG code of a point (326xx north, 327xx south)."""
    zone = min(60, max(1, int((lon + 180) // 6) + 1))
    return (32600 if lat >= 0 else 32700) + zone


def missing_bands_message(source: str, model: str, need: Sequence[str], have: Sequence[str]) -> str:
    """The refusal of a scene lacking bands that a model needs."""
    missing = [b for b in need if b not in have]
    return (f"model {model} needs band(s) {', '.join(missing)} that scene {source} lacks (it has "
            f"{', '.join(have) or 'no bands'}): give a scene with all of {', '.join(need)}, or "
            "train a model on the bands the scene holds")


def check_fits(scene: xr.DataArray, *, bands: Sequence[str], input_scale: str, model: str,
               source: str) -> None:
    """Refuse a scene the model cannot take, before anything is computed.

    Parameters
    ----------
    scene
        The scene opened with the model's bands (:func:`s2dask.scene.open_scene`).
    bands
        The model's bands, in its order.
    input_scale
        The model's input scale (``"dn"``: digital numbers, reflectance x 10000).
    model, source
        The model's and the scene's names, for the messages.

    Raises
    ------
    SceneError
        If the bands were named by the model's list only, are not the model's, the CRS is
        missing or geographic, a float scene holds reflectance for a DN model, or a band
        is all nodata where the others have data.
    BandError
        If the scene lacks a band the model needs.
    """
    have = [str(b) for b in scene["band"].values]
    if scene.attrs.get("bands_named_by") == "bands":
        raise SceneError(unnamed_message(f"scene {source}", len(have), bands)
                         + f" (the bands model {model} takes, if that is the file's order)")
    if have != list(bands):
        if any(b not in have for b in bands):
            raise BandError(missing_bands_message(source, model, bands, have))
        raise SceneError(f"scene {source} bands {have} are not in model {model}'s order {list(bands)}")
    _check_crs(scene, source)
    scale = scene.attrs.get("scale")
    floating = np.issubdtype(scene.dtype, np.floating)
    if input_scale == "dn" and floating and scale == "reflectance":
        raise SceneError(f"scene {source} holds reflectance (0..1) but model {model} takes digital "
                         "numbers (reflectance x 10000): rescale the scene")
    try:
        values = sample_pixels(scene)
    except StorageError:  # unreadable pixels are the tasks' to report (with --resume advice)
        return
    nodata = scene.attrs.get("nodata", scene.rio.nodata)
    empty = np.isnan(values) if floating else np.zeros(values.shape, bool)
    if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
        empty |= values == nodata
    valid = ~empty
    if input_scale == "dn" and floating and scale != "dn" and valid.any() \
            and float(np.abs(values[valid]).max()) < REFLECTANCE_CEILING:
        raise SceneError(
            f"scene {source} is {scene.dtype} with every sampled value below {REFLECTANCE_CEILING:g} "
            f"(reflectance 0..1?) but model {model} takes digital numbers (reflectance x 10000): "
            "rescale it (gdal_calc.py -A IN --allBands=A --calc 'A*10000' --type UInt16 "
            "--outfile OUT), or if these are DNs tag it: gdal_edit.py -mo scale=dn FILE")
    _check_empty_bands(have, valid, source)


def _check_crs(scene: xr.DataArray, source: str) -> None:
    crs = scene.rio.crs
    if crs is None:
        raise SceneError(f"scene {source} has no CRS: the outputs could not be georeferenced; "
                         "write one with rio.write_crs() or gdal_edit.py -a_srs")
    if crs.is_geographic:
        t = scene.rio.transform()
        lon = t.c + t.a * scene.sizes["x"] / 2
        lat = t.f + t.e * scene.sizes["y"] / 2
        epsg = crs.to_epsg()
        raise SceneError(
            f"scene {source} is in a geographic CRS ({f'EPSG:{epsg}' if epsg else crs.to_string()}, "
            "degrees): pixel areas in hectares and the model's 10 m pixels need a projected CRS; "
            f"reproject it, e.g. gdalwarp -t_srs EPSG:{utm_epsg(lon, lat)} -tr 10 10 -r near IN.tif OUT.tif")


def _check_empty_bands(have: list[str], valid: np.ndarray, source: str) -> None:
    """A band nodata in every sampled pixel where another band has data."""
    if len(have) < 2:
        return
    n_windows = SAMPLE_GRID * SAMPLE_GRID
    for k, band in enumerate(have):
        others = np.delete(valid, k, axis=0).any(axis=0)
        if others.any() and not valid[k, others].any():
            raise SceneError(
                f"band {band} of scene {source} is nodata in every sampled pixel where the other bands "
                f"have data ({int(others.sum())} px in {n_windows} windows): every pixel would be "
                "classified as nodata; check that band's data and the scene's nodata value")
