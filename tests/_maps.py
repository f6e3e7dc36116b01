"""Small class maps and map layers written as a job would leave them, for tests.

``write_class_tif`` writes a single-band uint8 GeoTIFF with the class names in the tags the
way s2dask's COG writer does (``CLASS_NAMES`` JSON); ``write_job_zarr`` writes a Zarr v3 store
with ``classes`` and ``uncertainty_<kind>`` arrays, x/y and ``spatial_ref``, class values and
names in the attributes; ``write_job_json`` a minimal ``job.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

CRS = "EPSG:32617"
X0, Y0 = 677770.0, 4764070.0


def transform(res_x: float = 10.0, res_y: float | None = None):
    from rasterio.transform import from_origin

    return from_origin(X0, Y0, res_x, res_y if res_y is not None else res_x)


def write_class_tif(path: Path, classes: np.ndarray, *, names: dict[int, str] | None = None,
                    res_x: float = 10.0, res_y: float | None = None, nodata: int | None = 255,
                    crs: str = CRS) -> Path:
    import rasterio

    profile = dict(driver="GTiff", width=classes.shape[1], height=classes.shape[0], count=1,
                   dtype=str(classes.dtype), crs=crs, transform=transform(res_x, res_y), nodata=nodata,
                   tiled=True, blockxsize=16, blockysize=16)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(classes, 1)
        if names:
            dst.update_tags(CLASS_NAMES=json.dumps({str(k): v for k, v in names.items()}))
    return path


def write_job_zarr(store: Path, arrays: dict[str, np.ndarray], *, classes: Sequence[dict],
                   res: float = 10.0, chunks: int = 16) -> Path:
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    ny, nx = next(iter(arrays.values())).shape
    t = transform(res)
    xs = t.c + (np.arange(nx) + 0.5) * t.a
    ys = t.f + (np.arange(ny) + 0.5) * t.e
    ds = xr.Dataset({k: (("y", "x"), v, {"nodata": 255}) for k, v in arrays.items()},
                    coords={"y": ys, "x": xs},
                    attrs={"class_values": [c["value"] for c in classes],
                           "class_names": [c["name"] for c in classes]})
    ds = ds.rio.write_crs(CRS).rio.write_transform(t)
    ds.to_zarr(store, zarr_format=3, consolidated=False,
               encoding={k: {"chunks": (chunks, chunks)} for k in arrays})
    return store


def write_job_json(folder: Path, classes: Sequence[dict]) -> Path:
    record = {"status": "complete", "statistics": {"classes": [dict(c) for c in classes]}}
    (folder / "job.json").write_text(json.dumps(record))
    return folder / "job.json"
