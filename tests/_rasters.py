"""Small scenes written in every form :func:`s2dask.scene.open_scene` accepts, for tests.

Each writer takes the same ``(band, y, x)`` uint16 array (already harmonised, 0 = nodata) and
writes it as a multi-band COG, a folder of single-band GeoTIFFs, a SAFE-like product with
JPEG2000 bands at native resolution, or a Zarr store, so tests can check that all of them
open to the same array.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from s2dask.scene.bands import BAND_NAMES, BANDS

CRS = "EPSG:32617"
X0, Y0, RES = 677770.0, 4764070.0, 10.0  # upper-left corner of the 10 m grid
TILE, SENSING = "T17TNH", "20230801T160000"


def sample_data_dir() -> Path:
    """Where the shared sample data lives (``$S2DASK_SAMPLE_DATA`` or ``../shared/data``)."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    return Path(os.environ.get("S2DASK_SAMPLE_DATA", default))


def transform(res: float = RES):
    from rasterio.transform import from_origin

    return from_origin(X0, Y0, res, res)


def make_scene(
    bands: Sequence[str] = BAND_NAMES, *, height: int = 120, width: int = 120, seed: int = 0
) -> np.ndarray:
    """A ``(band, y, x)`` uint16 scene: 20 m bands constant over 2x2 blocks, 60 m over 6x6.

    Values are 1..9000 (so ``value + 1000`` still fits and harmonises back exactly); a 12x12
    corner (aligned with every resolution) is nodata (0) in all bands.
    """
    if height % 6 or width % 6:
        raise ValueError("height and width must be multiples of 6")
    rng = np.random.default_rng(seed)
    out = np.empty((len(bands), height, width), dtype="uint16")
    for k, band in enumerate(bands):
        f = BANDS[band].resolution // 10
        coarse = rng.integers(1, 9000, size=(height // f, width // f), dtype="uint16")
        out[k] = np.repeat(np.repeat(coarse, f, axis=0), f, axis=1)
    out[:, :12, :12] = 0
    return out


def write_multiband(
    path: Path, data: np.ndarray, bands: Sequence[str] | None, *, tags: dict | None = None
) -> Path:
    """A multi-band COG; ``bands=None`` leaves the band descriptions empty."""
    import rasterio

    with rasterio.open(
        path,
        "w",
        driver="COG",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=CRS,
        transform=transform(),
        nodata=0,
        BLOCKSIZE=512,
        COMPRESS="DEFLATE",
    ) as dst:
        dst.write(data)
        if bands is not None:
            for i, b in enumerate(bands, start=1):
                dst.set_band_description(i, b)
        if tags:
            dst.update_tags(**tags)
    return path


def write_single(
    path: Path,
    band: np.ndarray,
    *,
    res: float = RES,
    crs: str = CRS,
    x0: float = X0,
    driver: str = "GTiff",
    nodata: float | None = 0,
) -> Path:
    """One single-band raster; JP2 is written lossless (QUALITY=100, REVERSIBLE=YES)."""
    import rasterio
    from rasterio.transform import from_origin

    options = {"QUALITY": 100, "REVERSIBLE": "YES"} if driver == "JP2OpenJPEG" else {"tiled": True}
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver=driver,
        width=band.shape[1],
        height=band.shape[0],
        count=1,
        dtype=band.dtype,
        crs=crs,
        transform=from_origin(x0, Y0, res, res),
        nodata=nodata,
        **options,
    ) as dst:
        dst.write(band, 1)
    return path


def write_band_folder(folder: Path, data: np.ndarray, bands: Sequence[str], *, native: bool = False) -> Path:
    """``folder/B02.tif`` ...; ``native=True`` writes 20/60 m bands at their own resolution."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, b in enumerate(bands):
        f = BANDS[b].resolution // 10 if native else 1
        write_single(folder / f"{TILE}_{SENSING}_{b}.tif", data[k, ::f, ::f], res=RES * f)
    return folder


_MTD = """<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-{lvl}_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-{lvl}.xsd">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>2023-08-01T16:00:00.024Z</PRODUCT_START_TIME>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
      <PRODUCT_TYPE>S2MSI{short}</PRODUCT_TYPE>
    </Product_Info>
    <Product_Image_Characteristics>
      <{list_tag}>
{offsets}
      </{list_tag}>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-{lvl}_User_Product>
"""


def write_safe(
    root: Path,
    data: np.ndarray,
    bands: Sequence[str],
    *,
    level: str = "L2A",
    offset: int = -1000,
    baseline: str = "04.00",
) -> Path:
    """A SAFE-like product: JP2 bands at native resolution, DNs stored as ``value - offset``.

    L2A: ``GRANULE/*/IMG_DATA/R10m|R20m|R60m/T17TNH_..._B02_10m.jp2`` (10 m bands also get a
    coarser copy in R20m, and an SCL raster is added, as in real products); L1C:
    ``GRANULE/*/IMG_DATA/T17TNH_..._B02.jp2``. MTD_MSIL2A.xml / MTD_MSIL1C.xml carries the
    processing baseline and BOA_ADD_OFFSET / RADIO_ADD_OFFSET for band_id 0..12.
    """
    short = level[1:]  # "2A" / "1C"
    safe = root / f"S2B_MSI{level}_{SENSING}_N{baseline.replace('.', '')}_R097_{TILE}_20230801T200000.SAFE"
    img = safe / "GRANULE" / f"{level}_{TILE}_A033000_{SENSING}" / "IMG_DATA"
    stored = np.where(data == 0, 0, data.astype("int64") - offset).astype("uint16")
    for k, b in enumerate(bands):
        res = BANDS[b].resolution
        f = res // 10
        if level == "L2A":
            path = img / f"R{res}m" / f"{TILE}_{SENSING}_{b}_{res}m.jp2"
        else:
            path = img / f"{TILE}_{SENSING}_{b}.jp2"
        write_single(path, stored[k, ::f, ::f], res=RES * f, driver="JP2OpenJPEG", nodata=None)
        if level == "L2A" and res == 10:  # the coarser duplicate that must not be picked
            write_single(
                img / "R20m" / f"{TILE}_{SENSING}_{b}_20m.jp2",
                stored[k, ::2, ::2],
                res=20,
                driver="JP2OpenJPEG",
                nodata=None,
            )
    if level == "L2A":
        write_single(
            img / "R20m" / f"{TILE}_{SENSING}_SCL_20m.jp2",
            np.full((data.shape[1] // 2, data.shape[2] // 2), 4, "uint8"),
            res=20,
            driver="JP2OpenJPEG",
            nodata=None,
        )
    tag = "BOA_ADD_OFFSET" if level == "L2A" else "RADIO_ADD_OFFSET"
    list_tag = "BOA_ADD_OFFSET_VALUES_LIST" if level == "L2A" else "Radiometric_Offset_List"
    lines = "\n".join(f'        <{tag} band_id="{i}">{offset}</{tag}>' for i in range(len(BAND_NAMES)))
    (safe / f"MTD_MSI{level}.xml").write_text(
        _MTD.format(lvl=short, short=short, baseline=baseline, list_tag=list_tag, offsets=lines)
    )
    return safe


def scene_coords(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre ``y`` and ``x`` of the test grid."""
    return Y0 - RES * (np.arange(height) + 0.5), X0 + RES * (np.arange(width) + 0.5)


def write_zarr(path: Path, data: np.ndarray, bands: Sequence[str], *, per_band: bool = False) -> Path:
    """A Zarr store written with xarray/rioxarray: one ``(band, y, x)`` variable, or one per band."""
    import rioxarray  # noqa: F401
    import xarray as xr

    ys, xs = scene_coords(data.shape[1], data.shape[2])
    da = xr.DataArray(data, dims=("band", "y", "x"), coords={"band": list(bands), "y": ys, "x": xs})
    da = da.rio.write_crs(CRS).rio.write_nodata(0, encoded=False)
    if per_band:
        ds = xr.Dataset({b: da.sel(band=b, drop=True) for b in bands})
    else:
        ds = da.to_dataset(name="reflectance")
    ds.to_zarr(path, mode="w", consolidated=False, zarr_format=2 if not per_band else None)
    return path
