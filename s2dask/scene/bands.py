"""The Sentinel-2 MSI band table. Constants and name handling only.

Canonical names are zero-padded (``B02``) plus ``B8A``; the unpadded aliases used by
many tools and by the tutorial's tables (``B2``, ``b8a``, ``B08``) are accepted
everywhere a band is named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Hashable, Iterable

from ..errors import BandError

__all__ = [
    "Band",
    "BANDS",
    "BAND_NAMES",
    "DEFAULT_BANDS",
    "canonical_band",
    "canonical_bands",
    "find_band_in_name",
    "band_columns",
]


@dataclass(frozen=True)
class Band:
    """One Sentinel-2 MSI band."""

    name: str
    resolution: int  # native ground sampling distance in metres
    wavelength_nm: float  # central wavelength (Sentinel-2A)
    description: str


BANDS: dict[str, Band] = {
    b.name: b
    for b in (
        Band("B01", 60, 442.7, "coastal aerosol"),
        Band("B02", 10, 492.7, "blue"),
        Band("B03", 10, 559.8, "green"),
        Band("B04", 10, 664.6, "red"),
        Band("B05", 20, 704.1, "red edge 1"),
        Band("B06", 20, 740.5, "red edge 2"),
        Band("B07", 20, 782.8, "red edge 3"),
        Band("B08", 10, 832.8, "near infrared"),
        Band("B8A", 20, 864.7, "narrow near infrared"),
        Band("B09", 60, 945.1, "water vapour"),
        Band("B10", 60, 1373.5, "cirrus"),
        Band("B11", 20, 1613.7, "short-wave infrared 1"),
        Band("B12", 20, 2202.4, "short-wave infrared 2"),
    )
}

BAND_NAMES: tuple[str, ...] = tuple(BANDS)

#: The tutorial's ten bands, in its order (B2 B3 B4 B5 B6 B7 B8 B8A B11 B12).
DEFAULT_BANDS: tuple[str, ...] = (
    "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12",
)

_ALIAS = re.compile(r"^\s*B(?:AND)?[_ ]?0*(\d{1,2}|8A)\s*$", re.IGNORECASE)
# a band token inside a file name: _B02_, _B8A., -B11-, B2.tif ...
_IN_NAME = re.compile(r"(?:^|[_\-.\s])(B(?:0?[1-9]|1[0-2]|8A))(?=$|[_\-.\s])", re.IGNORECASE)


def canonical_band(name: str) -> str:
    """Return the canonical name (``B02``, ``B8A``) of a band given by any alias.

    Parameters
    ----------
    name
        ``B2``, ``B02``, ``b02``, ``B8A``, ``band_2`` ...

    Raises
    ------
    BandError
        If the name is not a Sentinel-2 band.
    """
    m = _ALIAS.match(str(name))
    if m:
        token = m.group(1).upper()
        canon = "B8A" if token == "8A" else f"B{int(token):02d}"
        if canon in BANDS:
            return canon
    raise BandError(
        f"unknown Sentinel-2 band {name!r}: use one of {', '.join(BAND_NAMES)} "
        "(aliases such as B2 or b8a are accepted)"
    )


def canonical_bands(names: Iterable[str] | str) -> list[str]:
    """Canonicalise a list of band names (or a comma-separated string), refusing duplicates.

    Raises
    ------
    BandError
        If a name is unknown or two names denote the same band.
    """
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    out: list[str] = []
    for n in names:
        c = canonical_band(n)
        if c in out:
            raise BandError(f"band {n!r} is listed twice (as {c}); name each band once")
        out.append(c)
    if not out:
        raise BandError("no bands given: name at least one band, for example B02,B03,B04")
    return out


def find_band_in_name(filename: str) -> str | None:
    """Return the canonical band named inside a file name (``T17TNH_..._B02_10m.jp2``), if any."""
    hits = {canonical_band(m.group(1)) for m in _IN_NAME.finditer(filename)}
    if len(hits) == 1:
        return hits.pop()
    return None


def band_columns(columns: Iterable[Hashable]) -> dict[str, list[Hashable]]:
    """The columns of a table that name a band (any alias), grouped by canonical band.

    ``["x", "B2", "B02", "ID"]`` gives ``{"B02": ["B2", "B02"]}``: columns that are not
    bands are left out, and each caller decides what several columns for one band mean.
    """
    by_band: dict[str, list[Hashable]] = {}
    for col in columns:
        try:
            by_band.setdefault(canonical_band(str(col)), []).append(col)
        except BandError:
            continue
    return by_band
