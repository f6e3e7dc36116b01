"""Small Sentinel-2 L2A STAC items for tests: single-band COG assets and the pystac items that
point at them, built the same way by tests/test_stac.py and tests/test_stac_job.py.

``write_cog`` writes one band as a DEFLATE COG (nodata 0) on a north-up grid; ``l2a_item`` is a
pystac item of tile 17TNH sensed 2023-08-01 16:00 UTC, baseline 05.10, with the properties the
readers look at (``properties`` adds to or overrides them); ``add_cog_asset`` adds a data asset.
pystac and rasterio are imported when called: the test modules skip without them first.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

L2A_PROPERTIES = {"constellation": "sentinel-2", "platform": "sentinel-2b", "proj:code": "EPSG:32617",
                  "s2:processing_baseline": "05.10", "s2:mgrs_tile": "17TNH", "s2:product_type": "S2MSI2A"}
SENSED = datetime(2023, 8, 1, 16, 0, tzinfo=timezone.utc)


def write_cog(path: Path, data: np.ndarray, res: float, *, crs: str, x0: float, y0: float,
              **creation) -> Path:
    """One band as a COG at ``path`` (its folder made): ``res`` pixels from the upper-left corner
    ``(x0, y0)``, nodata 0, DEFLATE; ``creation`` adds COG creation options (``BLOCKSIZE``)."""
    import rasterio
    from rasterio.transform import from_origin

    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="COG", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=crs, transform=from_origin(x0, y0, res, res), nodata=0,
                       COMPRESS="DEFLATE", **creation) as dst:
        dst.write(data, 1)
    return path


def l2a_item(item_id: str, *, collection: str, properties: dict | None = None):
    """A pystac item with :data:`L2A_PROPERTIES` (``properties`` merged over them), no assets."""
    import pystac

    return pystac.Item(item_id, geometry=None, bbox=None, properties={**L2A_PROPERTIES, **(properties or {})},
                       datetime=SENSED, collection=collection)


def add_cog_asset(item, key: str, href: str, extra: dict) -> None:
    """Add a COG data asset ``key`` at ``href`` with ``extra`` fields (gsd, eo:bands, proj:*, ...)."""
    import pystac

    item.add_asset(key, pystac.Asset(href, media_type=pystac.MediaType.COG, roles=["data"],
                                     extra_fields=extra))
