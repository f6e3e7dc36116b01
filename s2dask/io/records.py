"""What the files s2dask writes are made of: their hashes and their JSON conversions.

Used by the model bundle (``model.json``), the sample tables (their sha256), job records and
the chunk ledger; imports nothing of s2dask.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["sha256_file", "json_default", "json_text_default", "normalise_nodata"]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


def json_default(obj: Any) -> Any:
    """JSON conversions of what s2dask records hold (numpy scalars and arrays, paths).

    Raises
    ------
    TypeError
        For anything else, as :func:`json.dumps` expects.
    """
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def json_text_default(obj: Any) -> Any:
    """:func:`json_default`, and anything else as its text (job records never fail on a value)."""
    try:
        return json_default(obj)
    except TypeError:
        return str(obj)


def normalise_nodata(value: float) -> int | float:
    """A nodata value as ``int`` when it is integral (``0.0`` -> ``0``), else as ``float``."""
    return int(value) if float(value).is_integer() else float(value)
