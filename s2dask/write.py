"""Zarr and Cloud-Optimized GeoTIFF writers for class maps.

The Zarr store is laid out once by the client (metadata and coordinates only, through
xarray so that ``xarray.open_zarr`` and rioxarray read it back); every worker then
writes its own chunk-aligned regions into it directly. The COG is streamed from the
Zarr, one Zarr chunk at a time, into a tiled GeoTIFF and then copied by GDAL's COG
driver, which builds the overviews; no step holds the whole map.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import StorageError

__all__ = ["layout_zarr", "write_region", "write_cog", "validate_cog", "write_quicklook",
           "colour_table"]

CLASSES = "classes"
CONFIDENCE = "confidence"
PROBABILITIES = "probabilities"


def _hex_to_rgb(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    if len(c) != 6:
        return (128, 128, 128)
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def colour_table(classes: Sequence[dict], nodata: int = 255) -> dict[int, tuple[int, int, int, int]]:
    """A GDAL colour table: class colours, nodata transparent."""
    table = {v: (0, 0, 0, 0) for v in range(256)}
    for c in classes:
        r, g, b = _hex_to_rgb(c["colour"])
        table[int(c["value"])] = (r, g, b, 255)
    table[int(nodata)] = (0, 0, 0, 0)
    return table


def layout_zarr(store, *, scene, chunks: tuple[int, int], classes: Sequence[dict],
                probabilities: bool, attrs: dict, storage_options: dict | None = None) -> None:
    """Create the output Zarr v3 group: coordinates, ``spatial_ref`` and empty arrays.

    Parameters
    ----------
    store
        Path or URL of the ``classes.zarr`` group to create (must not exist).
    scene
        The (band, y, x) scene DataArray; its x/y coordinates, CRS and transform are copied.
    chunks
        ``(cy, cx)``: the Zarr chunks, equal to the scene's spatial chunks so that each
        prediction task writes whole chunks and no two tasks share one.
    """
    import dask.array as da
    import xarray as xr

    ny, nx = scene.sizes["y"], scene.sizes["x"]
    cy, cx = min(chunks[0], ny), min(chunks[1], nx)
    n_cls = len(classes)
    coords = {"y": scene["y"].values, "x": scene["x"].values}
    data_vars = {
        CLASSES: (("y", "x"), da.full((ny, nx), 255, dtype="uint8", chunks=(cy, cx)),
                  {"long_name": "land-cover class", "nodata": 255,
                   "flag_values": [c["value"] for c in classes],
                   "flag_meanings": " ".join(c["name"].replace(" ", "_") for c in classes)}),
        CONFIDENCE: (("y", "x"), da.zeros((ny, nx), dtype="uint8", chunks=(cy, cx)),
                     {"long_name": "probability of the chosen class", "units": "percent"}),
    }
    if probabilities:
        data_vars[PROBABILITIES] = (
            ("class", "y", "x"),
            da.zeros((n_cls, ny, nx), dtype="uint8", chunks=(n_cls, cy, cx)),
            {"long_name": "class probability", "units": "percent"},
        )
        coords["class"] = np.array([c["value"] for c in classes], dtype="uint8")
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    ds = ds.rio.write_crs(scene.rio.crs)
    ds = ds.rio.write_transform(scene.rio.transform())
    for name in ds.data_vars:
        ds[name].attrs["grid_mapping"] = "spatial_ref"
    encoding = {CLASSES: {"chunks": (cy, cx)}, CONFIDENCE: {"chunks": (cy, cx)}}
    if probabilities:
        encoding[PROBABILITIES] = {"chunks": (n_cls, cy, cx)}
    import warnings

    import zarr

    with warnings.catch_warnings():
        # zarr warns that consolidated metadata is not yet in the v3 spec; xarray reads it
        warnings.simplefilter("ignore", category=UserWarning)
        ds.to_zarr(store, mode="w-", compute=False, zarr_format=3, consolidated=False,
                   encoding=encoding, storage_options=storage_options)
        group = zarr.open_group(store, mode="r+", storage_options=storage_options)
        # xarray does not list grid-mapping variables as coordinates any more; a global
        # "coordinates" attribute makes open_zarr() keep spatial_ref as a coordinate, so
        # that ``xarray.open_zarr(...).rio.crs`` works without decode_coords="all"
        group.attrs["coordinates"] = "spatial_ref"
        zarr.consolidate_metadata(group.store)


def _open_array(store, name: str, storage_options: dict | None):
    import zarr

    if storage_options is not None:
        return zarr.open_array(store=store, path=name, mode="r+", storage_options=storage_options)
    return zarr.open_array(store=str(store), path=name, mode="r+")


def write_region(store, outputs: np.ndarray, *, y: slice, x: slice, probabilities: bool,
                 storage_options: dict | None = None) -> None:
    """Write one block's ``(k, y, x)`` outputs into the Zarr arrays at ``[y, x]``."""
    _open_array(store, CLASSES, storage_options)[y, x] = outputs[0]
    _open_array(store, CONFIDENCE, storage_options)[y, x] = outputs[1]
    if probabilities:
        _open_array(store, PROBABILITIES, storage_options)[:, y, x] = outputs[2:]


def write_cog(store, dst: str | os.PathLike, *, classes: Sequence[dict], crs, transform,
              storage_options: dict | None = None, overview_resampling: str = "mode",
              tags: dict | None = None) -> str:
    """Stream the Zarr class map into a Cloud-Optimized GeoTIFF at ``dst`` (a local path).

    The map is read one Zarr chunk at a time into a tiled, DEFLATE-compressed GeoTIFF,
    which GDAL's COG driver then copies with 512 x 512 tiles and overviews built with
    ``overview_resampling`` (``mode`` keeps class values; ``nearest`` is faster). The
    result is written next to ``dst`` and renamed into place when complete.

    Returns
    -------
    str
        ``dst``.

    Raises
    ------
    StorageError
        If GDAL cannot write the file (disk full, permission denied).
    """
    import rasterio
    import rasterio.shutil
    from rasterio.errors import RasterioError

    arr = _open_array(store, CLASSES, storage_options)
    ny, nx = arr.shape
    cy, cx = arr.chunks
    dst = Path(dst)
    names = {str(c["value"]): c["name"] for c in classes}
    table = colour_table(classes)
    try:
        with tempfile.TemporaryDirectory(prefix=".cog-", dir=dst.parent) as tmp:
            stage = Path(tmp) / "stage.tif"
            profile = dict(driver="GTiff", width=nx, height=ny, count=1, dtype="uint8",
                           crs=crs, transform=transform, nodata=255, tiled=True,
                           blockxsize=512, blockysize=512, compress="DEFLATE", predictor=1,
                           bigtiff="IF_SAFER", sparse_ok=False)
            with rasterio.open(stage, "w", **profile) as out:
                for y0 in range(0, ny, cy):
                    for x0 in range(0, nx, cx):
                        block = arr[y0:y0 + cy, x0:x0 + cx]
                        out.write(block, 1, window=((y0, y0 + block.shape[0]),
                                                    (x0, x0 + block.shape[1])))
                out.write_colormap(1, table)
                out.set_band_description(1, "land-cover class")
                out.update_tags(CLASS_NAMES=json.dumps(names), **(tags or {}))
                out.update_tags(1, **{f"CLASS_{k}": v for k, v in names.items()})
            part = Path(tmp) / "cog.tif"
            rasterio.shutil.copy(stage, part, driver="COG", BLOCKSIZE=512, COMPRESS="DEFLATE",
                                 OVERVIEW_RESAMPLING=overview_resampling.upper(),
                                 BIGTIFF="IF_SAFER", NUM_THREADS=1)
            os.replace(part, dst)
    except (RasterioError, OSError) as exc:
        raise StorageError(f"cannot write the COG {dst}: {' '.join(str(exc).split())[:200]}; "
                           "check free space and permissions of the output directory") from None
    return str(dst)


def validate_cog(path: str | os.PathLike) -> tuple[bool, list[str], list[str]]:
    """Validate a COG with rio-cogeo (the rasterio port of GDAL's validator)."""
    from rio_cogeo.cogeo import cog_validate

    return cog_validate(str(path), quiet=True)


def write_quicklook(cog_path: str | os.PathLike, dst: str | os.PathLike, *, classes: Sequence[dict],
                    title: str = "", max_size: int = 1024) -> str:
    """A PNG of the class map with the class colours and a legend, read from the COG's overviews."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    with rasterio.open(cog_path) as src:
        scale = max(1.0, max(src.width, src.height) / max_size)
        shape = (max(1, int(src.height / scale)), max(1, int(src.width / scale)))
        data = src.read(1, out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
    table = colour_table(classes)
    rgba = np.array([table[v] for v in range(256)], dtype="float32") / 255.0
    fig, ax = plt.subplots(figsize=(8, 8 * shape[0] / max(shape[1], 1) + 0.5), dpi=100)
    ax.imshow(data, cmap=ListedColormap(rgba), vmin=-0.5, vmax=255.5, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title or Path(cog_path).parent.name)
    handles = [Patch(facecolor=np.array(_hex_to_rgb(c["colour"])) / 255.0,
                     label=f"{c['value']}: {c['name']}") for c in classes]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    tmp = Path(str(dst) + ".part.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, dst)
    return str(dst)
