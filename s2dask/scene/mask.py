"""Cloud, shadow and invalid-pixel masks: codes, options, and the per-chunk arithmetic (worker side).

Masked pixels are not predicted: they get class 255 in the class map, like nodata, and the
Zarr store's ``mask`` layer says why, with one uint8 code per reason:

====  ===========  ========================================================================
code  name         meaning
====  ===========  ========================================================================
0     valid        predicted
1     nodata       a band is nodata, or the SCL says "no data" (class 0, when masked)
2     cloud        SCL 8 (cloud, medium probability) or 9 (cloud, high probability)
3     shadow       SCL 3 (cloud shadow)
4     cirrus       SCL 10 (thin cirrus)
5     defective    SCL 1 (saturated or defective)
6     user         the user's mask raster (``--mask FILE``) is non-zero
7     snow         SCL 11 (snow or ice), only when asked for in ``--mask-classes``
8     water        SCL 6 (water), only when asked for
9     scl_other    SCL 2, 4, 5 or 7 (dark area, vegetation, not vegetated, unclassified), when asked for
10    outside_aoi  outside the job's area of interest (``--aoi``; :mod:`s2dask.scene.aoi`)
====  ===========  ========================================================================

SCL "no data" (0) shares code 1 with band nodata: both mean that there is no measurement to
classify, and a pixel that is nodata in the bands is SCL 0 anyway; keeping them apart would
add a legend entry without telling the user anything they can act on.

:data:`DEFAULT_MASK_CLASSES` is ``(0, 1, 3, 8, 9, 10)``: no data, saturated/defective, cloud
shadow, medium and high probability cloud, thin cirrus, i.e. pixels whose reflectances are not
those of the ground. Snow/ice (11) and water (6) are left alone: they are real surfaces that a
land-cover model is expected to label (a "water" or "snow" class is common), and the SCL's
snow and water tests are the least reliable against bright soil, built-up areas and shadowed
terrain, so masking them would remove good pixels. Dark area pixels (2) and unclassified (7)
are left alone for the same reason (terrain shadow, dark soils). Add any of them with
``--mask-classes``.

Precedence in :func:`combine`: nodata first (a pixel without data has no other property
worth reporting), then the SCL reason, then the user mask (the fallback reason where the SCL
says nothing). The SCL at 20 m is brought onto the 10 m grid by nearest neighbour exactly as
:mod:`s2dask.scene` replicates 20 m bands (:func:`source_window`, :func:`replicate`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import ParameterError, SceneError

__all__ = [
    "MaskCode",
    "MASK_CODES",
    "MASK_CODE_NAMES",
    "VALID", "NODATA", "CLOUD", "SHADOW", "CIRRUS", "DEFECTIVE", "USER", "SNOW", "WATER", "SCL_OTHER",
    "OUTSIDE_AOI",
    "SCL_CLASSES",
    "SCL_TO_CODE",
    "DEFAULT_MASK_CLASSES",
    "MASKED_COLOUR",
    "MaskSpec",
    "MaskReader",
    "ChunkMask",
    "nodata_pixels",
    "parse_mask_classes",
    "parse_mask_option",
    "scl_to_mask",
    "source_window",
    "replicate",
    "scl_factor",
    "user_mask_to_codes",
    "check_mask_grid",
    "combine",
    "count_codes",
    "mask_statistics",
    "mask_attrs",
    "legend_entry",
]


@dataclass(frozen=True)
class MaskCode:
    """One value of the ``mask`` layer."""

    code: int
    name: str
    """Short identifier (job.json keys, Zarr ``flag_meanings``)."""
    label: str
    """Human-readable, for legends."""
    scl_classes: tuple[int, ...] = ()
    """SCL classes that give this code when they are masked."""


VALID, NODATA, CLOUD, SHADOW, CIRRUS, DEFECTIVE, USER, SNOW, WATER, SCL_OTHER, OUTSIDE_AOI = range(11)

#: Every mask code, by value.
MASK_CODES: tuple[MaskCode, ...] = (
    MaskCode(VALID, "valid", "valid"),
    MaskCode(NODATA, "nodata", "no data", (0,)),
    MaskCode(CLOUD, "cloud", "cloud", (8, 9)),
    MaskCode(SHADOW, "shadow", "cloud shadow", (3,)),
    MaskCode(CIRRUS, "cirrus", "thin cirrus", (10,)),
    MaskCode(DEFECTIVE, "defective", "saturated or defective", (1,)),
    MaskCode(USER, "user", "user mask"),
    MaskCode(SNOW, "snow", "snow or ice", (11,)),
    MaskCode(WATER, "water", "water", (6,)),
    MaskCode(SCL_OTHER, "scl_other", "other SCL class", (2, 4, 5, 7)),
    MaskCode(OUTSIDE_AOI, "outside_aoi", "outside the area of interest"),
)
MASK_CODE_NAMES: dict[int, str] = {c.code: c.name for c in MASK_CODES}

#: The Level-2A Scene Classification Layer classes.
SCL_CLASSES: dict[int, str] = {
    0: "no data", 1: "saturated or defective", 2: "dark area pixels", 3: "cloud shadows",
    4: "vegetation", 5: "not vegetated", 6: "water", 7: "unclassified",
    8: "cloud medium probability", 9: "cloud high probability", 10: "thin cirrus", 11: "snow or ice",
}
#: SCL class -> the mask code it gives when masked.
SCL_TO_CODE: dict[int, int] = {s: c.code for c in MASK_CODES for s in c.scl_classes}

#: SCL classes masked by default: no data, defective, cloud shadow, clouds, cirrus.
DEFAULT_MASK_CLASSES: tuple[int, ...] = (0, 1, 3, 8, 9, 10)

#: Quicklook colour of masked pixels (neutral grey); nodata stays transparent.
MASKED_COLOUR = "#9e9e9e"

_MODES = ("auto", "scl", "none", "file")


# --------------------------------------------------------------------------- options


def parse_mask_classes(value: str | Iterable[int] | None) -> tuple[int, ...]:
    """Parse ``--mask-classes`` (``"0,1,3,8,9,10"`` or integers) into sorted unique SCL classes.

    ``None`` gives :data:`DEFAULT_MASK_CLASSES`.

    Raises
    ------
    ParameterError
        If a value is not an integer in 0..11, or none is given.
    """
    if value is None:
        return DEFAULT_MASK_CLASSES
    items = [v for v in str(value).replace(" ", "").split(",") if v] if isinstance(value, str) else list(value)
    classes: set[int] = set()
    for item in items:
        number = _as_class(item)
        if number is None or not 0 <= number <= 11:
            raise ParameterError(
                f"mask class {item!r} is not an SCL class (0..11: 0 no data, 1 defective, 3 shadow, 6 water, "
                "8/9 cloud, 10 cirrus, 11 snow ...): give e.g. --mask-classes 0,1,3,8,9,10"
            )
        classes.add(number)
    if not classes:
        raise ParameterError("--mask-classes is empty: give SCL classes such as 0,1,3,8,9,10")
    return tuple(sorted(classes))


def _as_class(item: Any) -> int | None:
    if isinstance(item, bool):
        return None
    if isinstance(item, (int, np.integer)):
        return int(item)
    text = str(item).strip()
    return int(text) if text.isdigit() else None


@dataclass(frozen=True)
class MaskSpec:
    """What to mask: ``--mask`` and ``--mask-classes`` parsed.

    ``mode`` is ``auto`` (the default: the SCL when the scene has one, else nothing), ``scl``
    (the SCL, required), ``none``, or ``file`` (``path``: a raster on the scene's grid,
    non-zero = invalid). ``classes`` are the SCL classes masked (``scl``/``auto`` only).
    """

    mode: str = "auto"
    path: str | None = None
    classes: tuple[int, ...] = DEFAULT_MASK_CLASSES

    def resolve(self, *, scene: str, has_scl: bool) -> "MaskSpec":
        """The spec for one scene: ``auto`` becomes ``scl`` or ``none``.

        Raises
        ------
        SceneError
            If ``scl`` is asked for a scene without an SCL.
        """
        if self.mode == "auto":
            return MaskSpec("scl" if has_scl else "none", None, self.classes)
        if self.mode == "scl" and not has_scl:
            raise SceneError(
                f"--mask scl: scene {scene} has no Scene Classification Layer (SCL_20m in a L2A SAFE, an SCL "
                "file in a band folder, an scl/SCL asset in a STAC item): use --mask none, or --mask FILE with "
                "your own mask raster"
            )
        return self

    def to_json(self) -> dict[str, Any]:
        """The settings as recorded in ``job.json`` (``mask`` section)."""
        out: dict[str, Any] = {"mode": self.mode}
        if self.mode in ("scl", "auto"):
            out["scl_classes"] = list(self.classes)
            out["scl_class_names"] = {str(c): SCL_CLASSES[c] for c in self.classes}
        if self.mode == "file":
            out["path"] = self.path
        return out


def parse_mask_option(value: str | os.PathLike[str] | None, *,
                      classes: str | Iterable[int] | None = None) -> MaskSpec:
    """Parse ``--mask`` (``scl``, ``none``, a raster path, or None for the default) and ``--mask-classes``.

    Raises
    ------
    ParameterError
        If the classes are invalid, or are given with ``--mask none`` / ``--mask FILE``
        (where they would be silently ignored), or the mask file does not exist.
    """
    text = None if value is None else os.fspath(value)
    lowered = (text or "auto").strip().lower()
    if lowered in ("auto", "scl", "none"):
        if lowered == "none" and classes is not None:
            raise ParameterError("--mask-classes applies to the SCL mask: drop it, or use --mask scl")
        return MaskSpec(lowered, None, parse_mask_classes(classes))
    if classes is not None:
        raise ParameterError(
            f"--mask-classes applies to the SCL mask, not to --mask {text}: drop it, or use --mask scl"
        )
    from ..io.storage import is_remote

    if not is_remote(text) and not os.path.isfile(os.path.expanduser(text)):
        raise ParameterError(
            f"--mask {text}: no such file; give scl, none, or a single-band raster on the scene's grid "
            "(non-zero = invalid)"
        )
    return MaskSpec("file", text if is_remote(text) else os.path.abspath(os.path.expanduser(text)), ())


# --------------------------------------------------------------------------- block arithmetic


def _lut(classes: Iterable[int]) -> np.ndarray:
    lut = np.zeros(256, dtype=np.uint8)
    for c in classes:
        lut[int(c)] = SCL_TO_CODE[int(c)]
    return lut


def scl_to_mask(scl: np.ndarray, classes: Iterable[int] = DEFAULT_MASK_CLASSES) -> np.ndarray:
    """Mask codes (uint8, same shape) for an SCL block: masked classes get their code, others 0.

    Values outside 0..255 or non-integer SCL blocks are refused (the SCL is uint8).

    Raises
    ------
    SceneError
        If the block is not of an integer dtype.
    """
    block = np.asarray(scl)
    if not np.issubdtype(block.dtype, np.integer):
        raise SceneError(f"an SCL block has dtype {block.dtype}: the Scene Classification Layer must be integer")
    return _lut(classes)[np.clip(block, 0, 255).astype(np.uint8, copy=False)]


def source_window(y0: int, x0: int, height: int, width: int, factor: int,
                  src_height: int, src_width: int) -> tuple[int, int, int, int]:
    """The coarse-raster window ``(row, col, height, width)`` under a fine-grid window.

    The same arithmetic as :mod:`s2dask.scene`'s nearest-neighbour reader: the coarse pixel
    ``(i // factor, j // factor)`` covers fine pixel ``(i, j)``; the window is clipped to the
    coarse raster (whose size is ``ceil(fine / factor)``).
    """
    sy0, sx0 = y0 // factor, x0 // factor
    sy1 = min(-(-(y0 + height) // factor), src_height)
    sx1 = min(-(-(x0 + width) // factor), src_width)
    return sy0, sx0, sy1 - sy0, sx1 - sx0


def replicate(block: np.ndarray, factor: int, y0: int, x0: int, height: int, width: int) -> np.ndarray:
    """Bring a coarse block read at :func:`source_window` onto the fine window ``(y0, x0, h, w)``.

    Each coarse pixel is repeated ``factor x factor`` times and the result cropped, exactly as
    :mod:`s2dask.scene` replicates 20 m bands; works for 2-D ``(y, x)`` and 3-D ``(n, y, x)``.
    """
    if factor == 1:
        return block
    out = np.repeat(np.repeat(block, factor, axis=-2), factor, axis=-1)
    oy, ox = y0 - (y0 // factor) * factor, x0 - (x0 // factor) * factor
    return out[..., oy: oy + height, ox: ox + width]


def scl_factor(scl_resolution: float, grid_resolution: float, *, scene: str) -> int:
    """How many grid pixels one SCL pixel spans along each axis (20 m SCL on 10 m: 2).

    Raises
    ------
    SceneError
        If the SCL is finer than the grid or not an integer multiple of it (use the SCL
        product at the scene's resolution, e.g. ``SCL_60m`` for a 60 m scene).
    """
    ratio = float(scl_resolution) / float(grid_resolution)
    factor = round(ratio)
    if factor < 1 or abs(ratio - factor) > 1e-6:
        raise SceneError(
            f"scene {scene}: its SCL is {scl_resolution:g} m but the scene grid is {grid_resolution:g} m; "
            "use the SCL at the scene's resolution (SCL_60m for a 60 m scene) or --mask none"
        )
    return factor


def user_mask_to_codes(block: np.ndarray) -> np.ndarray:
    """Mask codes for a user mask block: non-zero (and NaN) -> :data:`USER`, zero -> valid."""
    data = np.asarray(block)
    invalid = data != 0
    if np.issubdtype(data.dtype, np.floating):
        invalid |= np.isnan(data)
    return np.where(invalid, np.uint8(USER), np.uint8(VALID)).astype(np.uint8)


def combine(nodata: np.ndarray, scl_codes: np.ndarray | None = None,
            user_codes: np.ndarray | None = None) -> np.ndarray:
    """One code per pixel: nodata first, then the SCL reason, then the user mask.

    Parameters
    ----------
    nodata
        Boolean, True where any band is nodata (``(y, x)``).
    scl_codes, user_codes
        From :func:`scl_to_mask` / :func:`user_mask_to_codes` on the same window, or None.
    """
    out = np.zeros(np.shape(nodata), dtype=np.uint8)
    if user_codes is not None:
        out[:] = user_codes
    if scl_codes is not None:
        np.copyto(out, scl_codes, where=scl_codes != VALID)
    out[np.asarray(nodata, dtype=bool)] = NODATA
    return out


# --------------------------------------------------------------------------- statistics, attrs


def count_codes(codes: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """Pixels per mask code (int64, ``len(MASK_CODES)``), added to ``counts`` when given."""
    found = np.bincount(np.asarray(codes, dtype=np.uint8).ravel(), minlength=len(MASK_CODES))[: len(MASK_CODES)]
    return found.astype(np.int64) if counts is None else counts + found


def mask_statistics(counts: Sequence[int] | np.ndarray) -> dict[str, Any]:
    """``job.json`` statistics from :func:`count_codes` totals.

    Returns ``{"pixels", "valid_pixels", "nodata_pixels", "masked_pixels", "masked_by_reason":
    {name: n}}``; ``masked_by_reason`` lists every masking reason (0 where none). Pixels outside
    an area of interest are none of these (``pixels`` is the area's).
    """
    c = [int(v) for v in counts]
    masked = {code.name: c[code.code] for code in MASK_CODES if code.code not in (VALID, NODATA, OUTSIDE_AOI)}
    return {
        "pixels": sum(c) - c[OUTSIDE_AOI],
        "valid_pixels": c[VALID],
        "nodata_pixels": c[NODATA],
        "masked_pixels": sum(masked.values()),
        "masked_by_reason": masked,
    }


def mask_attrs(spec: MaskSpec) -> dict[str, Any]:
    """Attributes of the Zarr ``mask`` layer (CF ``flag_values`` / ``flag_meanings``, settings)."""
    return {
        "long_name": "why a pixel was not classified (0 = classified)",
        "flag_values": [c.code for c in MASK_CODES],
        "flag_meanings": " ".join(c.name for c in MASK_CODES),
        "flag_labels": [c.label for c in MASK_CODES],
        "flag_scl_classes": {c.name: list(c.scl_classes) for c in MASK_CODES if c.scl_classes},
        "mask_settings": spec.to_json(),
    }


def legend_entry(spec: MaskSpec) -> dict[str, Any] | None:
    """The quicklook legend entry for masked pixels (None for ``--mask none``)."""
    if spec.mode == "none":
        return None
    if spec.mode == "file":
        reasons = [MASK_CODES[USER].label]
    else:
        reasons = []
        for c in MASK_CODES:
            if c.code != NODATA and set(c.scl_classes) & set(spec.classes) and c.label not in reasons:
                reasons.append(c.label)
    return {"name": f"masked ({', '.join(reasons)})" if reasons else "masked", "colour": MASKED_COLOUR,
            "codes": [c.code for c in MASK_CODES if c.code not in (VALID, NODATA, OUTSIDE_AOI)]}


# --------------------------------------------------------------------------- grid check, reader


def check_mask_grid(path: str | os.PathLike[str], *, crs: Any, transform: Any, shape: tuple[int, int],
                    scene: str = "the scene") -> None:
    """Refuse a user mask raster that is not single-band on the scene's grid.

    Parameters
    ----------
    path
        The mask raster (local path, or a GDAL path such as ``/vsis3/...``).
    crs, transform, shape
        The scene's grid: a CRS (anything rasterio accepts), an affine transform, ``(rows, cols)``.

    Raises
    ------
    SceneError
        If the file cannot be read, has several bands, or its CRS, transform or shape differ
        (one line with both grids and a ``gdalwarp`` hint).
    """
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as src:
            m_crs, m_tr, m_shape, count = src.crs, src.transform, (src.height, src.width), src.count
    except RasterioError as exc:
        raise SceneError(f"cannot read mask raster {path} ({exc}): give a single-band GeoTIFF") from None
    if count != 1:
        raise SceneError(f"mask raster {path} has {count} bands: give a single-band raster (non-zero = invalid)")
    s_crs = CRS.from_user_input(crs)
    s_tr = transform if isinstance(transform, Affine) else Affine(*tuple(transform)[:6])
    tol = 1e-6 * abs(s_tr.a)
    same = (m_crs is not None and m_crs == s_crs and tuple(m_shape) == tuple(shape)
            and all(abs(a - b) <= tol for a, b in zip(tuple(m_tr)[:6], tuple(s_tr)[:6])))
    if not same:
        def describe(c, t, s):
            return f"{_crs_name(c)}, {s[0]}x{s[1]} px of {abs(t.a):.12g} m at ({t.c:.12g}, {t.f:.12g})"

        xmax, ymin = s_tr.c + s_tr.a * shape[1], s_tr.f + s_tr.e * shape[0]
        raise SceneError(
            f"mask raster {path} is not on the grid of {scene} ({describe(m_crs, m_tr, m_shape)} vs "
            f"{describe(s_crs, s_tr, shape)}): resample it, e.g. gdalwarp -t_srs {_crs_name(s_crs)} "
            f"-te {s_tr.c:.12g} {ymin:.12g} {xmax:.12g} {s_tr.f:.12g} -ts {shape[1]} {shape[0]} -r near MASK OUT.tif"
        )


def _crs_name(crs: Any) -> str:
    if crs is None:
        return "no CRS"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()


@dataclass(frozen=True)
class MaskReader:
    """Read the mask codes of one grid window; picklable, so it travels with a prediction task.

    ``kind`` is ``scl`` (``path`` is the SCL raster, ``factor`` grid pixels per SCL pixel,
    ``classes`` the SCL classes masked) or ``file`` (a user mask on the grid, ``factor`` 1).
    Each call opens and closes its own handle, under the same GDAL settings as the scene reader.
    """

    path: str
    kind: str = "scl"
    factor: int = 1
    classes: tuple[int, ...] = DEFAULT_MASK_CLASSES
    env: tuple[tuple[str, str], ...] | None = None
    """GDAL options as pairs (``tuple(gdal_env_for(url).items())``); None: derived in each call
    from the worker's own environment (what the scene reader does)."""

    def __call__(self, y0: int, x0: int, height: int, width: int) -> np.ndarray:
        """Mask codes ``(height, width)`` uint8 for the grid window (nodata not included).

        Raises
        ------
        StorageError
            If the raster cannot be read.
        """
        import rasterio
        from rasterio.errors import RasterioError
        from rasterio.windows import Window

        from ..errors import StorageError

        env = dict(self.env) if self.env is not None else _gdal_env(self.path)
        env.setdefault("GDAL_NUM_THREADS", "1")
        env.setdefault("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
        try:
            with rasterio.Env(**env), rasterio.open(self.path) as src:
                sy, sx, sh, sw = source_window(y0, x0, height, width, self.factor, src.height, src.width)
                data = src.read(1, window=Window(sx, sy, sw, sh))
        except (RasterioError, OSError) as exc:
            raise StorageError(
                f"reading mask window y={y0}:{y0 + height} x={x0}:{x0 + width} of {self.path} failed ({exc}): "
                "check that the file is complete and readable"
            ) from exc
        data = replicate(data, self.factor, y0, x0, height, width)
        if data.shape != (height, width):
            raise StorageError(
                f"mask {self.path} does not cover window y={y0}:{y0 + height} x={x0}:{x0 + width}: "
                "it must cover the scene grid"
            )
        return scl_to_mask(data, self.classes) if self.kind == "scl" else user_mask_to_codes(data)


def _gdal_env(path: str) -> dict[str, str]:
    from ..io.storage import gdal_env_for

    if path.startswith("/vsis3/"):
        return gdal_env_for("s3://" + path[len("/vsis3/"):])
    if path.startswith("/vsicurl/"):
        return gdal_env_for(path[len("/vsicurl/"):])
    return {}


def nodata_pixels(block: np.ndarray, nodata: float | None) -> np.ndarray:
    """``(y, x)`` True where any band of a ``(band, y, x)`` block is nodata (or NaN)."""
    data = np.asarray(block)
    bad = np.zeros(data.shape[1:], dtype=bool)
    if np.issubdtype(data.dtype, np.floating):
        bad |= np.isnan(data).any(axis=0)
    if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
        bad |= (data == nodata).any(axis=0)
    return bad


@dataclass(frozen=True)
class ChunkMask:
    """What a prediction task needs to compute its chunk's mask codes; small and picklable.

    ``nodata`` is the scene's band nodata, ``readers`` the SCL and/or user mask readers
    (:class:`MaskReader`, at most one of each kind) and the area of interest's
    (:class:`s2dask.scene.aoi.AoiReader`, kind ``aoi``: its outside comes before every other
    reason), ``layer`` whether the job stores the codes as the Zarr ``mask`` layer (not for
    ``--mask none`` without an area of interest).
    """

    nodata: float | None = None
    readers: tuple[MaskReader, ...] = ()
    layer: bool = False

    def codes(self, block: np.ndarray, y0: int, x0: int) -> np.ndarray:
        """Mask codes ``(y, x)`` uint8 of the ``(band, y, x)`` block whose top-left pixel is ``(y0, x0)``.

        Raises
        ------
        StorageError
            If a mask raster cannot be read.
        """
        _, height, width = np.shape(block)
        found = {r.kind: r(y0, x0, height, width) for r in self.readers}
        out = combine(nodata_pixels(block, self.nodata), found.get("scl"), found.get("file"))
        if "aoi" in found:
            out[found["aoi"] == OUTSIDE_AOI] = OUTSIDE_AOI
        return out
