"""Interpret one Sentinel-2 STAC item: identity, band assets, SCL, DN offsets (client side, no I/O).

The records built here (:class:`StacAsset`, :class:`StacScene`) are frozen and picklable.
:mod:`s2dask.scene.stac_catalog` reads STAC files and catalogues and calls :func:`scene_from_item` per item;
the rules for band assets, hrefs and offsets are in that module's docstring.
"""
from __future__ import annotations

import math
import os
import posixpath
import re
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from ..errors import BandError, SceneError
from ..io.storage import is_remote, protocol_of
from .bands import BAND_NAMES, BANDS, canonical_band, canonical_bands, find_band_in_name

__all__ = ["StacAsset", "StacScene", "COMMON_NAMES", "scene_from_item", "gdal_path", "resolve_href"]

#: Earth Search v1 asset keys / ``eo:bands`` common names -> canonical band. ``rededge`` alone is
#: ambiguous (B05, B06, B07, and B8A on the Planetary Computer) and is not used.
COMMON_NAMES: dict[str, str] = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04",
    "rededge1": "B05", "rededge2": "B06", "rededge3": "B07", "nir": "B08", "nir08": "B8A",
    "nir09": "B09", "cirrus": "B10", "swir16": "B11", "swir22": "B12",
}
_SCL_KEYS = ("scl", "scl_20m", "scl_60m", "scl_10m")
_SKIP_ROLES = {"thumbnail", "overview", "visual", "metadata", "tiles"}
_SKIP_KEYS = {"visual", "preview", "thumbnail", "overview", "tci", "rendered_preview"}
_BASELINE_IN_NAME = re.compile(r"_N(\d{2})(\d{2})(?=_|$|\.)")
_TILE_IN_NAME = re.compile(r"(?:^|_)T?(\d{2}[C-X][A-Z]{2})(?=_|$)")
_LEVEL = re.compile(r"MSIL?(1C|2A)|(?:^|[^A-Z0-9])L(1C|2A)(?:$|[^A-Z0-9])")
_DEFAULT_OFFSET = -1000  # the BOA_ADD_OFFSET of every baseline 04.00+ product so far
_FLAG_KEYS = ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")



# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class StacAsset:
    """One band (or the SCL) of an item: where it is and how its values are brought to the model."""

    key: str
    """Asset key in the item (``red``, ``B04``, ``scl``)."""
    band: str
    """Canonical band name (``B04``) or ``SCL``."""
    href: str
    """Absolute href: local path, ``s3://``, ``https://`` URL."""
    path: str
    """What GDAL opens (:func:`gdal_path` of ``href``)."""
    resolution: float
    """Native pixel size in metres (``proj:transform``, ``raster:bands``, ``gsd`` or band table)."""
    offset: int = 0
    """DNs added to valid pixels (scene.py's convention): -1000 subtracts 1000, 0 nothing."""
    offset_note: str = ""
    """What was decided for the offset, and from which metadata."""
    nodata: float | None = None
    """Nodata stated by ``raster:bands`` / ``bands``, if any."""
    shape: tuple[int, int] | None = None
    """``proj:shape`` (rows, columns), if stated."""
    transform: tuple[float, float, float, float, float, float] | None = None
    """``proj:transform`` (affine a, b, c, d, e, f), if stated."""
    raster_offset: float | None = None
    """``raster:bands`` ``offset`` as the item states it (reflectance units), if any."""
    raster_scale: float | None = None
    """``raster:bands`` ``scale`` as the item states it, if any."""


@dataclass(frozen=True)
class StacScene:
    """A Sentinel-2 scene as one STAC item says it: identity, band assets, SCL, offsets."""

    scene_id: str
    """Filesystem-safe id (the item id)."""
    item_id: str
    source: str
    """The STAC file the item came from, with ``#item-id`` (see :func:`split_item_ref`)."""
    collection: str | None
    tile_id: str | None
    """``T38XNF`` style."""
    sensing_time: str | None
    """``YYYY-MM-DDTHH:MM:SS`` (UTC)."""
    processing_baseline: str | None
    """``05.11`` style, where the item says it."""
    product_level: str | None
    """``L2A`` or ``L1C``."""
    crs: str | None
    """``EPSG:32638`` from ``proj:code`` / ``proj:epsg``, or WKT2 from ``proj:wkt2``."""
    bands: tuple[StacAsset, ...]
    """Band assets found, in canonical band order (B01 .. B12, B8A after B08)."""
    scl: StacAsset | None = None
    offset_rule: str = ""
    """Which rule decided the offsets (``raster:bands``, ``earthsearch:boa_offset_applied`` ...)."""
    assets: tuple[str, ...] = field(default=())
    """Every asset key of the item, for error messages."""

    def band(self, name: str) -> StacAsset:
        """The asset of band ``name`` (any alias).

        Raises
        ------
        BandError
            If the item has no asset for that band (the message lists its assets).
        """
        return self.select([name])[0]

    def select(self, names: Sequence[str] | str | None = None) -> tuple[StacAsset, ...]:
        """The assets of ``names`` in that order (``None``: every band found).

        Raises
        ------
        BandError
            If a band is unknown or the item lacks it (the message lists the assets it has).
        """
        if names is None:
            return self.bands
        wanted = canonical_bands(names)
        have = {a.band: a for a in self.bands}
        missing = [b for b in wanted if b not in have]
        if missing:
            found = ", ".join(f"{a.band}={a.key}" for a in self.bands) or "none"
            raise BandError(
                f"STAC item {self.item_id} ({self.source}) has no asset for band(s) {', '.join(missing)}; "
                f"its assets are {', '.join(self.assets) or 'none'} (bands found: {found}): "
                "use items that carry every band the model needs"
            )
        return tuple(have[b] for b in wanted)

    def attrs(self, names: Sequence[str] | str | None = None) -> dict[str, Any]:
        """Scene attributes in :func:`s2dask.open_scene`'s vocabulary, plus the STAC provenance.

        ``harmonised`` is True (every band's offset was decided); ``offset_applied`` maps band ->
        DN offset added (as the SAFE reader records it); ``offset_notes`` says per band why.
        """
        chosen = self.select(names)
        out: dict[str, Any] = {
            "scene_id": self.scene_id,
            "source": self.source,
            "stac_item": self.item_id,
            "harmonised": True,
            "offset_applied": {a.band: a.offset for a in chosen},
            "offset_notes": {a.band: a.offset_note for a in chosen},
            "offset_rule": self.offset_rule,
            "native_resolution": {a.band: a.resolution for a in chosen},
        }
        for key in ("collection", "tile_id", "sensing_time", "processing_baseline", "product_level"):
            value = getattr(self, key)
            if value:
                out["stac_collection" if key == "collection" else key] = value
        return out


# --------------------------------------------------------------------------- hrefs


def resolve_href(href: str, base: str) -> str:
    """Resolve ``href`` against the location ``base`` (local path or URL) of the JSON that holds it."""
    if href.startswith("file://"):
        return href[len("file://"):]
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", href) or href.startswith("/vsi"):
        return href
    if os.path.isabs(href):
        return href
    if is_remote(base):
        scheme, rest = base.split("://", 1)
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(rest), href))
        return f"{scheme}://{joined}"
    local = base[len("file://"):] if base.startswith("file://") else base
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(os.path.expanduser(local))), href))

def gdal_path(href: str) -> str:
    """The path GDAL opens for an absolute asset href.

    Raises
    ------
    SceneError
        If the scheme has no GDAL virtual file system here (give a local path, s3:// or https://).
    """
    proto = protocol_of(href)
    if proto == "file" or href.startswith("/vsi"):
        return href
    rest = href.split("://", 1)[1]
    if proto in ("s3", "s3a"):
        return f"/vsis3/{rest}"
    if proto in ("http", "https"):
        return f"/vsicurl/{href}"
    if proto in ("gs", "gcs"):
        return f"/vsigs/{rest}"
    raise SceneError(
        f"asset href {href} uses {proto}:// which s2dask cannot read: give local paths, s3:// or https:// hrefs"
    )

# --------------------------------------------------------------------------- one item


def scene_from_item(
    item: Any, *, href: str, source: str | None = None, boa_add_offset: int | None = None
) -> StacScene:
    """Build a :class:`StacScene` from one item (a dict or a ``pystac.Item``).

    Parameters
    ----------
    item
        The item.
    href
        Where its JSON was read from (relative asset hrefs resolve against it).
    source
        The reference recorded as ``StacScene.source`` (default ``href#id``).
    boa_add_offset
        Override of the DN offset the data carry (see :func:`read_stac`).

    Raises
    ------
    SceneError
        If the item is not a STAC item, not Sentinel-2, has no band asset, or does not say
        enough to decide its offsets (the message says what to set).
    """
    import pystac

    if isinstance(item, pystac.Item):
        item = item.to_dict(include_self_link=False, transform_hrefs=False)
    if not isinstance(item, dict) or item.get("type") != "Feature":
        raise SceneError(f"{source or href} is not a STAC item (no \"type\": \"Feature\"): check the file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pystac's storage-extension migration notes
            parsed = pystac.Item.from_dict(item, migrate=True, preserve_dict=True)
    except Exception as exc:  # pystac raises many kinds for malformed items
        raise SceneError(
            f"STAC item in {source or href} cannot be parsed ({type(exc).__name__}: {exc}): check the item JSON"
        ) from None
    props = dict(parsed.properties)
    ident = str(parsed.id)
    source = source or f"{href}#{ident}"
    _require_sentinel2(props, parsed.collection_id, ident, source)
    baseline = _baseline(props, ident)
    found = _band_assets(parsed, href)
    if not found["bands"]:
        raise SceneError(
            f"STAC item {ident} ({source}) has no Sentinel-2 band assets (assets: {', '.join(parsed.assets)}): "
            "give items whose assets are the band rasters (B02 or blue, ...)"
        )
    rule, decide = _offset_rule(props, baseline, boa_add_offset, ident, source, found["bands"])
    bands = tuple(
        _with_offset(found["bands"][b], *decide(found["bands"][b])) for b in BAND_NAMES if b in found["bands"]
    )
    scl = found.get("scl")
    return StacScene(
        scene_id=re.sub(r"[^A-Za-z0-9._-]+", "_", ident).strip("._") or "scene",
        item_id=ident,
        source=source,
        collection=parsed.collection_id,
        tile_id=_tile(props, ident),
        sensing_time=parsed.datetime.strftime("%Y-%m-%dT%H:%M:%S") if parsed.datetime else None,
        processing_baseline=baseline,
        product_level=_level(props, parsed.collection_id, ident),
        crs=_crs(props),
        bands=bands,
        scl=scl,
        offset_rule=rule,
        assets=tuple(parsed.assets),
    )


def _with_offset(asset: StacAsset, offset: int, note: str) -> StacAsset:
    return replace(asset, offset=offset, offset_note=note)


def _require_sentinel2(props: Mapping[str, Any], collection: str | None, ident: str, source: str) -> None:
    texts = [str(props.get("constellation", "")), str(props.get("platform", "")), str(collection or "")]
    norm = " ".join(texts).lower().replace("_", "-").replace(" ", "-")
    if "sentinel-2" in norm or "sentinel-s2" in norm or any(k.startswith(("s2:", "sentinel:")) and v is not None for k, v in props.items()):
        return
    raise SceneError(
        f"STAC item {ident} ({source}) is not Sentinel-2 (collection {collection or 'none'}, platform "
        f"{props.get('platform') or 'none'}, constellation {props.get('constellation') or 'none'}): "
        "give Sentinel-2 L2A or L1C items"
    )


def _baseline(props: Mapping[str, Any], ident: str) -> str | None:
    for key in ("s2:processing_baseline", "sentinel:processing_baseline", "processing:version"):
        value = props.get(key)
        if value not in (None, ""):
            try:
                return f"{float(value):05.2f}"
            except (TypeError, ValueError):
                continue
    for key in ("s2:product_uri", "sentinel:product_id", "s2:granule_id", "s2:datatake_id"):
        m = _BASELINE_IN_NAME.search(str(props.get(key) or ""))
        if m:
            return f"{m.group(1)}.{m.group(2)}"
    m = re.search(r"_N(\d{2})\.(\d{2})(?=_|$)", str(props.get("s2:tile_id") or ""))
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _tile(props: Mapping[str, Any], ident: str) -> str | None:
    for key in ("s2:mgrs_tile", "grid:code", "mgrs:grid_square"):
        value = str(props.get(key) or "")
        if key == "mgrs:grid_square" and value and props.get("mgrs:utm_zone") and props.get("mgrs:latitude_band"):
            value = f"{int(props['mgrs:utm_zone']):02d}{props['mgrs:latitude_band']}{value}"
        value = value.replace("MGRS-", "")
        if re.fullmatch(r"\d{2}[C-X][A-Z]{2}", value):
            return f"T{value}"
    for text in (props.get("s2:product_uri"), props.get("sentinel:product_id"), ident):
        m = _TILE_IN_NAME.search(str(text or ""))
        if m:
            return f"T{m.group(1)}"
    return None


def _level(props: Mapping[str, Any], collection: str | None, ident: str) -> str | None:
    texts = [props.get("s2:product_type"), props.get("s2:product_uri"), props.get("sentinel:product_id"),
             collection, ident]
    for text in texts:
        m = _LEVEL.search(str(text or "").upper())
        if m:
            return f"L{m.group(1) or m.group(2)}"
    return None


def _crs(props: Mapping[str, Any]) -> str | None:
    if props.get("proj:code"):
        return str(props["proj:code"])
    if props.get("proj:epsg"):
        return f"EPSG:{int(props['proj:epsg'])}"
    return str(props["proj:wkt2"]) if props.get("proj:wkt2") else None


# --------------------------------------------------------------------------- band assets


def _band_of(key: str, fields: Mapping[str, Any]) -> tuple[str | None, int]:
    """Canonical band (or ``SCL``) an asset holds, and how strongly its name says so."""
    low = key.lower()
    if low in _SCL_KEYS:
        return "SCL", 3
    try:
        return canonical_band(key), 3
    except BandError:
        pass
    if low in COMMON_NAMES:
        return COMMON_NAMES[low], 3
    eo = fields.get("eo:bands") or fields.get("bands") or []
    if isinstance(eo, list) and len(eo) == 1 and isinstance(eo[0], dict):
        name = eo[0].get("name")
        try:
            return canonical_band(str(name)), 2
        except BandError:
            pass
        common = str(eo[0].get("common_name") or eo[0].get("eo:common_name") or "").lower()
        if common in COMMON_NAMES:
            return COMMON_NAMES[common], 1
    stem = re.sub(r"[-_]?jp2$", "", low)
    if stem in COMMON_NAMES:
        return COMMON_NAMES[stem], 1
    if stem.startswith("scl"):
        return "SCL", 1
    band = find_band_in_name(key)
    return (band, 1) if band else (None, 0)


def _asset_resolution(band: str, fields: Mapping[str, Any]) -> float:
    transform = fields.get("proj:transform")
    if isinstance(transform, list) and len(transform) >= 6 and transform[0]:
        return abs(float(transform[0]))
    for rb in _raster_bands(fields)[:1]:
        if rb.get("spatial_resolution") or rb.get("raster:spatial_resolution"):
            return float(rb.get("spatial_resolution") or rb.get("raster:spatial_resolution"))
    if fields.get("gsd"):
        return float(fields["gsd"])
    return float(BANDS[band].resolution) if band in BANDS else 20.0


def _number(band: Mapping[str, Any], name: str) -> float | None:
    value = band.get(name, band.get(f"raster:{name}"))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _raster_bands(fields: Mapping[str, Any]) -> list[dict]:
    rb = fields.get("raster:bands") or fields.get("bands") or []
    return [b for b in rb if isinstance(b, dict)] if isinstance(rb, list) else []


def _band_assets(item: Any, href: str) -> dict[str, Any]:
    """Choose one asset per band (and the SCL): strongest name, then GeoTIFF over JPEG2000, then finest."""
    best: dict[str, tuple[tuple, StacAsset]] = {}
    for key, asset in item.assets.items():
        roles = set(asset.roles or [])
        if key.lower() in _SKIP_KEYS or (roles & _SKIP_ROLES and "data" not in roles):
            continue
        fields = dict(asset.extra_fields)
        band, strength = _band_of(key, fields)
        if band is None:
            continue
        media = (asset.media_type or "").lower()
        is_jp2 = "jp2" in media or key.lower().endswith("jp2") or asset.href.lower().endswith(".jp2")
        absolute = resolve_href(asset.href, href)
        res = _asset_resolution(band, fields)
        transform = fields.get("proj:transform")
        shape = fields.get("proj:shape")
        rbs = _raster_bands(fields)
        record = StacAsset(
            key=key,
            band=band,
            href=absolute,
            path=gdal_path(absolute),
            resolution=res,
            nodata=rbs[0].get("nodata") if rbs else None,
            shape=tuple(int(v) for v in shape[:2]) if isinstance(shape, list) and len(shape) >= 2 else None,
            transform=tuple(float(v) for v in transform[:6]) if isinstance(transform, list) and len(transform) >= 6 else None,
            raster_offset=_number(rbs[0], "offset") if rbs else None,
            raster_scale=_number(rbs[0], "scale") if rbs else None,
        )
        rank = (strength, not is_jp2, -res)
        if band not in best or rank > best[band][0]:
            best[band] = (rank, record)
    chosen = {b: rec for b, (_, rec) in best.items()}
    return {"bands": {b: r for b, r in chosen.items() if b != "SCL"}, "scl": chosen.get("SCL")}


# --------------------------------------------------------------------------- offsets


def _offset_rule(props, baseline, override, ident, source, assets):
    """``(rule name, asset -> (offset, note))`` for one item, by the rules of the module docstring."""
    if override is not None:
        note = "subtracted" if override < 0 else "added" if override > 0 else "none"
        text = f"{note} {abs(override)} (boa_add_offset={override} given)" if override else "none (boa_add_offset=0 given)"
        return "boa_add_offset option", lambda a: (int(override), text)
    flag_key = next((k for k in _FLAG_KEYS if isinstance(props.get(k), bool)), None)
    if flag_key is not None:
        if props[flag_key]:
            note = f"none: the provider already applied BOA_ADD_OFFSET ({flag_key} true; raster:bands offsets ignored)"
            return flag_key, lambda a: (0, note)
        if baseline is None:
            raise SceneError(
                f"STAC item {ident} ({source}) says {flag_key} false but not its processing baseline: "
                "set s2:processing_baseline on the item (e.g. \"05.10\") or pass boa_add_offset=-1000 or 0 (--boa-add-offset)"
            )
        return flag_key, _by_baseline(baseline, f"{flag_key} false, ")
    stated = {b: _raster_offset(a, ident, source) for b, a in assets.items()}
    if baseline is not None and float(baseline) < 4.0:
        shifted = sorted(b for b, v in stated.items() if v is not None and v[0] != 0)
        if shifted:
            raise SceneError(
                f"STAC item {ident} ({source}) contradicts itself: raster:bands states a DN offset for "
                f"{', '.join(shifted)} but its processing baseline {baseline} < 04.00 carries none; "
                "pass boa_add_offset=0 or -1000 (--boa-add-offset) to say which is right"
            )
    if all(v is not None for v in stated.values()):
        return "raster:bands", lambda a: stated[a.band]
    if baseline is not None:
        by_baseline = _by_baseline(baseline, "")
        if any(v is not None for v in stated.values()):
            return "raster:bands, else s2:processing_baseline", lambda a: stated[a.band] or by_baseline(a)
        return "s2:processing_baseline", by_baseline
    raise SceneError(
        f"STAC item {ident} ({source}) does not say whether its DNs carry the 04.00 offset: it has no "
        "s2:processing_baseline (nor a product id with _Nxxyy_), no raster:bands offset/scale on every band asset "
        "and no earthsearch:boa_offset_applied; set s2:processing_baseline on the item (e.g. \"05.10\") or pass "
        "boa_add_offset=-1000 (offset in the data) or 0 (--boa-add-offset)"
    )


def _by_baseline(baseline: str, prefix: str):
    value = float(baseline)
    if value >= 4.0:
        note = f"subtracted {-_DEFAULT_OFFSET} ({prefix}processing baseline {baseline} >= 04.00: the offset is in the data)"
        return lambda a: (_DEFAULT_OFFSET, note)
    note = f"none ({prefix}processing baseline {baseline} < 04.00: no offset in the data)"
    return lambda a: (0, note)


def _raster_offset(asset: StacAsset, ident: str, source: str) -> tuple[int, str] | None:
    """The DN offset stated by an asset's ``raster:bands`` (``offset / scale``), or None if unstated."""
    if asset.raster_offset is None:
        return None
    scale = asset.raster_scale if asset.raster_scale else 1.0
    dn = asset.raster_offset / scale
    if not math.isfinite(dn) or abs(dn - round(dn)) > 1e-6 * max(1.0, abs(dn)):
        raise SceneError(
            f"STAC item {ident} ({source}) asset {asset.key!r} states raster:bands offset {asset.raster_offset:g} / "
            f"scale {scale:g}, which is not a whole number of DNs: fix the item or pass boa_add_offset (--boa-add-offset)"
        )
    dn_int = int(round(dn))
    stated = f"raster:bands offset {asset.raster_offset:g} / scale {scale:g}"
    if dn_int < 0:
        return dn_int, f"subtracted {-dn_int} ({stated})"
    if dn_int > 0:
        return dn_int, f"added {dn_int} ({stated})"
    return 0, f"none ({stated})"
