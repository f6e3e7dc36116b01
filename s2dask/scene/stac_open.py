"""Open a STAC item as a scene: its band assets read like a band folder (client side).

The item's band assets (local, ``/vsis3/``, ``/vsicurl/`` GDAL paths from :func:`s2dask.scene.stac_catalog.read_plan`)
go through the same header pass and the same one-task-per-chunk reader as a band folder: 20 m
and 60 m assets are replicated onto the 10 m grid in the task, the DN offsets the item calls for
are applied there, and an asset that cannot be opened is named (asset key, href, item).
Project's own reader rather than odc-stac: one task per chunk reading all bands, against 34 per
chunk and a gather of 11 band arrays with odc-stac (benchmarks/stac_loading.py).
"""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from .formats import stack_layout
from .graph import scene_array
from .stac_catalog import StacScene, open_stac_item, read_plan

__all__ = ["open_stac_scene"]


def open_stac_scene(item: StacScene | str, wanted: list[str] | None, chunk_yx: tuple[int, int],
                    resampling: str, *, boa_add_offset: int | None = None) -> xr.DataArray:
    """The lazy ``(band, y, x)`` scene of one STAC item (a parsed :class:`StacScene` or a reference).

    Raises
    ------
    SceneError
        If the item cannot be read or used, or an asset cannot be opened or is off the grid.
    BandError
        If the item lacks a band in ``wanted`` (the message lists its assets).
    """
    scene = item if isinstance(item, StacScene) else open_stac_item(item, boa_add_offset=boa_add_offset)
    plan = read_plan(scene, wanted)
    name = Path(scene.scene_id)
    layout = stack_layout(plan.paths, name, plan.offsets, labels=plan.labels)
    layout.attrs.update({k: v for k, v in plan.attrs.items() if k != "native_resolution"})
    if plan.scl_path:
        layout.attrs.update(scl_path=plan.scl_path, scl_resolution=float(plan.scl_resolution))
    out = scene_array(layout, name, wanted, chunk_yx, resampling)
    out.attrs["source"] = scene.source
    return out
