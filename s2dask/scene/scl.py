"""Where a scene's Scene Classification Layer (SCL) is: SAFE L2A products and band folders (client side).

A Level-2A ``.SAFE`` holds ``SCL_20m`` (and ``SCL_60m``) under ``IMG_DATA``; a band folder may hold
one file with ``SCL`` in its name (``T17TNH_20230801T160000_SCL_20m.tif``, ``SCL.tif``). The SCL
chosen is the finest one not finer than the scene's grid (``SCL_20m`` for a 10 m or 20 m scene,
``SCL_60m`` for a 60 m one). :func:`s2dask.scene.open_scene` records it in the scene attributes
``scl_path`` and ``scl_resolution``; STAC items give theirs from their ``scl``/``SCL`` asset.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

from .formats import RASTER_SUFFIXES, inspect_raster

__all__ = ["find_scl", "scl_attrs"]

_SCL_IN_NAME = re.compile(r"(?:^|[_.-])SCL(?:_(\d{2,3})m)?(?=[_.-]|$)", re.IGNORECASE)


def find_scl(files: Iterable[Path], grid_resolution: float) -> tuple[str, float] | None:
    """``(path, metres)`` of the SCL raster among ``files`` to use on a grid of that resolution.

    The finest SCL not finer than the grid; if every one is finer, the coarsest (the mask
    step then refuses it with a one-line error). ``None`` when no file is an SCL.
    """
    found: list[tuple[float, str]] = []
    for path in files:
        if path.suffix.lower() not in RASTER_SUFFIXES:
            continue
        m = _SCL_IN_NAME.search(path.stem)
        if m:
            res = float(m.group(1)) if m.group(1) else abs(float(inspect_raster(path).transform.a))
            found.append((res, str(path)))
    if not found:
        return None
    usable = sorted(r for r in found if r[0] >= grid_resolution - 1e-9)
    res, path = usable[0] if usable else max(found)
    return path, res


def scl_attrs(src: Path, kind: str, grid_resolution: float) -> dict[str, Any]:
    """``{"scl_path", "scl_resolution"}`` for a ``"safe"`` or ``"folder"`` scene; ``{}`` without SCL."""
    if kind == "safe":
        files = [p for p in sorted(src.glob("GRANULE/*/IMG_DATA/**/*")) if p.is_file()]
    elif kind == "folder":
        files = [p for p in sorted(src.iterdir()) if p.is_file()]
    else:
        return {}
    hit = find_scl(files, grid_resolution)
    return {} if hit is None else {"scl_path": hit[0], "scl_resolution": hit[1]}
