"""Prediction on data users already hold in xarray: :func:`s2dask.predict` (client side).

Analysts load scenes with rioxarray, odc-stac or stackstac and keep working in xarray;
:func:`predict` takes what they hold (a ``(band, y, x)`` DataArray, a Dataset with a
variable per band, numpy- or dask-backed, with extra dimensions such as ``time``) and
returns a lazy :class:`xarray.Dataset` of class maps, ready for ``.rio.to_raster`` or
``to_zarr``.

This module only builds the graph. Its tasks (:func:`s2dask.job.worker.predict_layers`)
run each block through :func:`s2dask.job.worker.predict_block`, the per-block code of
``classify``'s tasks too, and carry only the model's
:class:`~s2dask.job.worker.ModelRef`: with a distributed client the model reaches every
worker once through the :class:`~s2dask.job.worker.ModelPlugin` that ``classify`` uses
(:func:`s2dask.job.startup.deliver_model`); without one the threaded scheduler builds it
once per process (:func:`s2dask.job.worker.get_predictor`).

Spatial models (patch classifiers, fully-convolutional networks: their bundle's card has a
``halo``) read each block with that halo, as ``classify``'s tasks do: ``y``/``x`` are rechunked
to a regular grid, each task receives its chunk plus ``halo`` pixels on every side
(:func:`s2dask.maps.halo.halo_array`, or :func:`_halo_blocks` with extra dimensions) and
:class:`~s2dask.maps.outputs.MapSpec` (``model_halo``) returns the chunk's layers only, equal
to the model applied to the whole scene for any chunking.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Hashable, Sequence

import numpy as np

from ..errors import BandError, ParameterError, SceneError
from ..maps.halo import chunk_halo, halo_array
from ..maps.outputs import map_spec
from ..maps.uncertainty import layer_attrs, layer_name, parse_kinds
from ..model.bundle import ModelBundle, load_model
from ..model.contract import OUTPUT_NODATA
from ..model.engines import check_options
from ..scene.bands import canonical_band
from ..scene.mask import ChunkMask
from ..scene.stac_item import COMMON_NAMES
from .worker import ModelRef, predict_layers

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["predict", "band_of"]

#: edge of the spatial chunks a numpy-backed input is cut into (its result is computed at once;
#: rounded down to a multiple of a strided model's stride)
EAGER_CHUNK = 2048
_BAND_DIMS = ("band", "bands")


def band_of(name: Any) -> str | None:
    """The canonical Sentinel-2 band (``B02``) that ``name`` denotes, or None.

    Band names (``B2``, ``B02``, ``b8a``: :func:`s2dask.scene.bands.canonical_band`) and the
    Earth Search v1 asset keys / STAC common names (``blue``, ``nir08``, ``swir16``:
    :data:`s2dask.scene.stac_item.COMMON_NAMES`) are understood.
    """
    text = str(name).strip()
    common = COMMON_NAMES.get(text.lower())
    if common is not None:
        return common
    try:
        return canonical_band(text)
    except BandError:
        return None


def predict(data: xr.DataArray | xr.Dataset, model: ModelBundle | str | os.PathLike, *,
            probabilities: bool = False, uncertainty: str | Sequence[str] = (), engine: str = "auto",
            precision: str = "auto", batch_size: int | None = None) -> xr.Dataset:
    """Classify the Sentinel-2 data you hold in xarray; lazy when the data is dask-backed.

    The model's bands are picked from ``data`` by name, in the model's order. Values are used
    as given: no offset harmonisation (``BOA_ADD_OFFSET``) and no rescaling happen here, so
    give the model the values it was trained on. Pixels where any band is NaN or equals the
    data's nodata (``nodata``/``_FillValue``) are nodata in the output.

    Spatial models (patch and fully-convolutional bundles) are run seamlessly: ``y``/``x`` are
    rechunked to a regular grid (the largest chunk's edges) and each task reads its chunk plus
    the model's halo, so a pixel's class is what the model gives on the whole scene
    (:meth:`s2dask.ModelBundle.predict_image`), whatever the chunking; a task
    holds one chunk and its halo.

    Nothing runs before ``compute`` (or ``to_raster``, ``to_zarr``): the graph has explicit
    dtypes and never calls the model to guess them. Its tasks carry only a small handle of
    the model. With a distributed client active (``distributed.get_client()``) the model is
    delivered to every worker now, once, through the worker plugin ``classify`` uses (each
    worker builds its predictor when the plugin reaches it); without one the threaded
    scheduler builds it once in this process, at the first block.

    Parameters
    ----------
    data : xarray.DataArray or xarray.Dataset
        A DataArray with a band dimension (``(band, y, x)``, ``(y, x, band)``, plus any other
        dimensions such as ``time``) whose bands are named by its ``band`` coordinate (``B02``,
        ``B2``, ``blue``, ``nir08``, ``swir16`` ...) or, for ``rioxarray.open_rasterio``, by its
        ``long_name`` band descriptions; or a Dataset with one variable per band (odc-stac,
        stackstac's ``to_dataset``). numpy- or dask-backed; a dask-backed one must hold all
        bands in one chunk (``data.chunk(band=-1)``); for a model with a stride (pooling), its
        ``y``/``x`` chunks must be multiples of it.
    model : ModelBundle or path
        A bundle (:func:`s2dask.load_model`) or its directory.
    probabilities
        Also return the per-class probabilities, ``(class, y, x)`` uint8 percent.
    uncertainty
        Uncertainty layers to add (``entropy``, ``margin``, ``least``): ``uncertainty_<kind>``,
        uint8 percent, 255 nodata.
    engine, precision
        ``auto|keras|openvino`` and ``auto|fp32|bf16``, resolved by each worker (or this process)
        as ``classify`` does.
    batch_size
        Pixels per forward call (None: the engine's default).

    Returns
    -------
    xarray.Dataset
        ``classes`` (uint8 class values, 255 nodata; CF ``flag_values``/``flag_meanings``) and
        ``confidence`` (uint8 percent, 0 where nodata) over the input's extra dimensions and
        ``y``/``x``, [``probabilities``], [``uncertainty_*``]; the input's ``x``/``y``
        coordinates and its CRS in ``spatial_ref`` (``ds.rio.crs``); class values, names and
        colours in the attributes. Dask-backed when the input is, else computed.

    Raises
    ------
    BandError
        If a band the model needs is not in ``data`` (the message names it and the bands
        found), two inputs give the same band, or no band dimension (or band names) can be
        found.
    SceneError
        If ``data`` is not a DataArray or Dataset, has no ``x``/``y`` dimensions, no CRS, or
        is chunked along its bands.
    ParameterError
        If ``uncertainty``, ``engine``, ``precision`` or ``batch_size`` is invalid, or the
        ``y``/``x`` chunks are not multiples of a spatial model's stride.
    ModelError
        If the bundle is missing, corrupt or unloadable.
    """
    import dask.array as da
    from dask.base import tokenize

    kinds = parse_kinds(uncertainty)
    engine, precision = check_options(engine, precision)
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) <= 0):
        raise ParameterError(f"batch_size must be a positive number of pixels, got {batch_size!r}")
    bundle = model if isinstance(model, ModelBundle) else load_model(model, check_keras=False)
    spatial = ModelRef.of(bundle)
    halo, stride = spatial.halo, spatial.stride  # halo None: a pixel model
    stack = _model_bands(data, bundle)
    arr, lazy = stack.data, stack.chunks is not None
    if not lazy:  # the same graph, computed before returning
        edge = max(stride, EAGER_CHUNK // stride * stride)
        arr = stack.chunk({d: (-1 if d == "band" else edge) for d in stack.dims}).data
    if halo is not None:
        arr = _regular(arr, stride)
    ref = _deliver(bundle, engine=engine, precision=precision, batch_size=batch_size)
    ny, nx = arr.shape[-2:]
    chunks = (arr.chunks[-2][0], arr.chunks[-1][0])
    maps = map_spec(uncertainty=kinds, smooth=1, chunks=chunks, shape=(ny, nx), model_halo=halo)
    nodata = stack.attrs.get("nodata")
    mask = ChunkMask(nodata=nodata)
    # a spatial model's tasks get their chunk and its halo (MapSpec.model_halo), give the chunk
    blocks = _halo_blocks(arr, chunks=chunks, halo=maps.halo) if halo else arr
    n_cls = len(bundle.classes)
    k = 2 + (n_cls if probabilities else 0) + len(kinds)
    layers = da.map_blocks(
        predict_layers, blocks, ref=ref, probabilities=bool(probabilities), mask=mask, maps=maps,
        chunks=(*arr.chunks[:-3], (k,), *arr.chunks[-2:]), dtype="uint8",
        meta=np.empty((0,) * arr.ndim, dtype="uint8"),
        name=f"s2dask-predict-{tokenize(arr, ref, probabilities, kinds, nodata, maps)}")
    ds = _dataset(stack, layers, bundle, probabilities=bool(probabilities), kinds=kinds)
    return ds if lazy else ds.compute()


# ------------------------------------------------------------------------------ the input


def _model_bands(data, bundle: ModelBundle):
    """``data`` as a ``(..., band, y, x)`` DataArray of the model's bands in its order, named
    ``band``/``y``/``x``, with ``attrs["nodata"]`` and its CRS written."""
    import xarray as xr

    if isinstance(data, xr.Dataset):
        stack = _from_dataset(data, bundle)
    elif isinstance(data, xr.DataArray):
        stack = _from_dataarray(data, bundle)
    else:
        raise SceneError(f"predict takes an xarray DataArray or Dataset, got {type(data).__name__}: wrap "
                         "an array as xr.DataArray(a, dims=('band', 'y', 'x'), coords={'band': [...]}) "
                         "with its x/y coordinates and a CRS (rio.write_crs)")
    crs = data.rio.crs
    if crs is None:
        raise SceneError("data has no CRS: the class map could not be georeferenced; set one with "
                         "data.rio.write_crs('EPSG:...') before predicting")
    return stack.rio.write_crs(crs)


def _spatial_dims(obj) -> tuple[Hashable, Hashable]:
    from rioxarray.exceptions import MissingSpatialDimensionError

    try:
        return obj.rio.y_dim, obj.rio.x_dim
    except MissingSpatialDimensionError:
        raise SceneError(f"data has no x/y dimensions (it has {', '.join(map(str, obj.dims))}): "
                         "rename them, e.g. data.rename({'lon': 'x', 'lat': 'y'}), or set them with "
                         "data.rio.set_spatial_dims") from None


def _select(names: Sequence[Hashable], bundle: ModelBundle, where: str) -> list[int]:
    """Positions in ``names`` of the model's bands, in the model's order.

    Raises
    ------
    BandError
        If a model band is missing or given twice.
    """
    found: dict[str, int] = {}
    for i, name in enumerate(names):
        band = band_of(name)
        if band is None:
            continue
        if band in found:
            raise BandError(f"{where} gives band {band} twice ({names[found[band]]!r} and {name!r}): "
                            "drop one of them before predicting")
        found[band] = i
    missing = [b for b in bundle.bands if b not in found]
    if missing:
        have = ", ".join(map(str, names)) or "none"
        raise BandError(f"model {bundle.path} needs band(s) {', '.join(missing)} that {where} lacks (it "
                        f"has {have}): load them too (names such as B02, B2, blue, nir08 or swir16 "
                        "are understood)")
    return [found[b] for b in bundle.bands]


def _band_dim(data, y, x) -> Hashable:
    """The band dimension of a DataArray: ``band`` (or ``bands``), else the one other dimension
    whose labels name bands."""
    for dim in _BAND_DIMS:
        if dim in data.dims:
            return dim
    named = [d for d in data.dims if d not in (y, x) and d in data.coords
             and any(band_of(v) for v in np.atleast_1d(data[d].values))]
    if len(named) == 1:
        return named[0]
    raise BandError(f"cannot find the band dimension of data with dimensions "
                    f"({', '.join(map(str, data.dims))}): name it 'band', e.g. "
                    "data.rename({'dim': 'band'}), with band names (B02 ... or blue, nir08 ...) as "
                    "its coordinate")


def _band_names(data, dim) -> list:
    """The band names of a DataArray: its band coordinate, or rioxarray's ``long_name``
    descriptions when the coordinate only numbers the bands."""
    n = data.sizes[dim]
    labels = list(data[dim].values) if dim in data.coords else []
    if labels and any(band_of(v) for v in labels):
        return [v.item() if hasattr(v, "item") else v for v in labels]
    long_name = data.attrs.get("long_name")
    if isinstance(long_name, str):
        long_name = (long_name,)
    if isinstance(long_name, (list, tuple)) and len(long_name) == n:
        return list(long_name)
    raise BandError(f"the bands of data are not named (its {dim!r} coordinate is "
                    f"{[str(v) for v in labels][:13] or 'missing'} and it has no long_name band "
                    "descriptions): name them, e.g. data.assign_coords(band=['B02', 'B03', ...])")


def _from_dataarray(data, bundle: ModelBundle):
    y, x = _spatial_dims(data)
    dim = _band_dim(data, y, x)
    idx = _select(_band_names(data, dim), bundle, "data")
    if data.chunks is not None and len(data.chunks[data.get_axis_num(dim)]) > 1:
        raise SceneError(f"data is chunked along its bands ({len(data.chunks[data.get_axis_num(dim)])} "
                         f"chunks on {dim!r}); every block must hold all bands: rechunk it with "
                         f"data.chunk({{{str(dim)!r}: -1}})")
    nodata = _nodata(data)
    stack = data.isel({dim: idx}).drop_vars(
        [c for c in data.coords if dim in data[c].dims], errors="ignore")
    if dim != "band":
        stack = stack.rename({dim: "band"})
    return _ordered(stack, bundle.bands, y, x, nodata)


def _from_dataset(data, bundle: ModelBundle):
    import xarray as xr

    y, x = _spatial_dims(data)
    names = [v for v in data.data_vars if y in data[v].dims and x in data[v].dims]
    idx = _select(names, bundle, "the Dataset")
    chosen = [data[names[i]] for i in idx]
    nodata = _nodata(chosen[0])
    stack = xr.concat(chosen, dim="band", coords="minimal", compat="override", join="override",
                      combine_attrs="drop")
    if stack.chunks is not None:  # one variable per band: the blocks join them
        stack = stack.chunk({"band": -1})
    return _ordered(stack, bundle.bands, y, x, nodata)


def _nodata(var) -> Any:
    for key in ("nodata", "_FillValue", "missing_value"):
        if var.attrs.get(key) is not None:
            return var.attrs[key]
    if var.encoding.get("_FillValue") is not None:
        return var.encoding["_FillValue"]
    return None


def _ordered(stack, bands: Sequence[str], y, x, nodata):
    """``(..., band, y, x)`` with the model's band names and the spatial dimensions named
    ``y``/``x``; only the index coordinates of the other dimensions kept."""
    stack = stack.assign_coords(band=list(bands)).rename({d: n for d, n in ((y, "y"), (x, "x")) if d != n})
    extra = [d for d in stack.dims if d not in ("band", "y", "x")]
    stack = stack.transpose(*extra, "band", "y", "x")
    keep = {"band", "y", "x", *extra}
    stack = stack.drop_vars([c for c in stack.coords if c not in keep and c != "spatial_ref"])
    stack.attrs = {"nodata": nodata} if nodata is not None else {}
    return stack


# ------------------------------------------------------------------------------ the halo


def _regular(arr, stride: int):
    """``arr`` with regular ``y``/``x`` chunks (all of the largest chunk's edge, the last
    smaller): the grid of :class:`~s2dask.maps.outputs.MapSpec` and ``classify`` (already
    regular chunks are kept as they are).

    Raises
    ------
    ParameterError
        If those chunks are not multiples of the model's ``stride``.
    """
    cy, cx = max(arr.chunks[-2]), max(arr.chunks[-1])
    if stride > 1 and (cy % stride or cx % stride):
        uy, ux = -(-cy // stride) * stride, -(-cx // stride) * stride
        raise ParameterError(f"data's y/x chunks {cy} x {cx} are not multiples of the model's stride "
                             f"{stride}: rechunk them, e.g. data.chunk({{'y': {uy}, 'x': {ux}}})")
    return arr.rechunk({arr.ndim - 2: cy, arr.ndim - 1: cx})


def _halo_blocks(arr, *, chunks: tuple[int, int], halo: int):
    """``(..., band, y, x)`` blocks of ``(..., band, ch + 2 halo, cw + 2 halo)``: each chunk of
    ``chunks`` with its halo, padded with 0 outside the scene (the tasks never predict the
    padding nor show it to the model: :class:`~s2dask.maps.outputs.MapSpec`).

    A ``(band, y, x)`` array goes through :func:`s2dask.maps.halo.halo_array` (one read per
    task where the array has a block reader); with extra dimensions (``time``), each chunk
    and its halo are sliced lazily from the neighbouring chunks and joined in one block per
    task, the extra dimensions keeping their chunks.
    """
    import dask.array as da

    if arr.ndim == 3:
        return halo_array(arr, chunks=chunks, halo=halo, fill=0)
    lead = arr.ndim - 2
    shape = arr.shape[-2:]
    rows = []
    for iy in range(len(arr.chunks[-2])):
        row = []
        for ix in range(len(arr.chunks[-1])):
            h = chunk_halo(iy, ix, chunks=chunks, shape=shape, halo=halo)
            y0, y1, x0, x1 = h.read
            piece = da.pad(arr[..., y0:y1, x0:x1], ((0, 0),) * lead + tuple(h.pad), constant_values=0)
            row.append(piece.rechunk({lead: -1, lead + 1: -1}))
        rows.append(da.concatenate(row, axis=-1))
    return da.concatenate(rows, axis=-2)


# ------------------------------------------------------------------------------ the model


def _client():
    """The distributed client dask would compute with now, or None."""
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def _deliver(bundle: ModelBundle, *, engine: str, precision: str, batch_size: int | None) -> ModelRef:
    """The model's reference; with a distributed client, the model delivered to its workers."""
    client = _client()
    if client is not None:
        from .startup import deliver_model

        return deliver_model(client, bundle, engine=engine, precision=precision, batch_size=batch_size).ref
    return ModelRef.of(bundle, batch_size, engine, precision)


# ------------------------------------------------------------------------------ the output


def _dataset(stack, layers, bundle: ModelBundle, *, probabilities: bool, kinds: tuple[str, ...]):
    import xarray as xr

    extra = list(stack.dims[:-3])
    dims = (*extra, "y", "x")
    classes = bundle.classes
    values = np.array([c.value for c in classes], dtype="uint8")
    grid = {"grid_mapping": "spatial_ref"}
    data_vars = {
        "classes": (dims, layers[..., 0, :, :], {
            "long_name": "land-cover class", "nodata": OUTPUT_NODATA, "flag_values": values,
            "flag_meanings": " ".join(c.name.replace(" ", "_") for c in classes), **grid}),
        "confidence": (dims, layers[..., 1, :, :], {
            "long_name": "probability of the chosen class", "units": "percent", **grid}),
    }
    k = 2
    coords = {c: stack.coords[c] for c in stack.coords if c != "band"}
    if probabilities:
        data_vars["probabilities"] = ((*extra, "class", "y", "x"), layers[..., 2:2 + len(classes), :, :],
                                      {"long_name": "class probability", "units": "percent", **grid})
        coords["class"] = values
        k += len(classes)
    for i, kind in enumerate(kinds):
        data_vars[layer_name(kind)] = (dims, layers[..., k + i, :, :], layer_attrs(kind))
    attrs = {"title": "s2dask classes", "model": os.fspath(bundle.path), "model_sha256": bundle.sha256,
             "classes": json.dumps([c.to_dict() for c in classes]), "nodata": OUTPUT_NODATA,
             "class_values": [c.value for c in classes], "class_names": [c.name for c in classes],
             "class_colours": [c.colour for c in classes]}
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    return ds.rio.write_crs(stack.rio.crs)
