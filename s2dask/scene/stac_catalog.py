"""Sentinel-2 scenes described by STAC items: parse them into typed records (client side).

A STAC input is an Item JSON file, an ItemCollection / FeatureCollection, a plain JSON list of
items (what ``stac-client search ... > items.json`` or the Planetary Computer API returns), or a
static catalogue (``catalog.json`` / ``collection.json``, walked for items), on local disk or on
an object store (``s3://``, read through fsspec with :func:`s2dask.io.storage.storage_options_for`).
pystac parses; this module only decides what the item means for s2dask:

* **which asset holds which band**, across the conventions in use: Earth Search v1 common names
  (``blue`` ... ``nir08``, ``swir22``, ``scl``), Earth Search v0 / Planetary Computer keys
  (``B02`` ... ``B8A``, ``SCL``), keys naming a band (``B02_10m`` in Copernicus Data Space) and
  single-band ``eo:bands`` / ``bands`` names. JPEG2000 duplicates (``blue-jp2``) lose to a
  GeoTIFF of the same band, multi-band previews (``visual``) are ignored;
* **where GDAL reads it**: a local path, ``/vsis3/bucket/key`` for ``s3://``, ``/vsicurl/URL`` for
  ``http(s)://``, ``/vsigs/`` for ``gs://``; relative hrefs resolve against the JSON file's own
  location;
* **the DN offset to add** so that values follow the model's convention (digital numbers without
  the processing-baseline 04.00 ``BOA_ADD_OFFSET``, i.e. what the SAFE reader of
  :mod:`s2dask.scene` produces). The number has the sign of ``BOA_ADD_OFFSET`` and of the SAFE
  reader's per-band offset: ``-1000`` means "1000 is subtracted from valid DNs" (clipped at 1,
  nodata untouched), ``0`` means nothing is done. How it is decided, first rule that applies:

  1. ``boa_add_offset=`` given by the caller (``--boa-add-offset``): used as stated;
  2. ``earthsearch:boa_offset_applied`` (or the older ``sentinel:boa_offset_applied``) present:
     ``true`` means Element 84 already added ``BOA_ADD_OFFSET`` to the DNs (the data follow the
     pre-04.00 convention): nothing to do, and ``raster:bands`` offsets on such items are
     ignored (Element 84 states the flag is the truth, and that ``raster:bands`` may say -0.1
     even where the offset was applied: Element84/earth-search#9). ``false``: the data are as
     ESA made them, so baseline >= 04.00 subtracts 1000 and an older baseline nothing;
  3. ``raster:bands`` ``offset`` (with ``scale``) on the asset: ``offset / scale`` DNs
     (Earth Search ``sentinel-2-c1-l2a``: -0.1 / 0.0001 = -1000);
  4. the processing baseline (``s2:processing_baseline``, ``sentinel:processing_baseline``, or the
     ``_Nxxyy_`` of ``s2:product_uri`` / ``sentinel:product_id``): >= 04.00 with no offset
     metadata means the offset is in the data (Planetary Computer): subtract 1000; older: none;
  5. otherwise the item is refused with one line naming what is missing and how to state it.

Nothing here reads pixels; the records are frozen, picklable dataclasses. How :mod:`s2dask.scene`
opens one (like a band folder whose files are the asset hrefs) is :func:`read_plan`.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..errors import S2DaskError, SceneError
from ..io.storage import fs_for, is_remote
from .stac_item import COMMON_NAMES, StacAsset, StacScene, gdal_path, resolve_href, scene_from_item

__all__ = [
    "StacAsset",
    "StacScene",
    "StacEntry",
    "ReadPlan",
    "COMMON_NAMES",
    "is_stac",
    "read_stac",
    "open_stac_item",
    "expand_inputs",
    "split_item_ref",
    "scene_from_item",
    "read_plan",
    "gdal_path",
    "stac_io",
]


# --------------------------------------------------------------------------- records

@dataclass(frozen=True)
class StacEntry:
    """One item of a STAC input: the parsed scene, or why it failed (it fails alone)."""

    source: str
    """``<stac file>#<item id>`` (or ``#<position>`` when the item has no id)."""
    scene: StacScene | None = None
    error: S2DaskError | None = None


@dataclass(frozen=True)
class ReadPlan:
    """What the band-folder reader needs to open a :class:`StacScene` (see :func:`read_plan`)."""

    paths: dict[str, str]
    """Band -> GDAL path (local, ``/vsis3/``, ``/vsicurl/``), in the requested order."""
    offsets: dict[str, int]
    """Band -> DN offset added to valid pixels (``_apply_offset``'s convention)."""
    resolutions: dict[str, float]
    """Band -> native metres, as the item states them (the reader re-checks from headers)."""
    labels: dict[str, str]
    """GDAL path -> ``asset 'red' (href) of STAC item X``, for error messages."""
    attrs: dict[str, Any]
    """Scene attributes to merge over the layout's (identity, offsets, notes, provenance)."""
    scl_path: str | None = None
    """GDAL path of the SCL asset, if the item has one."""
    scl_resolution: float | None = None

# --------------------------------------------------------------------------- reading JSON


def stac_io():
    """A ``pystac.StacIO`` reading through fsspec (local, ``s3://`` with the project's storage options).

    For code that wants pystac itself to walk a catalogue:
    ``pystac.Catalog.from_file(href, stac_io=stac_io())``. Read only.
    """
    import pystac

    class FsspecStacIO(pystac.StacIO):
        def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
            return _read_text(str(source))

        def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
            raise SceneError(f"STAC inputs are read only; not writing {dest}")

    return FsspecStacIO()


def _read_text(href: str) -> str:
    if href.startswith("file://"):
        href = href[len("file://"):]
    try:
        fs, path = fs_for(href)
        with fs.open(path, "rb") as fh:
            return fh.read().decode("utf-8")
    except S2DaskError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise SceneError(
            f"cannot read STAC file {href} ({type(exc).__name__}: {exc}): check the path or URL and its permissions"
        ) from None


def _read_json(href: str) -> Any:
    text = _read_text(href)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SceneError(
            f"STAC file {href} is not valid JSON ({exc}): give a STAC Item, ItemCollection, item list or catalog.json"
        ) from None


def is_stac(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a STAC input, without parsing it.

    Local ``.json`` / ``.geojson`` files are recognised by their first 64 KiB (``stac_version``,
    ``FeatureCollection``, or a JSON list); a folder holding ``catalog.json`` or
    ``collection.json`` is one; remote ``.json`` / ``.geojson`` URLs are taken as STAC
    (reading them is left to :func:`read_stac`, which says what is wrong).
    """
    text = os.fspath(path)
    base = text.split("#", 1)[0] if "#" in text else text
    suffix = posixpath.splitext(base.rstrip("/"))[1].lower()
    if is_remote(base):
        return suffix in (".json", ".geojson")
    local = base[len("file://"):] if base.startswith("file://") else base
    local = os.path.expanduser(local)
    if os.path.isdir(local):
        return any(os.path.isfile(os.path.join(local, n)) for n in ("catalog.json", "collection.json"))
    if suffix not in (".json", ".geojson") or not os.path.isfile(local):
        return False
    try:
        with open(local, "rb") as fh:
            head = fh.read(65536).decode("utf-8", "replace")
    except OSError:
        return False
    return "stac_version" in head or "FeatureCollection" in head or head.lstrip().startswith("[")


def split_item_ref(ref: str | os.PathLike[str]) -> tuple[str, str | None]:
    """``items.json#S2B_...`` -> ``("items.json", "S2B_...")``; no fragment -> ``(ref, None)``."""
    text = os.fspath(ref)
    if "#" in text:
        base, frag = text.rsplit("#", 1)
        return base, (frag or None)
    return text, None

def read_stac(
    path: str | os.PathLike[str], *, boa_add_offset: int | None = None
) -> list[StacEntry]:
    """Read every Sentinel-2 item of a STAC input; each item succeeds or fails on its own.

    Parameters
    ----------
    path
        An Item JSON, an ItemCollection / FeatureCollection, a JSON list of items, or a
        ``catalog.json`` / ``collection.json`` (or a folder holding one), local or ``s3://``.
        ``file.json#ITEM_ID`` selects one item.
    boa_add_offset
        DN offset the data carry, overriding what the items say: ``-1000`` (baseline 04.00+ data
        with the offset in the DNs: 1000 is subtracted) or ``0`` (nothing is done).

    Returns
    -------
    list of StacEntry
        In file (or catalogue walk) order; ``entry.error`` holds the one-line reason of an item
        that cannot be used (not Sentinel-2, offsets undecidable, unreadable child JSON).

    Raises
    ------
    SceneError
        If the STAC file itself cannot be read or is not STAC, or ``ITEM_ID`` is not in it.
    """
    base, wanted = split_item_ref(path)
    if boa_add_offset is not None and (isinstance(boa_add_offset, bool) or not isinstance(boa_add_offset, int)):
        raise SceneError(f"boa_add_offset={boa_add_offset!r}: give an integer DN offset such as -1000 or 0")
    local = os.path.expanduser(base[7:] if base.startswith("file://") else base)
    if not is_remote(base) and os.path.isdir(local):
        names = [n for n in ("catalog.json", "collection.json") if os.path.isfile(os.path.join(local, n))]
        if not names:
            raise SceneError(f"folder {base} holds no catalog.json: give a STAC item, item list or catalogue file")
        base = os.path.join(local, names[0])
    raw = [(ref, d, href) for ref, d, href in _raw_items(base)]
    if wanted is not None:
        raw = [r for r in raw if r[0].rsplit("#", 1)[1] == wanted]
        if not raw:
            raise SceneError(f"STAC input {base} has no item {wanted!r}: check the id after '#'")
    entries = []
    for ref, data, href in raw:
        if isinstance(data, S2DaskError):
            entries.append(StacEntry(ref, error=data))
            continue
        try:
            entries.append(StacEntry(ref, scene=scene_from_item(data, href=href, source=ref,
                                                                boa_add_offset=boa_add_offset)))
        except S2DaskError as exc:
            entries.append(StacEntry(ref, error=exc))
    return entries


def open_stac_item(ref: str | os.PathLike[str], *, boa_add_offset: int | None = None) -> StacScene:
    """The one scene named by ``ref`` (a single-item file, or ``file.json#ITEM_ID``).

    Raises
    ------
    SceneError
        If the input holds several items and ``ref`` names none, or the item is unusable.
    BandError
        Never here; raised later by :meth:`StacScene.select` for a missing band.
    """
    entries = read_stac(ref, boa_add_offset=boa_add_offset)
    if len(entries) != 1:
        ids = ", ".join(e.source.rsplit("#", 1)[1] for e in entries[:5])
        raise SceneError(
            f"STAC input {os.fspath(ref)} holds {len(entries)} items ({ids}{' ...' if len(entries) > 5 else ''}): "
            "name one as FILE#ITEM_ID, or give the file to a batch job"
        )
    if entries[0].error is not None:
        raise entries[0].error
    assert entries[0].scene is not None
    return entries[0].scene


def expand_inputs(
    paths: Iterable[str | os.PathLike[str]], *, boa_add_offset: int | None = None
) -> list[tuple[str, StacScene | S2DaskError | None]]:
    """Turn a job's scene arguments into one source per scene, STAC collections expanded.

    Each STAC input is read once: a file or catalogue with N items gives N sources
    ``file#item-id``, each with its parsed :class:`StacScene` or its own error (it fails
    alone). Other inputs pass through as ``(path, None)``; a STAC file that cannot be read at
    all gives ``(path, error)``.

    Parameters
    ----------
    paths
        Scene arguments as given (SAFE, band folders, GeoTIFFs, Zarr, STAC inputs, mixed).
    boa_add_offset
        See :func:`read_stac`.
    """
    out: list[tuple[str, StacScene | S2DaskError | None]] = []
    for path in paths:
        text = os.fspath(path)
        if not is_stac(text):
            out.append((text, None))
            continue
        try:
            entries = read_stac(text, boa_add_offset=boa_add_offset)
        except S2DaskError as exc:
            out.append((text, exc))
            continue
        out.extend((e.source, e.scene if e.scene is not None else e.error) for e in entries)
    return out


def _raw_items(href: str) -> Iterable[tuple[str, Any, str]]:
    """``(ref, item dict or error, href its relative links resolve against)`` for each item."""
    data = _read_json(href)
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        items = data.get("features") or []
    elif isinstance(data, dict) and data.get("type") == "Feature":
        items = [data]
    elif isinstance(data, dict) and data.get("type") in ("Catalog", "Collection"):
        yield from _walk_catalogue(href, data, set())
        return
    else:
        kind = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise SceneError(
            f"{href} is not STAC ({kind!r}): give a STAC Item, ItemCollection / FeatureCollection, "
            "a JSON list of items or a catalog.json"
        )
    for i, item in enumerate(items):
        ident = item.get("id") if isinstance(item, dict) else None
        yield f"{href}#{ident or i}", item, href


def _walk_catalogue(href: str, data: dict, seen: set[str]) -> Iterable[tuple[str, Any, str]]:
    seen.add(href)
    for link in data.get("links") or []:
        rel, target = link.get("rel"), link.get("href")
        if rel not in ("item", "child") or not target:
            continue
        target = resolve_href(target, href)
        if target in seen:
            continue
        seen.add(target)
        try:
            child = _read_json(target)
        except SceneError as exc:
            yield f"{target}#?", exc, target
            continue
        if rel == "item" or (isinstance(child, dict) and child.get("type") == "Feature"):
            yield f"{target}#{child.get('id') if isinstance(child, dict) else '?'}", child, target
        elif isinstance(child, dict):
            yield from _walk_catalogue(target, child, seen)


# --------------------------------------------------------------------------- reading plan


def read_plan(scene: StacScene, bands: Sequence[str] | str | None = None) -> ReadPlan:
    """What :mod:`s2dask.scene`'s band-folder reader needs to open ``scene``: no I/O here.

    The reader then treats the scene exactly like a band folder whose files are the asset
    hrefs: header pass over ``paths`` (CRS, alignment, nodata, truncation), one graph task per
    spatial chunk reading every band of its window, coarser bands replicated onto the finest
    grid, ``offsets`` applied in the same task.

    Parameters
    ----------
    scene
        A parsed item.
    bands
        Bands wanted, in order (any alias); ``None``: every band the item has.

    Returns
    -------
    ReadPlan

    Raises
    ------
    BandError
        If the item lacks a requested band (the message lists its assets).
    """
    chosen = scene.select(bands)
    return ReadPlan(
        paths={a.band: a.path for a in chosen},
        offsets={a.band: a.offset for a in chosen},
        resolutions={a.band: a.resolution for a in chosen},
        labels={a.path: f"asset {a.key!r} ({a.href}) of STAC item {scene.item_id}"
                for a in (*chosen, *((scene.scl,) if scene.scl else ()))},
        attrs=scene.attrs(bands),
        scl_path=scene.scl.path if scene.scl else None,
        scl_resolution=scene.scl.resolution if scene.scl else None,
    )
