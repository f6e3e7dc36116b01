"""Class maps as STAC: one item per map, a catalogue per output folder (client side).

Every output of ``classify`` is a STAC item, ``OUT/<scene-id>/item.json``, written into the partial
output and committed with the rest (:func:`write_map_item`); ``OUT/catalog.json`` links the items
of every run into ``OUT`` (:func:`update_catalog`). A mosaic (:mod:`s2dask.maps.mosaic`) writes its
own item beside its COG. Items are built with pystac and name their assets by relative hrefs, so
that an output folder can be moved or copied to object storage as it is; odc-stac loads them
(``odc.stac.load(items, bands=["classes"])``) and QGIS shows them.

What an item holds: the scene id, its WGS84 footprint and bbox, the scene's datetime, the
projection extension (``proj:code``, ``proj:shape``, ``proj:transform``), and assets: the class COG
(role ``data``, ``classification:classes`` with value, name and ``color_hint``, nodata 255), the
Zarr store, the uncertainty COGs, the quick-look (``overview``), ``job.json`` (``metadata``) and
the model's card ``mlm.json``; a ``derived_from`` link names the source STAC item.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import StorageError
from ..io.storage import Location, as_location, atomic_write_json
from ..model.contract import OUTPUT_NODATA, ClassInfo, class_infos

__all__ = ["MapAsset", "ITEM_FILE", "CATALOG_FILE", "class_item", "write_map_item", "update_catalog",
           "classification_classes"]

ITEM_FILE = "item.json"
CATALOG_FILE = "catalog.json"
PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
CLASSIFICATION = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


@dataclass(frozen=True)
class MapAsset:
    """One file of a map, as an item asset."""

    key: str
    """The asset key (``classes``, ``zarr``, ``quicklook``, ``job``, ``model`` ...)."""
    href: str
    """Relative to the item (``./classes.tif``)."""
    media_type: str
    roles: tuple[str, ...]
    title: str = ""
    classes: bool = False
    """A class raster: ``classification:classes`` and nodata 255."""
    extra: dict = field(default_factory=dict)


def classification_classes(classes: Sequence[ClassInfo]) -> list[dict[str, Any]]:
    """``classification:classes`` of a class table (value, name, ``color_hint`` without ``#``)."""
    return [{"value": int(c.value), "name": c.name, "description": c.description or c.name,
             "color_hint": c.colour.lstrip("#").upper()} for c in classes]


def _footprint(crs: Any, transform: Any, shape: tuple[int, int]) -> dict:
    """The grid's outline in WGS84 (edges densified) as a GeoJSON polygon."""
    import numpy as np
    from rasterio.warp import transform as warp

    ny, nx = shape
    t = transform
    edge = np.linspace(0.0, 1.0, 17)[:-1]  # each side without its last corner (the next side's first)
    cols = np.concatenate([edge * nx, np.full(16, nx), (1 - edge) * nx, np.zeros(16)])
    rows = np.concatenate([np.zeros(16), edge * ny, np.full(16, ny), (1 - edge) * ny])
    xs, ys = t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f
    lon, lat = warp(crs, "EPSG:4326", xs.tolist(), ys.tolist())
    ring = [[round(x, 7), round(y, 7)] for x, y in zip(lon, lat)]
    ring.append(ring[0])
    return {"type": "Polygon", "coordinates": [ring]}


def _datetime(value: Any) -> _dt.datetime:
    if isinstance(value, _dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
    text = str(value).strip().replace("Z", "+00:00")
    for candidate in (text, text[:19]):
        try:
            return _datetime(_dt.datetime.fromisoformat(candidate))
        except ValueError:
            continue
    for fmt in ("%Y%m%dT%H%M%S", "%Y%m%d"):
        try:
            return _dt.datetime.strptime(text[:15 if "T" in fmt else 8], fmt).replace(tzinfo=_dt.timezone.utc)
        except ValueError:
            continue
    raise ValueError(f"not a date: {value!r}")


def class_item(item_id: str, *, crs: Any, transform: Any, shape: tuple[int, int], datetime: Any,
               classes: Sequence[ClassInfo | dict], assets: Sequence[MapAsset],
               properties: dict | None = None, derived_from: str | None = None,
               catalog: bool = False) -> Any:
    """A STAC item (``pystac.Item``) of a class map on one grid.

    Parameters
    ----------
    item_id
        The scene id (or the mosaic's name).
    crs, transform, shape
        The grid of the map (rasterio CRS or anything it reads, an Affine, ``(ny, nx)``).
    datetime
        When the scene was acquired (ISO text or datetime; naive is UTC).
    classes
        The class table.
    assets
        The map's files.
    properties
        More item properties.
    derived_from
        The source STAC item's href (a ``derived_from`` link).
    catalog
        Link ``../catalog.json`` as the item's root and parent (items of an output folder).

    Returns
    -------
    pystac.Item
    """
    import pystac
    from rasterio.crs import CRS

    crs = CRS.from_user_input(crs)
    geometry = _footprint(crs, transform, shape)
    ring = geometry["coordinates"][0]
    bbox = [min(p[0] for p in ring), min(p[1] for p in ring), max(p[0] for p in ring), max(p[1] for p in ring)]
    epsg = crs.to_epsg()
    props = {"proj:code": f"EPSG:{epsg}" if epsg else None, "proj:shape": [int(shape[0]), int(shape[1])],
             "proj:transform": [float(v) for v in list(transform)[:6]], **(properties or {})}
    if not epsg:
        props["proj:wkt2"] = crs.to_wkt()
    table = classification_classes(class_infos(classes))
    item = pystac.Item(item_id, geometry, bbox, _datetime(datetime), props,
                       stac_extensions=[PROJECTION, CLASSIFICATION, RASTER])
    res = abs(float(transform.a))
    for a in assets:
        fields = dict(a.extra)
        if a.classes:
            fields["classification:classes"] = table
            fields["raster:bands"] = [{"nodata": OUTPUT_NODATA, "data_type": "uint8", "spatial_resolution": res}]
        item.add_asset(a.key, pystac.Asset(a.href, title=a.title or None, media_type=a.media_type,
                                           roles=list(a.roles), extra_fields=fields))
    if derived_from:
        item.add_link(pystac.Link("derived_from", derived_from, media_type="application/geo+json"))
    if catalog:
        for rel in ("root", "parent"):
            item.add_link(pystac.Link(rel, f"../{CATALOG_FILE}", media_type="application/json"))
    return item


def _item_dict(item: Any) -> dict:
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def write_map_item(folder: Location | str, record: dict, *, classes: Sequence[ClassInfo | dict],
                   layers: dict[str, str] | None = None, model_card: bool = False) -> Any:
    """Write ``item.json`` of a classify output into ``folder`` (its partial output) from its record.

    Parameters
    ----------
    folder
        The output folder (before its commit).
    record
        The job record (``job.json``): the scene's grid, id and datetime, what was written.
    classes
        The model's class table.
    layers
        ``{array name: COG file}`` of the uncertainty layers written.
    model_card
        ``mlm.json`` (the model's card) is in ``folder``.

    Returns
    -------
    pystac.Item

    Raises
    ------
    StorageError
        If the item cannot be written.
    """
    from affine import Affine

    folder = as_location(folder)
    scene, output = record["scene"], record["output"]
    assets = []
    if output.get("cog"):
        assets.append(MapAsset("classes", f"./{output['cog']}", COG_TYPE, ("data",), "land-cover classes",
                               classes=True))
    for name, cog in (layers or {}).items():
        assets.append(MapAsset(name, f"./{cog}", COG_TYPE, ("data",), name.replace("_", " "),
                               extra={"raster:bands": [{"nodata": OUTPUT_NODATA, "data_type": "uint8"}]}))
    variables = ["classes", "confidence"] + (["probabilities"] if record["parameters"].get("probabilities")
                                             else []) + (["mask"] if record.get("mask") else [])
    assets.append(MapAsset("zarr", f"./{output['zarr']}", "application/vnd+zarr", ("data", "zarr"),
                           "classes, confidence, probabilities and mask (Zarr v3)",
                           extra={"s2dask:variables": variables}))
    if output.get("quicklook"):
        assets.append(MapAsset("quicklook", f"./{output['quicklook']}", "image/png", ("overview",), "quick-look"))
    assets.append(MapAsset("job", "./job.json", "application/json", ("metadata",), "s2dask job record"))
    if model_card:
        assets.append(MapAsset("model", "./mlm.json", "application/json", ("metadata", "ml-model"),
                               "the model's card (STAC MLM item)"))
    props = {"s2dask:model_sha256": record["model"]["sha256"], "created": record["created"]}
    if record.get("aoi"):
        props["s2dask:aoi"] = {k: record["aoi"][k] for k in ("file", "sha256", "crs", "bounds")}
    stac_src = _source_item(scene.get("source"), scene.get("stac_item")) if scene.get("stac_item") else None
    item = class_item(scene.get("scene_id") or folder.name.lstrip(".").split(".partial")[0],
                      crs=scene["crs"], transform=Affine(*scene["transform"][:6]), shape=tuple(scene["shape"]),
                      datetime=scene.get("sensing_time") or record["created"], classes=classes,
                      assets=assets, properties=props, derived_from=stac_src, catalog=True)
    atomic_write_json(folder.join(ITEM_FILE), _item_dict(item))
    return item


def _source_item(source: str | None, item_id: str) -> str | None:
    """The href of the source STAC item: its file (``FILE#ID`` names an item of a file holding one
    item, or of a collection: then ``FILE#ID`` stays, the item inside the collection)."""
    if not source:
        return None
    path, _, fragment = str(source).partition("#")
    if not fragment:
        return path
    try:
        doc = json.loads(as_location(path).read_text())
    except (OSError, ValueError, StorageError):
        return source
    return path if isinstance(doc, dict) and doc.get("type") == "Feature" and doc.get("id") == item_id else source


def _item_links(doc: dict | None) -> list[str]:
    return [link["href"] for link in (doc or {}).get("links", []) if link.get("rel") == "item"]


def _read_catalog(loc: Location) -> dict | None:
    try:
        return json.loads(loc.read_text()) if loc.exists() else None
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot read the catalogue {loc.url} ({exc}): repair or remove it; it is "
                           "rebuilt from the items in its folder") from None


def update_catalog(out: Location | str, *, title: str = "s2dask class maps", attempts: int = 5) -> list[str]:
    """Add every item in ``out/*/item.json`` to ``out/catalog.json``, keeping the links it has.

    Concurrent runs into one folder: each writes the catalogue atomically (a rename, or one PUT),
    then reads it back and lists the items again, and writes once more if an item committed
    meanwhile is missing. The last writer thus always lists after every commit before it, so no
    committed item is lost (a run that commits after it writes after it too).

    Returns
    -------
    list of str
        The item hrefs of the catalogue (``./<scene-id>/item.json``).

    Raises
    ------
    StorageError
        If the catalogue cannot be read or written.
    """
    import pystac

    out = as_location(out)
    loc = out.join(CATALOG_FILE)
    hrefs: list[str] = []
    for _ in range(attempts):
        doc = _read_catalog(loc)
        folders = (e.url.replace(os.sep, "/").rstrip("/").split("/")[-2] for e in out.list(f"*/{ITEM_FILE}"))
        listed = {f"./{name}/{ITEM_FILE}" for name in folders if not name.startswith(".")}
        have = _item_links(doc)
        hrefs = sorted(set(have) | listed)
        if doc is not None and set(have) >= listed:
            return sorted(have)
        cat = pystac.Catalog(doc["id"] if doc else "s2dask", (doc or {}).get("description") or title,
                             title=(doc or {}).get("title") or title)
        for href in hrefs:
            cat.add_link(pystac.Link("item", href, media_type="application/geo+json"))
        cat.add_link(pystac.Link("root", f"./{CATALOG_FILE}", media_type="application/json"))
        atomic_write_json(loc, cat.to_dict(include_self_link=False, transform_hrefs=False))
    return hrefs

