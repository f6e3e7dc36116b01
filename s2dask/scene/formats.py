"""Scene formats: find what a scene holds and where each band comes from, from headers only.

A multi-band GeoTIFF/COG (:func:`file_layout`), a folder of single-band rasters named by
band (:func:`folder_layout`), a Sentinel-2 ``.SAFE`` product (:func:`safe_layout`: metadata,
granule, processing-baseline offsets) each give a :class:`Layout` (bands, their files and
factors, the target grid, dtype, nodata, identity) that :func:`s2dask.scene.graph.scene_array`
turns into a lazy array. Zarr stores are opened directly by :func:`open_zarr` (xarray reads
them lazily). Runs on the client.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import rasterio
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from rasterio.errors import RasterioError

from ..errors import BandError, SceneError
from ..io.records import normalise_nodata
from ..io.storage import remote_env, stat
from .bands import BAND_NAMES, DEFAULT_BANDS, canonical_band, find_band_in_name
from .integrity import check_complete
from .reader import BandRead, Grid

__all__ = ["RASTER_SUFFIXES", "IDENTITY_TAGS", "Layout", "RasterInfo", "inspect_raster",
           "file_layout", "folder_layout", "safe_layout", "stack_layout", "is_safe", "is_zarr", "open_zarr",
           "select_bands", "safe_id", "stored_band_names", "unnamed_message"]

RASTER_SUFFIXES = {".tif", ".tiff", ".jp2", ".j2k", ".vrt", ".img"}
IDENTITY_TAGS = ("scene_id", "tile_id", "sensing_time", "processing_baseline", "product_level")
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray", ".zmetadata")
_SAFE_MTD = ("MTD_MSIL2A.xml", "MTD_MSIL1C.xml")
_SAFE_NAME = re.compile(
    r"^(?P<mission>S2[A-D_])_MSI(?P<level>L1C|L2A)_(?P<sensing>\d{8}T\d{6})_N(?P<baseline>\d{4})"
    r"_R\d{3}_(?P<tile>T\d{2}[A-Z]{3})_\d{8}T\d{6}",
    re.IGNORECASE,
)
_TILE_IN_NAME = re.compile(r"(?:^|_)(T\d{2}[A-Z]{3})(?=_)")
_TIME_IN_NAME = re.compile(r"(?:^|_)(\d{8}T\d{6})(?=_|$|\.)")
_RES_IN_NAME = re.compile(r"(?:^|_|R)(\d{2,3})m(?=$|_|\.)")


@dataclass
class Layout:
    """What the header pass found: bands available, their grid, dtype, nodata, identity."""

    reads: dict[str, BandRead]  # canonical name -> source, in the input's band order
    grid: Grid
    dtype: str
    nodata: float
    attrs: dict[str, Any] = field(default_factory=dict)
    stamp: tuple = ()  # file sizes and mtimes, so a changed file gets a new graph name


class RasterInfo(NamedTuple):
    """One raster's header, as the layouts need it."""

    path: Path
    driver: str
    crs: Any
    transform: Any
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    nodatavals: tuple[float | None, ...]
    descriptions: tuple[str | None, ...]
    tags: dict[str, str]
    stamp: tuple


def inspect_raster(path: Path) -> RasterInfo:
    """Read one raster's header; refuse non-rasters, unreadable and truncated files."""
    try:
        with rasterio.Env(**remote_env(str(path))), rasterio.open(path) as src:
            check_complete(src, path)
            st = stat(path)
            return RasterInfo(
                path=path,
                driver=src.driver,
                crs=src.crs,
                transform=src.transform,
                width=src.width,
                height=src.height,
                count=src.count,
                dtypes=tuple(src.dtypes),
                nodatavals=tuple(src.nodatavals),
                descriptions=tuple(src.descriptions),
                tags=dict(src.tags()),
                stamp=(str(path), st.size, st.version),
            )
    except RasterioError as exc:
        raise SceneError(
            f"cannot read {path} as a raster ({exc}): give a complete GeoTIFF/COG or JPEG2000 file"
        ) from None


def _band_from_description(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return canonical_band(text)
    except BandError:
        return find_band_in_name(text)


def stored_band_names(stored: Sequence[str | None], *, names: Sequence[str] | None,
                      wanted: Sequence[str] | None, src: Any, what: str = "band descriptions",
                      ordered: bool = True) -> tuple[list[str], str]:
    """The names of an input's stored bands, in stored order, and what named them.

    ``stored`` holds the input's own name of each band (``None`` where it has none).
    ``names`` (``--bands`` of ``classify``) names the stored bands in order and must agree
    with every name the input holds; without it, an unnamed input is named by ``wanted``
    (an explicit ``bands=`` list: the caller's word, never a guess made here).

    Returns
    -------
    tuple
        ``(names in stored order, how)``, ``how`` one of ``"input"`` (the input named
        them), ``"names"`` (``names=``) or ``"bands"`` (the ``bands=`` list).

    Raises
    ------
    SceneError
        If ``names`` disagrees with the input's names or counts, or the input is unnamed
        and neither list names every band.
    """
    count = len(stored)
    if names is not None:
        names = list(names)
        given = [str(s) for s in stored if s]
        if ordered:
            conflict = bool(given) and (len(names) != count or
                                        any(s and s != n for s, n in zip(stored, names)))
        else:
            conflict = sorted(names) != sorted(given)
        if conflict:
            raise SceneError(
                f"{src}'s {what} say {','.join(s or '?' for s in stored)} but --bands (bands=) says "
                f"{','.join(names)}: drop --bands (the input names its bands) or fix its {what}"
            )
        if len(names) != count:
            raise SceneError(
                f"{src} has {count} unnamed band(s) but --bands (bands=) names {len(names)}: "
                "name every band of the input, in stored order"
            )
        return (names if ordered else given), "names"
    if all(stored) and count:
        return [str(s) for s in stored], "input"
    if any(stored):
        return [str(s) for s in stored if s], "input"
    if wanted is None or len(wanted) != count:
        raise SceneError(unnamed_message(src, count, wanted or DEFAULT_BANDS, what=what))
    return list(wanted), "bands"


def unnamed_message(src: Any, count: int, example: Sequence[str], *,
                    what: str = "band descriptions") -> str:
    """The refusal of an input whose bands are unnamed, with ``example`` as the ``--bands`` value."""
    return (f"{src} has {count} band(s) without {what}: s2dask does not guess band order; name "
            f"every band in stored order with --bands (bands=[...] in Python), e.g. --bands "
            f"{','.join(example)}")


def file_layout(path: Path, wanted: list[str] | None, names: list[str] | None = None) -> Layout:
    info = inspect_raster(path)
    _require_crs(info)
    described = [_band_from_description(d) for d in info.descriptions]
    if any(described):
        named = [d for d in described if d]
        dupes = sorted({n for n in named if named.count(n) > 1})
        if dupes:
            raise SceneError(
                f"{path} describes band(s) {', '.join(dupes)} more than once: fix the band descriptions"
            )
    stored, how = stored_band_names(described, names=names, wanted=wanted, src=path)
    if any(described) and names is None:
        index = {name: i + 1 for i, name in enumerate(described) if name}
    else:
        index = {name: i + 1 for i, name in enumerate(stored)}
    reads = {name: BandRead(name, str(path), bidx, 1, 0) for name, bidx in index.items()}
    nodata = _common_nodata({n: info.nodatavals[b - 1] for n, b in index.items()}, path)
    attrs = _tag_identity(info.tags)
    attrs.update(harmonised=False, offset_applied={}, bands_named_by=how)
    scale = {k.lower(): v for k, v in info.tags.items()}.get("scale", "").lower()
    if scale in ("dn", "reflectance"):
        attrs["scale"] = scale
    dtypes = {info.dtypes[b - 1] for b in index.values()}
    return Layout(
        reads=reads,
        grid=_grid_of(info),
        dtype=_result_dtype(dtypes),
        nodata=nodata,
        attrs=attrs,
        stamp=(info.stamp,),
    )


def folder_layout(folder: Path) -> Layout:
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES:
            band = find_band_in_name(p.name)
            if band:
                found.setdefault(band, []).append(p)
    if not found:
        raise SceneError(
            f"no Sentinel-2 band rasters found in folder {folder}: name single-band files by band "
            "(B02.tif, T17TNH_20230801T160000_B02_10m.jp2), or give a multi-band GeoTIFF, a .SAFE or a Zarr store"
        )
    for band, paths in found.items():
        if len(paths) > 1:
            raise SceneError(
                f"folder {folder} has {len(paths)} files for band {band} ({', '.join(p.name for p in paths)}): keep one per band"
            )
    layout = stack_layout({b: found[b][0] for b in BAND_NAMES if b in found}, folder, {})
    layout.attrs.update(harmonised=False, offset_applied={})
    return layout


def stack_layout(paths: Mapping[str, Path | str], src: Path, offsets: Mapping[str, int],
                 labels: Mapping[str, str] | None = None) -> Layout:
    """Single-band rasters, one per band, onto the finest band's grid (checked, not warped).

    ``paths`` may be GDAL paths kept as ``str`` (``/vsicurl/https://...``); ``labels`` names a
    path in errors (``asset 'red' (href) of STAC item X``).

    Raises
    ------
    SceneError
        If a raster cannot be read, is not single-band, or bands differ in CRS or grid.
    """
    infos = {b: _inspect_named(p, labels or {}) for b, p in paths.items()}
    for band, info in infos.items():
        if info.count != 1:
            raise SceneError(
                f"{info.path} (band {band}) holds {info.count} bands: a band folder needs single-band files"
            )
        _require_crs(info)
    crss = {b: i.crs for b, i in infos.items()}
    first = next(iter(crss.values()))
    if any(c != first for c in crss.values()):
        listing = ", ".join(f"{b}: {_crs_name(c)}" for b, c in crss.items())
        raise SceneError(f"bands of {src} are on different CRSs ({listing}): reproject them to one CRS first")
    finest = min(infos, key=lambda b: abs(infos[b].transform.a))
    target = infos[finest]
    t = target.transform
    reads: dict[str, BandRead] = {}
    for band, info in infos.items():
        s = info.transform
        kx, ky = s.a / t.a, s.e / t.e
        factor = round(kx)
        tol = 0.01 * abs(t.a)
        aligned = (
            s.b == 0
            and s.d == 0
            and t.b == 0
            and t.d == 0
            and factor >= 1
            and abs(kx - factor) < 1e-6
            and abs(ky - factor) < 1e-6
            and abs(s.c - t.c) <= tol
            and abs(s.f - t.f) <= tol
            and -(-target.width // factor) == info.width
            and -(-target.height // factor) == info.height
        )
        if not aligned:
            raise SceneError(
                f"band {band} of {src} is not aligned with the {finest} grid ({info.width}x{info.height} px of "
                f"{abs(s.a):g} m at ({s.c:g}, {s.f:g}) vs {target.width}x{target.height} px of {abs(t.a):g} m at "
                f"({t.c:g}, {t.f:g})): bands must share the extent and origin, with pixel sizes in integer ratios"
            )
        reads[band] = BandRead(band, str(info.path), 1, factor, int(offsets.get(band, 0)))
    nodata = _common_nodata({b: i.nodatavals[0] for b, i in infos.items()}, src)
    attrs: dict[str, Any] = {
        "native_resolution": {b: abs(float(i.transform.a)) for b, i in infos.items()},
    }
    return Layout(
        reads=reads,
        grid=_grid_of(target),
        dtype=_result_dtype({i.dtypes[0] for i in infos.values()}),
        nodata=nodata,
        attrs=attrs,
        stamp=tuple(i.stamp for i in infos.values()),
    )


def _inspect_named(path: Path | str, labels: Mapping[str, str]) -> RasterInfo:
    try:
        return inspect_raster(path)
    except SceneError as exc:
        if str(path) not in labels:
            raise
        raise SceneError(f"cannot open {labels[str(path)]}: {exc}") from None


def _require_crs(info: RasterInfo) -> None:
    if info.crs is None:
        raise SceneError(
            f"{info.path} has no CRS: assign one (gdal_edit.py -a_srs EPSG:32617 FILE) before opening it"
        )


def _crs_name(crs: Any) -> str:
    epsg = crs.to_epsg() if crs is not None else None
    return f"EPSG:{epsg}" if epsg else str(crs)


def _grid_of(info: RasterInfo) -> Grid:
    t = info.transform
    return Grid(info.crs.to_wkt(), (t.a, t.b, t.c, t.d, t.e, t.f), info.height, info.width)


def _result_dtype(dtypes: Iterable[str]) -> str:
    return str(np.result_type(*[np.dtype(d) for d in dtypes]))


def _common_nodata(values: dict[str, float | None], src: Path) -> float:
    declared = {v for v in values.values() if v is not None}
    if len(declared) > 1:
        listing = ", ".join(f"{b}: {v}" for b, v in values.items() if v is not None)
        raise SceneError(
            f"bands of {src} declare different nodata values ({listing}): give them one nodata value"
        )
    return normalise_nodata(declared.pop() if declared else 0)


def _tag_identity(tags: dict[str, str]) -> dict[str, Any]:
    lower = {k.lower(): v for k, v in tags.items()}
    return {key: lower[key] for key in IDENTITY_TAGS if lower.get(key)}


# --------------------------------------------------------------------------- SAFE products


def is_safe(path: Path) -> bool:
    return path.suffix.upper() == ".SAFE" or any((path / m).is_file() for m in _SAFE_MTD)


def safe_layout(safe: Path) -> Layout:
    mtd = next((safe / m for m in _SAFE_MTD if (safe / m).is_file()), None)
    meta = _parse_mtd(mtd) if mtd else {}
    name_match = _SAFE_NAME.match(safe.name)
    level = (
        (name_match.group("level").upper() if name_match else None)
        or (mtd.name[6:9] if mtd else None)
        or meta.get("product_level")
    )
    img_dirs = sorted(p for p in (safe / "GRANULE").glob("*/IMG_DATA") if p.is_dir())
    if not img_dirs:
        raise SceneError(
            f"SAFE product {safe} has no GRANULE/*/IMG_DATA folder: give a complete, unzipped .SAFE product"
        )
    if len(img_dirs) > 1:
        raise SceneError(
            f"SAFE product {safe} holds {len(img_dirs)} granules: open one granule's bands as a folder instead"
        )
    candidates: dict[str, list[tuple[float, Path]]] = {}
    for p in sorted(img_dirs[0].rglob("*")):
        if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES:
            band = find_band_in_name(p.name)
            if band:
                candidates.setdefault(band, []).append((_resolution_hint(p), p))
    if not candidates:
        raise SceneError(
            f"SAFE product {safe} has no band rasters under {img_dirs[0]}: give a complete, unzipped .SAFE product"
        )
    chosen = {b: min(candidates[b], key=lambda rp: rp[0])[1] for b in BAND_NAMES if b in candidates}

    baseline = meta.get("processing_baseline")
    if baseline is None and name_match:
        digits = name_match.group("baseline")
        baseline = f"{digits[:2]}.{digits[2:]}"
    offsets: dict[str, int] = meta.get("offsets", {})
    new_baseline = baseline is not None and _baseline_value(baseline) >= 4.0
    if new_baseline and not offsets:
        raise SceneError(
            f"SAFE product {safe} has processing baseline {baseline} but no BOA_ADD_OFFSET/RADIO_ADD_OFFSET in "
            f"its {mtd.name if mtd else 'MTD_MSIL*.xml (missing)'}: restore the product's metadata file"
        )
    layout = stack_layout(chosen, safe, offsets)

    tile = name_match.group("tile").upper() if name_match else None
    for p in [*chosen.values(), img_dirs[0].parent]:
        if tile:
            break
        m = _TILE_IN_NAME.search(p.name)
        tile = m.group(1) if m else None
    sensing = name_match.group("sensing").upper() if name_match else None
    if sensing is None and meta.get("sensing_time"):
        sensing = re.sub(r"[-:]", "", meta["sensing_time"])[:15]
    if sensing is None:
        for p in chosen.values():
            m = _TIME_IN_NAME.search(p.name)
            if m:
                sensing = m.group(1)
                break
    attrs = layout.attrs
    if tile:
        attrs["tile_id"] = tile
    if sensing:
        attrs["sensing_time"] = meta.get("sensing_time") or (
            f"{sensing[:4]}-{sensing[4:6]}-{sensing[6:8]}T{sensing[9:11]}:{sensing[11:13]}:{sensing[13:15]}"
        )
    if baseline:
        attrs["processing_baseline"] = baseline
    if level:
        attrs["product_level"] = level
    if tile and sensing and level:
        attrs["scene_id"] = f"{tile}_{sensing}_{level}"
    attrs["harmonised"] = baseline is not None
    attrs["offset_applied"] = {b: int(offsets.get(b, 0)) for b in layout.reads}
    return layout


def _resolution_hint(path: Path) -> float:
    """A band file's resolution from ``R20m/`` or ``_20m`` in its path, else from its header."""
    for text in (path.stem, path.parent.name):
        m = _RES_IN_NAME.search(text)
        if m:
            return float(m.group(1))
    return abs(float(inspect_raster(path).transform.a))


def _baseline_value(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def _parse_mtd(mtd: Path) -> dict[str, Any]:
    """Processing baseline, sensing start, product type and per-band DN offsets from MTD_MSIL*.xml."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(mtd).getroot()
    except (ET.ParseError, OSError) as exc:
        raise SceneError(f"cannot parse {mtd} ({exc}): restore the product's metadata file") from None
    meta: dict[str, Any] = {}
    offsets: dict[str, int] = {}
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        text = (el.text or "").strip()
        if tag == "PROCESSING_BASELINE" and text:
            meta["processing_baseline"] = text
        elif tag == "PRODUCT_START_TIME" and text:
            meta["sensing_time"] = text.rstrip("Z").split(".")[0]
        elif tag == "PRODUCT_TYPE" and text:
            meta["product_level"] = "L2A" if "2A" in text.upper() else "L1C" if "1C" in text.upper() else None
        elif tag in ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET"):
            raw = el.get("value", text)
            try:
                band = BAND_NAMES[int(el.get("band_id", ""))]
                offsets[band] = int(float(raw))
            except (ValueError, IndexError):
                raise SceneError(
                    f"{mtd} has an unreadable {tag} (band_id={el.get('band_id')!r}, value={raw!r}): "
                    "restore the product's metadata file"
                ) from None
    meta["offsets"] = offsets
    return meta


# --------------------------------------------------------------------------- Zarr stores


def is_zarr(path: Path) -> bool:
    return path.suffix.lower() == ".zarr" or any((path / m).exists() for m in _ZARR_MARKERS)


def open_zarr(store: Path, wanted: list[str] | None, chunk_yx: tuple[int, int], *,
               url: str | None = None, storage_options: dict | None = None,
               names: list[str] | None = None) -> xr.DataArray:
    """A Zarr store written by xarray as a lazy ``(band, y, x)`` scene (no pixel reads).

    Raises
    ------
    SceneError
        If the store cannot be opened, holds no band data or several stacks, or has no CRS.
    BandError
        If a band in ``wanted`` is not in the store.
    """
    try:
        with warnings.catch_warnings():  # a store without consolidated metadata is fine here
            warnings.filterwarnings("ignore", message=".*consolidated metadata", category=RuntimeWarning)
            ds = xr.open_zarr(
                url or store, chunks=None, mask_and_scale=False, decode_coords="all", decode_times=False,
                storage_options=storage_options,
            )
    except Exception as exc:  # zarr raises a zoo of types for a broken store
        raise SceneError(
            f"cannot open Zarr store {store} ({type(exc).__name__}: {exc}): give a store written by xarray"
        ) from None
    arr, selected, attrs = _zarr_bands(ds, wanted, chunk_yx, store, names)
    return _zarr_scene(ds, arr, selected, attrs, chunk_yx, store, url)


def _zarr_bands(ds: xr.Dataset, wanted: list[str] | None, chunk_yx: tuple[int, int],
                store: Path, names_given: list[str] | None = None) -> tuple[xr.DataArray, list[str], dict]:
    """The store's bands as one chunked ``(band, y, x)`` array: per-band variables or one stack."""
    per_band: dict[str, str] = {}
    stacked: list[str] = []
    for var, arr in ds.data_vars.items():
        if set(arr.dims) == {"y", "x"}:
            try:
                per_band[canonical_band(str(var))] = str(var)
            except BandError:
                pass
        elif arr.ndim == 3 and "band" in arr.dims and {"y", "x"} <= set(arr.dims):
            stacked.append(str(var))
    if per_band:
        available, how = stored_band_names([b for b in BAND_NAMES if b in per_band], names=names_given,
                                           wanted=wanted, src=f"Zarr store {store}",
                                           what="variables", ordered=False)
        names = select_bands(available, wanted, store)
        # chunk each variable first: combining lazily-indexed (unchunked) variables would load them
        parts = [ds[per_band[b]].chunk({"y": chunk_yx[0], "x": chunk_yx[1]}) for b in names]
        arr = xr.concat(parts, dim="band", coords="minimal", compat="override", join="exact")
        arr = arr.assign_coords(band=names)
        attrs = {**ds.attrs, **ds[per_band[names[0]]].attrs, "bands_named_by": how}
    elif len(stacked) == 1:
        arr = ds[stacked[0]].transpose("band", "y", "x")
        stored = [_band_from_description(str(v)) for v in arr["band"].values]
        long_name = arr.attrs.get("long_name")
        if not all(stored) and isinstance(long_name, (list, tuple)) and len(long_name) == arr.sizes["band"]:
            stored = [_band_from_description(str(v)) for v in long_name]
        available, how = stored_band_names(
            stored if all(stored) else [None] * len(stored), names=names_given, wanted=wanted,
            src=f"Zarr store {store}", what="band names")
        names = select_bands(available, wanted, store) if how != "bands" else list(wanted)
        arr = arr.chunk({"band": -1, "y": chunk_yx[0], "x": chunk_yx[1]})  # lazy from here on
        arr = arr.assign_coords(band=available).sel(band=names)
        attrs = {**ds.attrs, **arr.attrs, "bands_named_by": how}
    elif len(stacked) > 1:
        raise SceneError(
            f"Zarr store {store} has several (band, y, x) variables ({', '.join(stacked)}): keep one, or store one variable per band"
        )
    else:
        raise SceneError(
            f"Zarr store {store} has no band data: store a (band, y, x) variable or one (y, x) variable per band (B02, B03 ...)"
        )
    return arr, names, attrs


def _zarr_scene(ds: xr.Dataset, arr: xr.DataArray, names: list[str], attrs: dict,
               chunk_yx: tuple[int, int], store: Path, url: str | None) -> xr.DataArray:
    crs = arr.rio.crs or ds.rio.crs
    if crs is None:
        raise SceneError(
            f"Zarr store {store} has no CRS (no spatial_ref coordinate): write it with .rio.write_crs() before saving"
        )
    nodata = arr.rio.nodata
    if nodata is None:
        nodata = attrs.get("nodata", 0)
    nodata = normalise_nodata(nodata)
    keep = {
        k: attrs[k]
        for k in (*IDENTITY_TAGS, "harmonised", "offset_applied", "native_resolution", "resampling",
                  "bands_named_by", "scale")
        if k in attrs
    }
    keep.setdefault("scene_id", safe_id(store.stem))
    keep.setdefault("harmonised", False)
    keep.setdefault("offset_applied", {})
    keep.update(source=url or str(store), nodata=nodata)
    out = xr.DataArray(
        arr.data, dims=("band", "y", "x"), coords={"band": names, "y": arr["y"].values, "x": arr["x"].values}
    )
    out = out.chunk({"band": -1, "y": chunk_yx[0], "x": chunk_yx[1]})
    out = out.rio.write_crs(crs).rio.write_transform(arr.rio.transform(recalc=True))
    out = out.rio.write_nodata(nodata, encoded=False)
    out.attrs.update(keep)
    out.name = keep["scene_id"]
    return out


def select_bands(available: Sequence[str], wanted: Sequence[str] | None, src: Path) -> list[str]:
    if wanted is None:
        return list(available)
    missing = [b for b in wanted if b not in available]
    if missing:
        raise BandError(
            f"band(s) {', '.join(missing)} missing from scene {src}; it has {', '.join(available) or 'no bands'}: "
            "ask only for bands the scene holds"
        )
    return list(wanted)


def safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "scene"
