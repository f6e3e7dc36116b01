"""Synthetic Sentinel-2-like scenes and labelled points, made by the project itself.

Used by ``s2dask demo`` when the real sample data is absent, by the tests and by the
benchmarks. Deterministic by seed, and written window by window so that a full
10980 x 10980 tile never sits in memory.

The land cover is a field of irregular patches (a coarse random class grid, its cell
edges warped by smooth sinusoids); each class has a typical spectrum in the ten bands,
plus per-pixel noise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import OutputExistsError, ParameterError
from ..io.storage import staged_file
from .bands import DEFAULT_BANDS

__all__ = ["SYNTHETIC_CLASSES", "class_field", "make_scene", "make_samples"]

#: the buffalo tutorial's five classes, with typical 10-band DN spectra (B02..B12)
SYNTHETIC_CLASSES = (
    {"value": 1, "name": "Parking/road/pavement", "colour": "#7f7f7f",
     "spectrum": (1200, 1250, 1300, 1450, 1550, 1600, 1650, 1700, 2100, 1900)},
    {"value": 2, "name": "Building", "colour": "#e31a1c",
     "spectrum": (1350, 1400, 1480, 1600, 1700, 1750, 1800, 1850, 2250, 2050)},
    {"value": 3, "name": "Tree/bushes", "colour": "#1b7837",
     "spectrum": (400, 650, 450, 1000, 2600, 3100, 3300, 3400, 1700, 850)},
    {"value": 4, "name": "Grass", "colour": "#a6d96a",
     "spectrum": (600, 900, 800, 1300, 2300, 2700, 2900, 3000, 2400, 1500)},
    {"value": 5, "name": "Water", "colour": "#2166ac",
     "spectrum": (700, 650, 450, 350, 250, 220, 200, 180, 90, 60)},
)

_CELL = 48  # patch size in pixels
_NOISE = 0.10  # relative per-pixel noise (roads and buildings overlap, as in real scenes)


def class_field(rows: np.ndarray, cols: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Class index (0..4) of pixels at integer ``rows``, ``cols`` (broadcast), deterministic."""
    rng = np.random.default_rng(seed)
    table = rng.integers(0, len(SYNTHETIC_CLASSES), size=(257, 257))
    phase = rng.uniform(0, 2 * np.pi, size=4)
    r = rows.astype("float64")
    c = cols.astype("float64")
    wr = r + 14 * np.sin(c / 37.0 + phase[0]) + 7 * np.sin(c / 11.0 + phase[1])
    wc = c + 14 * np.sin(r / 41.0 + phase[2]) + 7 * np.sin(r / 13.0 + phase[3])
    i = np.floor(wr / _CELL).astype("int64") % 257
    j = np.floor(wc / _CELL).astype("int64") % 257
    return table[i, j]


def _window_values(r0: int, r1: int, c0: int, c1: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
    cls = class_field(rows, cols, seed=seed)
    spectra = np.array([c["spectrum"] for c in SYNTHETIC_CLASSES], dtype="float32")  # (K, 10)
    # noise seeded by window position: identical whatever the writing order
    rng = np.random.default_rng([seed, r0, c0])
    base = spectra[cls]  # (h, w, 10)
    noise = rng.standard_normal(base.shape, dtype="float32") * _NOISE
    values = np.clip(base * (1.0 + noise), 1, 10000).astype("uint16")
    return np.moveaxis(values, -1, 0), cls


def make_scene(path: str | os.PathLike, *, size: int | tuple[int, int] = 1024, seed: int = 0,
               crs: str = "EPSG:32617", origin: tuple[float, float] = (600000.0, 4800000.0),
               resolution: float = 10.0, nodata_border: int = 0, window: int = 1024,
               overwrite: bool = False, cog: bool = True) -> Path:
    """Write a synthetic 10-band uint16 Sentinel-2-like scene as a tiled GeoTIFF / COG.

    Parameters
    ----------
    path
        Destination ``.tif``.
    size
        Pixels per side (or ``(rows, cols)``); 10980 is a full tile.
    nodata_border
        Width in pixels of a nodata (0) frame around the scene, as at a swath edge.
    window
        Rows and columns written at a time (memory is bounded by it, not by ``size``).
    cog
        Convert the tiled GeoTIFF into a COG (GDAL COG driver) at the end.

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``overwrite`` is false.
    """
    import rasterio
    import rasterio.shutil
    from rasterio.transform import from_origin

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists: pass overwrite=True to replace it")
    rows, cols = (size, size) if isinstance(size, int) else size
    if rows <= 0 or cols <= 0:
        raise ParameterError(f"scene size must be positive, got {size!r}")
    transform = from_origin(origin[0], origin[1], resolution, resolution)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = path.with_name(f".{path.name}.stage.tif")
    profile = dict(driver="GTiff", width=cols, height=rows, count=len(DEFAULT_BANDS),
                   dtype="uint16", crs=crs, transform=transform, nodata=0, tiled=True,
                   blockxsize=512, blockysize=512, compress="DEFLATE", predictor=2,
                   bigtiff="IF_SAFER", interleave="pixel")
    try:
        with staged_file(path, suffix=".tif") as part:
            with rasterio.open(part if not cog else stage, "w", **profile) as dst:
                _write_windows(dst, rows, cols, window=window, seed=seed,
                               nodata_border=nodata_border)
            if cog:
                rasterio.shutil.copy(stage, part, driver="COG", BLOCKSIZE=512, COMPRESS="DEFLATE",
                                     PREDICTOR="YES", BIGTIFF="IF_SAFER", OVERVIEWS="NONE")
    finally:
        stage.unlink(missing_ok=True)
    return path


def _write_windows(dst, rows: int, cols: int, *, window: int, seed: int, nodata_border: int) -> None:
    """Fill an open ``rows x cols`` dataset window by window (memory bounded by ``window``)."""
    for r0 in range(0, rows, window):
        for c0 in range(0, cols, window):
            r1, c1 = min(r0 + window, rows), min(c0 + window, cols)
            values, _ = _window_values(r0, r1, c0, c1, seed=seed)
            if nodata_border:
                rr = np.arange(r0, r1)[:, None]
                cc = np.arange(c0, c1)[None, :]
                edge = ((rr < nodata_border) | (rr >= rows - nodata_border)
                        | (cc < nodata_border) | (cc >= cols - nodata_border))
                values[:, edge] = 0
            dst.write(values, window=((r0, r1), (c0, c1)))
    for i, b in enumerate(DEFAULT_BANDS, start=1):
        dst.set_band_description(i, b)
    dst.update_tags(S2DASK_SYNTHETIC="1", SEED=str(seed))


def make_samples(path: str | os.PathLike, *, scene_size: int | tuple[int, int] = 1024,
                 n_points: int = 3000, seed: int = 0, origin: tuple[float, float] = (600000.0, 4800000.0),
                 resolution: float = 10.0, overwrite: bool = False) -> Path:
    """Write labelled points drawn from the synthetic scene as a CSV like ``point_data.csv``.

    Columns: ``x, y, Class_ID, B2 .. B12, Class, Description`` (x, y are pixel centres).
    The values are exactly those of the scene written by :func:`make_scene` with the
    same ``seed`` (they are drawn from the same windows).
    """
    import pandas as pd

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists: pass overwrite=True to replace it")
    rows, cols = (scene_size, scene_size) if isinstance(scene_size, int) else scene_size
    rng = np.random.default_rng(seed + 7919)
    r = rng.integers(0, rows, size=n_points)
    c = rng.integers(0, cols, size=n_points)
    window = 1024
    values = np.zeros((n_points, len(DEFAULT_BANDS)), dtype="uint16")
    classes = np.zeros(n_points, dtype="int64")
    wr, wc = r // window, c // window
    for key in sorted(set(zip(wr.tolist(), wc.tolist()))):
        sel = (wr == key[0]) & (wc == key[1])
        r0, c0 = key[0] * window, key[1] * window
        vals, cls = _window_values(r0, min(r0 + window, rows), c0, min(c0 + window, cols), seed=seed)
        values[sel] = vals[:, r[sel] - r0, c[sel] - c0].T
        classes[sel] = cls[r[sel] - r0, c[sel] - c0]
    meta = SYNTHETIC_CLASSES
    frame = pd.DataFrame({
        "x": origin[0] + (c + 0.5) * resolution,
        "y": origin[1] - (r + 0.5) * resolution,
        "Class_ID": [meta[k]["value"] for k in classes],
    })
    short = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
    for i, name in enumerate(short):
        frame[name] = values[:, i]
    frame["Class"] = [meta[k]["name"].split("/")[0] for k in classes]
    frame["Description"] = [meta[k]["name"] for k in classes]
    with staged_file(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def class_table(path: str | os.PathLike, classes: Sequence[dict] = SYNTHETIC_CLASSES) -> Path:
    """Write the class table (value, name, colour) as CSV."""
    import pandas as pd

    path = Path(path)
    pd.DataFrame([{"value": c["value"], "name": c["name"], "colour": c["colour"]} for c in classes]
                 ).to_csv(path, index=False)
    return path
