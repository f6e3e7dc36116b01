"""Scenes: open a Sentinel-2 scene as one lazy, chunked ``(band, y, x)`` DataArray.

Formats (GeoTIFF/COG, SAFE, band folders, Zarr, CSV grid tables) and STAC items
(:mod:`~s2dask.scene.stac_catalog`, :mod:`~s2dask.scene.stac_item`,
:mod:`~s2dask.scene.stac_open`), the block reader and the scene's dask graph
(:mod:`~s2dask.scene.reader`, :mod:`~s2dask.scene.graph`), the Sentinel-2 band table
(:mod:`~s2dask.scene.bands`), cloud and invalid-pixel masks (:mod:`~s2dask.scene.mask`,
:mod:`~s2dask.scene.mask_source`) and synthetic scenes (:mod:`~s2dask.scene.synthetic`).

May import :mod:`s2dask.io` and :mod:`s2dask.errors`; knows nothing of models or jobs.
:func:`open_scene` and :func:`scene_summary` live in :mod:`~s2dask.scene.open` and are
imported lazily, so that importing a light module of this layer (the band table, say)
does not load xarray and GDAL.
"""

from __future__ import annotations

from importlib import import_module

__all__ = ["open_scene", "scene_summary", "grid_to_raster", "READ_ENV", "RESAMPLING_METHODS"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(import_module("s2dask.scene.open"), name)
    raise AttributeError(f"module 's2dask.scene' has no attribute {name!r}")
