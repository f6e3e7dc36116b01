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
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import dask.array as da
import numpy as np
import rasterio
import rasterio.shutil
import xarray as xr
from rasterio.errors import RasterioError

from ..errors import StorageError
from ..io.storage import Location, as_location, open_array, staged_file
from ..model.contract import OUTPUT_NODATA, ClassInfo, class_infos

__all__ = ["layout_zarr", "write_region", "write_layer", "write_cog", "validate_cog", "write_quicklook",
           "colour_table"]

CLASSES = "classes"
CONFIDENCE = "confidence"
PROBABILITIES = "probabilities"
MASK = "mask"

Classes = Sequence[ClassInfo | Mapping[str, Any]]


def _hex_to_rgb(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    if len(c) != 6:
        return (128, 128, 128)
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def colour_table(classes: Classes, nodata: int = OUTPUT_NODATA) -> dict[int, tuple[int, int, int, int]]:
    """A GDAL colour table: class colours, nodata transparent."""
    table = {v: (0, 0, 0, 0) for v in range(256)}
    for c in class_infos(classes):
        r, g, b = _hex_to_rgb(c.colour)
        table[int(c.value)] = (r, g, b, 255)
    table[int(nodata)] = (0, 0, 0, 0)
    return table


def layout_zarr(store: Location | str | os.PathLike, *, scene: xr.DataArray, chunks: tuple[int, int],
                classes: Classes, probabilities: bool, attrs: dict,
                storage_options: dict | None = None, mask_attrs: dict | None = None,
                layers: Mapping[str, dict] | None = None, mask_fill: int = 0) -> None:
    """Create the output Zarr v3 group: coordinates, ``spatial_ref`` and empty arrays.

    Parameters
    ----------
    store
        Path, URL or :class:`~s2dask.io.storage.Location` of the ``classes.zarr`` group to
        create (must not exist).
    scene
        The (band, y, x) scene DataArray; its x/y coordinates, CRS and transform are copied.
    chunks
        ``(cy, cx)``: the Zarr chunks, equal to the scene's spatial chunks so that each
        prediction task writes whole chunks and no two tasks share one.
    classes
        The class table (values, names).
    probabilities
        Also lay out the ``probabilities`` array.
    attrs
        The group's attributes.
    storage_options
        fsspec options of a store given as a URL (default: from the environment).
    mask_attrs
        Also lay out the uint8 ``mask`` layer (why a pixel was not classified), with these
        attributes (:func:`s2dask.scene.mask.mask_attrs`).
    layers
        More ``(y, x)`` uint8 arrays (uncertainty layers): ``{name: attrs}``, filled with
        ``attrs["nodata"]`` (default 255) until written; chunked like ``classes``.
    mask_fill
        The ``mask`` layer's value where nothing is written (chunks outside an area of interest);
        ``classes`` reads 255 there, each layer its ``nodata``.

    Raises
    ------
    OSError
        If the store cannot be created (it exists, disk full, permission denied).
    """
    loc = as_location(store, storage_options)
    classes = class_infos(classes)
    ny, nx = scene.sizes["y"], scene.sizes["x"]
    cy, cx = min(chunks[0], ny), min(chunks[1], nx)
    n_cls = len(classes)
    coords = {"y": scene["y"].values, "x": scene["x"].values}
    data_vars = {
        CLASSES: (("y", "x"), da.full((ny, nx), 255, dtype="uint8", chunks=(cy, cx)),
                  {"long_name": "land-cover class", "nodata": 255,
                   "flag_values": [c.value for c in classes],
                   "flag_meanings": " ".join(c.name.replace(" ", "_") for c in classes)}),
        CONFIDENCE: (("y", "x"), da.zeros((ny, nx), dtype="uint8", chunks=(cy, cx)),
                     {"long_name": "probability of the chosen class", "units": "percent"}),
    }
    if probabilities:
        data_vars[PROBABILITIES] = (
            ("class", "y", "x"),
            da.zeros((n_cls, ny, nx), dtype="uint8", chunks=(n_cls, cy, cx)),
            {"long_name": "class probability", "units": "percent"},
        )
        coords["class"] = np.array([c.value for c in classes], dtype="uint8")
    if mask_attrs is not None:
        data_vars[MASK] = (("y", "x"), da.zeros((ny, nx), dtype="uint8", chunks=(cy, cx)), mask_attrs)
    for name, layer_attrs in (layers or {}).items():
        fill = int(layer_attrs.get("nodata", OUTPUT_NODATA))
        data_vars[name] = (("y", "x"), da.full((ny, nx), fill, dtype="uint8", chunks=(cy, cx)),
                           dict(layer_attrs))
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    ds = ds.rio.write_crs(scene.rio.crs)
    ds = ds.rio.write_transform(scene.rio.transform())
    for name in ds.data_vars:
        ds[name].attrs["grid_mapping"] = "spatial_ref"
    encoding = {name: {"chunks": (cy, cx)} for name in (CLASSES, CONFIDENCE, MASK) if name in data_vars}
    if probabilities:
        encoding[PROBABILITIES] = {"chunks": (n_cls, cy, cx)}
    encoding.update({name: {"chunks": (cy, cx)} for name in (layers or {})})
    # chunks no task writes (outside an area of interest) read as "not classified"
    encoding[CLASSES]["fill_value"] = OUTPUT_NODATA
    if MASK in encoding:
        encoding[MASK]["fill_value"] = int(mask_fill)
    for name, layer_attrs in (layers or {}).items():
        encoding[name]["fill_value"] = int(layer_attrs.get("nodata", OUTPUT_NODATA))
    import zarr

    with warnings.catch_warnings():
        # zarr warns that consolidated metadata is not yet in the v3 spec; xarray reads it
        warnings.simplefilter("ignore", category=UserWarning)
        ds.to_zarr(loc.url, mode="w-", compute=False, zarr_format=3, consolidated=False,
                   encoding=encoding, storage_options=loc.options)
        group = zarr.open_group(loc.url, mode="r+", storage_options=loc.options)
        # xarray does not list grid-mapping variables as coordinates any more; a global
        # "coordinates" attribute makes open_zarr() keep spatial_ref as a coordinate, so
        # that ``xarray.open_zarr(...).rio.crs`` works without decode_coords="all"
        group.attrs["coordinates"] = "spatial_ref"
        zarr.consolidate_metadata(group.store)


def write_region(store: Location | str | os.PathLike, outputs: np.ndarray, *, y: slice, x: slice,
                 probabilities: bool, storage_options: dict | None = None,
                 call: Callable[..., Any] | None = None) -> None:
    """Write one block's ``(k, y, x)`` outputs into the Zarr arrays at ``[y, x]``.

    Parameters
    ----------
    store
        The ``classes.zarr`` group laid out by :func:`layout_zarr`.
    outputs
        ``(k, y, x)`` uint8 from :func:`s2dask.model.blocks.block_outputs`.
    y, x
        The block's rows and columns in the map (whole Zarr chunks).
    probabilities
        Also write layers 2.. into the ``probabilities`` array.
    storage_options
        fsspec options of a store given as a URL (default: from the environment).
    call
        Runs each storage step as ``call(fn, *args)`` (each array's open, each region
        write), e.g. :func:`s2dask.io.retry.call_with_retry` bound to a policy, so that a
        failed request repeats only its own step. Default: called directly.

    Raises
    ------
    OSError
        If the store cannot be written (disk full, permission denied).
    """
    loc = as_location(store, storage_options)
    run = call or (lambda fn, *args: fn(*args))
    steps = [(CLASSES, (y, x), outputs[0]), (CONFIDENCE, (y, x), outputs[1])]
    if probabilities:
        steps.append((PROBABILITIES, (slice(None), y, x), outputs[2:]))
    for name, where, values in steps:
        run(run(open_array, loc, name).__setitem__, where, values)


def write_layer(store: Location | str | os.PathLike, name: str, data: np.ndarray, *, y: slice,
                x: slice) -> None:
    """Write one block of the ``(y, x)`` layer ``name`` (e.g. ``mask``) at ``[y, x]``.

    Raises
    ------
    OSError
        If the store cannot be written.
    """
    open_array(as_location(store), name)[y, x] = data


def write_cog(store: Location | str | os.PathLike, dst: str | os.PathLike, *, classes: Classes,
              crs: Any, transform: Any, storage_options: dict | None = None,
              overview_resampling: str = "mode", tags: dict | None = None,
              layer: str = CLASSES, threads: int = 1) -> str:
    """Stream the Zarr class map into a Cloud-Optimized GeoTIFF at ``dst`` (a local path).

    The map is read one Zarr chunk at a time into a tiled, uncompressed staging GeoTIFF
    on local disk (one byte a pixel: compressing it would only be undone by the copy),
    which GDAL's COG driver then copies with 512 x 512 tiles (LZW for the class map, the
    driver's default, smaller and faster than DEFLATE on class runs; DEFLATE for
    continuous layers) and overviews built with ``overview_resampling`` (``mode`` keeps
    class values; ``nearest`` is faster). The result is written next to ``dst`` and
    renamed into place when complete.

    Parameters
    ----------
    store
        The ``classes.zarr`` group holding the ``classes`` array.
    dst
        The local ``.tif`` to write.
    classes
        The class table (colour table and class names in the metadata).
    crs, transform
        The map's georeferencing.
    storage_options
        fsspec options of a store given as a URL (default: from the environment).
    overview_resampling
        ``"mode"`` or ``"nearest"`` (``"average"`` for a continuous layer).
    tags
        More GeoTIFF metadata.
    layer
        The Zarr array to write (default ``classes``). Another layer (an uncertainty layer)
        gets its own nodata (its ``nodata`` attribute, default 255) and description (its
        ``long_name``), and neither the colour table nor the class names.
    threads
        GDAL threads compressing the COG's tiles (``NUM_THREADS``).

    Returns
    -------
    str
        ``dst``.

    Raises
    ------
    StorageError
        If GDAL cannot write the file (disk full, permission denied).
    """
    arr = open_array(as_location(store, storage_options), layer)
    is_classes = layer == CLASSES
    nodata = 255 if is_classes else int(arr.attrs.get("nodata", 255))
    ny, nx = arr.shape
    cy, cx = arr.chunks
    dst = Path(dst)
    classes = class_infos(classes)
    names = {str(c.value): c.name for c in classes}
    table = colour_table(classes)
    try:
        with tempfile.TemporaryDirectory(prefix=".cog-", dir=dst.parent) as tmp:
            stage = Path(tmp) / "stage.tif"
            profile = dict(driver="GTiff", width=nx, height=ny, count=1, dtype="uint8",
                           crs=crs, transform=transform, nodata=nodata, tiled=True,
                           blockxsize=512, blockysize=512, compress="NONE",
                           bigtiff="IF_SAFER", sparse_ok=False)
            with rasterio.open(stage, "w", **profile) as out:
                for y0 in range(0, ny, cy):
                    for x0 in range(0, nx, cx):
                        block = arr[y0:y0 + cy, x0:x0 + cx]
                        out.write(block, 1, window=((y0, y0 + block.shape[0]),
                                                    (x0, x0 + block.shape[1])))
                if is_classes:
                    out.write_colormap(1, table)
                    out.set_band_description(1, "land-cover class")
                    out.update_tags(CLASS_NAMES=json.dumps(names), **(tags or {}))
                    out.update_tags(1, **{f"CLASS_{k}": v for k, v in names.items()})
                else:
                    out.set_band_description(1, str(arr.attrs.get("long_name", layer)))
                    out.update_tags(**(tags or {}))
                    out.update_tags(1, **{str(k).upper(): str(v) for k, v in arr.attrs.items()})
            with staged_file(dst) as part:
                rasterio.shutil.copy(stage, part, driver="COG", BLOCKSIZE=512,
                                     COMPRESS="LZW" if is_classes else "DEFLATE",
                                     OVERVIEW_RESAMPLING=overview_resampling.upper(),
                                     BIGTIFF="IF_SAFER", NUM_THREADS=str(max(1, int(threads))))
    except (RasterioError, OSError) as exc:
        raise StorageError(f"cannot write the COG {dst}: {' '.join(str(exc).split())[:200]}; "
                           "check free space and permissions of the output directory") from None
    return str(dst)


def validate_cog(path: str | os.PathLike) -> tuple[bool, list[str], list[str]]:
    """Validate a COG with rio-cogeo (the rasterio port of GDAL's validator).

    Parameters
    ----------
    path
        The GeoTIFF to check.

    Returns
    -------
    tuple
        ``(valid, errors, warnings)``.
    """
    from rio_cogeo.cogeo import cog_validate

    return cog_validate(str(path), quiet=True)


def write_quicklook(cog_path: str | os.PathLike, dst: str | os.PathLike, *, classes: Classes,
                    title: str = "", max_size: int = 1024, mask_store: Location | None = None,
                    mask_legend: dict | None = None) -> str:
    """A PNG of the class map with the class colours and a legend, read from the COG's overviews.

    Parameters
    ----------
    cog_path
        The class map COG (:func:`write_cog`).
    dst
        The ``.png`` to write (renamed into place when complete).
    classes
        The class table (colours, legend).
    title
        The title (default: the COG's folder name).
    max_size
        Longest side of the image in pixels.
    mask_store, mask_legend
        The Zarr group whose ``mask`` layer marks masked pixels (codes >= 2), drawn in
        ``mask_legend["colour"]`` with a legend entry ``mask_legend["name"]``; nodata stays
        transparent.

    Returns
    -------
    str
        ``dst``.

    Raises
    ------
    OSError
        If the COG cannot be read or the PNG written.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    with rasterio.open(cog_path) as src:
        scale = max(1.0, max(src.width, src.height) / max_size)
        shape = (max(1, int(src.height / scale)), max(1, int(src.width / scale)))
        data = src.read(1, out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
        bounds, crs = src.bounds, src.crs
    classes = class_infos(classes)
    table = colour_table(classes)
    rgba = np.array([table[v] for v in range(256)], dtype="float32") / 255.0
    image = rgba[data]
    handles = [Patch(facecolor=np.array(_hex_to_rgb(c.colour)) / 255.0,
                     label=f"{c.value}: {c.name}") for c in classes]
    if mask_store is not None and mask_legend:
        masked = _sample_layer(mask_store, MASK, shape) >= 2
        image[masked] = (*(np.array(_hex_to_rgb(mask_legend["colour"])) / 255.0), 1.0)
        handles.append(Patch(facecolor=np.array(_hex_to_rgb(mask_legend["colour"])) / 255.0,
                             label=mask_legend["name"]))
    fig = Figure(figsize=(8, 8 * shape[0] / max(shape[1], 1) + 0.5), dpi=100)
    ax = fig.subplots()
    ax.imshow(image, interpolation="nearest",
              extent=(bounds.left, bounds.right, bounds.bottom, bounds.top))
    _map_axes(ax, bounds, crs)
    ax.set_title(title or Path(cog_path).parent.name)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    with staged_file(dst, suffix=".png") as tmp:
        fig.savefig(tmp, bbox_inches="tight", pad_inches=0.15)  # no empty margins
    return str(dst)


def _sample_layer(store: Location, name: str, shape: tuple[int, int]) -> np.ndarray:
    """Layer ``name`` sampled (nearest pixel centres) to ``shape``, read chunk by chunk by zarr."""
    arr = open_array(store, name)
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * arr.shape[0] / shape[0]).astype(int), arr.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * arr.shape[1] / shape[1]).astype(int), arr.shape[1] - 1)
    return np.asarray(arr.get_orthogonal_selection((rows, cols)))


def _map_axes(ax, bounds, crs) -> None:
    """Axis ticks in the map's CRS and, in metres, a scale bar of a round length."""
    epsg = crs.to_epsg() if crs is not None else None
    name = f"EPSG:{epsg}" if epsg else "map units"
    ax.set_xlabel(f"x ({name})", fontsize=8)
    ax.set_ylabel(f"y ({name})", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.ticklabel_format(useOffset=False, style="plain")
    if crs is None or not crs.is_projected or crs.linear_units.lower() not in ("metre", "meter", "m"):
        return
    width = bounds.right - bounds.left
    length = 10 ** np.floor(np.log10(width / 4))
    length *= max(k for k in (1, 2, 5) if k * length <= width / 4)
    x0 = bounds.left + 0.05 * width
    y0 = bounds.bottom + 0.05 * (bounds.top - bounds.bottom)
    ax.plot([x0, x0 + length], [y0, y0], color="black", linewidth=3, solid_capstyle="butt")
    label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
    ax.annotate(label, (x0 + length / 2, y0), xytext=(0, 4), textcoords="offset points",
                ha="center", va="bottom", fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})
